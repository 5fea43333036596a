//! LPT (Liu et al. 2022): the reduction to prompt tuning when inserted at layer 0
//! with the generator's output at zero. Causal conditioning and cached decoding = a full pass:
//! `prompt_conditioning.rs`.
use crate::common;
use crate::contract;
use common::*;
use contract::*;
use serde_json::json;

/// W_up = 0 (the default start): the generated prompt is b_up for every instance. Inserted at
/// layer 0 it is a plain prompt at the input: prompt tuning with the prompt b_up. Inserted at
/// the middle layer (1 of 2) it is not, and the file holds b_up and the generator.
#[test]
fn lpt_at_layer_zero_with_a_fixed_prompt_is_prompt_tuning() {
    let (lpt, lpt_t) = inject(&json!({"peft_type": "LPT", "num_virtual_tokens": 3, "insertion_layer": 0}), 1);
    let b_up = value(&lpt, "prompt_encoder.default.embedding.weight");
    let (pt, pt_t) = inject(&json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3}), 9);
    set(&pt, "prompt_encoder.default.embedding.weight", &b_up);
    let reference = logits_with(&pt, Some(&pt_t));
    let d = max_abs_diff(&logits_with(&lpt, Some(&lpt_t)), &reference);
    assert!(d < 1e-5, "LPT(layer 0, W_up = 0) vs prompt tuning: {d}");

    let (mid, mid_t) = inject(&json!({"peft_type": "LPT", "num_virtual_tokens": 3}), 1);
    set(&mid, "prompt_encoder.default.embedding.weight", &b_up);
    let d = max_abs_diff(&logits_with(&mid, Some(&mid_t)), &reference);
    assert!(d > 1e-4, "inserted at layer 1 the prompt is not an input prompt: {d}");
    let keys: Vec<String> = mid_t.checkpoint_keys(&mid, "default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["prompt_embeddings", "prompt_encoder.lpt_down.weight", "prompt_encoder.lpt_down_bias.weight", "prompt_encoder.lpt_up.weight"]
    );
}
