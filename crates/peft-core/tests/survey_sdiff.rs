//! Structured diff pruning (issue 16, part B): the hard-concrete gates of
//! Guo et al. 2021 (eq. 4-5) against their closed form, and the L0 penalty in training.
use crate::common;
use crate::contract;
use candle_core::{DType, Device, Tensor};
use common::*;
use contract::*;
use peft_core::model::{loss, Ctx};
use peft_core::tuners::WithTuners;
use serde_json::json;

#[test]
fn bad_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "S_DIFF_PRUNING", "l0_lambda": -1}), "l0_lambda"),
        (json!({"peft_type": "S_DIFF_PRUNING", "init_log_alpha": 100}), "init_log_alpha"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(key), "{cfg}: {e}");
    }
}

/// Evaluation: δ = z ⊙ w with z = min(1, max(0, σ(log α)(ζ − γ) + γ)) per row; a row whose gate
/// is closed (log α = −10) adds nothing, so the logits equal those with that row of w zeroed.
/// Training: the loss carries λ·mean σ(log α − β log(−γ/ζ)) as `s_diff_pruning_l0`.
#[test]
fn gates_close_whole_rows_and_the_l0_penalty_is_the_expected_share() {
    let (model, tuners) = setup(&json!({"peft_type": "S_DIFF_PRUNING", "l0_lambda": 0.5, "target_modules": ["q_proj"]}), DType::F64);
    let (w, la) = (format!("{Q0}.diff_delta.default.weight"), format!("{Q0}.diff_log_alpha.default.weight"));
    let rows = value(&model, &la).dim(0).unwrap();
    let mut alpha: Vec<f64> = value(&model, &la).to_vec1().unwrap();
    alpha[3] = -10.0;
    set(&model, &la, &Tensor::new(alpha.clone(), &Device::Cpu).unwrap());
    let with_gate = logits_with(&model, Some(&tuners));
    let mut wv = value(&model, &w).to_vec2::<f64>().unwrap();
    wv[3].iter_mut().for_each(|x| *x = 0.0);
    set(&model, &w, &Tensor::new(wv, &Device::Cpu).unwrap());
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &with_gate) < 1e-12, "a closed gate removes its row");

    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    let expected = |a: &[f64]| a.iter().map(|&x| sig(x - (2.0 / 3.0) * (0.1f64 / 1.1).ln())).sum::<f64>() / a.len() as f64;
    let ctx = Ctx::new(&model.store, false).with_tuners(&tuners).training(4);
    let logits = model.forward(&inputs().batch(), &ctx, None, false).unwrap();
    let ce = loss::causal_lm_loss(&logits, &inputs().labels).unwrap();
    let (_, terms) = peft_core::tuners::aux_loss::training_loss(ce, &model, &tuners, &ctx).unwrap();
    let other: Vec<f64> =
        value(&model, "base_model.model.model.layers.1.self_attn.q_proj.diff_log_alpha.default.weight").to_vec1().unwrap();
    let want = 0.5 * (expected(&alpha) + expected(&other));
    let got = terms["s_diff_pruning_l0"];
    assert!((got - want).abs() < 1e-9, "L0 term {got} vs {want}");
    assert_eq!(rows, 64);
}
