//! LoRA inits (default, gaussian, false, PiSSA), DoRA's magnitude init, seeds, dropout.
use crate::common;
use candle_core::{DType, Tensor};
use common::*;
use peft_core::io::adapter::{load_adapter, save_adapter};
use peft_core::model::{CausalLm, Ctx};
use peft_core::tuners::Tuners;
use peft_core::tuners::WithTuners;
use serde_json::json;

fn inject(cfg: serde_json::Value, seed: u64) -> (CausalLm, Tuners) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", lora(cfg), seed).unwrap();
    (model, tuners)
}

fn param(model: &CausalLm, name: &str) -> Vec<f32> {
    model.store.by_name(name).unwrap().value().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

const A: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight";
const B: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight";

#[test]
fn default_init_is_kaiming_a_and_zero_b() {
    let (model, tuners) = inject(json!({"r": 4, "target_modules": ["q_proj", "down_proj"]}), 7);
    assert!(param(&model, B).iter().all(|&x| x == 0.0));
    let a = param(&model, A);
    let bound = 1.0 / 64f32.sqrt();
    assert!(a.iter().all(|x| x.abs() <= bound) && a.iter().any(|x| x.abs() > 0.5 * bound));
    let down_a = param(&model, "base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight");
    assert!(down_a.iter().all(|x| x.abs() <= 1.0 / 160f32.sqrt()));
    assert_eq!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)), 0.0, "a zero B is a no-op");
    // Seeded: the same seed gives the same weights, another seed others.
    let (again, _) = inject(json!({"r": 4, "target_modules": ["q_proj", "down_proj"]}), 7);
    assert_eq!(param(&again, A), a);
    let (other, _) = inject(json!({"r": 4, "target_modules": ["q_proj", "down_proj"]}), 8);
    assert_ne!(param(&other, A), a);
}

#[test]
fn gaussian_init_has_std_one_over_r() {
    let (model, _) = inject(json!({"r": 4, "target_modules": "all-linear", "init_lora_weights": "gaussian"}), 1);
    assert!(param(&model, B).iter().all(|&x| x == 0.0));
    let a: Vec<f32> = model
        .store
        .iter()
        .filter(|(_, p)| p.name.contains("lora_A"))
        .flat_map(|(_, p)| p.value().flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    let mean = a.iter().sum::<f32>() / a.len() as f32;
    let std = (a.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / a.len() as f32).sqrt();
    assert!(mean.abs() < 0.02 && (std - 0.25).abs() < 0.02, "mean {mean} std {std} over {}", a.len());
}

#[test]
fn init_false_is_not_a_no_op() {
    let (model, tuners) = inject(json!({"target_modules": ["q_proj"], "init_lora_weights": false}), 1);
    assert!(param(&model, B).iter().all(|x| x.abs() <= 1.0 / 8f32.sqrt()) && param(&model, B).iter().any(|&x| x != 0.0));
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)) > 1e-3);
}

#[test]
fn dora_magnitude_starts_at_the_weight_norm() {
    let (model, tuners) = inject(json!({"target_modules": "all-linear", "use_dora": true}), 1);
    let m = param(&model, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight");
    let w = model.store.by_name("model.layers.0.self_attn.q_proj.weight").unwrap().value().clone();
    let norms = w.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1::<f32>().unwrap();
    assert!(m.iter().zip(&norms).all(|(a, b)| (a - b).abs() < 1e-6));
    let d = max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None));
    assert!(d < 1e-5, "DoRA at init moved the logits by {d}");
}

#[test]
fn pissa_keeps_the_output_and_the_base_comes_back() {
    let mut model = load_model();
    let base = snapshot(&model);
    let base_logits = logits_with(&model, None);
    let mut tuners = Tuners::new();
    let cfg = json!({"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": "pissa"});
    tuners.inject(&mut model, "default", lora(cfg), 0).unwrap();
    let w = "model.layers.0.mlp.down_proj.weight";
    assert!(max_abs_diff(&model.store.by_name(w).unwrap().value(), &base[w]) > 1e-2, "PiSSA takes the principal part out of the base");
    assert!(param(&model, "base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight").iter().any(|&x| x != 0.0));
    let d = max_abs_diff(&logits_with(&model, Some(&tuners)), &base_logits);
    println!("pissa at init: logits moved by {d:e}");
    assert!(d < 1e-4);
    // Saved and loaded onto the original base: the load redoes the SVD, so the model is the same.
    let out = std::env::temp_dir().join(format!("peft-core-pissa-{}", std::process::id()));
    save_adapter(&tuners, &model, "default", &out).unwrap();
    let mut fresh = load_model();
    let mut t2 = Tuners::new();
    load_adapter(&mut t2, &mut fresh, &out, "default", false).unwrap();
    assert!(max_abs_diff(&logits_with(&fresh, Some(&t2)), &logits_with(&model, Some(&tuners))) < 1e-5);
    std::fs::remove_dir_all(&out).unwrap();
    // Deleting the adapter puts the principal part back into the base weight.
    tuners.delete_adapter(&mut model, "default").unwrap();
    let worst = base.iter().map(|(k, v)| max_abs_diff(&model.store.by_name(k).unwrap().value(), v)).fold(0f32, f32::max);
    println!("pissa base after delete max abs err {worst:e}");
    assert!(worst < 1e-6);
    // r larger than the weight allows is refused.
    let e = inject_err(json!({"r": 65, "target_modules": ["q_proj"], "init_lora_weights": "pissa"}));
    assert!(e.contains("PiSSA") && e.contains("65"), "{e}");
}

fn logits_training(model: &CausalLm, tuners: &Tuners, seed: Option<u64>) -> Tensor {
    let mut ctx = Ctx::new(&model.store, true).with_tuners(tuners);
    if let Some(s) = seed {
        ctx = ctx.training(s);
    }
    model.forward(&inputs().batch(), &ctx, None, false).unwrap()
}

#[test]
fn dropout_only_in_training_and_seeded() {
    for dora in [false, true] {
        let (model, tuners) =
            inject(json!({"target_modules": ["q_proj", "up_proj"], "lora_dropout": 0.5, "init_lora_weights": false, "use_dora": dora}), 1);
        let eval = logits_training(&model, &tuners, None);
        assert_eq!(max_abs_diff(&eval, &logits_with(&model, Some(&tuners))), 0.0);
        let t1 = logits_training(&model, &tuners, Some(1));
        assert!(max_abs_diff(&t1, &eval) > 1e-3, "dropout changes the training forward (dora {dora})");
        assert_eq!(max_abs_diff(&t1, &logits_training(&model, &tuners, Some(1))), 0.0, "same seed, same masks");
        assert!(max_abs_diff(&t1, &logits_training(&model, &tuners, Some(2))) > 1e-3);
    }
    // Without dropout, training and evaluation agree.
    let (model, tuners) = inject(json!({"target_modules": ["q_proj"], "init_lora_weights": false, "use_dora": true}), 1);
    assert_eq!(max_abs_diff(&logits_training(&model, &tuners, Some(3)), &logits_training(&model, &tuners, None)), 0.0);
}

/// `pissa_niter_N` (a randomized SVD, as PEFT's `svd_lowrank`): the output is unchanged, and
/// the principal part it takes out is close to the exact one (the rank-4 energy of q_proj).
#[test]
fn pissa_niter_is_a_randomized_principal_part() {
    let energy = |model: &CausalLm| -> f64 {
        let (a, b) = (model.store.by_name(A).unwrap().value(), model.store.by_name(B).unwrap().value());
        b.to_dtype(DType::F64)
            .unwrap()
            .matmul(&a.to_dtype(DType::F64).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
            .sqrt()
    };
    let base_logits = logits_with(&load_model(), None);
    let (exact, _) = inject(json!({"r": 4, "lora_alpha": 4, "target_modules": ["q_proj"], "init_lora_weights": "pissa"}), 0);
    let (model, tuners) = inject(json!({"r": 4, "lora_alpha": 4, "target_modules": ["q_proj"], "init_lora_weights": "pissa_niter_4"}), 0);
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &base_logits) < 1e-4);
    let (e_exact, e_rand) = (energy(&exact), energy(&model));
    println!("pissa rank-4 principal part: exact {e_exact:.6}, pissa_niter_4 {e_rand:.6}");
    assert!(e_rand <= e_exact * (1.0 + 1e-6) && e_rand >= 0.95 * e_exact, "{e_rand} vs {e_exact}");
}
