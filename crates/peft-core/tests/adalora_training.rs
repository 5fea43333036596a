//! AdaLoRA in a training forward: `regularized_loss` adds orth_reg_weight × the regulariser
//! (PEFT `AdaLoraModel.forward`) in training mode only, for active AdaLoRA adapters only;
//! and a kept `RankAllocator` knows when its adapter was replaced.
use crate::common;
use crate::contract;
use common::*;
use contract::*;
use peft_core::model::{loss, CausalLm, Ctx};
use peft_core::tuners::adalora::{orth_regularization, regularized_loss, RankAllocator};
use peft_core::tuners::Tuners;
use peft_core::tuners::WithTuners;
use serde_json::json;

fn adalora(weight: f64) -> Box<dyn peft_core::tuners::TunerConfig> {
    let cfg = json!({"init_r": 3, "target_r": 1, "total_step": 10, "orth_reg_weight": weight, "init_lora_weights": false, "target_modules": ["q_proj", "v_proj"]});
    config(&typed("ADALORA", cfg))
}

/// (plain cross-entropy, the forward's regularised loss) in the given mode.
fn losses(model: &CausalLm, tuners: &Tuners, training: bool) -> (f32, f32) {
    let inp = inputs();
    let mut ctx = Ctx::new(&model.store, false);
    ctx = ctx.with_tuners(tuners);
    let ctx = if training { ctx.training(7) } else { ctx };
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    let plain = loss::causal_lm_loss(&logits, &inp.labels).unwrap();
    let full = regularized_loss(plain.clone(), model, tuners, &ctx).unwrap();
    (scalar(&plain), scalar(&full))
}

#[test]
fn the_regulariser_joins_training_losses_of_active_adalora_adapters() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", adalora(0.5), 0).unwrap();
    let reg = scalar(&orth_regularization(&model, &tuners, "default", &Ctx::inference(&model.store)).unwrap());
    assert!(reg > 0.1, "random factors are far from orthogonal: {reg}");
    let (plain, full) = losses(&model, &tuners, true);
    println!("training loss {plain} + regulariser {reg} = {full}");
    assert!((full - plain - reg).abs() < 1e-5 * full.abs(), "{full} - {plain} vs {reg}");
    let (plain, full) = losses(&model, &tuners, false);
    assert_eq!(plain, full, "evaluation: plain cross-entropy");

    // Another method active, or adapters disabled, or weight 0: nothing added.
    tuners.inject(&mut model, "lora", lora(json!({"r": 2, "target_modules": ["q_proj"]})), 0).unwrap();
    tuners.set_active(&mut model, &["lora"]).unwrap();
    let (plain, full) = losses(&model, &tuners, true);
    assert_eq!(plain, full);
    tuners.set_active(&mut model, &["default"]).unwrap();
    tuners.set_enabled(&mut model, false).unwrap();
    let (plain, full) = losses(&model, &tuners, true);
    assert_eq!(plain, full);
    let mut zero = load_model();
    let mut tz = Tuners::new();
    tz.inject(&mut zero, "default", adalora(0.0), 0).unwrap();
    let (plain, full) = losses(&zero, &tz, true);
    assert_eq!(plain, full);
}

#[test]
fn an_allocator_is_current_until_its_adapter_is_replaced() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", adalora(0.5), 0).unwrap();
    let alloc = RankAllocator::new(&tuners, &model, "default").unwrap();
    assert!(alloc.is_current(&model));
    assert_eq!(alloc.triplets().len(), 4);
    tuners.delete_adapter(&mut model, "default").unwrap();
    assert!(!alloc.is_current(&model));
    tuners.inject(&mut model, "default", adalora(0.5), 1).unwrap();
    assert!(!alloc.is_current(&model), "a new adapter of the same name has new parameters");
}
