//! DyLoRA (Valipour et al. 2023; peft_type `DYLORA`, ours): f64 finite
//! differences at a fixed rank, eq. 6 against a hand-computed dense ΔW at every rank (in
//! evaluation, in training at the sampled rank, and merged), the frozen mode's gradients,
//! the rank sampling, files, config errors, and the nested-rank property after training.
use crate::common;
use crate::contract;
use candle_core::{DType, Device, Tensor};
use common::*;
use peft_core::io::adapter::{load_adapter, save_adapter, CONFIG_NAME, WEIGHTS_NAME};
use peft_core::model::{loss, Batch, CausalLm, Ctx};
use peft_core::tuners::dylora::{DyLoraConfig, DyLoraLayer};
use peft_core::tuners::Tuners;
use peft_core::tuners::WithTuners;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

fn cfg(extra: Value) -> Value {
    let mut v = json!({"peft_type": "DYLORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

/// The rank a training forward seeded with `seed` runs at (`DyLoraLayer::rank`, the first
/// draw of that forward's generator).
fn rank_of(model: &CausalLm, tuners: &Tuners, seed: u64) -> usize {
    let c = tuners.config("default").unwrap().as_any().downcast_ref::<DyLoraConfig>().unwrap();
    let (id, _) = model.store.iter().next().unwrap();
    DyLoraLayer::new(c, "default", id, id).rank(&Ctx::new(&model.store, true).with_tuners(tuners).training(seed))
}

/// Loss on the fixture batch in training mode, the rank sampled with `seed`.
fn train_loss_tensor(model: &CausalLm, tuners: &Tuners, seed: u64, no_grad: bool) -> Tensor {
    let inp = inputs();
    let ctx = Ctx::new(&model.store, no_grad).with_tuners(tuners).training(seed);
    loss::causal_lm_loss(&model.forward(&inp.batch(), &ctx, None, false).unwrap(), &inp.labels).unwrap()
}

fn train_loss(model: &CausalLm, tuners: &Tuners, seed: u64) -> f64 {
    train_loss_tensor(model, tuners, seed, true).to_dtype(DType::F64).unwrap().to_vec0::<f64>().unwrap()
}

/// Accumulates the gradients of a training-mode forward seeded with `seed`.
fn train_backward(model: &mut CausalLm, tuners: &Tuners, seed: u64) {
    model.store.zero_grad();
    let g = train_loss_tensor(model, tuners, seed, false).backward().unwrap();
    model.store.accumulate_grads(&g).unwrap();
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Σ|g| per rank: rows of A's gradient [r, in], columns of B's [out, r].
fn grad_per_rank(model: &CausalLm, name: &str) -> Vec<f64> {
    let g = model.store.by_name(name).unwrap().grad.as_ref().unwrap().to_dtype(DType::F64).unwrap();
    let g = if name.contains("lora_B") { g.t().unwrap() } else { g };
    g.abs().unwrap().sum(1).unwrap().to_vec1::<f64>().unwrap()
}

fn factor_names(model: &CausalLm) -> Vec<String> {
    let mut n: Vec<String> = model.store.iter().map(|(_, p)| p.name.clone()).filter(|n| n.contains(".lora_")).collect();
    n.sort();
    n
}

#[test]
fn finite_differences_at_a_fixed_rank() {
    for (extra, label) in [(json!({"eval_rank": 3}), "evaluation at eval_rank 3"), (json!({"r_min": 3, "update_mode": "all"}), "training")]
    {
        let (mut model, tuners) = contract::setup(&cfg(extra.clone()), DType::F64);
        let training = label == "training";
        let seed = (0..).find(|&s| rank_of(&model, &tuners, s) == 3).unwrap();
        let loss = |m: &CausalLm, t: &Tuners| if training { train_loss(m, t, seed) } else { contract::loss64(m, t) };
        if training {
            train_backward(&mut model, &tuners, seed);
        } else {
            model.store.zero_grad();
            loss_with(&mut model, Some(&tuners), true);
        }
        let mut worst = 0f64;
        for name in
            factor_names(&model).iter().filter(|n| n.contains("layers.1.self_attn.q_proj") || n.contains("layers.0.self_attn.v_proj"))
        {
            let per_rank = grad_per_rank(&model, name);
            assert!(per_rank[..3].iter().all(|&g| g > 0.0) && per_rank[3] == 0.0, "{label} {name}: ranks 1..3 only: {per_rank:?}");
            worst = worst.max(contract::fd_error(&mut model, &tuners, name, loss));
        }
        println!("DyLoRA finite differences ({label}, rank 3 of 4): max |fd - g| / max|g| = {worst:e}");
        assert!(worst < 1e-6, "{label}: {worst}");
    }
}

/// W + α/b · Σ_{i<b} B[:, i] A[i, :], by loops over the values (eq. 6 written out).
fn dense_weight(w: &[f64], a: &[f64], b_up: &[f64], (out, inp, r): (usize, usize, usize), b: usize, alpha: f64) -> Vec<f64> {
    let mut d = w.to_vec();
    for o in 0..out {
        for j in 0..inp {
            let s: f64 = (0..b).map(|i| b_up[o * r + i] * a[i * inp + j]).sum();
            d[o * inp + j] += alpha / b as f64 * s;
        }
    }
    d
}

/// The base model with every targeted weight replaced by its dense form at rank `b`.
fn dense_model(adapted: &CausalLm, tuners: &Tuners, b: usize) -> CausalLm {
    let dense = contract::load_in(DType::F64);
    for path in tuners.modules("default").unwrap() {
        let p = |n: &str| values(&adapted.store.by_name(n).unwrap().value());
        let w = dense.store.by_name(&format!("{path}.weight")).unwrap();
        let (out, inp) = w.value().dims2().unwrap();
        let (a, b_up) =
            (p(&format!("base_model.model.{path}.lora_A.default.weight")), p(&format!("base_model.model.{path}.lora_B.default.weight")));
        let v = dense_weight(&values(&w.value()), &a, &b_up, (out, inp, a.len() / inp), b, 8.0);
        w.set(&Tensor::from_vec(v, (out, inp), &Device::Cpu).unwrap()).unwrap();
    }
    dense
}

#[test]
fn truncation_matches_the_dense_update_at_every_rank() {
    let (mut model, mut tuners) = contract::setup(&cfg(json!({})), DType::F64);
    for b in 1..=4 {
        let dense = logits_with(&dense_model(&model, &tuners, b), None);
        tuners.set_dylora_rank("default", b).unwrap();
        let eval = max_abs_diff(&logits_with(&model, Some(&tuners)), &dense);
        // Training at a seed whose sampled rank is b: every layer runs at that same b.
        let seed = (0..).find(|&s| rank_of(&model, &tuners, s) == b).unwrap();
        let inp = inputs();
        let ctx = Ctx::new(&model.store, true).with_tuners(&tuners).training(seed);
        let train = max_abs_diff(&model.forward(&inp.batch(), &ctx, None, false).unwrap(), &dense);
        tuners.merge(&mut model, None).unwrap();
        let merged = max_abs_diff(&logits_with(&model, Some(&tuners)), &dense);
        tuners.unmerge(&mut model).unwrap();
        println!("rank {b}: logits vs dense ΔW — eval {eval:e}, training {train:e}, merged {merged:e}");
        assert!(eval < 1e-10 && train < 1e-10 && merged < 1e-10, "rank {b}: {eval} {train} {merged}");
    }
}

#[test]
fn frozen_mode_updates_only_rank_b_and_every_layer_shares_b() {
    let (mut model, tuners) = contract::setup(&cfg(json!({})), DType::F64);
    let mut seen = Vec::new();
    for seed in 0..40u64 {
        let b = rank_of(&model, &tuners, seed);
        if seen.contains(&b) {
            continue;
        }
        seen.push(b);
        train_backward(&mut model, &tuners, seed);
        for name in factor_names(&model) {
            let g = grad_per_rank(&model, &name);
            // Frozen: ranks below b enter detached, except at b = r_min (1) where rank 1 is b.
            for (i, &gi) in g.iter().enumerate() {
                assert_eq!(gi > 0.0, i + 1 == b, "b = {b}, {name}: per-rank |grad| {g:?}");
            }
        }
    }
    seen.sort();
    assert_eq!(seen, vec![1, 2, 3, 4]);
    // The detached ranks still shape the output: the frozen forward equals the "all" one.
    let (all_model, all_tuners) = contract::setup(&cfg(json!({"update_mode": "all"})), DType::F64);
    for seed in 0..4 {
        let (f, a) = (train_loss(&model, &tuners, seed), train_loss(&all_model, &all_tuners, seed));
        assert!((f - a).abs() < 1e-12, "seed {seed}: frozen {f} vs all {a}");
    }
}

#[test]
fn sampling_covers_r_min_to_r_and_follows_the_seed() {
    let (model, tuners) = contract::setup(&cfg(json!({"r": 6, "r_min": 3})), DType::F32);
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for seed in 0..400 {
        let b = rank_of(&model, &tuners, seed);
        assert_eq!(b, rank_of(&model, &tuners, seed), "seed {seed}: the same seed gives the same rank");
        *counts.entry(b).or_default() += 1;
    }
    println!("ranks drawn over 400 seeds: {counts:?}");
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5, 6]);
    assert!(counts.values().all(|&n| n > 60), "roughly uniform: {counts:?}");
    // A whole training forward is reproducible per seed, and seeds of different ranks differ.
    let (s3, s6) = ((0..).find(|&s| rank_of(&model, &tuners, s) == 3).unwrap(), (0..).find(|&s| rank_of(&model, &tuners, s) == 6).unwrap());
    assert_eq!(train_loss(&model, &tuners, s3), train_loss(&model, &tuners, s3));
    assert_ne!(train_loss(&model, &tuners, s3), train_loss(&model, &tuners, s6));
}

#[test]
fn files_keep_lora_keys_and_the_eval_rank() {
    let (mut model, mut tuners) = contract::setup(&cfg(json!({"r_min": 2})), DType::F32);
    tuners.set_dylora_rank("default", 3).unwrap();
    let logits = logits_with(&model, Some(&tuners));
    let dir = common::tmp("dylora-files");
    save_adapter(&tuners, &model, "default", &dir).unwrap();
    let c: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(CONFIG_NAME)).unwrap()).unwrap();
    assert_eq!(
        (c["peft_type"].as_str(), c["r"].as_u64(), c["r_min"].as_u64(), c["eval_rank"].as_u64()),
        (Some("DYLORA"), Some(4), Some(2), Some(3))
    );
    assert_eq!(c["update_mode"], "frozen");
    let file = peft_core::io::safetensors::load_file(&dir.join(WEIGHTS_NAME), None, &Device::Cpu).unwrap();
    let mut keys: Vec<&String> = file.keys().collect();
    keys.sort();
    assert_eq!(keys.len(), 8);
    assert_eq!(keys[0], "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    assert_eq!(file[keys[1]].dims(), &[64, 4], "{}", keys[1]); // lora_B [out, r]
    let mut fresh = load_model();
    let mut back = Tuners::new();
    let report = load_adapter(&mut back, &mut fresh, &dir, "default", false).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(max_abs_diff(&logits_with(&fresh, Some(&back)), &logits), 0.0, "round trip at eval_rank 3");
    // Changing the rank is refused while merged, and out of [r_min, r].
    tuners.merge(&mut model, None).unwrap();
    assert!(tuners.set_dylora_rank("default", 2).unwrap_err().to_string().contains("unmerge"));
    tuners.unmerge(&mut model).unwrap();
    for bad in [0, 1, 5] {
        let e = tuners.set_dylora_rank("default", bad).unwrap_err().to_string();
        assert!(e.contains("rank") && e.contains("[2, 4]"), "{bad}: {e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_configs_name_the_key() {
    for (extra, key) in [
        (json!({"r": 0}), "r"),
        (json!({"r_min": 5}), "r_min"),
        (json!({"r_min": 0}), "r_min"),
        (json!({"eval_rank": 5}), "eval_rank"),
        (json!({"r_min": 2, "eval_rank": 1}), "eval_rank"),
        (json!({"update_mode": "partial"}), "update_mode"),
        (json!({"lora_dropout": 1.5}), "lora_dropout"),
        (json!({"bias": "all"}), "bias"),
        (json!({"init_lora_weights": "pissa"}), "init_lora_weights"),
        (json!({"target_modules": ["nope"]}), "target_modules"),
    ] {
        let e = contract::error_of(&cfg(extra.clone()));
        assert!(e.contains(&format!("`{key}`")), "{extra}: {e}");
    }
    let (_, warnings) =
        peft_core::tuners::parse_config(&cfg(json!({"rank_sampler": "geometric"})), None, std::path::Path::new("t")).unwrap();
    assert!(warnings.iter().any(|w| w.message.contains("rank_sampler")), "{warnings:?}");
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", lora(json!({"r": 4})), 0).unwrap();
    assert!(tuners.set_dylora_rank("default", 2).unwrap_err().to_string().contains("DyLoRA"));
}

/// The paper's point: after training with sampled ranks, every rank in {r_min, …, r} is a
/// working adapter. A short repeated sequence, 60 AdamW steps; the loss at each rank must
/// be below the base model's.
#[test]
fn every_rank_beats_the_base_after_training() {
    let row: Vec<u32> = [40u32, 41, 42, 43, 44, 45].repeat(3);
    let batch = Batch::new(vec![row.clone(); 2]);
    let labels: Vec<Vec<i64>> = vec![row.iter().map(|&x| x as i64).collect(); 2];
    let eval_loss = |model: &CausalLm, tuners: Option<&Tuners>| {
        let mut ctx = Ctx::inference(&model.store);
        if let Some(t) = tuners {
            ctx = ctx.with_tuners(t);
        }
        scalar(&loss::causal_lm_loss(&model.forward(&batch, &ctx, None, false).unwrap(), &labels).unwrap())
    };
    let base = eval_loss(&load_model(), None);
    for mode in ["frozen", "all"] {
        let mut model = load_model();
        let mut tuners = Tuners::new();
        tuners
            .inject(&mut model, "default", contract::config(&cfg(json!({"update_mode": mode, "target_modules": "all-linear"}))), 5)
            .unwrap();
        let h = peft_core::optim::AdamWHyper { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut state: HashMap<String, (Tensor, Tensor)> = HashMap::new();
        for step in 1..=60u64 {
            model.store.zero_grad();
            let ctx = Ctx::new(&model.store, false).with_tuners(&tuners).training(step);
            let g = loss::causal_lm_loss(&model.forward(&batch, &ctx, None, false).unwrap(), &labels).unwrap().backward().unwrap();
            model.store.accumulate_grads(&g).unwrap();
            for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
                let (m, v) = state
                    .entry(p.name.clone())
                    .or_insert_with(|| (peft_core::optim::zeros_state(p).unwrap(), peft_core::optim::zeros_state(p).unwrap()));
                peft_core::optim::adamw_step(p, m, v, step, &h).unwrap();
            }
        }
        let mut losses = Vec::new();
        for b in 1..=4 {
            tuners.set_dylora_rank("default", b).unwrap();
            losses.push(eval_loss(&model, Some(&tuners)));
        }
        println!("DyLoRA ({mode}) after 60 steps: base loss {base:.4}, loss at ranks 1..4 {losses:.5?}");
        assert!(losses.iter().all(|&l| l < base), "{mode}: base {base}, per rank {losses:?}");
    }
}
