//! The method contract (`contract/`): each check runs over every row of the table and
//! lists every row that fails. A new method is one row in `contract/table.rs`.
use crate::contract::{self, fixture, methods};
use std::collections::BTreeSet;

/// Every `peft_type` the config reader knows has a row, and every row's type is one it knows:
/// the arms of `tuners::parse_config` (read from its source) and `SUPPORTED_PEFT_TYPES` agree.
#[test]
fn every_peft_type_has_a_row() {
    let source = include_str!("../src/tuners/mod.rs");
    let start = source.find("pub fn parse_config").expect("tuners::parse_config");
    let body = &source[start..start + source[start..].find("\n}\n").expect("end of parse_config")];
    let arms: BTreeSet<&str> = body.split("Some(\"").skip(1).filter_map(|s| s.split_once("\") =>").map(|(t, _)| t)).collect();
    let supported: BTreeSet<&str> = peft_core::tuners::SUPPORTED_PEFT_TYPES.iter().copied().collect();
    assert_eq!(arms, supported, "parse_config's arms vs SUPPORTED_PEFT_TYPES");
    let rows: BTreeSet<String> = methods().map(|r| r.peft_type()).collect();
    let missing: Vec<&&str> = supported.iter().filter(|t| !rows.contains(**t)).collect();
    assert!(missing.is_empty(), "no contract row for {missing:?}: add one to tests/contract/table.rs");
    let unknown: Vec<&String> = rows.iter().filter(|t| !supported.contains(t.as_str())).collect();
    assert!(unknown.is_empty(), "rows of unknown peft_types {unknown:?}");
    let mut names = BTreeSet::new();
    assert!(methods().all(|r| names.insert(r.name)), "two rows share a name");
}

#[test]
fn forward_shapes() {
    contract::every_row(contract::shapes);
}

#[test]
fn every_trainable_parameter_gets_a_finite_non_zero_gradient() {
    contract::every_row(contract::gradients);
}

#[test]
fn finite_differences_in_f64() {
    contract::every_row(contract::finite_differences);
}

#[test]
fn save_load_gives_identical_logits() {
    contract::every_row(contract::save_load);
}

#[test]
fn merge_equals_unmerged_or_is_refused() {
    contract::every_row(contract::merge);
}

#[test]
fn disabled_is_the_base_model() {
    contract::every_row(contract::disabled);
}

#[test]
fn loss_falls_over_20_adamw_steps() {
    contract::every_row(contract::loss_falls);
}

#[test]
fn fixtures_match_peft() {
    contract::for_rows(fixture::has_fixture, fixture::matches_peft);
}

#[test]
fn fixture_files_round_trip_byte_identical() {
    contract::for_rows(fixture::has_fixture, fixture::files_round_trip);
}
