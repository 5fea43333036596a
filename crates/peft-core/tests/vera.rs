//! VeRA: the shared projections from torch's generator, files without the projections, one
//! projection pair per adapter, init and config errors. The fixture, files, gradients, finite
//! differences and merging: the `VeRA` contract row.
use crate::common;
use crate::contract;
use candle_core::Device;
use common::*;
use contract::*;
use peft_core::io::adapter::{load_adapter, save_adapter, CONFIG_NAME, WEIGHTS_NAME};
use peft_core::io::safetensors::load_file;
use peft_core::tuners::{vera, Tuners};
use serde_json::{json, Value};

fn bits(t: &candle_core::Tensor) -> Vec<u32> {
    flat(t).iter().map(|x| x.to_bits()).collect()
}

#[test]
fn projections_are_torch_generator_bit_for_bit() {
    let file = load_file(&case_dir("vera").join(WEIGHTS_NAME), None, &Device::Cpu).unwrap();
    let (cfg, _) = peft_core::io::adapter::read_config(&case_dir("vera")).unwrap();
    let cfg = cfg.as_any().downcast_ref::<vera::VeraConfig>().unwrap().clone();
    let (a, b) = cfg.projections((64, 64), &Device::Cpu).unwrap();
    assert_eq!(bits(&a), bits(&file["base_model.vera_A"]), "vera_A");
    assert_eq!(bits(&b), bits(&file["base_model.vera_B"]), "vera_B");
}

#[test]
fn without_saved_projections_they_are_regenerated_from_the_key() {
    // The fixture folder with save_projection false and the projections left out: PEFT's
    // own files in that mode. They load (with PEFT's warning) and give the fixture's logits.
    let d = tmp("noproj");
    std::fs::create_dir_all(&d).unwrap();
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(case_dir("vera").join(CONFIG_NAME)).unwrap()).unwrap();
    cfg["save_projection"] = json!(false);
    std::fs::write(d.join(CONFIG_NAME), serde_json::to_string(&cfg).unwrap()).unwrap();
    let file = load_file(&case_dir("vera").join(WEIGHTS_NAME), None, &Device::Cpu).unwrap();
    let lambdas: Vec<(String, candle_core::Tensor)> = file.into_iter().filter(|(k, _)| !k.starts_with("base_model.vera_")).collect();
    peft_core::io::safetensors::save_file(&lambdas, None, &d.join(WEIGHTS_NAME)).unwrap();
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let report = load_adapter(&mut tuners, &mut model, &d, "default", false).unwrap();
    assert!(report.warnings.iter().any(|w| w.message.contains("save_projection")), "{:?}", report.warnings);
    let e = max_masked_diff(&logits_with(&model, Some(&tuners)), &expected("vera")["logits"], &inputs().attention_mask);
    assert!(e < 1e-4, "logits off by {e}");
    // Saved back the same way: no projections in the file.
    let out = tmp("noproj-out");
    save_adapter(&tuners, &model, "default", &out).unwrap();
    let keys = load_file(&out.join(WEIGHTS_NAME), None, &Device::Cpu).unwrap();
    assert_eq!(keys.len(), 8);
    assert!(keys.keys().all(|k| k.contains("vera_lambda_")));
    // A file that has them while the config says not to save them: PEFT would warn and use the
    // file's; the file must match the config here.
    let e = load_adapter(
        &mut Tuners::new(),
        &mut load_model(),
        &{
            let d2 = tmp("noproj-extra");
            std::fs::create_dir_all(&d2).unwrap();
            std::fs::write(d2.join(CONFIG_NAME), serde_json::to_string(&cfg).unwrap()).unwrap();
            std::fs::copy(case_dir("vera").join(WEIGHTS_NAME), d2.join(WEIGHTS_NAME)).unwrap();
            d2
        },
        "default",
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("base_model.vera_A") && e.contains("unexpected"), "{e}");
    for p in [d, out, tmp("noproj-extra")] {
        let _ = std::fs::remove_dir_all(p);
    }
}

#[test]
fn vera_shares_one_projection_pair_sized_by_the_largest_target() {
    let (model, mut tuners) = inject(&row("VeRA").config(), 1);
    assert_eq!(model.store.by_name("base_model.vera_A.default").unwrap().dims(), [8, 160]);
    assert_eq!(model.store.by_name("base_model.vera_B.default").unwrap().dims(), [160, 8]);
    assert!(!model.store.by_name("base_model.vera_A.default").unwrap().requires_grad());
    let mut model = model;
    tuners.inject(&mut model, "second", config(&json!({"peft_type": "VERA", "r": 4, "target_modules": ["q_proj"]})), 0).unwrap();
    assert_eq!(model.store.by_name("base_model.vera_A.second").unwrap().dims(), [4, 64]);
    tuners.delete_adapter(&mut model, "second").unwrap();
    assert!(model.store.by_name("base_model.vera_A.second").is_err(), "projections go with their adapter");
    tuners.unload(&mut model).unwrap();
    assert!(model.store.iter().all(|(_, p)| !p.name.starts_with("base_model.")));
}

#[test]
fn vera_init_and_config_errors() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(&json!({"peft_type": "VERA", "r": 4})), 0).unwrap();
    let d = model.store.by_name("base_model.model.model.layers.0.self_attn.q_proj.vera_lambda_d.default").unwrap();
    assert!(flat(&d.value()).iter().all(|&x| (x - 0.1).abs() < 1e-7), "d starts at d_initial");
    assert_eq!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)), 0.0, "b starts at zero");
    assert_eq!(tuners.modules("default").unwrap().len(), 4, "q_proj and v_proj by default");
    for (cfg, key) in [
        (json!({"r": 0}), "r"),
        (json!({"r": -3}), "r"),
        (json!({"vera_dropout": 1.5}), "vera_dropout"),
        (json!({"projection_prng_key": -1}), "projection_prng_key"),
        (json!({"save_projection": "yes"}), "save_projection"),
        (json!({"bias": "some"}), "bias"),
        (json!({"d_initial": "x"}), "d_initial"),
        (json!({"layers_pattern": "layers"}), "layers_to_transform"),
    ] {
        let e = error_of(&typed("VERA", cfg.clone()));
        assert!(e.contains(&format!("`{key}`")), "{cfg}: `{e}` should name {key}");
    }
}
