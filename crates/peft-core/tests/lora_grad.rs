//! Gradients of LoRA and DoRA parameters: every trainable one receives a finite, non-zero
//! gradient, and the gradients agree with central finite differences in f64.
use crate::common;
use crate::contract::{load_in, loss64};
use candle_core::{DType, Tensor};
use common::*;
use peft_core::model::CausalLm;
use peft_core::tuners::Tuners;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// LoRA (all linears, rsLoRA) and DoRA (attention) both active, every B randomised so that
/// the gradients of A are not zero.
fn setup(dtype: DType) -> (CausalLm, Tuners) {
    let mut model = load_in(dtype);
    let mut tuners = Tuners::new();
    tuners
        .inject(&mut model, "lora", lora(json!({"r": 4, "lora_alpha": 8, "use_rslora": true, "target_modules": "all-linear"})), 1)
        .unwrap();
    tuners
        .inject(&mut model, "dora", lora(json!({"r": 2, "lora_alpha": 4, "use_dora": true, "target_modules": r".*self_attn\..*"})), 2)
        .unwrap();
    tuners.set_active(&mut model, &["lora", "dora"]).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for (_, p) in model.store.iter().filter(|(_, p)| p.name.contains("lora_B")) {
        let v: Vec<f64> = (0..p.value().elem_count()).map(|_| rng.random_range(-0.2..0.2)).collect();
        p.set(&Tensor::from_vec(v, p.dims(), &p.device()).unwrap()).unwrap();
    }
    (model, tuners)
}

#[test]
fn every_trainable_adapter_parameter_gets_a_gradient() {
    let (mut model, tuners) = setup(DType::F32);
    loss_with(&mut model, Some(&tuners), true);
    let mut n = 0;
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        assert!(p.name.starts_with("base_model.model."), "{} should be frozen", p.name);
        let g = p.grad.as_ref().unwrap_or_else(|| panic!("{} has no gradient", p.name)).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{}: non-finite gradient", p.name);
        assert!(g.iter().any(|&x| x != 0.0), "{}: zero gradient", p.name);
        n += 1;
    }
    assert_eq!(n, 14 * 2 + 8 * 3);
    assert!(
        model.store.iter().filter(|(_, p)| !p.name.starts_with("base_model.")).all(|(_, p)| p.grad.is_none()),
        "base weights got gradients"
    );
}

/// Central differences against autograd for a few elements of `name`.
fn check_fd(model: &mut CausalLm, tuners: &Tuners, name: &str, grads: &std::collections::HashMap<String, Vec<f64>>) -> f64 {
    let p = model.store.by_name(name).unwrap();
    let base: Vec<f64> = p.value().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let dims = p.dims().to_vec();
    let g = &grads[name];
    let gmax = g.iter().fold(0f64, |m, x| m.max(x.abs()));
    let h = 1e-5;
    let mut worst = 0f64;
    let picks = [0, base.len() / 3, base.len() / 2, base.len() - 1];
    for &i in &picks {
        let at = |delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            model.store.by_name(name).unwrap().set(&Tensor::from_vec(v, dims.as_slice(), &candle_core::Device::Cpu).unwrap()).unwrap();
            loss64(model, tuners)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h);
        worst = worst.max((fd - g[i]).abs() / gmax);
    }
    model.store.by_name(name).unwrap().set(&Tensor::from_vec(base, dims.as_slice(), &candle_core::Device::Cpu).unwrap()).unwrap();
    worst
}

#[test]
fn gradients_match_finite_differences_in_f64() {
    let (mut model, tuners) = setup(DType::F64);
    loss_with(&mut model, Some(&tuners), true);
    let grads: std::collections::HashMap<String, Vec<f64>> = model
        .store
        .iter()
        .filter_map(|(_, p)| p.grad.as_ref().map(|g| (p.name.clone(), g.flatten_all().unwrap().to_vec1::<f64>().unwrap())))
        .collect();
    // DoRA's A and B are left out on purpose: PEFT detaches the weight norm, so their
    // gradient is by design not the derivative of the loss; the magnitude's is.
    for name in [
        "base_model.model.model.layers.0.mlp.down_proj.lora_A.lora.weight",
        "base_model.model.model.layers.1.self_attn.k_proj.lora_B.lora.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.dora.weight",
        "base_model.model.model.layers.1.self_attn.o_proj.lora_magnitude_vector.dora.weight",
    ] {
        let err = check_fd(&mut model, &tuners, name, &grads);
        println!("{name}: finite-difference rel err {err:e}");
        assert!(err < 1e-6, "{name}: {err}");
    }
}
