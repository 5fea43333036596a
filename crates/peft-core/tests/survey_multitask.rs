//! Multi-task composition from the PEFT survey's tree (issue 16, part A): AdapterFusion over
//! trained bottleneck adapters. The composition from trained adapters, and its errors.
use crate::common;
use crate::contract;
use candle_core::Tensor;
use common::*;
use contract::*;
use peft_core::model::CausalLm;
use peft_core::tuners::Tuners;
use serde_json::{json, Value};

/// Adds adapters `names` from `cfg` (random, non-zero up-projections) to one model.
fn with_adapters(cfg: &Value, names: &[&str]) -> (CausalLm, Tuners) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    for (seed, n) in names.iter().enumerate() {
        tuners.inject(&mut model, n, contract::config(cfg), seed as u64 + 1).unwrap();
    }
    (model, tuners)
}

fn serial(size: usize) -> Value {
    json!({"peft_type": "BOTTLENECK_ADAPTER", "bottleneck_size": size, "sublayers": ["mlp"], "init_weights": false})
}

/// Fusing an adapter with a copy of itself mixes two equal outputs: with V = I it is that
/// adapter, whatever Q and K; fusing two different ones is neither. The fusion holds copies
/// (deleting the sources changes nothing) and trains only Q, K, V.
#[test]
fn fusion_of_an_adapter_with_itself_is_that_adapter() {
    let (mut model, mut tuners) = with_adapters(&serial(8), &["a", "b", "c"]);
    for id in tuners.params("a").unwrap() {
        let name = model.store.get(id).name.clone();
        set(&model, &name.replace(".a.", ".b."), &model.store.get(id).value().clone());
    }
    let only = |model: &mut CausalLm, tuners: &mut Tuners, n: &str| {
        tuners.set_active(model, &[n]).unwrap();
        logits_with(model, Some(tuners))
    };
    let a = only(&mut model, &mut tuners, "a");
    tuners.add_fusion_adapter(&mut model, &["a", "b"], "ab").unwrap();
    tuners.add_fusion_adapter(&mut model, &["a", "c"], "ac").unwrap();
    let ab = only(&mut model, &mut tuners, "ab");
    assert!(max_abs_diff(&ab, &a) < 1e-5, "fusion(a, a) vs a: {}", max_abs_diff(&ab, &a));
    let (ac, c) = (only(&mut model, &mut tuners, "ac"), only(&mut model, &mut tuners, "c"));
    assert!(max_abs_diff(&ac, &a) > 1e-4 && max_abs_diff(&ac, &c) > 1e-4, "fusion(a, c) is neither a nor c");
    let trained: Vec<String> = tuners.params("ac").unwrap().into_iter().map(|id| model.store.get(id).name.clone()).collect();
    assert_eq!(trained.len(), 3 * 2, "Q, K, V at the 2 MLP sublayers: {trained:?}");
    assert!(
        trained.iter().all(|n| n.contains(".fusion_query.") || n.contains(".fusion_key.") || n.contains(".fusion_value.")),
        "{trained:?}"
    );
    for n in ["a", "b", "c"] {
        tuners.delete_adapter(&mut model, n).unwrap();
    }
    let after = only(&mut model, &mut tuners, "ac");
    assert!(max_abs_diff(&after, &ac) == 0.0, "the fusion holds copies of its adapters");
}

#[test]
fn fusion_refuses_adapters_it_cannot_fuse() {
    let (mut model, mut tuners) = with_adapters(&serial(8), &["a", "b"]);
    tuners.inject(&mut model, "wide", contract::config(&serial(16)), 3).unwrap();
    tuners.inject(&mut model, "lora", contract::config(&json!({"peft_type": "LORA", "r": 2})), 4).unwrap();
    for (sources, want) in [
        (vec!["a"], "2 to 16 bottleneck adapters"),
        (vec!["a", "lora"], "adapter `lora` of peft_type \"LORA\""),
        (vec!["a", "wide"], "`bottleneck_size` of `wide`: 16"),
        (vec!["a", "nope"], "\"nope\""),
    ] {
        let e = tuners.add_fusion_adapter(&mut model, &sources, "f").unwrap_err().to_string();
        assert!(e.contains(want), "{sources:?}: {e}");
        assert!(!tuners.names().contains(&"f".to_string()), "no half-built adapter left");
    }
}

fn lora(r: usize, alpha: usize) -> Value {
    json!({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "init_lora_weights": false, "target_modules": ["q_proj"]})
}

/// A new MoLE (e = 0) gives each LoRA the gate 1/N: with two LoRAs it is one LoRA of rank 2r
/// with A = [A₁; A₂], B = [s₁B₁, s₂B₂]/2 (scaling 1); training reports the mean gates.
#[test]
fn mole_starts_as_the_mean_of_its_loras_and_reports_its_gates() {
    use peft_core::model::{loss, Ctx};
    use peft_core::tuners::WithTuners;
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "a", contract::config(&lora(2, 4)), 1).unwrap();
    tuners.inject(&mut model, "b", contract::config(&lora(2, 8)), 2).unwrap();
    tuners.add_mole_adapter(&mut model, &["a", "b"], "mole").unwrap();
    let (joint, joint_t) = inject(&lora(4, 4), 3);
    for q in QS {
        let get = |n: &str, attr: &str| value(&model, &format!("{q}.{attr}.{n}.weight"));
        set(&joint, &format!("{q}.lora_A.default.weight"), &Tensor::cat(&[get("a", "lora_A"), get("b", "lora_A")], 0).unwrap());
        let b = Tensor::cat(&[(get("a", "lora_B") * 2.0).unwrap(), (get("b", "lora_B") * 4.0).unwrap()], 1).unwrap();
        set(&joint, &format!("{q}.lora_B.default.weight"), &(b * 0.5).unwrap());
    }
    tuners.set_active(&mut model, &["mole"]).unwrap();
    let d = max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&joint, Some(&joint_t)));
    assert!(d < 1e-5, "MoLE(e = 0) vs the mean LoRA: {d}");

    let ctx = Ctx::inference(&model.store).training(0).with_tuners(&tuners);
    let inp = inputs();
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    let l = loss::causal_lm_loss(&logits, &inp.labels).unwrap();
    let (_, metrics) = peft_core::tuners::aux_loss::training_loss(l, &model, &tuners, &ctx).unwrap();
    let (g0, g1) = (metrics["routing/mole.expert0"], metrics["routing/mole.expert1"]);
    assert!((g0 - 0.5).abs() < 1e-6 && (g1 - 0.5).abs() < 1e-6, "uniform gates at e = 0: {metrics:?}");
}

#[test]
fn mole_refuses_loras_it_cannot_mix() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    for (n, cfg) in [("a", lora(2, 2)), ("b", lora(2, 2)), ("r4", lora(4, 4)), ("ia3", json!({"peft_type": "IA3"}))] {
        tuners.inject(&mut model, n, contract::config(&cfg), 1).unwrap();
    }
    let mut kv = lora(2, 2);
    kv["target_modules"] = json!(["k_proj"]);
    tuners.inject(&mut model, "kv", contract::config(&kv), 2).unwrap();
    for (sources, want) in [
        (vec!["a"], "2 to 64 LoRA adapters"),
        (vec!["a", "ia3"], "adapter `ia3` of peft_type \"IA3\""),
        (vec!["a", "r4"], "`r4`: r = 4"),
        (vec!["a", "kv"], "same modules as `a`"),
    ] {
        let e = tuners.add_mole_adapter(&mut model, &sources, "m").unwrap_err().to_string();
        assert!(e.contains(want), "{sources:?}: {e}");
        assert!(!tuners.names().contains(&"m".to_string()));
    }
    tuners.add_mole_adapter(&mut model, &["a", "b"], "m").unwrap();
}

/// The soup of two LoRAs is the LoRA whose A and B are their means (θ = (1/k) Σ θᵢ); adapters
/// of different configs are refused, naming the field.
#[test]
fn adapter_soup_is_the_weight_average() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    for (n, seed) in [("a", 1), ("b", 2)] {
        tuners.inject(&mut model, n, contract::config(&lora(2, 4)), seed).unwrap();
    }
    tuners.add_soup_adapter(&mut model, &["a", "b"], "soup").unwrap();
    let (mean, mean_t) = inject(&lora(2, 4), 3);
    for q in QS {
        for attr in ["lora_A", "lora_B"] {
            let get = |n: &str| value(&model, &format!("{q}.{attr}.{n}.weight"));
            set(&mean, &format!("{q}.{attr}.default.weight"), &((get("a") + get("b")).unwrap() * 0.5).unwrap());
        }
    }
    tuners.set_active(&mut model, &["soup"]).unwrap();
    let d = max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&mean, Some(&mean_t)));
    assert!(d < 1e-6, "soup vs the mean LoRA: {d}");
    tuners.inject(&mut model, "alpha8", contract::config(&lora(2, 8)), 4).unwrap();
    let e = tuners.add_soup_adapter(&mut model, &["a", "alpha8"], "s2").unwrap_err().to_string();
    assert!(e.contains("`lora_alpha` of `alpha8`: 8"), "{e}");
}

/// Evaluation runs the bottleneck adapter with the experts' mean weights (adaptation merging);
/// a training forward runs one drawn (down, up) pair: one of the M² routes, several over seeds.
#[test]
fn adamix_routes_in_training_and_averages_at_inference() {
    use peft_core::model::Ctx;
    use peft_core::tuners::WithTuners;
    let site = json!({"bottleneck_size": 8, "sublayers": ["mlp"], "layers_to_transform": [0], "init_weights": false});
    let mut cfg = site.clone();
    cfg["peft_type"] = json!("ADAMIX");
    cfg["num_experts"] = json!(2);
    let (mix, mix_t) = inject(&cfg, 1);
    let mut one = site.clone();
    one["peft_type"] = json!("BOTTLENECK_ADAPTER");
    let (bn, bn_t) = inject(&one, 2);
    let p = "base_model.model.model.layers.0.mlp";
    let stacked = |attr: &str| value(&mix, &format!("{p}.{attr}.default.weight"));
    let as_bottleneck = |route: Option<(usize, usize)>| {
        for (attr, target, expert) in [
            ("adamix_down", "adapter_down.default.weight", 0),
            ("adamix_down_bias", "adapter_down.default.bias", 0),
            ("adamix_up", "adapter_up.default.weight", 1),
            ("adamix_up_bias", "adapter_up.default.bias", 1),
        ] {
            let t = stacked(attr);
            let v = match route {
                None => t.mean(0).unwrap(),
                Some(r) => t.get(if expert == 0 { r.0 } else { r.1 }).unwrap(),
            };
            set(&bn, &format!("{p}.{target}"), &v);
        }
        logits_with(&bn, Some(&bn_t))
    };
    let d = max_abs_diff(&logits_with(&mix, Some(&mix_t)), &as_bottleneck(None));
    assert!(d < 1e-5, "evaluation = the averaged adapter: {d}");
    let routes: Vec<Tensor> = [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().map(|r| as_bottleneck(Some(r))).collect();
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..8 {
        let ctx = Ctx::inference(&mix.store).training(seed).with_tuners(&mix_t);
        let train = mix.forward(&inputs().batch(), &ctx, None, false).unwrap();
        let hit =
            routes.iter().position(|r| max_abs_diff(&train, r) < 1e-5).unwrap_or_else(|| panic!("seed {seed}: not one of the 4 routes"));
        seen.insert(hit);
    }
    assert!(seen.len() >= 2, "routes drawn over 8 seeds: {seen:?}");
}

/// SPoT: a prompt initialised from a saved source prompt starts as that prompt; another shape is
/// refused naming both; the saved config stays PEFT's (no `init_from`).
#[test]
fn spot_initialises_a_prompt_from_a_source_prompt() {
    let (src, src_t) = inject(&json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3}), 1);
    let dir = std::env::temp_dir().join(format!("peft-core-spot-{}", std::process::id()));
    peft_core::io::adapter::save_adapter(&src_t, &src, "default", &dir).unwrap();
    let cfg = json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3, "init_from": dir.to_str().unwrap()});
    let (dst, dst_t) = inject(&cfg, 2);
    let name = "prompt_encoder.default.embedding.weight";
    assert_eq!(max_abs_diff(&value(&dst, name), &value(&src, name)), 0.0);
    assert!(dst_t.config("default").unwrap().to_json().get("init_from").is_none());
    let mut wrong = cfg.clone();
    wrong["num_virtual_tokens"] = json!(4);
    let e = contract::error_of(&wrong);
    assert!(e.contains("init_from") && e.contains("[4, 64]") && e.contains("[3, 64]") && e.contains("adapter_model.safetensors"), "{e}");
    let mut missing = cfg.clone();
    missing["init_from"] = json!(dir.join("nope").to_str().unwrap());
    assert!(contract::error_of(&missing).contains("nope"), "{}", contract::error_of(&missing));
    std::fs::remove_dir_all(&dir).ok();
}

/// Prompt tuning with the prompt `p` on a fresh model, for comparisons.
fn prompt_tuning_with(p: &Tensor) -> (CausalLm, Tuners) {
    let (pt, pt_t) = inject(&json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": p.dim(0).unwrap()}), 9);
    set(&pt, "prompt_encoder.default.embedding.weight", p);
    (pt, pt_t)
}

/// With one prompt the router's probability is 1: SMoP is prompt tuning. With two, each row
/// runs p_j·P_j for its own top-1 j; a file holds the prompts and the router.
#[test]
fn smop_routes_each_instance_to_one_scaled_prompt() {
    let (one, one_t) = inject(&json!({"peft_type": "SMOP", "num_virtual_tokens": 3, "num_prompts": 1}), 1);
    let (pt, pt_t) = prompt_tuning_with(&value(&one, "prompt_encoder.default.embedding.weight"));
    let d = max_abs_diff(&logits_with(&one, Some(&one_t)), &logits_with(&pt, Some(&pt_t)));
    assert!(d < 1e-5, "SMoP(k = 1) vs prompt tuning: {d}");
    let (two, two_t) = inject(&json!({"peft_type": "SMOP", "num_virtual_tokens": 3, "num_prompts": 2}), 2);
    let router = "prompt_encoder.default.smop_router.weight";
    let r = value(&two, router);
    let zero = Tensor::zeros(r.dim(1).unwrap(), r.dtype(), r.device()).unwrap();
    // Both router rows 0: the logits tie, the top-1 is prompt 0 (the first), with p = ½.
    set(&two, router, &Tensor::stack(&[&zero, &zero], 0).unwrap());
    let prompts = value(&two, "prompt_encoder.default.embedding.weight");
    let (pt, pt_t) = prompt_tuning_with(&(prompts.narrow(0, 0, 3).unwrap() * 0.5).unwrap());
    let d = max_abs_diff(&logits_with(&two, Some(&two_t)), &logits_with(&pt, Some(&pt_t)));
    assert!(d < 1e-5, "tied router: ½·P₀: {d}");
    let keys: Vec<String> = two_t.checkpoint_keys(&two, "default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["prompt_embeddings", "prompt_encoder.smop_router.weight"]);
    assert_eq!(two_t.config("default").unwrap().to_json()["num_virtual_tokens"], 3, "each prompt's length");
}

/// With W_up = 0 (the default start) IDPG's prompt is b_up for every instance: prompt tuning.
#[test]
fn idpg_starts_as_prompt_tuning() {
    let (g, g_t) = inject(&json!({"peft_type": "IDPG", "num_virtual_tokens": 3}), 1);
    let (pt, pt_t) = prompt_tuning_with(&value(&g, "prompt_encoder.default.embedding.weight"));
    let d = max_abs_diff(&logits_with(&g, Some(&g_t)), &logits_with(&pt, Some(&pt_t)));
    assert!(d < 1e-6, "IDPG(W_up = 0) vs prompt tuning: {d}");
    let keys: Vec<String> = g_t.checkpoint_keys(&g, "default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["prompt_embeddings", "prompt_encoder.idpg_down.weight", "prompt_encoder.idpg_down_bias.weight", "prompt_encoder.idpg_up.weight"]
    );
}

/// With the per-layer offsets at zero it is prompt tuning; with offsets, they act on the prefix
/// positions only: decoding token by token from the cache equals one full pass.
#[test]
fn prefix_propagation_offsets_the_prefix_positions_only() {
    let (pp, pp_t) = inject(&json!({"peft_type": "PREFIX_PROPAGATION", "num_virtual_tokens": 3}), 1);
    let (pt, pt_t) = prompt_tuning_with(&value(&pp, "prompt_encoder.default.embedding.weight"));
    let d = max_abs_diff(&logits_with(&pp, Some(&pp_t)), &logits_with(&pt, Some(&pt_t)));
    assert!(d < 1e-6, "zero offsets vs prompt tuning: {d}");
    let keys: Vec<String> = pp_t.checkpoint_keys(&pp, "default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        ["prompt_embeddings", "base_model.model.model.layers.0.mlp.prefix_propagation.weight"],
        "P₀, and P₁ before the last of 2 layers"
    );

    let (model, tuners) = contract::setup(
        &json!({"peft_type": "PREFIX_PROPAGATION", "num_virtual_tokens": 3, "init_weights": false}),
        candle_core::DType::F64,
    );
    let without = {
        let (m, t) =
            prompt_tuning_with(&value(&model, "prompt_encoder.default.embedding.weight").to_dtype(candle_core::DType::F32).unwrap());
        logits_with(&m, Some(&t))
    };
    assert!(
        max_abs_diff(&logits_with(&model, Some(&tuners)).to_dtype(candle_core::DType::F32).unwrap(), &without) > 1e-4,
        "the offsets change the output"
    );
    let row: Vec<u32> = inputs().input_ids[0].iter().take(8).copied().collect();
    let (_, diff) = cached_decoding_diff(&model, &tuners, &row);
    assert!(diff < 1e-10, "cached decoding vs full pass: {diff}");
}
