//! Checks shared by the tests of the methods after LoRA (IA³, VeRA, LoHa, LoKr, AdaLoRA):
//! a fixture case end to end, PEFT file round trips, gradient presence and f64 finite
//! differences. Each test file declares `mod common; mod methods_common;`.
#![allow(dead_code)]
use super::common::*;
use candle_core::{DType, Tensor};
use peft_core::io::adapter::{load_adapter, save_adapter, CONFIG_NAME, WEIGHTS_NAME};
use peft_core::model::{loss, CausalLm, Ctx};
use peft_core::tuners::WithTuners;
use peft_core::tuners::{parse_config, TunerConfig, Tuners};
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn case_dir(case: &str) -> PathBuf {
    fixture_dir().join("cases").join(case)
}

pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("peft-core-methods-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A config of `peft_type` from PEFT's JSON fields.
pub fn config(peft_type: &str, mut cfg: Value) -> Box<dyn TunerConfig> {
    cfg["peft_type"] = peft_type.into();
    parse_config(&cfg, None, Path::new("test config")).unwrap().0
}

/// The error (parsing, or injecting into the tiny model) of `cfg`.
pub fn config_err(peft_type: &str, mut cfg: Value) -> String {
    cfg["peft_type"] = peft_type.into();
    match parse_config(&cfg, None, Path::new("test config")) {
        Err(e) => e.to_string(),
        Ok((c, _)) => Tuners::new().inject(&mut load_model(), "default", c, 0).expect_err("injection should fail").to_string(),
    }
}

pub fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest errors of one fixture case, for the report.
#[derive(Debug, Default)]
pub struct CaseErrors {
    pub logits: f32,
    pub loss: f32,
    pub grad_rel: f32,
    pub loss1: f32,
    pub step2_strict: f32,
    pub step2_loose: f32,
    pub merged: Option<f32>,
}

/// A case end to end: the PEFT files load with no warning; logits, loss, every gradient,
/// the loss after one AdamW step, the parameters after two, greedy ids, and (when the case
/// has a `merge` list) merge_and_unload, every key of `expected.safetensors` checked.
pub fn check_case(case: &str) -> CaseErrors {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let report = load_adapter(&mut tuners, &mut model, &case_dir(case), "default", true).unwrap();
    assert!(report.warnings.is_empty(), "{case}: {:?}", report.warnings);
    let exp = expected(case);
    let inp = inputs();
    let mut used: Vec<String> = vec!["logits".into(), "loss".into(), "loss_after_step1".into(), "greedy_after_step2".into()];
    let mut errs = CaseErrors::default();

    let logits = logits_with(&model, Some(&tuners));
    errs.logits = max_masked_diff(&logits, &exp["logits"], &inp.attention_mask);
    let l = scalar(&loss::causal_lm_loss(&logits, &inp.labels).unwrap());
    let e = scalar(&exp["loss"]);
    errs.loss = (l - e).abs();
    assert!(errs.logits < 1e-4, "{case}: logits differ by {}", errs.logits);
    assert!(errs.loss < 1e-4 * e.abs().max(1.0), "{case}: loss {l} vs {e}");

    model.store.zero_grad();
    loss_with(&mut model, Some(&tuners), true);
    let mut worst = (0f32, String::new());
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        let key = format!("grad.{}", fixture_name(&p.name));
        let want = exp.get(&key).unwrap_or_else(|| panic!("{case}: fixture lacks {key}"));
        let err = rel_err(p.grad.as_ref().unwrap_or_else(|| panic!("no gradient for {}", p.name)), want);
        if err > worst.0 {
            worst = (err, p.name.clone());
        }
        used.push(key);
    }
    errs.grad_rel = worst.0;
    assert_eq!(used.len() - 4, exp.keys().filter(|k| k.starts_with("grad.")).count(), "{case}: trainable parameters vs fixture gradients");
    assert!(worst.0 < 1e-3, "{case}: gradient of {} off by {}", worst.1, worst.0);

    let h = adamw_from_case(case);
    let loss1 = two_adamw_steps_with(&mut model, Some(&tuners), &h);
    let e1 = scalar(&exp["loss_after_step1"]);
    errs.loss1 = (loss1 - e1).abs();
    assert!(errs.loss1 < 1e-4 * e1.abs().max(1.0), "{case}: loss after step 1 {loss1} vs {e1}");
    // As in the LoRA tests: AdamW divides each element by its own gradient's magnitude, so
    // elements whose step-0 gradient is below 1% of the tensor's largest move by ~lr in a
    // direction set by rounding; those are held to 1e-3, all others to the README's 1e-4.
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        let name = fixture_name(&p.name);
        let (got, want, g0) = (flat(&p.value()), flat(&exp[&format!("after_step2.{name}")]), flat(&exp[&format!("grad.{name}")]));
        let gmax = g0.iter().fold(0f32, |m, g| m.max(g.abs()));
        for i in 0..got.len() {
            let d = (got[i] - want[i]).abs();
            if g0[i].abs() < 1e-2 * gmax {
                errs.step2_loose = errs.step2_loose.max(d)
            } else {
                errs.step2_strict = errs.step2_strict.max(d)
            }
        }
        used.push(format!("after_step2.{name}"));
    }
    assert!(errs.step2_strict < 1e-4, "{case}: after_step2 off by {}", errs.step2_strict);
    assert!(errs.step2_loose < 1e-3, "{case}: after_step2 (small-gradient elements) off by {}", errs.step2_loose);
    let got = greedy_with(&model, Some(&tuners), &inp.input_ids[0][..inp.prompt_len], inp.new_tokens);
    assert_eq!(got, ids_of(&exp["greedy_after_step2"]), "{case}: greedy after step 2");

    let merged_keys: Vec<&String> = exp.keys().filter(|k| k.starts_with("merged_after_step2.")).collect();
    if !merged_keys.is_empty() {
        // From PEFT's step-2 parameters, so that the merge is checked apart from AdamW.
        for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
            p.set(&exp[&format!("after_step2.{}", fixture_name(&p.name))]).unwrap();
        }
        let before = logits_with(&model, Some(&tuners));
        tuners.merge_and_unload(&mut model, None).unwrap();
        assert!(tuners.names().is_empty());
        assert!(model.store.iter().all(|(_, p)| !p.name.starts_with("base_model.")), "{case}: adapter tensors left after unload");
        let after = logits_with(&model, None);
        let dm = max_masked_diff(&after, &before, &inp.attention_mask);
        let mut worst = 0f32;
        for k in &merged_keys {
            worst = worst.max(max_abs_diff(&model.store.by_name(&k["merged_after_step2.".len()..]).unwrap().value(), &exp[*k]));
            used.push(k.to_string());
        }
        errs.merged = Some(worst);
        assert!(worst < 1e-4, "{case}: merged weights off by {worst}");
        assert!(dm < 1e-4, "{case}: merged vs unmerged logits {dm}");
    }
    let mut missed: Vec<&String> = exp.keys().filter(|k| !used.contains(k)).collect();
    missed.sort();
    assert!(missed.is_empty(), "{case}: expected keys not checked: {missed:?}");
    println!("{case}: {errs:?}");
    errs
}

/// A PEFT-written folder loaded then saved gives the same bytes in both files, and the
/// config has exactly the fields of `defaults` (PEFT 0.21's config class).
pub fn check_round_trip(case: &str, defaults: &Map<String, Value>) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    load_adapter(&mut tuners, &mut model, &case_dir(case), "default", false).unwrap();
    let out = tmp(&format!("rt-{case}"));
    save_adapter(&tuners, &model, "default", &out).unwrap();
    let ours = std::fs::read(out.join(WEIGHTS_NAME)).unwrap();
    let peft = std::fs::read(case_dir(case).join(WEIGHTS_NAME)).unwrap();
    assert!(ours == peft, "{case}: adapter_model.safetensors bytes differ");
    let text = std::fs::read_to_string(out.join(CONFIG_NAME)).unwrap();
    assert_eq!(text, std::fs::read_to_string(case_dir(case).join(CONFIG_NAME)).unwrap(), "{case}: adapter_config.json bytes");
    let v: Value = serde_json::from_str(&text).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, defaults.keys().collect::<Vec<_>>(), "{case}: PEFT 0.21 config fields");
    std::fs::remove_dir_all(&out).unwrap();
}

/// Gives every adapter parameter random values (so that zero-initialised factors do not
/// zero the gradients of the others): multiplicative ones near 1, others near 0.
pub fn randomize(model: &CausalLm, seed: u64, near_one: bool) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        let v: Vec<f64> = (0..p.value().elem_count()).map(|_| rng.random_range(-0.2..0.2) + if near_one { 1.0 } else { 0.0 }).collect();
        p.set(&Tensor::from_vec(v, p.dims(), &p.device()).unwrap()).unwrap();
    }
}

/// Every trainable parameter has a finite, non-zero gradient and no base weight has one;
/// returns how many were checked.
pub fn check_all_gradients(model: &mut CausalLm, tuners: &Tuners) -> usize {
    model.store.zero_grad();
    loss_with(model, Some(tuners), true);
    let mut n = 0;
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        assert!(p.name.starts_with("base_model.model."), "{} should be frozen", p.name);
        let g = flat(p.grad.as_ref().unwrap_or_else(|| panic!("{} has no gradient", p.name)));
        assert!(g.iter().all(|x| x.is_finite()), "{}: non-finite gradient", p.name);
        assert!(g.iter().any(|&x| x != 0.0), "{}: zero gradient", p.name);
        n += 1;
    }
    assert!(model.store.iter().filter(|(_, p)| !p.requires_grad()).all(|(_, p)| p.grad.is_none()), "frozen tensors got gradients");
    n
}

pub fn loss64(model: &CausalLm, tuners: &Tuners) -> f64 {
    let inp = inputs();
    let ctx = Ctx::inference(&model.store).with_tuners(tuners);
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    loss::causal_lm_loss(&logits, &inp.labels).unwrap().to_dtype(DType::F64).unwrap().to_vec0::<f64>().unwrap()
}

/// Central differences in f64 against autograd for a few elements of parameter `name`
/// (the model must be f64 and the gradients accumulated); returns max |fd − g| / max |g|.
pub fn fd_error(model: &mut CausalLm, tuners: &Tuners, name: &str, loss: impl Fn(&CausalLm, &Tuners) -> f64) -> f64 {
    let p = model.store.by_name(name).unwrap();
    let g: Vec<f64> = p.grad.as_ref().expect("accumulate gradients first").flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let base: Vec<f64> = p.value().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let dims = p.dims().to_vec();
    let gmax = g.iter().fold(0f64, |m, x| m.max(x.abs()));
    let set = |model: &CausalLm, v: Vec<f64>| {
        model.store.by_name(name).unwrap().set(&Tensor::from_vec(v, dims.as_slice(), &candle_core::Device::Cpu).unwrap()).unwrap()
    };
    let h = 1e-5;
    let mut worst = 0f64;
    for i in [0, base.len() / 3, base.len() / 2, base.len() - 1] {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            set(model, v);
            loss(model, tuners)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        worst = worst.max((fd - g[i]).abs() / gmax);
    }
    set(model, base);
    worst
}

/// Merge then unmerge: merged output equals the unmerged one, the base comes back; a
/// disabled adapter gives the base model. Returns (merged vs unmerged logits, base error).
pub fn check_merge_and_disable(model: &mut CausalLm, tuners: &mut Tuners) -> (f32, f32) {
    let base_logits = logits_with(model, None);
    let base: HashMap<String, Tensor> = snapshot(model).into_iter().filter(|(k, _)| !k.starts_with("base_model.")).collect();
    let with = logits_with(model, Some(tuners));
    assert!(max_abs_diff(&with, &base_logits) > 1e-3, "the adapter should change the output");
    tuners.merge(model, None).unwrap();
    let merged = logits_with(model, Some(tuners));
    let dm = max_abs_diff(&merged, &with);
    tuners.unmerge(model).unwrap();
    let db = base.iter().map(|(k, v)| max_abs_diff(&model.store.by_name(k).unwrap().value(), v)).fold(0.0, f32::max);
    tuners.set_enabled(model, false).unwrap();
    // The base model as it now is (IA³'s unmerge divides by l + 1e-8: not bit-exact).
    assert!(
        max_abs_diff(&logits_with(model, Some(tuners)), &logits_with(model, None)) == 0.0,
        "disabled adapter should give the base model"
    );
    assert!(max_abs_diff(&logits_with(model, Some(tuners)), &base_logits) < 1e-5);
    tuners.set_enabled(model, true).unwrap();
    assert!(max_abs_diff(&logits_with(model, Some(tuners)), &with) < 1e-5);
    assert!(dm < 1e-5, "merged vs unmerged logits {dm}");
    assert!(db < 1e-5, "base after unmerge off by {db}");
    (dm, db)
}
