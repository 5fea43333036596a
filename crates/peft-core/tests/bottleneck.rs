//! The serial (Houlsby) and parallel (He et al.) bottleneck adapters, SSF and bias tuning:
//! identity inits, merged biases and config errors (their contract rows: `contract/table.rs`).
use crate::common;
use crate::contract;
use contract::error_of;
use peft_core::tuners::Tuners;
use serde_json::json;

/// Fresh adapters with their default init leave the model's output unchanged.
#[test]
fn default_inits_are_the_identity() {
    let base = common::logits_with(&common::load_model(), None);
    for v in [
        json!({"peft_type": "BOTTLENECK_ADAPTER"}),
        json!({"peft_type": "PARALLEL_ADAPTER"}),
        json!({"peft_type": "SSF"}),
        json!({"peft_type": "BIAS_TUNING"}),
        json!({"peft_type": "LN_TUNING"}),
    ] {
        let mut model = common::load_model();
        let mut tuners = Tuners::new();
        tuners.inject(&mut model, "default", contract::config(&v), 0).unwrap();
        let d = common::max_abs_diff(&common::logits_with(&model, Some(&tuners)), &base);
        assert!(d < 1e-6, "{}: {d}", v["peft_type"]);
    }
}

/// merge_and_unload of bias tuning and SSF leaves biases on the linears; unmerge removes them.
#[test]
fn merging_adds_a_bias_and_unmerging_removes_it() {
    let (mut model, mut tuners) =
        contract::setup(&json!({"peft_type": "BIAS_TUNING", "target_modules": ["q_proj"]}), candle_core::DType::F32);
    tuners.merge(&mut model, None).unwrap();
    assert!(model.store.by_name("model.layers.0.self_attn.q_proj.bias").is_ok());
    tuners.unmerge(&mut model).unwrap();
    assert!(model.store.by_name("model.layers.0.self_attn.q_proj.bias").is_err());
    assert!(model.linears().iter().all(|l| l.bias.is_none()));
    tuners.merge_and_unload(&mut model, None).unwrap();
    assert!(model.linears().iter().filter(|l| l.path.ends_with("q_proj")).all(|l| l.bias.is_some()));
}

#[test]
fn bad_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "BOTTLENECK_ADAPTER", "bottleneck_size": 0}), "bottleneck_size"),
        (json!({"peft_type": "BOTTLENECK_ADAPTER", "non_linearity": "softplus"}), "non_linearity"),
        (json!({"peft_type": "PARALLEL_ADAPTER", "sublayers": ["ffn"]}), "sublayers"),
        (json!({"peft_type": "PARALLEL_ADAPTER", "sublayers": []}), "sublayers"),
        (json!({"peft_type": "PARALLEL_ADAPTER", "layers_to_transform": [7]}), "layers_to_transform"),
        (json!({"peft_type": "PARALLEL_ADAPTER", "scaling": "big"}), "scaling"),
        (json!({"peft_type": "SSF", "target_modules": ["embed_tokens"]}), "target_modules"),
        (json!({"peft_type": "SSF", "init_weights": "yes"}), "init_weights"),
        (json!({"peft_type": "BIAS_TUNING", "target_modules": ["nope"]}), "target_modules"),
        (json!({"peft_type": "BIAS_TUNING", "task_type": "TRANSLATE"}), "task_type"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(&format!("`{key}`")), "{cfg}: {e}");
    }
}
