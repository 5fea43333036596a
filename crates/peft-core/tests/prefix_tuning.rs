//! Prefix tuning against PEFT 0.21 (fixture `prefix_tuning`: GQA, 2 key/value heads).
use crate::fixture_case;

#[test]
fn prefix_tuning_matches_peft() {
    fixture_case::check_case("prefix_tuning", 0, false);
}
