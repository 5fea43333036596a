//! PEFT's targeting rules on the tiny model (2 layers): list (exact or `.name` suffix),
//! regex (full match), all-linear, exclude_modules, layers_to_transform/layers_pattern,
//! rank_pattern/alpha_pattern, and the errors when nothing matches.
use crate::common;
use common::*;
use peft_core::tuners::lora::LoraConfig;
use peft_core::tuners::Tuners;
use serde_json::{json, Value};
use std::path::Path;

fn targeted(cfg: Value) -> Vec<String> {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", lora(cfg), 0).unwrap().targeted
}

const L0: &str = "model.layers.0";
const L1: &str = "model.layers.1";

#[test]
fn list_targets_match_exact_names_and_suffixes() {
    assert_eq!(targeted(json!({"target_modules": ["q_proj"]})), [format!("{L0}.self_attn.q_proj"), format!("{L1}.self_attn.q_proj")]);
    assert_eq!(targeted(json!({"target_modules": [format!("{L1}.mlp.up_proj")]})), [format!("{L1}.mlp.up_proj")]);
    assert_eq!(targeted(json!({"target_modules": ["self_attn.o_proj", "mlp.down_proj"]})).len(), 4);
    // A partial segment is not a suffix match.
    assert!(inject_err(json!({"target_modules": ["proj"]})).contains("not found"));
    // No target_modules: PEFT's table for llama (q_proj, v_proj), written back into the config.
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let r = tuners.inject(&mut model, "default", lora(json!({})), 0).unwrap();
    assert_eq!(r.targeted.len(), 4);
    assert_eq!(tuners.config("default").unwrap().to_json()["target_modules"], json!(["q_proj", "v_proj"]));
}

#[test]
fn string_targets_are_full_regex_matches() {
    assert_eq!(targeted(json!({"target_modules": r".*\.layers\.0\..*_proj"})).len(), 7);
    assert_eq!(targeted(json!({"target_modules": r".*(q|v)_proj"})).len(), 4);
    // Full match: a pattern matching only part of the path targets nothing.
    assert!(inject_err(json!({"target_modules": "q_proj"})).contains("not found"));
    // A regex that reaches a module that is not a linear layer is refused, naming it.
    let e = inject_err(json!({"target_modules": r".*\.self_attn"}));
    assert!(e.contains("model.layers.0.self_attn") && e.contains("not a linear layer"), "{e}");
}

#[test]
fn all_linear_targets_every_linear_but_the_head() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let r = tuners.inject(&mut model, "default", lora(json!({"target_modules": "all-linear"})), 0).unwrap();
    assert_eq!(r.targeted.len(), 14);
    assert!(!r.targeted.iter().any(|t| t == "lm_head"));
    // PEFT writes the module names it resolved to into the saved config.
    let saved: Vec<String> = serde_json::from_value(tuners.config("default").unwrap().to_json()["target_modules"].clone()).unwrap();
    assert_eq!(saved, r.targeted);
    // lm_head can still be targeted by name.
    assert_eq!(targeted(json!({"target_modules": ["lm_head"]})), ["lm_head"]);
}

#[test]
fn exclude_modules_as_list_or_regex() {
    assert_eq!(targeted(json!({"target_modules": "all-linear", "exclude_modules": ["down_proj"]})).len(), 12);
    assert_eq!(targeted(json!({"target_modules": "all-linear", "exclude_modules": r".*\.layers\.1\..*"})).len(), 7);
    let e = inject_err(json!({"target_modules": ["q_proj"], "exclude_modules": ["q_proj"]}));
    assert!(e.contains("excluded"), "{e}");
}

#[test]
fn layers_to_transform_and_layers_pattern() {
    let t = targeted(json!({"target_modules": ["q_proj", "v_proj"], "layers_to_transform": 1}));
    assert_eq!(t, [format!("{L1}.self_attn.q_proj"), format!("{L1}.self_attn.v_proj")]);
    let t = targeted(json!({"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": "layers"}));
    assert_eq!(t, [format!("{L0}.self_attn.q_proj")]);
    let t = targeted(json!({"target_modules": ["q_proj"], "layers_to_transform": [0, 1], "layers_pattern": ["h", "layers"]}));
    assert_eq!(t.len(), 2);
    // An exact module name is taken as is, whatever the layer filter (PEFT's order of checks).
    assert_eq!(
        targeted(json!({"target_modules": [format!("{L1}.mlp.up_proj")], "layers_to_transform": [0]})),
        [format!("{L1}.mlp.up_proj")]
    );
    let e = inject_err(json!({"target_modules": ["q_proj"], "layers_to_transform": [5]}));
    assert!(e.contains("not found") && e.contains("layers_to_transform [5]"), "{e}");
    let e = inject_err(json!({"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": "h"}));
    assert!(e.contains("layers_pattern"), "{e}");
    let e = inject_err(json!({"target_modules": ["q_proj"], "layers_pattern": "layers"}));
    assert!(e.contains("layers_to_transform"), "{e}");
}

#[test]
fn no_match_lists_the_available_modules() {
    let e = inject_err(json!({"target_modules": ["query", "value"]}));
    for want in [
        "target_modules",
        "query",
        "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head",
        "model.layers.0.self_attn.q_proj",
    ] {
        assert!(e.contains(want), "`{e}` lacks {want}");
    }
}

#[test]
fn long_target_lists_are_condensed_as_peft_does() {
    // 20 or more names: PEFT replaces them by the fewest suffixes that select the same modules.
    let mut list: Vec<String> =
        peft_core::tuners::targeting::module_names(&load_model()).into_iter().filter(|n| n.ends_with("_proj")).collect();
    list.extend((0..6).map(|i| format!("missing{i}")));
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let r = tuners.inject(&mut model, "default", lora(json!({"target_modules": list})), 0).unwrap();
    assert_eq!(r.targeted.len(), 14);
    let mut saved: Vec<String> = serde_json::from_value(tuners.config("default").unwrap().to_json()["target_modules"].clone()).unwrap();
    saved.sort();
    let mut want: Vec<String> = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"].map(String::from).to_vec();
    want.extend((0..6).map(|i| format!("missing{i}")));
    want.sort();
    assert_eq!(saved, want);
}

/// (rank, scaling) of each targeted module, read back from the parameters and a merge.
fn ranks_and_scalings(cfg: Box<dyn peft_core::tuners::TunerConfig>) -> Vec<(String, usize, f64)> {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let r = tuners.inject(&mut model, "default", cfg, 0).unwrap();
    let before = snapshot(&model);
    tuners.merge(&mut model, None).unwrap();
    r.targeted
        .iter()
        .map(|path| {
            let a = model.store.by_name(&format!("base_model.model.{path}.lora_A.default.weight")).unwrap().value().clone();
            let b = model.store.by_name(&format!("base_model.model.{path}.lora_B.default.weight")).unwrap().value().clone();
            let w = format!("{path}.weight");
            let delta = (model.store.by_name(&w).unwrap().value() - &before[&w]).unwrap();
            let ba = b.matmul(&a).unwrap();
            let s = scalar(&(delta.sqr().unwrap().sum_all().unwrap() / ba.sqr().unwrap().sum_all().unwrap()).unwrap().sqrt().unwrap());
            (path.clone(), a.dim(0).unwrap(), s as f64)
        })
        .collect()
}

#[test]
fn rank_and_alpha_patterns() {
    let cfg = json!({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": false,
                     "rank_pattern": {"layers.1.self_attn.v_proj": 6}, "alpha_pattern": {"v_proj": 3}});
    for (path, r, s) in ranks_and_scalings(lora(cfg)) {
        let (want_r, want_alpha) = match path.as_str() {
            "model.layers.1.self_attn.v_proj" => (6, 3.0),
            p if p.ends_with("v_proj") => (4, 3.0),
            _ => (4, 8.0),
        };
        assert_eq!(r, want_r, "{path}");
        assert!((s - want_alpha / want_r as f64).abs() < 1e-4, "{path}: scaling {s}");
    }
    // rsLoRA: alpha / sqrt(r).
    for (path, r, s) in ranks_and_scalings(lora(json!({"r": 8, "lora_alpha": 16, "use_rslora": true, "init_lora_weights": false}))) {
        assert!((s - 16.0 / (r as f64).sqrt()).abs() < 1e-4, "{path}: {s}");
    }
    // The first pattern in the file's order wins, as in PEFT's dict iteration.
    for (text, want) in [
        (r#"{"peft_type": "LORA", "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 2, "layers.0.self_attn.q_proj": 3}}"#, 2),
        (r#"{"peft_type": "LORA", "target_modules": ["q_proj"], "rank_pattern": {"layers.0.self_attn.q_proj": 3, "q_proj": 2}}"#, 3),
    ] {
        let (c, _) = LoraConfig::from_value(&serde_json::from_str(text).unwrap(), Some(text), Path::new("t")).unwrap();
        assert_eq!(c.rank_alpha("model.layers.0.self_attn.q_proj").unwrap().0, want);
        assert_eq!(c.rank_alpha("model.layers.1.self_attn.q_proj").unwrap().0, 2);
    }
}
