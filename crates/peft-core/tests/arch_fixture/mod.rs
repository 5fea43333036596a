//! The shared fixtures of every architecture (hf-peft-tiny-llama, hf-peft-tiny-arch/<arch>)
//! in f64, with full fine-tuning or an adapter, for tests that compare two ways of
//! computing the same gradients.
#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use peft_core::io::adapter::load_adapter;
use peft_core::model::{Batch, CausalLm, LoadOptions, ModelAccess, ModelHooks};
use peft_core::tuners::{parse_config, Tuners};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

/// The fixture folder of `arch` (`llama`: hf-peft-tiny-llama, else hf-peft-tiny-arch/<arch>).
pub fn fixture(arch: &str) -> PathBuf {
    if arch == "llama" {
        shared().join("hf-peft-tiny-llama")
    } else {
        shared().join("hf-peft-tiny-arch").join(arch)
    }
}

/// The model and its adapters, lent to the recompute as the Node handle lends its own.
pub struct Lent(pub RwLock<(CausalLm, Tuners)>);

impl ModelAccess for Lent {
    fn with_model(&self, f: &mut dyn FnMut(&CausalLm, Option<&dyn ModelHooks>) -> peft_core::Result<()>) -> peft_core::Result<()> {
        let g = self.0.read().unwrap();
        f(&g.0, Some(&g.1))
    }
}

pub enum Trainable<'a> {
    /// Every base weight (full fine-tuning).
    Full,
    /// A fixture case's adapter files.
    Case(&'a str),
    /// An adapter config injected with a fixed seed.
    Config(Value),
}

pub fn setup(arch: &str, trainable: Trainable) -> Arc<Lent> {
    setup_in(arch, trainable, DType::F64)
}

pub fn setup_in(arch: &str, trainable: Trainable, dtype: DType) -> Arc<Lent> {
    let dir = fixture(arch);
    let mut model = CausalLm::from_pretrained(&dir.join("model"), &LoadOptions { dtype, device: Device::Cpu, quantized: false }).unwrap();
    let mut tuners = Tuners::new();
    match trainable {
        Trainable::Full => model.store.iter_mut().for_each(|p| p.set_requires_grad(true).unwrap()),
        Trainable::Case(case) => {
            load_adapter(&mut tuners, &mut model, &dir.join("cases").join(case), "default", true).unwrap();
        }
        Trainable::Config(cfg) => {
            let (cfg, _) = parse_config(&cfg, None, Path::new("test config")).unwrap();
            tuners.inject(&mut model, "default", cfg, 3).unwrap();
            // Off the zero init (LoRA's B), so that every factor gets a non-zero gradient.
            for p in model.store.iter_mut().filter(|p| p.requires_grad()) {
                let v = p.value();
                let noise = (Tensor::arange(0u32, v.elem_count() as u32, &Device::Cpu).unwrap().to_dtype(v.dtype()).unwrap() * 0.37)
                    .unwrap()
                    .sin()
                    .unwrap();
                p.set(&(&v + (noise.reshape(v.dims()).unwrap() * 0.1).unwrap()).unwrap()).unwrap();
            }
        }
    }
    Arc::new(Lent(RwLock::new((model, tuners))))
}

pub fn batch(arch: &str) -> (Batch, Vec<Vec<i64>>) {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture(arch).join("inputs.json")).unwrap()).unwrap();
    let rows = |k: &str| -> Vec<Vec<i64>> {
        v[k].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()).collect()
    };
    let ids = rows("input_ids").into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect();
    let mask = rows("attention_mask").into_iter().map(|r| r.into_iter().map(|x| x as u8).collect()).collect();
    (Batch { ids, attention_mask: Some(mask), position_ids: None, segment_ids: None }, rows("labels"))
}

/// The largest of max|a - b| / max|b| over the named tensors, and where.
pub fn max_rel_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    let mut worst = (0f64, String::new());
    for ((n, x), (m, y)) in a.iter().zip(b) {
        assert_eq!(n, m);
        let scale = y.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
        assert!(scale > 0.0, "{n}: zero gradient, the comparison would prove nothing");
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap() / scale;
        if d > worst.0 || worst.1.is_empty() {
            worst = (d, n.clone());
        }
    }
    worst
}
