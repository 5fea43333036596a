//! The hybrid methods, MAM adapter (He et al. 2022 §4.4) and UniPELT (Mao et al. 2022
//! §3.2): the gate equations against the parts they gate (built as separate
//! adapters with the same values: a constant gate c is the part scaled by c), per-token
//! gates that stay causal under the KV cache, the files, and config errors. Their contract
//! (finite differences on every parameter kind included): `contract/table.rs`.
use crate::common;
use crate::contract;
use candle_core::{DType, Tensor};
use common::{inputs, logits_with, loss_with, max_abs_diff};
use contract::{config, error_of, setup};
use peft_core::model::{Batch, CausalLm, Ctx, KvCache};
use peft_core::tuners::Tuners;
use peft_core::tuners::WithTuners;
use serde_json::{json, Value};

fn mam() -> Value {
    json!({"peft_type": "MAM_ADAPTER", "num_virtual_tokens": 4, "bottleneck_size": 8})
}

fn unipelt() -> Value {
    json!({"peft_type": "UNIPELT", "num_virtual_tokens": 4, "r": 4, "lora_alpha": 4, "bottleneck_size": 8})
}

/// Copies adapter `from`'s parameters whose names contain `part` into adapter `to`'s
/// (same name with `.to.` / `prompt_encoder.to.`), multiplied by `scale` where `scaled` says.
fn copy_part(model: &CausalLm, tuners: &Tuners, from: &str, to: &str, part: &str, scale: f64, scaled: impl Fn(&str) -> bool) {
    for id in tuners.params(from).unwrap() {
        let name = model.store.get(id).name.clone();
        if !name.contains(part) {
            continue;
        }
        let target = name.replace(&format!(".{from}."), &format!(".{to}."));
        let v = model.store.get(id).value().clone();
        let v = if scaled(&name) { (v * scale).unwrap() } else { v };
        model.store.by_name(&target).unwrap_or_else(|_| panic!("no {target}")).set(&v).unwrap();
    }
}

/// Gate weights 0 and biases logit(c): every gate is the constant c of its kind.
fn force_gates(model: &CausalLm, tuners: &Tuners, adapter: &str, c: &[(&str, f64)]) {
    for id in tuners.params(adapter).unwrap() {
        let p = model.store.get(id);
        for (kind, c) in c {
            if p.name.contains(&format!("{kind}.{adapter}.")) {
                let v = if p.name.ends_with(".weight") {
                    p.value().zeros_like().unwrap()
                } else {
                    let logit = if *c == 0.0 { -1e4 } else { (c / (1.0 - c)).ln() };
                    Tensor::full(logit, p.dims(), &p.device()).unwrap().to_dtype(p.dtype()).unwrap()
                };
                p.set(&v).unwrap();
            }
        }
    }
}

fn active_logits(model: &mut CausalLm, tuners: &mut Tuners, names: &[&str]) -> Tensor {
    tuners.set_active(model, names).unwrap();
    logits_with(model, Some(tuners))
}

/// UniPELT with constant gates (c_P, c_L, c_A) equals prefix tuning with c_P·P (G_P
/// scales P_K and P_V), LoRA with c_L·B and a serial MLP adapter with c_A·W_up, c_A·b_up,
/// run together; c = 0 leaves a zero prefix (keys and values 0) and nothing else.
#[test]
fn unipelt_gates_scale_their_parts() {
    for (cp, cl, ca) in [(0.3, 0.6, 0.8), (1.0 - 1e-12, 1.0 - 1e-12, 1.0 - 1e-12), (0.0, 0.0, 0.0)] {
        let (mut model, mut tuners) = setup(&unipelt(), DType::F64);
        force_gates(&model, &tuners, "default", &[("gate_prefix", cp), ("gate_lora", cl), ("gate_adapter", ca)]);
        let gated = logits_with(&model, Some(&tuners));
        tuners.inject(&mut model, "p", config(&json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4})), 1).unwrap();
        tuners
            .inject(
                &mut model,
                "l",
                config(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]})),
                1,
            )
            .unwrap();
        let adapter = json!({"peft_type": "BOTTLENECK_ADAPTER", "bottleneck_size": 8, "sublayers": ["mlp"]});
        tuners.inject(&mut model, "a", config(&adapter), 1).unwrap();
        copy_part(&model, &tuners, "default", "p", "prompt_encoder", cp, |_| true);
        copy_part(&model, &tuners, "default", "l", "lora_", cl, |n| n.contains("lora_B"));
        copy_part(&model, &tuners, "default", "a", "adapter_", ca, |n| n.contains("adapter_up"));
        let parts = active_logits(&mut model, &mut tuners, &["p", "l", "a"]);
        let d = max_abs_diff(&gated, &parts);
        println!("UniPELT gates ({cp}, {cl}, {ca}) vs scaled parts: max |Δlogit| {d:e}");
        assert!(d < 1e-9, "gates ({cp}, {cl}, {ca}): {d}");
        // The parts must matter, or the comparison proves nothing.
        let base = active_logits(&mut model, &mut tuners, &["a"]);
        tuners.set_enabled(&mut model, false).unwrap();
        assert!(max_abs_diff(&gated, &logits_with(&model, Some(&tuners))) > 1e-4);
        assert!(ca == 0.0 || max_abs_diff(&base, &logits_with(&model, Some(&tuners))) > 1e-4);
    }
}

/// MAM is exactly prefix tuning and a parallel adapter (s = 4) run together; with its
/// adapter's up projection zeroed it is prefix tuning alone.
#[test]
fn mam_is_prefix_plus_parallel_adapter() {
    let (mut model, mut tuners) = setup(&mam(), DType::F64);
    let mam_logits = logits_with(&model, Some(&tuners));
    tuners.inject(&mut model, "p", config(&json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4})), 1).unwrap();
    tuners.inject(&mut model, "a", config(&json!({"peft_type": "PARALLEL_ADAPTER", "bottleneck_size": 8, "scaling": 4.0})), 1).unwrap();
    copy_part(&model, &tuners, "default", "p", "prompt_encoder", 1.0, |_| false);
    copy_part(&model, &tuners, "default", "a", "adapter_", 1.0, |_| false);
    let d = max_abs_diff(&mam_logits, &active_logits(&mut model, &mut tuners, &["p", "a"]));
    assert!(d < 1e-10, "MAM vs prefix + parallel adapter: {d}");
    copy_part(&model, &tuners, "default", "default", "adapter_up", 0.0, |_| true);
    let no_adapter = active_logits(&mut model, &mut tuners, &["default"]);
    let d = max_abs_diff(&no_adapter, &active_logits(&mut model, &mut tuners, &["p"]));
    assert!(d < 1e-10, "MAM without its adapter vs prefix tuning: {d}");
    assert!(max_abs_diff(&mam_logits, &no_adapter) > 1e-4, "the adapter should matter");
}

/// Per-token gates: decoding token by token with the KV cache (the prefix gated again at
/// every step) gives the logits of one full forward pass, so no gate sees later tokens.
#[test]
fn unipelt_gates_are_causal_under_the_cache() {
    let (model, tuners) = setup(&unipelt(), DType::F64);
    let row: Vec<u32> = inputs().input_ids[0].iter().take(8).copied().collect();
    let ctx = Ctx::inference(&model.store).with_tuners(&tuners);
    let full = model.forward(&Batch::new(vec![row.clone()]), &ctx, None, false).unwrap();
    let mut cache = KvCache::new(model.layers.len());
    let mut steps = vec![model.forward(&Batch::new(vec![row[..3].to_vec()]), &ctx, Some(&mut cache), false).unwrap()];
    for &tok in &row[3..] {
        steps.push(model.forward(&Batch::new(vec![vec![tok]]), &ctx, Some(&mut cache), false).unwrap());
    }
    let d = max_abs_diff(&Tensor::cat(&steps, 1).unwrap(), &full);
    println!("UniPELT cached decoding vs full forward: {d:e}");
    assert!(d < 1e-10, "{d}");
}

/// The files: our `peft_type`, PEFT's keys (`base_model.model.` and the prefix as
/// `prompt_embeddings`), no adapter name in the keys, every part present.
#[test]
fn unipelt_files_follow_peft_conventions() {
    let (model, tuners) = setup(&unipelt(), DType::F32);
    let dir = common::tmp("unipelt-files");
    peft_core::io::adapter::save_adapter(&tuners, &model, "default", &dir).unwrap();
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["peft_type"], "UNIPELT");
    assert_eq!(cfg["num_layers"], model.layers.len());
    let tensors = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(tensors.contains_key("prompt_embeddings"));
    assert!(tensors.keys().all(|k| k == "prompt_embeddings" || k.starts_with("base_model.model.model.layers.")), "{:?}", tensors.keys());
    assert!(tensors.keys().all(|k| !k.contains(".default")));
    for part in
        ["q_proj.lora_A.weight", "v_proj.gate_lora.bias", "self_attn.gate_prefix.weight", "mlp.adapter_up.bias", "mlp.gate_adapter.weight"]
    {
        assert!(tensors.keys().any(|k| k.ends_with(part)), "no {part}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "MAM_ADAPTER", "num_virtual_tokens": 0}), "num_virtual_tokens"),
        (json!({"peft_type": "MAM_ADAPTER", "num_virtual_tokens": -3}), "num_virtual_tokens"),
        (json!({"peft_type": "MAM_ADAPTER", "bottleneck_size": 0}), "bottleneck_size"),
        (json!({"peft_type": "MAM_ADAPTER", "scaling": "x"}), "scaling"),
        (json!({"peft_type": "MAM_ADAPTER", "num_layers": 7}), "num_layers"),
        (json!({"peft_type": "UNIPELT", "num_virtual_tokens": 0}), "num_virtual_tokens"),
        (json!({"peft_type": "UNIPELT", "bottleneck_size": 0}), "bottleneck_size"),
        (json!({"peft_type": "UNIPELT", "r": 0}), "r"),
        (json!({"peft_type": "UNIPELT", "non_linearity": "softplus"}), "non_linearity"),
        (json!({"peft_type": "UNIPELT", "target_modules": ["nope"]}), "target_modules"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(&format!("`{key}`")), "{cfg}: {e}");
    }
    let (_, warnings) =
        peft_core::tuners::parse_config(&json!({"peft_type": "UNIPELT", "shiny": 1}), None, std::path::Path::new("t")).unwrap();
    assert!(warnings.iter().any(|w| w.message.contains("shiny")), "{warnings:?}");
}

/// From the default inits (zero B, zero W_up): after two AdamW steps every trainable
/// parameter of both methods gets a finite, non-zero gradient.
#[test]
fn every_parameter_trains_from_the_default_init() {
    for v in [mam(), unipelt()] {
        let mut model = common::load_model();
        let mut tuners = Tuners::new();
        tuners.inject(&mut model, "default", config(&v), 0).unwrap();
        let h = peft_core::optim::AdamWHyper { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        common::two_adamw_steps_with(&mut model, Some(&tuners), &h);
        model.store.zero_grad();
        loss_with(&mut model, Some(&tuners), true);
        let mut n = 0;
        for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
            let g = common::flat(p.grad.as_ref().unwrap_or_else(|| panic!("{} has no gradient", p.name)));
            assert!(g.iter().all(|x| x.is_finite()) && g.iter().any(|&x| x != 0.0), "{}: {}", v["peft_type"], p.name);
            n += 1;
        }
        assert_eq!(n, tuners.params("default").unwrap().len());
        println!("{}: {n} trainable tensors, all with finite non-zero gradients", v["peft_type"]);
    }
}

/// Saturated gates (|z| far past f32's e^88) keep every gradient finite: real models'
/// hidden states reach such gate inputs at init (SmolLM2 did, with 1/(1 + e^(−z))).
#[test]
fn saturated_gates_keep_gradients_finite() {
    let (mut model, tuners) = setup(&unipelt(), DType::F32);
    for id in tuners.params("default").unwrap() {
        let p = model.store.get(id);
        if p.name.contains("gate_") && p.name.ends_with(".bias") {
            let z = if p.name.contains("gate_lora") { 300.0 } else { -300.0 };
            p.set(&Tensor::full(z as f32, p.dims(), &p.device()).unwrap()).unwrap();
        }
    }
    model.store.zero_grad();
    let loss = loss_with(&mut model, Some(&tuners), true);
    assert!(loss.is_finite());
    let mut checked = 0;
    for id in tuners.params("default").unwrap() {
        let p = model.store.get(id);
        if let Some(g) = &p.grad {
            let v = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{}: non-finite gradient", p.name);
            checked += 1;
        }
    }
    assert!(checked > 10, "{checked} gradients checked");
}
