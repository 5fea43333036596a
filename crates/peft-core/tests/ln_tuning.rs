//! LN tuning against PEFT 0.21 (fixture `ln_tuning`).
use crate::fixture_case;

#[test]
fn ln_tuning_matches_peft() {
    fixture_case::check_case("ln_tuning", 0, true);
}
