//! The helpers the contract's checks and the method-specific tests share: configs from PEFT's
//! JSON, an injected model with its trainable parameters moved off their init, parameters by
//! name, the f64 loss and central finite differences.
use crate::common::*;
use candle_core::{DType, Device, Tensor};
use peft_core::model::{loss, CausalLm, Ctx, LoadOptions};
use peft_core::tuners::WithTuners;
use peft_core::tuners::{parse_config, TunerConfig, Tuners};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::path::Path;

/// The config of `v` (`adapter_config.json` fields, `peft_type` included).
pub fn config(v: &Value) -> Box<dyn TunerConfig> {
    parse_config(v, None, Path::new("test config")).unwrap().0
}

/// `v` with its `peft_type` set, for configs written without it.
pub fn typed(peft_type: &str, mut v: Value) -> Value {
    v["peft_type"] = peft_type.into();
    v
}

/// The parse error of `v`, or the error of injecting it into the tiny model.
pub fn error_of(v: &Value) -> String {
    match parse_config(v, None, Path::new("test config")) {
        Err(e) => e.to_string(),
        Ok((c, _)) => Tuners::new().inject(&mut load_model(), "default", c, 0).expect_err("injection should fail").to_string(),
    }
}

pub fn load_in(dtype: DType) -> CausalLm {
    CausalLm::from_pretrained(&model_dir(), &LoadOptions { dtype, ..Default::default() }).unwrap()
}

/// The tiny model with adapter `default` of `v` injected (seeded), parameters as initialised.
pub fn inject(v: &Value, seed: u64) -> (CausalLm, Tuners) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(v), seed).unwrap();
    (model, tuners)
}

/// The model in `dtype` with adapter `default` of `v` and every trainable parameter moved
/// by noise (zero inits would hide the gradients of the other factors).
pub fn setup(v: &Value, dtype: DType) -> (CausalLm, Tuners) {
    let mut model = load_in(dtype);
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(v), 3).unwrap();
    randomize(&model, 11);
    (model, tuners)
}

/// Adds uniform noise in ±0.1 (seeded) to every trainable parameter of every adapter.
pub fn randomize(model: &CausalLm, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        let noise: Vec<f64> = (0..p.value().elem_count()).map(|_| rng.random_range(-0.1..0.1)).collect();
        let noise = Tensor::from_vec(noise, p.dims(), &Device::Cpu).unwrap().to_dtype(p.dtype()).unwrap();
        p.set(&(p.value() + noise).unwrap()).unwrap();
    }
}

pub const Q0: &str = "base_model.model.model.layers.0.self_attn.q_proj";
/// q_proj of both decoder layers of the tiny model.
pub const QS: [&str; 2] = [Q0, "base_model.model.model.layers.1.self_attn.q_proj"];

pub fn set(model: &CausalLm, name: &str, t: &Tensor) {
    model.store.by_name(name).unwrap_or_else(|_| panic!("no parameter {name}")).set(t).unwrap();
}

pub fn value(model: &CausalLm, name: &str) -> Tensor {
    model.store.by_name(name).unwrap_or_else(|_| panic!("no parameter {name}")).value().clone()
}

/// Copies `attrs` of every q_proj from one model to the other, through `f`.
pub fn copy_q(from: &CausalLm, to: &CausalLm, attrs: &[&str], f: impl Fn(&str, Tensor) -> Tensor) {
    for q in QS {
        for attr in attrs {
            let name = format!("{q}.{attr}.default.weight");
            set(to, &name, &f(attr, value(from, &name)));
        }
    }
}

/// The evaluation loss on the fixture batch, in f64 (the model must be f64 for finite differences).
pub fn loss64(model: &CausalLm, tuners: &Tuners) -> f64 {
    let inp = inputs();
    let ctx = Ctx::inference(&model.store).with_tuners(tuners);
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    loss::causal_lm_loss(&logits, &inp.labels).unwrap().to_dtype(DType::F64).unwrap().to_vec0::<f64>().unwrap()
}

/// Central differences in f64 against autograd for four elements of parameter `name` (the
/// model must be f64 and the gradients accumulated); returns max |fd − g| / max |g|.
pub fn fd_error(model: &mut CausalLm, tuners: &Tuners, name: &str, loss: impl Fn(&CausalLm, &Tuners) -> f64) -> f64 {
    let p = model.store.by_name(name).unwrap();
    let g: Vec<f64> = p.grad.as_ref().expect("accumulate gradients first").flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base: Vec<f64> = p.value().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let dims = p.dims().to_vec();
    let gmax = g.iter().fold(0f64, |m, x| m.max(x.abs()));
    let put = |model: &CausalLm, v: Vec<f64>| set(model, name, &Tensor::from_vec(v, dims.as_slice(), &Device::Cpu).unwrap());
    let h = 1e-5;
    let mut worst = 0f64;
    for i in [0, base.len() / 3, base.len() / 2, base.len() - 1] {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            put(model, v);
            loss(model, tuners)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        worst = worst.max((fd - g[i]).abs() / gmax);
    }
    put(model, base);
    worst
}

/// The logits of one full pass over `row`, and their largest difference from decoding the same
/// row from a cache (a 3-token prefill, then one token at a time).
pub fn cached_decoding_diff(model: &CausalLm, tuners: &Tuners, row: &[u32]) -> (Tensor, f32) {
    use peft_core::model::{Batch, KvCache};
    let ctx = Ctx::inference(&model.store).with_tuners(tuners);
    let full = model.forward(&Batch::new(vec![row.to_vec()]), &ctx, None, false).unwrap();
    let mut cache = KvCache::new(model.layers.len());
    let mut steps = vec![model.forward(&Batch::new(vec![row[..3].to_vec()]), &ctx, Some(&mut cache), false).unwrap()];
    for &tok in &row[3..] {
        steps.push(model.forward(&Batch::new(vec![vec![tok]]), &ctx, Some(&mut cache), false).unwrap());
    }
    let diff = max_abs_diff(&Tensor::cat(&steps, 1).unwrap(), &full);
    (full, diff)
}
