//! LoHa: rank_pattern, the training-only rank and module dropout, inits and config errors. The
//! fixture, files, gradients, finite differences and merging: the `LoHa` contract row.
use crate::common;
use crate::contract;
use candle_core::DType;
use common::*;
use contract::*;
use peft_core::model::{loss, CausalLm, Ctx};
use peft_core::tuners::Tuners;
use peft_core::tuners::WithTuners;
use serde_json::json;

/// The `LoHa` row's config with `extra` fields, parameters moved off their init.
fn setup_with(extra: serde_json::Value) -> (CausalLm, Tuners) {
    let mut cfg = row("LoHa").config();
    cfg.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    setup(&cfg, DType::F32)
}

#[test]
fn rank_pattern_sets_the_factors_rank() {
    let (model, _) = inject(&row("LoHa").config(), 1);
    assert_eq!(
        model.store.by_name("base_model.model.model.layers.0.mlp.down_proj.hada_w1_b.default").unwrap().dims(),
        [2, 160],
        "rank_pattern"
    );
}

fn training_logits(model: &CausalLm, tuners: &Tuners, seed: u64) -> candle_core::Tensor {
    let ctx = Ctx::new(&model.store, true).with_tuners(tuners).training(seed);
    model.forward(&inputs().batch(), &ctx, None, false).unwrap()
}

#[test]
fn rank_and_module_dropout_only_in_training() {
    let (model, tuners) = setup_with(json!({"rank_dropout": 0.5, "module_dropout": 0.5}));
    let eval = logits_with(&model, Some(&tuners));
    let (t1, t2) = (training_logits(&model, &tuners, 1), training_logits(&model, &tuners, 2));
    assert!(max_abs_diff(&t1, &eval) > 1e-4 && max_abs_diff(&t1, &t2) > 1e-4, "dropout changes training outputs");
    assert_eq!(max_abs_diff(&t1, &training_logits(&model, &tuners, 1)), 0.0, "seeded");
    // Module dropout 1 - tiny: the adapter is skipped everywhere; rank dropout alone keeps the loss finite.
    let (model, tuners) = setup_with(json!({"module_dropout": 0.999999}));
    assert_eq!(max_abs_diff(&training_logits(&model, &tuners, 3), &logits_with(&model, None)), 0.0);
    let (model, tuners) = setup_with(json!({"rank_dropout": 0.3}));
    let l = loss::causal_lm_loss(&training_logits(&model, &tuners, 4), &inputs().labels).unwrap();
    assert!(scalar(&l).is_finite());
}

#[test]
fn loha_init_and_config_errors() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(&json!({"peft_type": "LOHA"})), 0).unwrap();
    assert_eq!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)), 0.0, "w2_b starts at zero");
    assert_eq!(tuners.modules("default").unwrap().len(), 4);
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(&json!({"peft_type": "LOHA", "init_weights": false})), 0).unwrap();
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)) > 1e-4);
    for (cfg, key) in [
        (json!({"r": 0}), "r"),
        (json!({"alpha": "big"}), "alpha"),
        (json!({"rank_dropout": -0.1}), "rank_dropout"),
        (json!({"module_dropout": 1.0}), "module_dropout"),
        (json!({"rank_pattern": {"q_proj": 0}}), "rank_pattern"),
        (json!({"alpha_pattern": []}), "alpha_pattern"),
        (json!({"init_weights": "lycoris"}), "init_weights"),
        (json!({"target_modules": ".*q_proj", "layers_to_transform": [0]}), "layers_to_transform"),
    ] {
        let e = error_of(&typed("LOHA", cfg.clone()));
        assert!(e.contains(&format!("`{key}`")), "{cfg}: `{e}` should name {key}");
    }
}
