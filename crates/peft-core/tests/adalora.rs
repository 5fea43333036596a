//! AdaLoRA (no PEFT fixture): SVD-form layer numerics against PEFT's equations, files in
//! PEFT's layout, finite differences through the orthogonal regulariser, config errors. The
//! gradients, plain finite differences and merging: the `AdaLoRA` contract row.
//! The allocator is in `adalora_allocator.rs`.
use crate::common;
use crate::contract;
use candle_core::{DType, Tensor};
use common::*;
use contract::*;
use peft_core::io::adapter::{load_adapter, save_adapter, CONFIG_NAME, WEIGHTS_NAME};
use peft_core::io::safetensors::load_file;
use peft_core::model::{CausalLm, Ctx};
use peft_core::tuners::adalora::{self, orth_regularization, AdaLoraLayer};
use peft_core::tuners::WithTuners;
use peft_core::tuners::{AdapterLayer, Tuners};
use serde_json::{json, Value};

/// The `AdaLoRA` row's config on `targets`, parameters moved off their init.
fn setup_on(dtype: DType, targets: Value) -> (CausalLm, Tuners) {
    let mut cfg = row("AdaLoRA").config();
    cfg["target_modules"] = targets;
    setup(&cfg, dtype)
}

const A0: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default";
const E0: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_E.default";
const B0: &str = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default";

#[test]
fn svd_linear_forward_is_b_a_e_scaled_by_alpha_over_ranknum() {
    // SVDLinear.forward: result += (x (A ⊙ E)ᵀ Bᵀ) · lora_alpha / (ranknum + 1e-5), ranknum = init_r.
    let (model, tuners) = setup_on(DType::F64, json!(["q_proj"]));
    let x = Tensor::randn(0f64, 1.0, (3, 64), &candle_core::Device::Cpu).unwrap();
    let [a, e, b] = [A0, E0, B0].map(|n| model.store.by_name(n).unwrap().value().clone());
    let want = x.matmul(&a.broadcast_mul(&e).unwrap().t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap();
    let want = (want * (6.0 / (4.0 + 1e-5))).unwrap();
    let linear = model.linears().into_iter().find(|l| l.path == "model.layers.0.self_attn.q_proj").unwrap();
    let zero = Tensor::zeros((3, 64), DType::F64, &candle_core::Device::Cpu).unwrap();
    let ctx = Ctx::inference(&model.store);
    let layer = AdaLoraLayer {
        adapter: "default".into(),
        path: linear.path.clone(),
        a: model.store.id(A0).unwrap(),
        e: model.store.id(E0).unwrap(),
        b: model.store.id(B0).unwrap(),
        r: 4,
        ranknum: 4.0,
        scaling: 6.0,
        dropout: 0.0,
    };
    let got = layer.forward(linear, &x, zero, &ctx).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-12);
    assert_eq!(tuners.modules("default").unwrap().len(), 2);
}

fn loss_with_reg(model: &CausalLm, tuners: &Tuners) -> f64 {
    let ctx = Ctx::inference(&model.store);
    loss64(model, tuners) + orth_regularization(model, tuners, "default", &ctx).unwrap().to_vec0::<f64>().unwrap()
}

#[test]
fn adalora_finite_differences_in_f64_with_the_orthogonal_regulariser() {
    let (mut model, tuners) = setup_on(DType::F64, json!(["q_proj", "down_proj"]));
    model.store.zero_grad();
    let inp = inputs();
    let ctx = Ctx::new(&model.store, false).with_tuners(&tuners);
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    let loss = peft_core::model::loss::causal_lm_loss(&logits, &inp.labels).unwrap();
    let total = (loss + orth_regularization(&model, &tuners, "default", &ctx).unwrap()).unwrap();
    let g = total.backward().unwrap();
    model.store.accumulate_grads(&g).unwrap();
    for name in [E0, A0, "base_model.model.model.layers.1.mlp.down_proj.lora_B.default"] {
        let err = fd_error(&mut model, &tuners, name, loss_with_reg);
        println!("{name}: finite-difference rel err {err:e}");
        assert!(err < 1e-6, "{name}: {err}");
    }
}

#[test]
fn orthogonal_regulariser_hand_computed() {
    // q_proj in 2 layers, r = 4 (init_r). A = first rows of I, B = first columns of I:
    // both orthonormal, so ‖AAᵀ − I‖ = ‖BᵀB − I‖ = 0. Doubling every A gives ‖4I − I‖_F =
    // 3·√4 = 6 for each of the 2 A's; the mean over 4 matrices is 3, times orth_reg_weight 0.5.
    let (model, tuners) = setup_on(DType::F64, json!(["q_proj"]));
    let eye = |r: usize, c: usize| {
        Tensor::eye(64, DType::F64, &candle_core::Device::Cpu).unwrap().narrow(0, 0, r).unwrap().narrow(1, 0, c).unwrap()
    };
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        match p.dims().as_slice() {
            [4, 64] => p.set(&eye(4, 64)).unwrap(),
            [64, 4] => p.set(&eye(64, 4)).unwrap(),
            _ => {}
        }
    }
    let reg = |m: &CausalLm| orth_regularization(m, &tuners, "default", &Ctx::inference(&m.store)).unwrap().to_vec0::<f64>().unwrap();
    assert!(reg(&model).abs() < 1e-12);
    for (_, p) in model.store.iter().filter(|(_, p)| p.name.contains("lora_A")) {
        p.set(&(eye(4, 64) * 2.0).unwrap()).unwrap();
    }
    assert!((reg(&model) - 1.5).abs() < 1e-12, "{}", reg(&model));
}

#[test]
fn adalora_files_use_peft_layout() {
    let (mut model, tuners) = setup_on(DType::F32, json!(["q_proj", "v_proj"]));
    tuners.config("default").unwrap();
    let out = tmp("adalora-files");
    save_adapter(&tuners, &model, "default", &out).unwrap();
    let keys = load_file(&out.join(WEIGHTS_NAME), None, &candle_core::Device::Cpu).unwrap();
    let mut names: Vec<&String> = keys.keys().collect();
    names.sort();
    assert_eq!(names.len(), 12, "A, E, B per module, no ranknum: {names:?}");
    assert!(keys.contains_key("base_model.model.model.layers.1.self_attn.v_proj.lora_E"));
    assert_eq!(keys["base_model.model.model.layers.1.self_attn.v_proj.lora_E"].dims(), [4, 1]);
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join(CONFIG_NAME)).unwrap()).unwrap();
    let fields: Vec<&String> = cfg.as_object().unwrap().keys().collect();
    assert_eq!(fields, adalora::peft_defaults().keys().collect::<Vec<_>>());
    assert_eq!(
        (cfg["peft_type"].clone(), cfg["rank_pattern"].clone(), cfg["total_step"].clone()),
        (json!("ADALORA"), Value::Null, json!(10))
    );
    let before = logits_with(&model, Some(&tuners));
    let mut t2 = Tuners::new();
    let report = load_adapter(&mut t2, &mut model, &out, "again", false).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    t2.set_active(&mut model, &["again"]).unwrap();
    assert_eq!(max_abs_diff(&logits_with(&model, Some(&t2)), &before), 0.0);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn adalora_init_and_config_errors() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let (_, w) =
        peft_core::tuners::parse_config(&json!({"peft_type": "ADALORA", "total_step": 5, "r": 4}), None, std::path::Path::new("x"))
            .unwrap();
    assert!(w.iter().any(|w| w.message.contains("init_r")), "{w:?}");
    tuners.inject(&mut model, "default", config(&typed("ADALORA", json!({"total_step": 5}))), 0).unwrap();
    assert_eq!(tuners.modules("default").unwrap().len(), 4, "q_proj and v_proj by default");
    assert_eq!(model.store.by_name(A0).unwrap().dims(), [12, 64], "init_r 12 by default");
    assert!(flat(&model.store.by_name(E0).unwrap().value()).iter().all(|&x| x == 0.0), "E starts at zero");
    assert_eq!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)), 0.0);
    for (cfg, key) in [
        (json!({}), "total_step"),
        (json!({"total_step": 0}), "total_step"),
        (json!({"total_step": 10, "init_r": 0}), "init_r"),
        (json!({"total_step": 10, "tinit": 6, "tfinal": 4}), "tinit"),
        (json!({"total_step": 10, "beta1": 1.0}), "beta1"),
        (json!({"total_step": 10, "orth_reg_weight": -1}), "orth_reg_weight"),
        (json!({"total_step": 10, "use_dora": true}), "use_dora"),
        (json!({"total_step": 10, "deltaT": 0}), "deltaT"),
        (json!({"total_step": 10, "init_lora_weights": "gaussian"}), "init_lora_weights"),
        (json!({"total_step": 10, "rank_pattern": {"model.layers.0.self_attn.q_proj.lora_E": [1, 0]}}), "rank_pattern"),
        (json!({"total_step": 10, "lora_dropout": 2}), "lora_dropout"),
    ] {
        let e = error_of(&typed("ADALORA", cfg.clone()));
        assert!(e.contains(&format!("`{key}`")), "{cfg}: `{e}` should name {key}");
    }
}
