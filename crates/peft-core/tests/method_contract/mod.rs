//! The contract every method at the new hook sites keeps, on the fixture's tiny model:
//! forward shapes, a finite non-zero gradient for every trainable parameter (parameters
//! randomised first, so zero inits do not hide gradients), f64 central finite
//! differences, save/load round trip with identical logits, merge = unmerged output (or a
//! clear error), disabled = base output, and a falling loss over 20 AdamW steps.
#![allow(dead_code)]
use super::common::*;
use candle_core::{DType, Device, Tensor};
use peft_core::io::adapter::{load_adapter, save_adapter};
use peft_core::model::{loss, Batch, CausalLm, Ctx, LoadOptions};
use peft_core::tuners::WithTuners;
use peft_core::tuners::{parse_config, Tuners};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

pub fn config(v: &Value) -> Box<dyn peft_core::tuners::TunerConfig> {
    parse_config(v, None, Path::new("test config")).unwrap().0
}

/// The parse or injection error of `v` on the tiny model.
pub fn error_of(v: &Value) -> String {
    match parse_config(v, None, Path::new("test config")) {
        Err(e) => e.to_string(),
        Ok((c, _)) => {
            let mut model = load_model();
            Tuners::new().inject(&mut model, "default", c, 0).expect_err("injection should fail").to_string()
        }
    }
}

/// Model in `dtype` with the adapter injected and every trainable parameter moved by
/// noise (scale ±0.1 around its init), seeded.
pub fn setup(v: &Value, dtype: DType) -> (CausalLm, Tuners) {
    let mut model = CausalLm::from_pretrained(&model_dir(), &LoadOptions { dtype, ..Default::default() }).unwrap();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(v), 3).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        let noise: Vec<f64> = (0..p.value().elem_count()).map(|_| rng.random_range(-0.1..0.1)).collect();
        let noise = Tensor::from_vec(noise, p.dims(), &Device::Cpu).unwrap().to_dtype(p.dtype()).unwrap();
        p.set(&(p.value() + noise).unwrap()).unwrap();
    }
    (model, tuners)
}

fn loss_value(model: &CausalLm, tuners: &Tuners) -> f64 {
    let inp = inputs();
    let ctx = Ctx::inference(&model.store).with_tuners(tuners);
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    loss::causal_lm_loss(&logits, &inp.labels).unwrap().to_dtype(DType::F64).unwrap().to_vec0::<f64>().unwrap()
}

/// Checks the whole contract; `virtual_tokens`: positions the logits carry before the
/// tokens; `can_merge`: whether merging must work. Returns the worst finite-difference
/// relative error.
pub fn check(v: &Value, virtual_tokens: usize, can_merge: bool) -> f64 {
    let inp = inputs();
    let base_logits = logits_with(&load_model(), None);

    // Shapes and gradients.
    let (mut model, tuners) = setup(v, DType::F32);
    let logits = logits_with(&model, Some(&tuners));
    assert_eq!(logits.dims(), &[2, 16 + virtual_tokens, 384]);
    loss_with(&mut model, Some(&tuners), true);
    let mut n = 0;
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        let g = p.grad.as_ref().unwrap_or_else(|| panic!("{} has no gradient", p.name));
        let g = g.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{}: non-finite gradient", p.name);
        assert!(g.iter().any(|&x| x != 0.0), "{}: zero gradient", p.name);
        n += 1;
    }
    assert!(n > 0, "no trainable parameters");
    assert!(model.store.iter().filter(|(_, p)| !p.requires_grad()).all(|(_, p)| p.grad.is_none()), "frozen weights got gradients");

    // Finite differences in f64 on a few elements of every trainable parameter.
    let fd = finite_differences(v);

    // Save / load: the same logits.
    let dir = std::env::temp_dir().join(format!("peft-node-contract-{}-{}", v["peft_type"].as_str().unwrap_or("x"), std::process::id()));
    save_adapter(&tuners, &model, "default", &dir).unwrap();
    let mut fresh = load_model();
    let mut t2 = Tuners::new();
    let report = load_adapter(&mut t2, &mut fresh, &dir, "default", false).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let reloaded = logits_with(&fresh, Some(&t2));
    let d = max_abs_diff(&reloaded, &logits);
    assert!(d < 1e-5, "save/load changed the logits by {d}");
    std::fs::remove_dir_all(&dir).ok();

    // Disabled = base.
    let mut tuners = tuners;
    tuners.set_enabled(&mut model, false).unwrap();
    let d = max_abs_diff(&logits_with(&model, Some(&tuners)), &base_logits);
    assert!(d == 0.0, "disabled adapter changed the logits by {d}");
    tuners.set_enabled(&mut model, true).unwrap();

    // Merge.
    let mask: Vec<Vec<u8>> = inp.attention_mask.iter().map(|r| [vec![1u8; virtual_tokens], r.clone()].concat()).collect();
    if can_merge {
        tuners.merge(&mut model, None).unwrap();
        let merged = logits_with(&model, Some(&tuners));
        let d = max_masked_diff(&merged, &logits, &mask);
        assert!(d < 1e-4, "merged logits differ by {d}");
        tuners.unmerge(&mut model).unwrap();
        let d = max_masked_diff(&logits_with(&model, Some(&tuners)), &logits, &mask);
        assert!(d < 1e-5, "unmerged logits differ by {d}");
        tuners.merge_and_unload(&mut model, None).unwrap();
        let d = max_masked_diff(&logits_with(&model, None), &logits, &mask);
        assert!(d < 1e-4, "merge_and_unload logits differ by {d}");
    } else {
        let err = tuners.merge(&mut model, None).unwrap_err().to_string();
        assert!(err.contains("cannot be merged"), "{err}");
    }

    loss_falls(v);
    fd
}

fn finite_differences(v: &Value) -> f64 {
    let (mut model, tuners) = setup(v, DType::F64);
    loss_with(&mut model, Some(&tuners), true);
    let grads: HashMap<String, Vec<f64>> = model
        .store
        .iter()
        .filter_map(|(_, p)| p.grad.as_ref().map(|g| (p.name.clone(), g.flatten_all().unwrap().to_vec1::<f64>().unwrap())))
        .collect();
    let mut names: Vec<String> = grads.keys().cloned().collect();
    names.sort();
    let step = (names.len() / 6).max(1);
    let mut worst = 0f64;
    for name in names.iter().step_by(step) {
        let p = model.store.by_name(name).unwrap();
        let base: Vec<f64> = p.value().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let dims = p.dims().to_vec();
        let g = &grads[name];
        let gmax = g.iter().fold(0f64, |m, x| m.max(x.abs()));
        let h = 1e-5;
        for &i in &[0, base.len() / 3, base.len() / 2, base.len() - 1] {
            let at = |delta: f64| {
                let mut x = base.clone();
                x[i] += delta;
                model.store.by_name(name).unwrap().set(&Tensor::from_vec(x, dims.as_slice(), &Device::Cpu).unwrap()).unwrap();
                loss_value(&model, &tuners)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let err = (fd - g[i]).abs() / gmax;
            worst = worst.max(err);
            assert!(err < 1e-5, "{name}[{i}]: finite difference {fd} vs autograd {} (rel {err:e})", g[i]);
        }
        model.store.by_name(name).unwrap().set(&Tensor::from_vec(base, dims.as_slice(), &Device::Cpu).unwrap()).unwrap();
    }
    worst
}

/// 20 AdamW steps (lr `LR`) on a short repeated sequence: the loss must fall by a fifth.
fn loss_falls(v: &Value) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(v), 5).unwrap();
    let row: Vec<u32> = [40u32, 41, 42, 43].repeat(4);
    let batch = Batch::new(vec![row.clone(); 2]);
    let labels: Vec<Vec<i64>> = vec![row.iter().map(|&x| x as i64).collect(); 2];
    let h = peft_core::optim::AdamWHyper { lr: 5e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut state: HashMap<String, (Tensor, Tensor)> = HashMap::new();
    let (mut first, mut last) = (0f32, 0f32);
    for step in 1..=20u64 {
        model.store.zero_grad();
        let ctx = Ctx::new(&model.store, false).with_tuners(&tuners).training(step);
        let logits = model.forward(&batch, &ctx, None, false).unwrap();
        let l = loss::causal_lm_loss(&logits, &labels).unwrap();
        drop(ctx);
        let g = l.backward().unwrap();
        model.store.accumulate_grads(&g).unwrap();
        if step == 1 {
            first = scalar(&l);
        }
        last = scalar(&l);
        for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
            let (m, vv) = state
                .entry(p.name.clone())
                .or_insert_with(|| (peft_core::optim::zeros_state(p).unwrap(), peft_core::optim::zeros_state(p).unwrap()));
            peft_core::optim::adamw_step(p, m, vv, step, &h).unwrap();
        }
    }
    println!("{}: loss {first} -> {last} over 20 AdamW steps", v["peft_type"]);
    assert!(last < first * 0.8, "loss did not fall: {first} -> {last}");
}
