//! The methods' rules between optimizer steps through one mechanism (`ModelState::after_step`
//! and `before_step`, `state/steps.rs`): with several methods active at once, each rule runs
//! when due, in the fixed order (AdaLoRA, SoRA, PeriodicLoRA, FAR, LT-SFT), reports what it did,
//! and leaves the model as calling the method's own procedure would; methods without a rule
//! get an empty report.
use crate::common;
use peft_core::state::{Kept, ModelState, StepContext, StepReport};
use peft_core::tuners::sparse_mask::FisherBatch;
use peft_core::tuners::{far, fish_dip, lt_sft, parse_config, periodic_lora, sora};
use serde_json::{json, Value};
use std::path::Path;

/// The fixture model with `adapters` injected (seeded by their position) and all active.
fn state_with(adapters: &[(&str, Value)]) -> ModelState {
    let mut s = ModelState::new(common::load_model(), None, "fixture".into());
    for (i, (name, cfg)) in adapters.iter().enumerate() {
        let config = parse_config(cfg, None, Path::new("test")).unwrap().0;
        s.tuners.inject(&mut s.llama, name, config, i as u64).unwrap();
    }
    let names: Vec<&str> = adapters.iter().map(|(n, _)| *n).collect();
    s.tuners.set_active(&mut s.llama, &names).unwrap();
    s
}

fn four_methods() -> Vec<(&'static str, Value)> {
    vec![
        ("sora", json!({"peft_type": "SORA", "r": 2, "sparse_lambda": 1.0, "target_modules": ["q_proj"]})),
        ("periodic", json!({"peft_type": "PERIODIC_LORA", "r": 2, "merge_every": 2, "target_modules": ["v_proj"]})),
        (
            "far",
            json!({"peft_type": "FAR", "trainable_ratio": 0.25, "priming_steps": 2, "target_modules": ["gate_proj", "up_proj", "down_proj"]}),
        ),
        ("lt", json!({"peft_type": "LT_SFT", "density": 0.1, "full_steps": 2, "target_modules": ["o_proj"]})),
    ]
}

fn values(s: &ModelState) -> Vec<(String, Vec<f32>)> {
    let mut out: Vec<(String, Vec<f32>)> = common::snapshot(&s.llama)
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn kept(v: Vec<(String, usize, usize)>) -> Vec<Kept> {
    v.into_iter().map(|(adapter, kept, total)| Kept { adapter, kept, total }).collect()
}

#[test]
fn after_step_runs_each_active_rule_when_due_in_order_and_reports_it() {
    let mut state = state_with(&four_methods());
    let by_hand = state_with(&four_methods());
    let (lr, seed) = (0.25, 7);

    // One step done: only SoRA's proximal step is due (every step); the gates (init 1) drop by lr·λ.
    let first = state.after_step(&StepContext { step: 0, lr, seed }).unwrap();
    let sora_first = kept(sora::proximal_step(&by_hand.llama, &by_hand.tuners, lr).unwrap());
    assert_eq!(first, StepReport { sora_ranks: sora_first.clone(), ..Default::default() });
    assert_eq!(sora_first, vec![Kept { adapter: "sora".into(), kept: 4, total: 4 }], "2 layers × r 2 gates, all alive at 0.75");
    assert_eq!(values(&state), values(&by_hand));

    // Two steps done: SoRA again, PeriodicLoRA's first stage ends, FAR's priming and LT-SFT's
    // full phase end. The report holds each in the table's order; the model is as after the
    // procedures called one by one in that order.
    let second = state.after_step(&StepContext { step: 1, lr, seed }).unwrap();
    let sora_ranks = kept(sora::proximal_step(&by_hand.llama, &by_hand.tuners, lr).unwrap());
    let restarts = periodic_lora::restart(&by_hand.llama, &by_hand.tuners, 2, seed).unwrap();
    let mut masks = kept(far::select_nodes(&by_hand.llama, &by_hand.tuners, 2).unwrap());
    masks.extend(kept(lt_sft::lottery_step(&by_hand.llama, &by_hand.tuners, 2).unwrap()));
    assert_eq!(second.adalora_budget, None);
    assert_eq!(second.sora_ranks, sora_ranks);
    assert_eq!(second.periodic_stages, vec![("periodic".to_string(), 1)]);
    assert_eq!(second.reset_state, restarts[0].2);
    assert_eq!(second.reset_state.len(), 4, "lora_A and lora_B of v_proj in 2 layers: {:?}", second.reset_state);
    assert!(second.reset_state.iter().all(|n| n.contains(".periodic.") && n.contains("v_proj")), "{:?}", second.reset_state);
    assert_eq!(second.mask_updates.iter().map(|k| k.adapter.as_str()).collect::<Vec<_>>(), ["far", "lt"], "FAR before LT-SFT");
    assert_eq!(second.mask_updates, masks);
    assert!(second.mask_updates.iter().all(|k| 0 < k.kept && k.kept < k.total), "{:?}", second.mask_updates);
    assert_eq!(values(&state), values(&by_hand));

    // Three steps done: nothing but SoRA is due again.
    let third = state.after_step(&StepContext { step: 2, lr, seed }).unwrap();
    assert!(third.periodic_stages.is_empty() && third.mask_updates.is_empty() && third.reset_state.is_empty(), "{third:?}");
    assert_eq!(third.sora_ranks.len(), 1);
}

#[test]
fn a_method_without_a_rule_gets_an_empty_report_even_merged() {
    let mut state = state_with(&[("lora", json!({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}))]);
    state.tuners.merge(&mut state.llama, None).unwrap();
    let before = values(&state);
    assert_eq!(state.after_step(&StepContext { step: 3, lr: 1e-3, seed: 1 }).unwrap(), StepReport::default());
    let batches = [FisherBatch { batch: common::inputs().batch(), labels: common::inputs().labels }];
    assert_eq!(state.before_step(0, &batches).unwrap(), StepReport::default());
    assert_eq!(values(&state), before);
    assert!(state.check_schedule(10).is_empty());
}

#[test]
fn before_step_updates_fish_dips_mask_when_due() {
    let cfg = json!({"peft_type": "FISH_DIP", "density": 0.05, "update_every": 2, "target_modules": ["q_proj"]});
    let state = state_with(&[("fish", cfg.clone())]);
    let by_hand = state_with(&[("fish", cfg)]);
    let batches = [FisherBatch { batch: common::inputs().batch(), labels: common::inputs().labels }];
    assert_eq!(state.before_step(1, &batches).unwrap(), StepReport::default(), "not due at step 1");
    let report = state.before_step(2, &batches).unwrap();
    assert!(fish_dip::due(&by_hand.tuners, 2).unwrap());
    let want = kept(fish_dip::update_masks(&by_hand.llama, &by_hand.tuners, 2, &batches).unwrap());
    assert_eq!(report, StepReport { mask_updates: want, ..Default::default() });
    assert_eq!(report.mask_updates[0].adapter, "fish");
    assert!(report.mask_updates[0].kept < report.mask_updates[0].total / 10);
    assert_eq!(values(&state), values(&by_hand));
}

#[test]
fn check_schedule_warns_about_adalora_total_step_on_the_field() {
    let cfg = json!({"peft_type": "ADALORA", "init_r": 2, "target_r": 1, "tfinal": 2, "total_step": 10, "target_modules": ["q_proj"]});
    let state = state_with(&[("ada", cfg)]);
    assert!(state.check_schedule(10).is_empty());
    let w = state.check_schedule(3);
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].code, w[0].field.as_deref()), (peft_core::WarningCode::Other, Some("total_step")));
    assert_eq!(w[0].message, "AdaLoRA total_step 10 differs from the Trainer's 3 steps: the final rank allocation is at step 8");
}
