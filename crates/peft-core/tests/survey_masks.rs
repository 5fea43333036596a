//! The sparse methods of the survey's tree whose mask a training procedure rewrites (issue 16,
//! part B): FAR, LT-SFT and Fish-Dip. Each has a contract row (`contract/table.rs`) with
//! its mask all ones (before its procedure runs), and its procedure is checked directly:
//! which entries the new mask keeps, that the masked entries get no gradient, and what the
//! procedure leaves of the learned change.
use crate::common;
use crate::contract;
use candle_core::{DType, Tensor};
use common::*;
use contract::*;
use peft_core::model::{loss, CausalLm, Ctx};
use peft_core::tuners::{Tuners, WithTuners};
use serde_json::json;

const L0: &str = "base_model.model.model.layers.0";

fn f64s(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// ∂L/∂ΔW of `module`'s masked delta.
fn delta_grad(model: &CausalLm, tuners: &Tuners, module: &str) -> Vec<f64> {
    let ctx = Ctx::new(&model.store, false).with_tuners(tuners);
    let logits = model.forward(&inputs().batch(), &ctx, None, false).unwrap();
    let g = loss::causal_lm_loss(&logits, &inputs().labels).unwrap().backward().unwrap();
    f64s(g.get(&model.store.by_name(&format!("{module}.masked_delta.default.weight")).unwrap().value()).unwrap())
}

#[test]
fn bad_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "FAR", "trainable_ratio": 0}), "trainable_ratio"),
        (json!({"peft_type": "FAR", "priming_steps": 0}), "priming_steps"),
        (json!({"peft_type": "FAR", "target_modules": ["q_proj"]}), "target_modules"),
        (json!({"peft_type": "LT_SFT", "density": 1.5}), "density"),
        (json!({"peft_type": "LT_SFT", "full_steps": -1}), "full_steps"),
        (json!({"peft_type": "FISH_DIP", "update_every": 0}), "update_every"),
        (json!({"peft_type": "FISH_DIP", "modules_to_save": ["lm_head"]}), "modules_to_save"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(key), "{cfg}: {e}");
    }
}

/// At the end of priming FAR keeps, per FFN, the nodes with the largest L1 change summed over
/// gate/up rows and down columns (node 3 and 7 made largest here); the others' rows and
/// columns are masked and reset, the kept nodes keep their change, and only they get gradients.
#[test]
fn far_keeps_the_nodes_that_changed_most() {
    use peft_core::tuners::far::select_nodes;
    let (model, tuners) = setup(&json!({"peft_type": "FAR", "trainable_ratio": 0.0125, "priming_steps": 5}), DType::F64);
    let name = |p: &str| format!("{L0}.mlp.{p}.masked_delta.default.weight");
    let inter = value(&model, &name("up_proj")).dim(0).unwrap();
    assert_eq!(inter, 160, "the fixture's FFN width (k = 2 of 160 nodes)");
    // Node 3: a large change in gate's row; node 7: in down's column.
    let mut gate = value(&model, &name("gate_proj")).to_vec2::<f64>().unwrap();
    gate[3].iter_mut().for_each(|x| *x = 5.0);
    set(&model, &name("gate_proj"), &Tensor::new(gate, &candle_core::Device::Cpu).unwrap());
    let mut down = value(&model, &name("down_proj")).to_vec2::<f64>().unwrap();
    down.iter_mut().for_each(|row| row[7] = -5.0);
    set(&model, &name("down_proj"), &Tensor::new(down, &candle_core::Device::Cpu).unwrap());
    let before = value(&model, &name("gate_proj")).to_vec2::<f64>().unwrap();

    assert!(select_nodes(&model, &tuners, 4).unwrap().is_empty(), "priming has not ended");
    let kept = select_nodes(&model, &tuners, 5).unwrap();
    assert_eq!(kept, vec![("default".to_string(), 4, 320)], "2 of 160 nodes in each of the 2 layers");
    let gate_after = value(&model, &name("gate_proj")).to_vec2::<f64>().unwrap();
    for (j, (a, b)) in gate_after.iter().zip(&before).enumerate() {
        if j == 3 || j == 7 {
            assert_eq!(a, b, "kept node {j} keeps what priming taught it");
        } else {
            assert!(a.iter().all(|&x| x == 0.0), "node {j} is reset");
        }
    }
    let g = delta_grad(&model, &tuners, &format!("{L0}.mlp.down_proj"));
    let cols = 160;
    for (i, x) in g.iter().enumerate() {
        assert_eq!(*x != 0.0, i % cols == 3 || i % cols == 7, "down_proj gradient at column {}", i % cols);
    }
}

/// LT-SFT's lottery step keeps the top-K |ΔW| of each weight, resets ΔW to 0 (the model is the
/// base again) and only the K entries train afterwards.
#[test]
fn lt_sft_keeps_the_largest_changes_and_resets() {
    use peft_core::tuners::lt_sft::lottery_step;
    let (model, tuners) = setup(&json!({"peft_type": "LT_SFT", "density": 0.1, "full_steps": 3, "target_modules": ["q_proj"]}), DType::F64);
    let dname = format!("{Q0}.masked_delta.default.weight");
    let d = f64s(&value(&model, &dname));
    let k = (0.1 * d.len() as f64).round() as usize;
    let mut order: Vec<usize> = (0..d.len()).collect();
    order.sort_by(|&a, &b| d[b].abs().total_cmp(&d[a].abs()));
    let kept = lottery_step(&model, &tuners, 3).unwrap();
    assert_eq!(kept, vec![("default".to_string(), 2 * k, 2 * d.len())]);
    let m = f64s(&value(&model, &format!("{Q0}.delta_mask.default.weight")));
    let mut want = vec![0.0; d.len()];
    order[..k].iter().for_each(|&i| want[i] = 1.0);
    assert_eq!(m, want, "the mask is the top-K changes");
    assert!(f64s(&value(&model, &dname)).iter().all(|&x| x == 0.0), "ΔW is reset");
    let base = logits_with(&load_in(DType::F64), None);
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &base) < 1e-12, "reset: the base model again");
    let g = delta_grad(&model, &tuners, Q0);
    assert!(g.iter().zip(&m).all(|(g, m)| (*g != 0.0) == (*m == 1.0)), "only the ticket trains");
}

/// A Fish-Dip update folds what the old mask learned into the frozen accumulator (the logits do
/// not change), then masks all but the top Fisher entries of each weight: the largest (∂L/∂W)²
/// on the given batches, which are then the only entries with a gradient.
#[test]
fn fish_dip_recomputes_the_mask_from_the_fisher_scores() {
    use peft_core::tuners::fish_dip::{due, update_masks};
    use peft_core::tuners::sparse_mask::FisherBatch;
    let (model, tuners) =
        setup(&json!({"peft_type": "FISH_DIP", "density": 0.05, "update_every": 4, "target_modules": ["q_proj"]}), DType::F64);
    assert!(due(&tuners, 0).unwrap() && due(&tuners, 8).unwrap() && !due(&tuners, 5).unwrap());
    let before = logits_with(&model, Some(&tuners));
    let full = delta_grad(&model, &tuners, Q0); // mask all ones: the full gradient
    let batches = [FisherBatch { batch: inputs().batch(), labels: inputs().labels }];
    assert!(update_masks(&model, &tuners, 5, &batches).unwrap().is_empty(), "not due at step 5");
    let kept = update_masks(&model, &tuners, 4, &batches).unwrap();
    let n = full.len();
    let k = (0.05 * n as f64).round() as usize;
    assert_eq!(kept, vec![("default".to_string(), 2 * k, 2 * n)]);
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &before) < 1e-12, "folding keeps the learned change");
    let m = f64s(&value(&model, &format!("{Q0}.delta_mask.default.weight")));
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| (full[b] * full[b]).total_cmp(&(full[a] * full[a])));
    let mut want = vec![0.0; n];
    order[..k].iter().for_each(|&i| want[i] = 1.0);
    assert_eq!(m, want, "the mask is the top Fisher entries");
    let g = delta_grad(&model, &tuners, Q0);
    assert!(g.iter().zip(&m).all(|(g, m)| (*g != 0.0) == (*m == 1.0)), "only the mask trains");
    assert!(update_masks(&model, &tuners, 8, &[]).is_err());
}
