//! Prompt tuning against PEFT 0.21 (fixture `prompt_tuning`).
use crate::fixture_case;

#[test]
fn prompt_tuning_matches_peft() {
    fixture_case::check_case("prompt_tuning", 5, false);
}
