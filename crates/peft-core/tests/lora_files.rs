//! PEFT adapter files: round trips with PEFT-written folders, and every bad input erroring
//! with a message that names the problem.
use crate::common;
use common::*;
use peft_core::io::adapter::{load_adapter, read_config, save_adapter, save_pretrained, CONFIG_NAME, WEIGHTS_NAME};
use peft_core::io::safetensors::load_file;
use peft_core::tuners::lora::config::peft_defaults;
use peft_core::tuners::Tuners;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A copy of a fixture folder whose config and tensors the caller may change.
fn edited_copy(case: &str, name: &str, edit_config: impl FnOnce(&mut Value)) -> PathBuf {
    let d = tmp(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(case_dir(case).join(CONFIG_NAME)).unwrap()).unwrap();
    edit_config(&mut cfg);
    std::fs::write(d.join(CONFIG_NAME), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    std::fs::copy(case_dir(case).join(WEIGHTS_NAME), d.join(WEIGHTS_NAME)).unwrap();
    d
}

fn load_err(dir: &Path) -> String {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let before: Vec<String> = model.store.iter().map(|(_, p)| p.name.clone()).collect();
    let e = load_adapter(&mut tuners, &mut model, dir, "default", false).expect_err("loading should fail").to_string();
    let after: Vec<String> = model.store.iter().map(|(_, p)| p.name.clone()).collect();
    assert_eq!(before, after, "a failed load left parameters behind");
    assert!(tuners.names().is_empty());
    e
}

#[test]
fn peft_files_load_and_save_back_identically() {
    for case in ["lora_qv", "lora_all_rslora", "dora"] {
        let mut model = load_model();
        let mut tuners = Tuners::new();
        load_adapter(&mut tuners, &mut model, &case_dir(case), "default", false).unwrap();
        let out = tmp(case);
        save_adapter(&tuners, &model, "default", &out).unwrap();
        // Tensors: same keys, same bits; the whole file is byte-identical too.
        let ours = std::fs::read(out.join(WEIGHTS_NAME)).unwrap();
        let peft = std::fs::read(case_dir(case).join(WEIGHTS_NAME)).unwrap();
        let (a, b) = (
            load_file(&out.join(WEIGHTS_NAME), None, &model.device).unwrap(),
            load_file(&case_dir(case).join(WEIGHTS_NAME), None, &model.device).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        for (k, t) in &b {
            let bits = |t: &candle_core::Tensor| {
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            assert_eq!(bits(&a[k]), bits(t), "{case}: {k}");
        }
        assert_eq!(ours, peft, "{case}: adapter_model.safetensors bytes");
        // Config: the same fields PEFT writes, the same values (target_modules is a set in PEFT).
        let ours: Value = serde_json::from_str(&std::fs::read_to_string(out.join(CONFIG_NAME)).unwrap()).unwrap();
        let peft: Value = serde_json::from_str(&std::fs::read_to_string(case_dir(case).join(CONFIG_NAME)).unwrap()).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&ours), keys(&peft), "{case}: config fields");
        assert_eq!(keys(&ours), peft_defaults().keys().cloned().collect::<Vec<_>>(), "{case}: PEFT 0.21 LoraConfig fields");
        for k in keys(&peft) {
            if k == "target_modules" {
                let set = |v: &Value| {
                    let mut s: Vec<String> = serde_json::from_value(v[&k].clone()).unwrap();
                    s.sort();
                    s
                };
                assert_eq!(set(&ours), set(&peft), "{case}: {k}");
            } else {
                assert_eq!(ours[&k], peft[&k], "{case}: {k}");
            }
        }
        let text = std::fs::read_to_string(out.join(CONFIG_NAME)).unwrap();
        assert_eq!(text, std::fs::read_to_string(case_dir(case).join(CONFIG_NAME)).unwrap(), "{case}: adapter_config.json bytes");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn save_then_load_gives_identical_logits() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let cfg =
        lora(json!({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "down_proj"], "use_dora": true, "init_lora_weights": false}));
    tuners.inject(&mut model, "mine", cfg, 3).unwrap();
    tuners.config_mut("mine").unwrap().set_base_model_name_or_path(Some("tiny-llama".into()));
    let before = logits_with(&model, Some(&tuners));
    let out = tmp("roundtrip");
    save_adapter(&tuners, &model, "mine", &out).unwrap();
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(out.join(CONFIG_NAME)).unwrap()).unwrap();
    assert_eq!(saved["inference_mode"], json!(true));
    assert_eq!(saved["base_model_name_or_path"], json!("tiny-llama"));
    assert_eq!(saved["peft_version"], json!("0.21.0"));
    assert_eq!(saved["revision"], Value::Null);
    let mut fresh = load_model();
    let mut t2 = Tuners::new();
    load_adapter(&mut t2, &mut fresh, &out, "other", true).unwrap();
    let after = logits_with(&fresh, Some(&t2));
    assert_eq!(max_abs_diff(&before, &after), 0.0);
    // Saving over an existing folder replaces the files; saving to a file path is refused.
    save_adapter(&tuners, &model, "mine", &out).unwrap();
    let e = save_adapter(&tuners, &model, "mine", &out.join(CONFIG_NAME)).unwrap_err().to_string();
    assert!(e.contains("should be a folder"), "{e}");
    let e = save_adapter(&tuners, &model, "nope", &out).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("mine"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}

type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn bad_adapter_folders_error_clearly() {
    // Missing folder, file instead of folder, missing config, bad JSON, missing weights.
    let e = load_err(Path::new("/nonexistent/adapter"));
    assert!(e.contains("/nonexistent/adapter"), "{e}");
    let e = load_err(&case_dir("lora_qv").join(CONFIG_NAME));
    assert!(e.contains("found a file"), "{e}");
    let d = tmp("empty");
    std::fs::create_dir_all(&d).unwrap();
    assert!(load_err(&d).contains(CONFIG_NAME));
    std::fs::write(d.join(CONFIG_NAME), "{ not json").unwrap();
    assert!(load_err(&d).contains("invalid JSON"));
    std::fs::write(d.join(CONFIG_NAME), std::fs::read(case_dir("lora_qv").join(CONFIG_NAME)).unwrap()).unwrap();
    assert!(load_err(&d).contains(WEIGHTS_NAME));

    // Config values, each naming its key.
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("peft_type", Box::new(|c| c["peft_type"] = json!("FANCY")), "peft_type"),
        (
            "peft_type_missing",
            Box::new(|c| {
                c.as_object_mut().unwrap().remove("peft_type");
            }),
            "peft_type",
        ),
        ("r_zero", Box::new(|c| c["r"] = json!(0)), "`r`"),
        ("r_negative", Box::new(|c| c["r"] = json!(-4)), "`r`"),
        ("init", Box::new(|c| c["init_lora_weights"] = json!("fancy")), "init_lora_weights"),
        ("init_olora", Box::new(|c| c["init_lora_weights"] = json!("olora")), "init_lora_weights"),
        ("dropout", Box::new(|c| c["lora_dropout"] = json!(1.5)), "lora_dropout"),
        ("alpha", Box::new(|c| c["lora_alpha"] = json!("eight")), "lora_alpha"),
        ("targets", Box::new(|c| c["target_modules"] = json!(["nothing_here"])), "q_proj, k_proj"),
        (
            "regex_layers",
            Box::new(|c| {
                c["target_modules"] = json!(".*q_proj");
                c["layers_to_transform"] = json!([0]);
            }),
            "layers_to_transform",
        ),
        ("bad_regex", Box::new(|c| c["target_modules"] = json!("(unclosed")), "target_modules"),
        ("qalora", Box::new(|c| c["use_qalora"] = json!(true)), "use_qalora"),
        ("modules_to_save", Box::new(|c| c["modules_to_save"] = json!(["lm_head"])), "modules_to_save"),
        ("task_type", Box::new(|c| c["task_type"] = json!("TRANSLATE")), "task_type"),
        ("rank_pattern", Box::new(|c| c["rank_pattern"] = json!({"q_proj": 8})), "has shape"),
        ("embed", Box::new(|c| c["target_modules"] = json!(["embed_tokens"])), "not a linear layer"),
    ];
    for (name, edit, want) in cases {
        let d = edited_copy("lora_qv", name, edit);
        let e = load_err(&d);
        assert!(e.contains(want), "{name}: `{e}` should mention {want}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[test]
fn tensors_that_do_not_fit_are_named() {
    let src = load_file(&case_dir("dora").join(WEIGHTS_NAME), None, &candle_core::Device::Cpu).unwrap();
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let write = |name: &str, tensors: Vec<(String, candle_core::Tensor)>| {
        let d = edited_copy("dora", name, |_| {});
        peft_core::io::safetensors::save_file(&tensors, None, &d.join(WEIGHTS_NAME)).unwrap();
        d
    };
    let all: Vec<(String, candle_core::Tensor)> = src.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let missing = write("missing", all.iter().filter(|(k, _)| k != key).cloned().collect());
    let e = load_err(&missing);
    assert!(e.contains("missing") && e.contains(key), "{e}");
    let mut extra_t = all.clone();
    extra_t.push(("base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight".into(), src[key].clone()));
    let e = load_err(&write("extra", extra_t));
    assert!(e.contains("unexpected") && e.contains("k_proj.lora_A"), "{e}");
    let mut shape_t: Vec<_> = all.iter().filter(|(k, _)| k != key).cloned().collect();
    shape_t.push((key.into(), src[key].narrow(0, 0, 2).unwrap()));
    let e = load_err(&write("shape", shape_t));
    assert!(e.contains(key) && e.contains("[2, 64]") && e.contains("[4, 64]"), "{e}");
    // A magnitude saved with PEFT's in-memory name (`.weight` suffix) is not the file format.
    let mag = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
    let renamed: Vec<_> = all.iter().map(|(k, v)| (if k == mag { format!("{k}.weight") } else { k.clone() }, v.clone())).collect();
    let e = load_err(&write("magnitude", renamed));
    assert!(e.contains(mag) && e.contains("unexpected"), "{e}");
    for d in ["missing", "extra", "shape", "magnitude"] {
        let _ = std::fs::remove_dir_all(tmp(d));
    }
}

#[test]
fn unknown_fields_are_kept_and_reported() {
    let d = edited_copy("lora_qv", "unknown", |c| c["shiny_new_option"] = json!({"a": 1}));
    let (cfg, warnings) = read_config(&d).unwrap();
    assert!(
        warnings.iter().any(|w| w.code == peft_core::WarningCode::UnknownField
            && w.field.as_deref() == Some("shiny_new_option")
            && w.message.contains("shiny_new_option")),
        "{warnings:?}"
    );
    assert_eq!(cfg.to_json()["shiny_new_option"], json!({"a": 1}));
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let report = load_adapter(&mut tuners, &mut model, &d, "default", false).unwrap();
    assert!(report.warnings.iter().any(|w| w.message.contains("shiny_new_option")));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn save_pretrained_uses_peft_folder_layout() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", lora(json!({"target_modules": ["q_proj"]})), 0).unwrap();
    tuners.inject(&mut model, "second", lora(json!({"target_modules": ["v_proj"], "r": 2})), 0).unwrap();
    let out = tmp("layout");
    let written = save_pretrained(&tuners, &model, &out, None).unwrap();
    assert_eq!(written, [out.clone(), out.join("second")]);
    for d in &written {
        assert!(d.join(CONFIG_NAME).is_file() && d.join(WEIGHTS_NAME).is_file());
    }
    let (cfg, _) = read_config(&out.join("second")).unwrap();
    assert_eq!(cfg.to_json()["r"], json!(2));
    let keys = load_file(&out.join("second").join(WEIGHTS_NAME), None, &candle_core::Device::Cpu).unwrap();
    assert!(keys.contains_key("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"), "{:?}", keys.keys());
    std::fs::remove_dir_all(&out).unwrap();
}
