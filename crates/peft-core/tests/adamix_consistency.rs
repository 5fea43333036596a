//! AdaMix's consistency loss (Wang et al. 2022, §2.3): zero when the two routings are forced
//! equal, positive otherwise, reported by name through the training loss, and its gradient
//! checked by f64 finite differences.
use crate::common;
use crate::contract;
use candle_core::{DType, Tensor};
use common::inputs;
use peft_core::model::{CausalLm, Ctx};
use peft_core::tuners::adamix::consistency::{add_consistency_loss, NAME};
use peft_core::tuners::aux_loss::training_loss;
use peft_core::tuners::{Tuners, WithTuners};
use serde_json::json;

fn adamix(experts: usize, weight: f64) -> serde_json::Value {
    json!({"peft_type": "ADAMIX", "num_experts": experts, "bottleneck_size": 4, "init_weights": false, "consistency_weight": weight})
}

/// The recorded consistency term of one training pass seeded `seed` (None when none is recorded),
/// and the training loss's reported value of it.
fn consistency(model: &CausalLm, tuners: &Tuners, seed: u64) -> (Option<Tensor>, Option<f64>) {
    let inp = inputs();
    let ctx = Ctx::new(&model.store, false).with_tuners(tuners).training(seed).with_labels(&inp.labels);
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    add_consistency_loss(model, tuners, &inp.batch(), &ctx, &logits).unwrap();
    let term = ctx.aux_losses.lock().unwrap().iter().find(|(n, _)| n == NAME).map(|(_, t)| t.clone());
    let ce = peft_core::model::loss::causal_lm_loss(&logits, &inp.labels).unwrap();
    let (_, reported) = training_loss(ce, model, tuners, &ctx).unwrap();
    (term, reported.get(NAME).copied())
}

fn value(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_vec0::<f64>().unwrap()
}

#[test]
fn the_consistency_loss_is_zero_for_equal_routings_and_positive_otherwise() {
    // One expert: both routings are the same one.
    let (model, tuners) = contract::setup(&adamix(1, 1.0), DType::F64);
    let (term, reported) = consistency(&model, &tuners, 3);
    assert_eq!(value(&term.unwrap()), 0.0);
    assert_eq!(reported, Some(0.0));
    let (model, tuners) = contract::setup(&adamix(3, 1.0), DType::F64);
    for seed in [1, 2, 3] {
        let (term, reported) = consistency(&model, &tuners, seed);
        let v = value(&term.unwrap());
        assert!(v > 0.0 && v.is_finite(), "seed {seed}: {v}");
        assert!((reported.unwrap() - v).abs() < 1e-12, "reported in the training metrics");
    }
    // Weight 0: off, no second pass.
    let (model, tuners) = contract::setup(&adamix(3, 0.0), DType::F64);
    assert!(consistency(&model, &tuners, 1).0.is_none());
    assert!(contract::error_of(&adamix(3, -1.0)).contains("consistency_weight"));
}

#[test]
fn the_consistency_gradient_matches_finite_differences() {
    let (mut model, tuners) = contract::setup(&adamix(3, 0.5), DType::F64);
    let seed = 5;
    let (term, _) = consistency(&model, &tuners, seed);
    let grads = term.unwrap().backward().unwrap();
    model.store.accumulate_grads(&grads).unwrap();
    let mut checked = 0;
    for name in [
        "base_model.model.model.layers.0.mlp.adamix_down.default.weight",
        "base_model.model.model.layers.1.self_attn.adamix_up.default.weight",
    ] {
        let p = model.store.by_name(name).unwrap();
        let g: Vec<f64> = p.grad.as_ref().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f64> = p.value().flatten_all().unwrap().to_vec1().unwrap();
        let dims = p.dims().to_vec();
        let gmax = g.iter().fold(0f64, |m, x| m.max(x.abs()));
        assert!(gmax > 0.0, "{name}: zero gradient");
        let largest = (0..g.len()).max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs())).unwrap();
        for i in [largest, 0, g.len() / 2] {
            let at = |delta: f64| {
                let mut x = base.clone();
                x[i] += delta;
                model.store.by_name(name).unwrap().set(&Tensor::from_vec(x, dims.as_slice(), &candle_core::Device::Cpu).unwrap()).unwrap();
                value(&consistency(&model, &tuners, seed).0.unwrap())
            };
            let h = 1e-5;
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!((fd - g[i]).abs() / gmax < 1e-5, "{name}[{i}]: finite difference {fd} vs autograd {}", g[i]);
            checked += 1;
        }
        model.store.by_name(name).unwrap().set(&Tensor::from_vec(base, dims.as_slice(), &candle_core::Device::Cpu).unwrap()).unwrap();
    }
    assert_eq!(checked, 6);
}
