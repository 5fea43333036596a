//! LoHa against PEFT 0.21 (the `loha` fixture) and the tuner-base contract, with its
//! training-only rank and module dropout.
use crate::common;
use crate::methods_common;
use candle_core::DType;
use common::*;
use methods_common::*;
use peft_core::model::{loss, CausalLm, Ctx, LoadOptions};
use peft_core::tuners::WithTuners;
use peft_core::tuners::{loha, Tuners};
use serde_json::json;

#[test]
fn loha_matches_peft() {
    check_case("loha");
}

#[test]
fn loha_files_round_trip_byte_identical() {
    check_round_trip("loha", &loha::peft_defaults());
}

fn setup(dtype: DType, extra: serde_json::Value) -> (CausalLm, Tuners) {
    let mut model = CausalLm::from_pretrained(&model_dir(), &LoadOptions { dtype, ..Default::default() }).unwrap();
    let mut tuners = Tuners::new();
    let mut cfg =
        json!({"r": 4, "alpha": 8, "target_modules": "all-linear", "rank_pattern": {"down_proj": 2}, "alpha_pattern": {"q_proj": 2}});
    cfg.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    tuners.inject(&mut model, "default", config("LOHA", cfg), 1).unwrap();
    randomize(&model, 5, false);
    (model, tuners)
}

#[test]
fn loha_gradients_merge_and_disable() {
    let (mut model, mut tuners) = setup(DType::F32, json!({}));
    assert_eq!(
        model.store.by_name("base_model.model.model.layers.0.mlp.down_proj.hada_w1_b.default").unwrap().dims(),
        [2, 160],
        "rank_pattern"
    );
    assert_eq!(check_all_gradients(&mut model, &tuners), 14 * 4);
    let (dm, db) = check_merge_and_disable(&mut model, &mut tuners);
    println!("loha: merged vs unmerged logits {dm:e}, base after unmerge {db:e}");
}

#[test]
fn loha_finite_differences_in_f64() {
    let (mut model, tuners) = setup(DType::F64, json!({}));
    loss_with(&mut model, Some(&tuners), true);
    for name in [
        "base_model.model.model.layers.0.self_attn.q_proj.hada_w1_a.default",
        "base_model.model.model.layers.1.mlp.down_proj.hada_w2_b.default",
    ] {
        let err = fd_error(&mut model, &tuners, name, loss64);
        println!("{name}: finite-difference rel err {err:e}");
        assert!(err < 1e-6, "{name}: {err}");
    }
}

fn training_logits(model: &CausalLm, tuners: &Tuners, seed: u64) -> candle_core::Tensor {
    let ctx = Ctx::new(&model.store, true).with_tuners(tuners).training(seed);
    model.forward(&inputs().batch(), &ctx, None, false).unwrap()
}

#[test]
fn rank_and_module_dropout_only_in_training() {
    let (model, tuners) = setup(DType::F32, json!({"rank_dropout": 0.5, "module_dropout": 0.5}));
    let eval = logits_with(&model, Some(&tuners));
    let (t1, t2) = (training_logits(&model, &tuners, 1), training_logits(&model, &tuners, 2));
    assert!(max_abs_diff(&t1, &eval) > 1e-4 && max_abs_diff(&t1, &t2) > 1e-4, "dropout changes training outputs");
    assert_eq!(max_abs_diff(&t1, &training_logits(&model, &tuners, 1)), 0.0, "seeded");
    // Module dropout 1 - tiny: the adapter is skipped everywhere; rank dropout alone keeps the loss finite.
    let (model, tuners) = setup(DType::F32, json!({"module_dropout": 0.999999}));
    assert_eq!(max_abs_diff(&training_logits(&model, &tuners, 3), &logits_with(&model, None)), 0.0);
    let (model, tuners) = setup(DType::F32, json!({"rank_dropout": 0.3}));
    let l = loss::causal_lm_loss(&training_logits(&model, &tuners, 4), &inputs().labels).unwrap();
    assert!(scalar(&l).is_finite());
}

#[test]
fn loha_init_and_config_errors() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config("LOHA", json!({})), 0).unwrap();
    assert_eq!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)), 0.0, "w2_b starts at zero");
    assert_eq!(tuners.modules("default").unwrap().len(), 4);
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config("LOHA", json!({"init_weights": false})), 0).unwrap();
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
        let e = config_err("LOHA", cfg.clone());
        assert!(e.contains(&format!("`{key}`")), "{cfg}: `{e}` should name {key}");
    }
}
