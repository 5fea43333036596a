//! (IA)³: the feed-forward vectors' shapes, PEFT's default targets, init and config errors.
//! The fixture, files, gradients, finite differences and merging: the `IA3` contract row.
use crate::common;
use crate::contract;
use common::*;
use contract::*;
use peft_core::tuners::Tuners;
use serde_json::json;

#[test]
fn feed_forward_vectors_scale_the_input() {
    let (model, _) = inject(&row("IA3").config(), 1);
    let ff = model.store.by_name("base_model.model.model.layers.0.mlp.up_proj.ia3_l.default").unwrap();
    assert_eq!(ff.dims(), [1, 64], "feed-forward vectors scale the input");
    assert_eq!(model.store.by_name("base_model.model.model.layers.0.mlp.gate_proj.ia3_l.default").unwrap().dims(), [160, 1]);
}

#[test]
fn ia3_defaults_init_and_config_errors() {
    // No targets: PEFT's LLaMA table (k, v, down; down is feed-forward), written back; ones: a no-op.
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let report = tuners.inject(&mut model, "default", config(&json!({"peft_type": "IA3"})), 0).unwrap();
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
        let e = error_of(&typed("IA3", cfg.clone()));
        assert!(e.contains(&format!("`{key}`")), "{cfg}: `{e}` should name {key}");
    }
}

/// `all-linear` is written back as full module paths while `feedforward_modules` keeps its short
/// names; PEFT's string subset check refuses that file, ours accepts a name that ends a target.
#[test]
fn all_linear_with_short_feedforward_names_saves_and_loads_back() {
    use peft_core::io::adapter::{load_adapter, save_adapter};
    let cfg = typed("IA3", json!({"target_modules": "all-linear", "feedforward_modules": ["down_proj", "up_proj"]}));
    let (model, tuners) = inject(&cfg, 1);
    let saved = tuners.config("default").unwrap().to_json();
    assert!(saved["target_modules"].as_array().unwrap().iter().any(|t| t.as_str().unwrap().ends_with(".mlp.down_proj")), "{saved}");
    let dir = tmp("ia3-all-linear");
    save_adapter(&tuners, &model, "default", &dir).unwrap();
    let mut reloaded = load_model();
    let mut back = Tuners::new();
    load_adapter(&mut back, &mut reloaded, &dir, "default", false).unwrap();
    assert_eq!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&reloaded, Some(&back))), 0.0);
    let _ = std::fs::remove_dir_all(dir);
}
