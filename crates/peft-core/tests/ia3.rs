//! (IA)³ against PEFT 0.21 (the `ia3` fixture) and the tuner-base contract: files, merge,
//! disable, gradients, finite differences, config errors.
use crate::common;
use crate::methods_common;
use candle_core::DType;
use common::*;
use methods_common::*;
use peft_core::model::{CausalLm, LoadOptions};
use peft_core::tuners::{ia3, Tuners};
use serde_json::json;

#[test]
fn ia3_matches_peft() {
    check_case("ia3");
}

#[test]
fn ia3_files_round_trip_byte_identical() {
    check_round_trip("ia3", &ia3::peft_defaults());
}

fn setup(dtype: DType) -> (CausalLm, Tuners) {
    let mut model = CausalLm::from_pretrained(&model_dir(), &LoadOptions { dtype, ..Default::default() }).unwrap();
    let mut tuners = Tuners::new();
    let cfg = config("IA3", json!({"target_modules": "all-linear", "feedforward_modules": ["down_proj", "up_proj"]}));
    tuners.inject(&mut model, "default", cfg, 1).unwrap();
    randomize(&model, 3, true);
    (model, tuners)
}

#[test]
fn ia3_gradients_merge_and_disable() {
    let (mut model, mut tuners) = setup(DType::F32);
    let ff = model.store.by_name("base_model.model.model.layers.0.mlp.up_proj.ia3_l.default").unwrap();
    assert_eq!(ff.dims(), [1, 64], "feed-forward vectors scale the input");
    assert_eq!(model.store.by_name("base_model.model.model.layers.0.mlp.gate_proj.ia3_l.default").unwrap().dims(), [160, 1]);
    assert_eq!(check_all_gradients(&mut model, &tuners), 14);
    let (dm, db) = check_merge_and_disable(&mut model, &mut tuners);
    println!("ia3: merged vs unmerged logits {dm:e}, base after unmerge {db:e}");
}

#[test]
fn ia3_finite_differences_in_f64() {
    let (mut model, tuners) = setup(DType::F64);
    loss_with(&mut model, Some(&tuners), true);
    for name in
        ["base_model.model.model.layers.1.mlp.down_proj.ia3_l.default", "base_model.model.model.layers.0.self_attn.k_proj.ia3_l.default"]
    {
        let err = fd_error(&mut model, &tuners, name, loss64);
        println!("{name}: finite-difference rel err {err:e}");
        assert!(err < 1e-6, "{name}: {err}");
    }
}

#[test]
fn ia3_defaults_init_and_config_errors() {
    // No targets: PEFT's LLaMA table (k, v, down; down is feed-forward), written back; ones: a no-op.
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let report = tuners.inject(&mut model, "default", config("IA3", json!({})), 0).unwrap();
    assert_eq!(report.targeted.len(), 6);
    let j = tuners.config("default").unwrap().to_json();
    assert_eq!(j["target_modules"], json!(["k_proj", "v_proj", "down_proj"]));
    assert_eq!(j["feedforward_modules"], json!(["down_proj"]));
    assert_eq!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)), 0.0);
    let (c, w) = peft_core::tuners::parse_config(&json!({"peft_type": "IA3", "shiny": 1}), None, std::path::Path::new("x")).unwrap();
    assert!(
        w.iter().any(|w| w.code == peft_core::WarningCode::UnknownField
            && w.field.as_deref() == Some("shiny")
            && w.message.contains("IA3Config")),
        "{w:?}"
    );
    assert_eq!(c.to_json()["shiny"], json!(1), "unknown fields are kept and written back");
    for (cfg, key) in [
        (json!({"target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]}), "feedforward_modules"),
        (json!({"init_ia3_weights": "yes"}), "init_ia3_weights"),
        (json!({"feedforward_modules": 3}), "feedforward_modules"),
        (json!({"modules_to_save": ["lm_head"]}), "modules_to_save"),
        (json!({"task_type": "NOPE"}), "task_type"),
    ] {
        let e = config_err("IA3", cfg.clone());
        assert!(e.contains(&format!("`{key}`")), "{cfg}: `{e}` should name {key}");
    }
}
