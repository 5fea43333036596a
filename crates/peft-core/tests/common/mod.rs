//! Access to the shared HF fixtures (read in place, never copied).
#![allow(dead_code)]
use candle_core::{Device, Tensor};
use peft_core::model::{Batch, CausalLm, LoadOptions};
use peft_core::tuners::Tuners;
use peft_core::tuners::WithTuners;
use std::collections::HashMap;
use std::path::PathBuf;

/// `$PEFT_FIXTURES_DIR` when set (test binaries run on another machine, as
/// scripts/gpu-check.sh does), else the shared folder next to the checkout.
pub fn fixture_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PEFT_FIXTURES_DIR") {
        return dir.into();
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/hf-peft-tiny-llama")
}

pub fn model_dir() -> PathBuf {
    fixture_dir().join("model")
}

pub struct Inputs {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u8>>,
    pub labels: Vec<Vec<i64>>,
    pub prompt_len: usize,
    pub new_tokens: usize,
}

pub fn inputs() -> Inputs {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("inputs.json")).unwrap()).unwrap();
    let rows = |k: &str| -> Vec<Vec<i64>> {
        v[k].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()).collect()
    };
    Inputs {
        input_ids: rows("input_ids").into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect(),
        attention_mask: rows("attention_mask").into_iter().map(|r| r.into_iter().map(|x| x as u8).collect()).collect(),
        labels: rows("labels"),
        prompt_len: v["prompt_len"].as_u64().unwrap() as usize,
        new_tokens: v["new_tokens"].as_u64().unwrap() as usize,
    }
}

impl Inputs {
    pub fn batch(&self) -> Batch {
        Batch { ids: self.input_ids.clone(), attention_mask: Some(self.attention_mask.clone()), position_ids: None, segment_ids: None }
    }
}

pub fn expected(case: &str) -> HashMap<String, Tensor> {
    let p = if case == "base" {
        fixture_dir().join("base/expected.safetensors")
    } else {
        fixture_dir().join("cases").join(case).join("expected.safetensors")
    };
    peft_core::io::safetensors::load_file(&p, None, &Device::Cpu).unwrap()
}

/// A fixture case's folder (`cases/<case>`: PEFT's files and expected values).
pub fn case_dir(case: &str) -> PathBuf {
    fixture_dir().join("cases").join(case)
}

/// A temporary folder path for this process and `name` (removed first if left over).
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("peft-core-tests-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

pub fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

pub fn load_model() -> CausalLm {
    CausalLm::from_pretrained(&model_dir(), &LoadOptions::default()).unwrap()
}

/// Largest |a - b| over positions where `mask` [b, t] is 1 (a, b: [b, t, v]).
pub fn max_masked_diff(a: &Tensor, b: &Tensor, mask: &[Vec<u8>]) -> f32 {
    let a = a.to_dtype(candle_core::DType::F32).unwrap().to_vec3::<f32>().unwrap();
    let b = b.to_dtype(candle_core::DType::F32).unwrap().to_vec3::<f32>().unwrap();
    let mut m = 0f32;
    for (r, row) in mask.iter().enumerate() {
        for (c, &on) in row.iter().enumerate() {
            if on == 1 {
                for (x, y) in a[r][c].iter().zip(&b[r][c]) {
                    m = m.max((x - y).abs());
                }
            }
        }
    }
    m
}

/// max |a - b| / max |b|
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

pub fn scalar(t: &Tensor) -> f32 {
    t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
}

pub fn adamw_from_case(case: &str) -> peft_core::optim::AdamWHyper {
    let p = fixture_dir().join("cases").join(case).join("case.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let a = &v["adamw"];
    peft_core::optim::AdamWHyper {
        lr: a["lr"].as_f64().unwrap(),
        beta1: a["betas"][0].as_f64().unwrap(),
        beta2: a["betas"][1].as_f64().unwrap(),
        eps: a["eps"].as_f64().unwrap(),
        weight_decay: a["weight_decay"].as_f64().unwrap(),
    }
}

/// Loss on the fixture batch; with `backward`, gradients are accumulated into the store.
pub fn loss_on_fixture(model: &mut CausalLm, backward: bool) -> f32 {
    loss_with(model, None, backward)
}

/// `loss_on_fixture` with adapters attached.
pub fn loss_with(model: &mut CausalLm, tuners: Option<&Tuners>, backward: bool) -> f32 {
    let inp = inputs();
    let mut ctx = peft_core::model::Ctx::new(&model.store, !backward);
    if let Some(t) = tuners {
        ctx = ctx.with_tuners(t);
    }
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    let l = peft_core::model::loss::causal_lm_loss(&logits, &inp.labels).unwrap();
    drop(ctx);
    if backward {
        let g = l.backward().unwrap();
        model.store.accumulate_grads(&g).unwrap();
    }
    scalar(&l)
}

/// Logits [2, 16, vocab] on the fixture batch, inference mode.
pub fn logits_with(model: &CausalLm, tuners: Option<&Tuners>) -> Tensor {
    let mut ctx = peft_core::model::Ctx::inference(&model.store);
    if let Some(t) = tuners {
        ctx = ctx.with_tuners(t);
    }
    model.forward(&inputs().batch(), &ctx, None, false).unwrap()
}

/// Two AdamW steps on the fixture batch, as make_fixtures.py does; returns the loss after step 1.
pub fn two_adamw_steps(model: &mut CausalLm, h: &peft_core::optim::AdamWHyper) -> f32 {
    two_adamw_steps_with(model, None, h)
}

/// `two_adamw_steps` with adapters attached (only trainable parameters step).
pub fn two_adamw_steps_with(model: &mut CausalLm, tuners: Option<&Tuners>, h: &peft_core::optim::AdamWHyper) -> f32 {
    let mut state: HashMap<String, (Tensor, Tensor)> = HashMap::new();
    let mut loss1 = 0.0;
    for step in 1..=2u64 {
        model.store.zero_grad();
        let l = loss_with(model, tuners, true);
        if step == 2 {
            loss1 = l;
        }
        for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
            let (m, v) = state
                .entry(p.name.clone())
                .or_insert_with(|| (peft_core::optim::zeros_state(p).unwrap(), peft_core::optim::zeros_state(p).unwrap()));
            peft_core::optim::adamw_step(p, m, v, step, h).unwrap();
        }
    }
    loss1
}

pub fn greedy(model: &CausalLm, prompt: &[u32], n: usize) -> Vec<u32> {
    greedy_with(model, None, prompt, n)
}

pub fn greedy_with(model: &CausalLm, tuners: Option<&Tuners>, prompt: &[u32], n: usize) -> Vec<u32> {
    use peft_core::model::generate::{generate, Flow, GenerateOptions};
    let mut ctx = peft_core::model::Ctx::inference(&model.store);
    if let Some(t) = tuners {
        ctx = ctx.with_tuners(t);
    }
    let opts = GenerateOptions { max_new_tokens: n, sampling: Default::default(), seed: 0, stop_token_ids: vec![] };
    generate(model, &ctx, &[prompt.to_vec()], &opts, &mut |_| Flow::Continue).unwrap().remove(0)
}

/// The name a fixture gives a parameter: PEFT's `named_parameters()` name without the
/// adapter name (`make_fixtures.py` `plain_name`).
pub fn fixture_name(param: &str) -> String {
    param.replace(".default", "")
}

/// Largest |a - b|.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(candle_core::DType::F64).unwrap() - b.to_dtype(candle_core::DType::F64).unwrap()).unwrap();
    d.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap() as f32
}

pub fn ids_of(t: &Tensor) -> Vec<u32> {
    t.to_dtype(candle_core::DType::I64).unwrap().flatten_all().unwrap().to_vec1::<i64>().unwrap().into_iter().map(|x| x as u32).collect()
}

/// A LoRA config from PEFT's JSON fields (peft_type filled in).
pub fn lora(mut cfg: serde_json::Value) -> Box<dyn peft_core::tuners::TunerConfig> {
    cfg["peft_type"] = "LORA".into();
    peft_core::tuners::parse_config(&cfg, None, std::path::Path::new("test config")).unwrap().0
}

/// The error of parsing and injecting `cfg` into a fresh tiny model.
pub fn inject_err(cfg: serde_json::Value) -> String {
    let mut cfg = cfg;
    cfg["peft_type"] = "LORA".into();
    let mut model = load_model();
    let mut tuners = Tuners::new();
    match peft_core::tuners::parse_config(&cfg, None, std::path::Path::new("test config")) {
        Err(e) => e.to_string(),
        Ok((c, _)) => tuners.inject(&mut model, "default", c, 0).expect_err("injection should fail").to_string(),
    }
}

/// Every storage type a quantized weight is kept in (`QWeight`), for the kernel and model tests.
pub const QUANT_TYPES: [candle_core::quantized::GgmlDType; 12] = {
    use candle_core::quantized::GgmlDType::*;
    [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K, F16, BF16]
};

/// Snapshot of every parameter's value by name.
pub fn snapshot(model: &CausalLm) -> HashMap<String, Tensor> {
    model.store.iter().map(|(_, p)| (p.name.clone(), p.value().copy().unwrap())).collect()
}
