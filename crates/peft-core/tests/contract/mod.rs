//! The contract every method keeps on the fixture's tiny model, one row per method
//! (`table.rs`) and one check per property, as `__test__/methods.spec.ts` has it: forward
//! shapes, a finite non-zero gradient for every trainable parameter (moved off its init first,
//! so zero inits do not hide gradients), f64 central finite differences on every kind of
//! parameter, save/load with identical logits, merge = unmerged output (or a clear refusal),
//! disabled = base output, a falling loss over 20 AdamW steps, and for the rows with a PEFT
//! fixture the fixture's numbers and files (`fixture.rs`). `tests/methods.rs` runs each
//! check over every row and lists every row that fails.
#![allow(dead_code)]
pub mod fixture;
mod helpers;
pub mod table;
pub use helpers::*;
pub use table::{methods, row, Case, Merge};

use crate::common::*;
use candle_core::{DType, Tensor};
use peft_core::io::adapter::{load_adapter, save_adapter};
use peft_core::model::{loss, Batch, Ctx};
use peft_core::tuners::{Tuners, WithTuners};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Runs `check` on every row `keep` selects, each caught apart, and fails listing every row
/// that failed with its message.
pub fn for_rows(keep: fn(&Case) -> bool, check: fn(&Case)) {
    let (mut ran, mut failures) = (0, Vec::new());
    for row in methods().filter(|r| keep(r)) {
        ran += 1;
        if let Err(e) = std::panic::catch_unwind(|| check(row)) {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            failures.push(format!("  {}: {}", row.name, msg.unwrap_or_default()));
        }
    }
    assert!(ran > 0, "no row to check");
    assert!(failures.is_empty(), "{} of {ran} rows fail:\n{}", failures.len(), failures.join("\n"));
}

pub fn every_row(check: fn(&Case)) {
    for_rows(|_| true, check)
}

/// The fixture batch's attention mask with `virtual_tokens` attended positions in front.
pub fn mask_with_virtual(virtual_tokens: usize) -> Vec<Vec<u8>> {
    inputs().attention_mask.iter().map(|r| [vec![1u8; virtual_tokens], r.clone()].concat()).collect()
}

/// Logits [rows, virtual + seq, vocab] without the virtual positions.
fn real_positions(logits: &Tensor, virtual_tokens: usize) -> Tensor {
    logits.narrow(1, virtual_tokens, logits.dim(1).unwrap() - virtual_tokens).unwrap().contiguous().unwrap()
}

pub fn shapes(row: &Case) {
    let (model, tuners) = setup(&row.config(), DType::F32);
    let (rows, seq, vocab) = logits_with(&load_model(), None).dims3().unwrap();
    assert_eq!(logits_with(&model, Some(&tuners)).dims(), [rows, seq + row.virtual_tokens, vocab], "logits shape");
}

/// Every trainable tensor is the adapter's and gets a finite, non-zero gradient; frozen ones get none.
pub fn gradients(row: &Case) {
    let (mut model, tuners) = setup(&row.config(), DType::F32);
    model.store.zero_grad();
    loss_with(&mut model, Some(&tuners), true);
    let own: HashSet<String> = tuners.params("default").unwrap().into_iter().map(|id| model.store.get(id).name.clone()).collect();
    let mut n = 0;
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        assert!(own.contains(&p.name), "{} is trainable but not a parameter of the adapter", p.name);
        let g = flat(p.grad.as_ref().unwrap_or_else(|| panic!("{} has no gradient", p.name)));
        assert!(g.iter().all(|x| x.is_finite()), "{}: non-finite gradient", p.name);
        assert!(g.iter().any(|&x| x != 0.0), "{}: zero gradient (a silent cut?)", p.name);
        n += 1;
    }
    assert!(n > 0, "no trainable parameters");
    if let Some(want) = row.trainable {
        assert_eq!(n, want, "trainable tensors");
    }
    assert!(model.store.iter().filter(|(_, p)| !p.requires_grad()).all(|(_, p)| p.grad.is_none()), "frozen tensors got gradients");
}

/// A parameter's kind: its name with the layer indices left out (`layers.*.mlp.up_proj.lora_A...`).
fn kind_of(name: &str) -> String {
    name.split('.').map(|s| if s.bytes().all(|b| b.is_ascii_digit()) { "*" } else { s }).collect::<Vec<_>>().join(".")
}

/// Central differences in f64 on one parameter of every kind (four elements each).
pub fn finite_differences(row: &Case) {
    let (mut model, tuners) = setup(&row.config(), DType::F64);
    model.store.zero_grad();
    loss_with(&mut model, Some(&tuners), true);
    let mut kinds: BTreeMap<String, String> = BTreeMap::new();
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad() && row.fd_only.is_none_or(|f| p.name.contains(f))) {
        kinds.entry(kind_of(&p.name)).or_insert_with(|| p.name.clone());
    }
    assert!(!kinds.is_empty(), "no trainable parameter matches {:?}", row.fd_only);
    let errors: Vec<(f64, &String)> = kinds.values().map(|name| (fd_error(&mut model, &tuners, name, loss64), name)).collect();
    let (worst, name) = errors.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    println!("{}: finite differences on {} kinds, worst rel err {worst:e} ({name})", row.name, errors.len());
    assert!(worst < row.fd_tol, "{name}: finite difference vs autograd off by {worst:e} (max |fd − g| / max |g|)");
}

/// Saved and loaded into a fresh model: no warning, the same logits.
pub fn save_load(row: &Case) {
    let (model, tuners) = setup(&row.config(), DType::F32);
    let logits = logits_with(&model, Some(&tuners));
    let dir = tmp(&format!("contract-{}", row.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")));
    save_adapter(&tuners, &model, "default", &dir).unwrap();
    let mut fresh = load_model();
    let mut back = Tuners::new();
    let report = load_adapter(&mut back, &mut fresh, &dir, "default", false);
    std::fs::remove_dir_all(&dir).ok();
    let warnings = report.unwrap().warnings;
    assert!(warnings.is_empty(), "warnings on load: {warnings:?}");
    let d = max_abs_diff(&logits_with(&fresh, Some(&back)), &logits);
    assert!(d == 0.0, "save/load changed the logits by {d:e}");
}

/// Merged = unmerged output; unmerge restores the base; merge_and_unload leaves the plain
/// model. Or: merge refuses clearly and changes nothing.
pub fn merge(row: &Case) {
    let (mut model, mut tuners) = setup(&row.config(), DType::F32);
    let with = logits_with(&model, Some(&tuners));
    let mask = inputs().attention_mask;
    match row.merge {
        Merge::Refuses(msg) => {
            let err = tuners.merge(&mut model, None).expect_err("merge should be refused").to_string();
            assert!(err.contains(msg), "merge: `{err}` should say `{msg}`");
            let d = max_abs_diff(&logits_with(&model, Some(&tuners)), &with);
            assert!(d == 0.0, "a refused merge changed the logits by {d:e}");
        }
        Merge::Merges => {
            let base_names: HashSet<String> = load_model().store.iter().map(|(_, p)| p.name.clone()).collect();
            let base: HashMap<String, Tensor> = snapshot(&model).into_iter().filter(|(k, _)| base_names.contains(k)).collect();
            tuners.merge(&mut model, None).unwrap();
            let merged = max_masked_diff(&logits_with(&model, Some(&tuners)), &with, &mask);
            tuners.unmerge(&mut model).unwrap();
            let unmerged = max_masked_diff(&logits_with(&model, Some(&tuners)), &with, &mask);
            let restored = base.iter().map(|(k, v)| max_abs_diff(&value(&model, k), v)).fold(0.0, f32::max);
            tuners.merge_and_unload(&mut model, None).unwrap();
            let unloaded = max_masked_diff(&logits_with(&model, None), &with, &mask);
            println!("{}: merged {merged:e}, unmerged {unmerged:e}, base after unmerge {restored:e}, unloaded {unloaded:e}", row.name);
            assert!(merged < row.merge_tol, "merged vs unmerged logits {merged:e}");
            assert!(unmerged < 1e-5, "unmerge: logits off by {unmerged:e}");
            assert!(restored < 1e-5, "unmerge: base weights off by {restored:e}");
            assert!(unloaded < row.merge_tol, "merge_and_unload: logits off by {unloaded:e}");
            assert!(tuners.names().is_empty(), "adapters left after merge_and_unload: {:?}", tuners.names());
            let left: Vec<String> =
                model.store.iter().map(|(_, p)| p.name.clone()).filter(|n| !base_names.contains(n) && !n.ends_with(".bias")).collect();
            assert!(left.is_empty(), "adapter tensors left after merge_and_unload: {left:?}");
        }
    }
}

/// Disabled: exactly the base model's logits; enabled again: exactly the adapter's, which
/// differ from the base on the real tokens (or the first check would prove nothing).
pub fn disabled(row: &Case) {
    let (mut model, mut tuners) = setup(&row.config(), DType::F32);
    let base = logits_with(&load_model(), None);
    let with = logits_with(&model, Some(&tuners));
    let changed = max_masked_diff(&real_positions(&with, row.virtual_tokens), &base, &inputs().attention_mask);
    tuners.set_enabled(&mut model, false).unwrap();
    let off = max_abs_diff(&logits_with(&model, Some(&tuners)), &base);
    tuners.set_enabled(&mut model, true).unwrap();
    let on = max_abs_diff(&logits_with(&model, Some(&tuners)), &with);
    assert!(changed > 1e-3, "the adapter should change the logits of the real tokens: {changed:e}");
    assert!(off == 0.0, "the disabled adapter changed the logits by {off:e}");
    assert!(on == 0.0, "enabled again, the logits moved by {on:e}");
}

/// 20 AdamW steps (lr 5e-2) from the method's init on a short repeated sequence, in training
/// mode: the loss falls by a fifth.
pub fn loss_falls(row: &Case) {
    let (mut model, tuners) = inject(&row.config(), 5);
    let tokens: Vec<u32> = [40u32, 41, 42, 43].repeat(4);
    let batch = Batch::new(vec![tokens.clone(); 2]);
    let labels: Vec<Vec<i64>> = vec![tokens.iter().map(|&x| x as i64).collect(); 2];
    let h = peft_core::optim::AdamWHyper { lr: 5e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut state: HashMap<String, (Tensor, Tensor)> = HashMap::new();
    let mut losses = Vec::new();
    for step in 1..=20u64 {
        model.store.zero_grad();
        let ctx = Ctx::new(&model.store, false).with_tuners(&tuners).training(step);
        let l = loss::causal_lm_loss(&model.forward(&batch, &ctx, None, false).unwrap(), &labels).unwrap();
        drop(ctx);
        let g = l.backward().unwrap();
        model.store.accumulate_grads(&g).unwrap();
        losses.push(scalar(&l));
        for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
            let zeros = || peft_core::optim::zeros_state(p).unwrap();
            let (m, v) = state.entry(p.name.clone()).or_insert_with(|| (zeros(), zeros()));
            peft_core::optim::adamw_step(p, m, v, step, &h).unwrap();
        }
    }
    let (first, last) = (losses[0], losses[19]);
    println!("{}: loss {first} -> {last} over 20 AdamW steps", row.name);
    assert!(last < first * 0.8, "loss did not fall by a fifth: {first} -> {last}");
}
