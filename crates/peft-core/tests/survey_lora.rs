//! The LoRA improvements of the survey's tree, part B (issue 16): PeriodicLoRA and Intrinsic
//! SAID. Each has a contract row (`contract/table.rs`); the training procedures are checked directly.
use crate::common;
use crate::contract;
use candle_core::DType;
use common::*;
use contract::*;
use serde_json::json;

#[test]
fn bad_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "PERIODIC_LORA", "merge_every": 0}), "merge_every"),
        (json!({"peft_type": "PERIODIC_LORA", "r": 0}), "r"),
        (json!({"peft_type": "INTRINSIC_SAID", "intrinsic_dim": 0}), "intrinsic_dim"),
        (json!({"peft_type": "INTRINSIC_SAID", "projection_seed": -1}), "projection_seed"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(key), "{cfg}: {e}");
    }
}

/// At the end of a stage the update s·B A moves into the merged buffer (the logits do not
/// change), B restarts at 0 and A is redrawn; between stages nothing happens. A second stage
/// adds to the first: the adapter's update is their sum, beyond rank r.
#[test]
fn periodic_lora_unloads_each_stage_and_restarts() {
    use peft_core::tuners::periodic_lora::restart;
    let (model, tuners) =
        setup(&json!({"peft_type": "PERIODIC_LORA", "r": 2, "lora_alpha": 2, "merge_every": 2, "target_modules": ["q_proj"]}), DType::F64);
    let (a, b, m) =
        (format!("{Q0}.lora_A.default.weight"), format!("{Q0}.lora_B.default.weight"), format!("{Q0}.lora_merged.default.weight"));
    let before = logits_with(&model, Some(&tuners));
    let stage1 = value(&model, &b).matmul(&value(&model, &a)).unwrap(); // s = 1
    let a1 = value(&model, &a).copy().unwrap(); // the store sets values in place
    assert!(restart(&model, &tuners, 1, 7).unwrap().is_empty(), "mid-stage");
    let r = restart(&model, &tuners, 2, 7).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0.as_str(), r[0].1, r[0].2.len()), ("default", 1, 4), "stage 1 ended; A and B of 2 layers reset");
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &before) < 1e-10, "unloading keeps the output");
    assert!(max_abs_diff(&value(&model, &m), &stage1) < 1e-12, "M = s·B A of stage 1");
    assert!(value(&model, &b).abs().unwrap().sum_all().unwrap().to_vec0::<f64>().unwrap() == 0.0, "B restarts at 0");
    assert!(max_abs_diff(&value(&model, &a), &a1) > 1e-3, "A is redrawn");
    // Stage 2 learns another rank-2 update; after its restart M holds both: rank 4 > r.
    set(&model, &b, &value(&model, &b).ones_like().unwrap());
    let stage2 = value(&model, &b).matmul(&value(&model, &a)).unwrap();
    restart(&model, &tuners, 4, 7).unwrap();
    assert!(max_abs_diff(&value(&model, &m), &(stage1 + stage2).unwrap()) < 1e-12, "M = the sum of the stages");
}

/// The butterfly is the Walsh-Hadamard matrix (Sylvester's H₂ₙ = [[Hₙ, Hₙ], [Hₙ, −Hₙ]]), and the
/// Fastfood projection of the fixture's q_proj (D = 4096 = L) is an orthogonal map up to the
/// Gaussian's spread: ‖P θ‖ is near ‖θ‖ and λ scales it; each weight gets its own projection.
#[test]
fn fastfood_is_hadamard_and_about_norm_preserving() {
    use candle_core::{Device, Tensor};
    use peft_core::tuners::intrinsic_said::fwht;
    let n = 8;
    let mut h = vec![vec![1f64]];
    while h.len() < n {
        let k = h.len();
        h = (0..2 * k).map(|i| (0..2 * k).map(|j| if i >= k && j >= k { -h[i % k][j % k] } else { h[i % k][j % k] }).collect()).collect();
    }
    let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.7).sin()).collect();
    let got: Vec<f64> = fwht(&Tensor::new(x.clone(), &Device::Cpu).unwrap()).unwrap().to_vec1().unwrap();
    for i in 0..n {
        let want: f64 = (0..n).map(|j| h[i][j] * x[j]).sum();
        assert!((got[i] - want).abs() < 1e-12, "row {i}: {} vs {want}", got[i]);
    }
    let (model, tuners) = setup(&json!({"peft_type": "INTRINSIC_SAID", "intrinsic_dim": 64, "target_modules": ["q_proj"]}), DType::F64);
    let theta: Vec<f64> = (0..64).map(|i| ((i * 7 % 13) as f64 - 6.0) / 6.0).collect();
    let tnorm = theta.iter().map(|x| x * x).sum::<f64>().sqrt();
    set(&model, "base_model.said_theta.default", &Tensor::new(theta, &Device::Cpu).unwrap());
    let q1 = "base_model.model.model.layers.1.self_attn.q_proj";
    for (q, lambda) in [(Q0, 1.0), (q1, -2.5)] {
        set(&model, &format!("{q}.said_lambda.default.weight"), &Tensor::new(&[lambda], &Device::Cpu).unwrap());
    }
    let w0 = value(&load_in(DType::F64), "model.layers.0.self_attn.q_proj.weight");
    let mut merged = model;
    let mut tuners = tuners;
    tuners.merge(&mut merged, None).unwrap();
    let d0 = (value(&merged, "model.layers.0.self_attn.q_proj.weight") - &w0).unwrap();
    let n0 = d0.sqr().unwrap().sum_all().unwrap().to_vec0::<f64>().unwrap().sqrt();
    assert!((n0 / tnorm - 1.0).abs() < 0.15, "‖P θ‖ / ‖θ‖ = {}", n0 / tnorm);
    let w1 = value(&load_in(DType::F64), "model.layers.1.self_attn.q_proj.weight");
    let d1 = (value(&merged, "model.layers.1.self_attn.q_proj.weight") - &w1).unwrap();
    let n1 = d1.sqr().unwrap().sum_all().unwrap().to_vec0::<f64>().unwrap().sqrt();
    assert!((n1 / tnorm - 2.5).abs() < 0.4, "λ scales: {}", n1 / tnorm);
    assert!(max_abs_diff(&(d1 / -2.5).unwrap(), &d0) > 1e-3, "each weight has its own projection");
}
