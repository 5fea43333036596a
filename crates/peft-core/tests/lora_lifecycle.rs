//! The tuner base's lifecycle with LoRA and DoRA: merge/unmerge, enable/disable, several
//! named adapters, set_adapter, delete_adapter, unload, merge_and_unload.
use crate::common;
use common::*;
use peft_core::model::CausalLm;
use peft_core::tuners::Tuners;
use serde_json::json;

/// Two adapters on the tiny model: `a` (LoRA on q/v), `b` (DoRA on every other linear),
/// both with random B so that neither is a no-op. They share no module: with DoRA and
/// another adapter on one module, PEFT's merge is not its forward (the DoRA norm is taken
/// of W in the forward, of W + the other's delta in the merge), and we follow PEFT.
fn two_adapters() -> (CausalLm, Tuners) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners
        .inject(
            &mut model,
            "a",
            lora(json!({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": false})),
            1,
        )
        .unwrap();
    let b = lora(
        json!({"r": 2, "lora_alpha": 4, "target_modules": "all-linear", "exclude_modules": ["q_proj", "v_proj"], "use_dora": true, "init_lora_weights": false}),
    );
    tuners.inject(&mut model, "b", b, 2).unwrap();
    (model, tuners)
}

fn trainable(model: &CausalLm) -> Vec<String> {
    let mut v: Vec<String> = model.store.iter().filter(|(_, p)| p.requires_grad()).map(|(_, p)| p.name.clone()).collect();
    v.sort();
    v
}

fn base_weights(model: &CausalLm) -> std::collections::HashMap<String, candle_core::Tensor> {
    snapshot(model).into_iter().filter(|(k, _)| !k.starts_with("base_model.")).collect()
}

fn base_diff(model: &CausalLm, base: &std::collections::HashMap<String, candle_core::Tensor>) -> f32 {
    base.iter().map(|(k, v)| max_abs_diff(&model.store.by_name(k).unwrap().value(), v)).fold(0.0, f32::max)
}

#[test]
fn first_adapter_is_active_and_only_it_trains() {
    let (mut model, mut tuners) = two_adapters();
    assert_eq!(tuners.active(), ["a"]);
    assert_eq!(tuners.names(), ["a", "b"]);
    let t = trainable(&model);
    assert_eq!(t.len(), 8);
    assert!(t.iter().all(|n| n.contains(".default.") || n.contains(".a.")), "{t:?}");
    assert!(
        model.store.iter().filter(|(_, p)| !p.name.starts_with("base_model.")).all(|(_, p)| !p.requires_grad()),
        "base weights stay frozen"
    );
    tuners.set_active(&mut model, &["b"]).unwrap();
    assert!(trainable(&model).iter().all(|n| n.contains(".b.")));
    assert_eq!(trainable(&model).len(), 10 * 3);
    tuners.set_active(&mut model, &["a", "b"]).unwrap();
    assert_eq!(trainable(&model).len(), 8 + 30);
    let e = tuners.set_active(&mut model, &["c"]).unwrap_err().to_string();
    assert!(e.contains("\"c\"") && e.contains("a, b"), "{e}");
    // Both active: both receive gradients from one backward pass.
    loss_with(&mut model, Some(&tuners), true);
    assert!(model.store.iter().filter(|(_, p)| p.requires_grad()).all(|(_, p)| p.grad.is_some()));
    // Parameter names are PEFT's, with the adapter name inside.
    assert!(model.store.by_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.a.weight").is_ok());
    assert!(model.store.by_name("base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector.b.weight").is_ok());
}

#[test]
fn set_adapter_switches_the_output() {
    let (mut model, mut tuners) = two_adapters();
    let base = logits_with(&model, None);
    let la = logits_with(&model, Some(&tuners));
    tuners.set_active(&mut model, &["b"]).unwrap();
    let lb = logits_with(&model, Some(&tuners));
    tuners.set_active(&mut model, &["a", "b"]).unwrap();
    let lab = logits_with(&model, Some(&tuners));
    assert!(max_abs_diff(&la, &base) > 1e-3 && max_abs_diff(&lb, &base) > 1e-3 && max_abs_diff(&la, &lb) > 1e-3);
    assert!(max_abs_diff(&lab, &la) > 1e-3 && max_abs_diff(&lab, &lb) > 1e-3);
    tuners.set_active(&mut model, &["a"]).unwrap();
    assert_eq!(max_abs_diff(&logits_with(&model, Some(&tuners)), &la), 0.0);
}

#[test]
fn disabled_adapters_give_the_base_model() {
    let (mut model, mut tuners) = two_adapters();
    tuners.set_active(&mut model, &["a", "b"]).unwrap();
    let base = logits_with(&model, None);
    let with = logits_with(&model, Some(&tuners));
    tuners.merge(&mut model, None).unwrap();
    tuners.set_enabled(&mut model, false).unwrap();
    assert!(!tuners.is_merged(), "disabling unmerges");
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &base) < 1e-5);
    assert!(trainable(&model).is_empty(), "disabled adapters do not train");
    tuners.set_enabled(&mut model, true).unwrap();
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &with) < 1e-5);
    assert_eq!(trainable(&model).len(), 38);
}

#[test]
fn merge_then_unmerge_restores_the_base() {
    let (mut model, mut tuners) = two_adapters();
    tuners.set_active(&mut model, &["a", "b"]).unwrap();
    let base = base_weights(&model);
    let with = logits_with(&model, Some(&tuners));
    tuners.merge(&mut model, None).unwrap();
    assert!(tuners.is_merged());
    assert!(base_diff(&model, &base) > 1e-3, "merging changes the base weights");
    let merged = logits_with(&model, Some(&tuners));
    println!("merged vs unmerged logits {:e}", max_abs_diff(&merged, &with));
    assert!(max_abs_diff(&merged, &with) < 1e-4);
    tuners.merge(&mut model, None).unwrap(); // merging twice is a no-op
    tuners.unmerge(&mut model).unwrap();
    let d = base_diff(&model, &base);
    println!("base after unmerge max abs err {d:e}");
    assert!(d < 1e-6);
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &with) < 1e-5);
    // Adding or deleting while merged is refused.
    tuners.merge(&mut model, Some(&["b"])).unwrap();
    let e = tuners.delete_adapter(&mut model, "b").unwrap_err().to_string();
    assert!(e.contains("merged"), "{e}");
    let e = tuners.inject(&mut model, "c", lora(json!({"target_modules": ["q_proj"]})), 0).unwrap_err().to_string();
    assert!(e.contains("merged"), "{e}");
}

#[test]
fn delete_adapter_removes_its_parameters() {
    let (mut model, mut tuners) = two_adapters();
    let n_base = 1 + 2 * 9 + 1 + 1; // embed, 2 layers x (7 linears + 2 norms), norm, lm_head
    assert_eq!(model.store.iter().count(), n_base + 8 + 30);
    let w = tuners.delete_adapter(&mut model, "a").unwrap();
    assert!(w.iter().any(|w| w.contains("`b`")), "{w:?}");
    assert_eq!(tuners.active(), ["b"]);
    assert_eq!(tuners.names(), ["b"]);
    assert_eq!(model.store.iter().count(), n_base + 30);
    assert!(model.store.iter().all(|(_, p)| !p.name.contains(".a.")));
    assert_eq!(trainable(&model).len(), 30);
    let e = tuners.delete_adapter(&mut model, "a").unwrap_err().to_string();
    assert!(e.contains("\"a\""), "{e}");
    // The name can be used again.
    tuners.inject(&mut model, "a", lora(json!({"target_modules": ["k_proj"]})), 0).unwrap();
    let e = tuners.inject(&mut model, "a", lora(json!({"target_modules": ["k_proj"]})), 0).unwrap_err().to_string();
    assert!(e.contains("not in use"), "{e}");
}

#[test]
fn unload_gives_back_the_base_model() {
    let (mut model, mut tuners) = two_adapters();
    let base = base_weights(&model);
    let logits = logits_with(&model, None);
    tuners.set_active(&mut model, &["a", "b"]).unwrap();
    tuners.merge(&mut model, None).unwrap();
    tuners.unload(&mut model).unwrap();
    assert!(tuners.names().is_empty() && tuners.active().is_empty());
    assert_eq!(model.store.iter().count(), base.len());
    assert!(base_diff(&model, &base) < 1e-6);
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits) < 1e-5);
}

#[test]
fn merge_and_unload_keeps_the_output() {
    let (mut model, mut tuners) = two_adapters();
    tuners.set_active(&mut model, &["a", "b"]).unwrap();
    let with = logits_with(&model, Some(&tuners));
    let base = base_weights(&model);
    tuners.merge_and_unload(&mut model, None).unwrap();
    assert!(tuners.names().is_empty());
    assert_eq!(model.store.iter().count(), base.len());
    assert!(model.store.iter().all(|(_, p)| !p.requires_grad()));
    let d = max_abs_diff(&logits_with(&model, None), &with);
    println!("merge_and_unload vs adapters logits {d:e}");
    assert!(d < 1e-4);
}
