//! Helpers of the survey-method tests (`survey_methods.rs`, `survey_mixtures.rs`,
//! `survey_adapters.rs`): injecting a config, reading and setting parameters by name.
#![allow(dead_code)]
use super::common::load_model;
use super::method_contract::config;
use candle_core::Tensor;
use peft_core::model::CausalLm;
use peft_core::tuners::Tuners;
use serde_json::Value;

pub const Q0: &str = "base_model.model.model.layers.0.self_attn.q_proj";
/// q_proj of both decoder layers of the tiny model.
pub const QS: [&str; 2] = [Q0, "base_model.model.model.layers.1.self_attn.q_proj"];

/// Copies `attrs` of every q_proj from one model to the other, through `f`.
pub fn copy_q(from: &CausalLm, to: &CausalLm, attrs: &[&str], f: impl Fn(&str, Tensor) -> Tensor) {
    for q in QS {
        for attr in attrs {
            let name = format!("{q}.{attr}.default.weight");
            set(to, &name, &f(attr, value(from, &name)));
        }
    }
}

pub fn set(model: &CausalLm, name: &str, t: &Tensor) {
    model.store.by_name(name).unwrap_or_else(|_| panic!("no parameter {name}")).set(t).unwrap();
}

pub fn value(model: &CausalLm, name: &str) -> Tensor {
    model.store.by_name(name).unwrap_or_else(|_| panic!("no parameter {name}")).value().clone()
}

pub fn inject(v: &Value, seed: u64) -> (CausalLm, Tuners) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(v), seed).unwrap();
    (model, tuners)
}

/// The logits of one full pass over `row`, and their largest difference from decoding the same
/// row from a cache (a 3-token prefill, then one token at a time).
pub fn cached_decoding_diff(model: &CausalLm, tuners: &Tuners, row: &[u32]) -> (Tensor, f32) {
    use peft_core::model::{Batch, Ctx, KvCache};
    use peft_core::tuners::WithTuners;
    let ctx = Ctx::inference(&model.store).with_tuners(tuners);
    let full = model.forward(&Batch::new(vec![row.to_vec()]), &ctx, None, false).unwrap();
    let mut cache = KvCache::new(model.layers.len());
    let mut steps = vec![model.forward(&Batch::new(vec![row[..3].to_vec()]), &ctx, Some(&mut cache), false).unwrap()];
    for &tok in &row[3..] {
        steps.push(model.forward(&Batch::new(vec![vec![tok]]), &ctx, Some(&mut cache), false).unwrap());
    }
    let diff = super::common::max_abs_diff(&Tensor::cat(&steps, 1).unwrap(), &full);
    (full, diff)
}
