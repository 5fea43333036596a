//! LoKr: Kronecker factors from PEFT's `factorization`, full or low-rank factors, inits and
//! config errors. The fixture, files, gradients, finite differences and merging: the `LoKr`
//! contract row.
use crate::common;
use crate::contract;
use candle_core::{Device, Tensor};
use common::*;
use contract::*;
use peft_core::model::CausalLm;
use peft_core::tuners::lokr::kron;
use peft_core::tuners::Tuners;
use serde_json::json;

#[test]
fn kron_is_torch_kron() {
    let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[[0f32, 5., 1.]], &Device::Cpu).unwrap();
    let k = kron(&a, &b).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(k, [[0., 5., 1., 0., 10., 2.], [0., 15., 3., 0., 20., 4.]]);
}

fn shapes(model: &CausalLm, path: &str, adapter: &str) -> Vec<(String, Vec<usize>)> {
    let prefix = format!("base_model.model.{path}.lokr_");
    let mut v: Vec<(String, Vec<usize>)> = (model.store.iter())
        .filter(|(_, p)| p.name.starts_with(&prefix) && p.name.ends_with(&format!(".{adapter}")))
        .map(|(_, p)| (p.name[prefix.len() - 5..p.name.len() - adapter.len() - 1].to_string(), p.dims().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn factors_follow_peft_update_layer() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    // down_proj: out 64 = 8·8, in 160 = 10·16. r = 2 < 16/2: w2 low-rank; decompose_both with
    // r < max(8, 10)/2: w1 low-rank too.
    tuners
        .inject(
            &mut model,
            "both",
            config(&json!({"peft_type": "LOKR", "r": 2, "target_modules": ["down_proj"], "decompose_both": true})),
            0,
        )
        .unwrap();
    let s = shapes(&model, "model.layers.0.mlp.down_proj", "both");
    assert_eq!(
        s,
        [
            ("lokr_w1_a".into(), vec![8, 2]),
            ("lokr_w1_b".into(), vec![2, 10]),
            ("lokr_w2_a".into(), vec![8, 2]),
            ("lokr_w2_b".into(), vec![2, 16])
        ]
    );
    // decompose_factor 4: out 64 = 4·16, in 160 = 4·40; r 32 >= 40/2: w2 full.
    tuners
        .inject(
            &mut model,
            "factor",
            config(&json!({"peft_type": "LOKR", "r": 32, "target_modules": ["down_proj"], "decompose_factor": 4})),
            0,
        )
        .unwrap();
    let s = shapes(&model, "model.layers.0.mlp.down_proj", "factor");
    assert_eq!(s, [("lokr_w1".into(), vec![4, 4]), ("lokr_w2".into(), vec![16, 40])]);
}

#[test]
fn lokr_inits_and_config_errors() {
    let no_op = |cfg: serde_json::Value| {
        let mut model = load_model();
        let mut tuners = Tuners::new();
        tuners.inject(&mut model, "default", config(&typed("LOKR", cfg)), 0).unwrap();
        max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)) == 0.0
    };
    assert!(no_op(json!({})), "w1 = 0 by default");
    assert!(no_op(json!({"init_weights": "lycoris"})), "w2 = 0 the LyCORIS way");
    assert!(!no_op(json!({"init_weights": false})));
    for (cfg, key) in [
        (json!({"r": 0}), "r"),
        (json!({"decompose_factor": 0}), "decompose_factor"),
        (json!({"decompose_factor": 2.5}), "decompose_factor"),
        (json!({"decompose_both": 1}), "decompose_both"),
        (json!({"init_weights": "kaiming"}), "init_weights"),
        (json!({"rank_dropout_scale": null}), "rank_dropout_scale"),
        (json!({"peft_type": "LOKR", "target_modules": ["embed_tokens"]}), "target_modules"),
    ] {
        let e = error_of(&typed("LOKR", cfg.clone()));
        assert!(e.contains(&format!("`{key}`")), "{cfg}: `{e}` should name {key}");
    }
}
