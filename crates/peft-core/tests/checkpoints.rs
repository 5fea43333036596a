//! Checkpoint variants built from the fixture inside the test: bf16/f16 storage, shards,
//! both config spellings, and damaged or inconsistent files.
use crate::common;
use candle_core::{DType, Device, Tensor};
use common::*;
use peft_core::io::safetensors::{load_file, save_file};
use peft_core::model::{CausalLm, Ctx, LoadOptions};
use std::path::{Path, PathBuf};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("peft-core-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fixture_weights() -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = load_file(&model_dir().join("model.safetensors"), None, &Device::Cpu).unwrap().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn with_config(dir: &Path, config_file: &str) {
    std::fs::copy(model_dir().join(config_file), dir.join("config.json")).unwrap();
}

fn logits(m: &CausalLm) -> Tensor {
    let ctx = Ctx::inference(&m.store);
    m.forward(&inputs().batch(), &ctx, None, false).unwrap()
}

fn load(dir: &Path) -> peft_core::Result<CausalLm> {
    CausalLm::from_pretrained(dir, &LoadOptions::default())
}

#[test]
fn both_config_spellings_give_the_same_model() {
    let mut a = peft_core::ModelConfig::from_file(&model_dir().join("config.json")).unwrap();
    let mut b = peft_core::ModelConfig::from_file(&model_dir().join("config.rope_parameters.json")).unwrap();
    (a.source_json, b.source_json) = (None, None); // the texts differ; what they resolve to must not
    assert_eq!(a, b);
    let dir = scratch("spelling");
    with_config(&dir, "config.rope_parameters.json");
    std::fs::copy(model_dir().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let diff = max_masked_diff(&logits(&load(&dir).unwrap()), &expected("base")["logits"], &inputs().attention_mask);
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn bf16_and_f16_checkpoints_load_as_their_rounded_weights() {
    let base = logits(&load_model());
    for dt in [DType::BF16, DType::F16] {
        let dir = scratch(&format!("{dt:?}"));
        with_config(&dir, "config.json");
        let w: Vec<_> = fixture_weights().into_iter().map(|(n, t)| (n, t.to_dtype(dt).unwrap())).collect();
        save_file(&w, None, &dir.join("model.safetensors")).unwrap();
        let m = load(&dir).unwrap();
        for (name, t) in &w {
            let got = m.store.by_name(name).unwrap().value();
            assert_eq!(got.dtype(), DType::F32);
            let want = t.to_dtype(DType::F32).unwrap();
            let d = (got - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(d, 0.0, "{name} in {dt:?}");
        }
        let diff = max_masked_diff(&logits(&m), &base, &inputs().attention_mask);
        println!("{dt:?}-stored weights: logits differ from f32 by {diff:e}");
        assert!(diff > 0.0 && diff < 0.05, "{dt:?}: {diff}");
    }
}

#[test]
fn sharded_checkpoint_equals_the_single_file() {
    let dir = scratch("sharded");
    with_config(&dir, "config.json");
    let w = fixture_weights();
    let (a, b) = w.split_at(w.len() / 2);
    save_file(a, None, &dir.join("model-00001-of-00002.safetensors")).unwrap();
    save_file(b, None, &dir.join("model-00002-of-00002.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for (n, _) in a {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, _) in b {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let got = logits(&load(&dir).unwrap());
    let want = logits(&load_model());
    assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = load(&dir).err().unwrap().to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

fn expect_err(dir: &Path, needles: &[&str]) {
    let err = load(dir).err().expect("loading should fail").to_string();
    for n in needles {
        assert!(err.contains(n), "error {err:?} should mention {n:?}");
    }
}

#[test]
fn bad_checkpoints_give_errors_naming_file_and_key() {
    let missing = scratch("missing").join("nope");
    expect_err(&missing, &["nope"]);

    let no_config = scratch("noconfig");
    std::fs::copy(model_dir().join("model.safetensors"), no_config.join("model.safetensors")).unwrap();
    expect_err(&no_config, &["config.json"]);

    let gpt2 = scratch("gpt2");
    let cfg = std::fs::read_to_string(model_dir().join("config.json")).unwrap().replace("\"llama\"", "\"gpt2\"");
    std::fs::write(gpt2.join("config.json"), cfg).unwrap();
    expect_err(&gpt2, &["config.json", "model_type", "gpt2"]);

    let bytes = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    let truncated = scratch("truncated");
    with_config(&truncated, "config.json");
    std::fs::write(truncated.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    expect_err(&truncated, &["model.safetensors"]);

    let long_header = scratch("longheader");
    with_config(&long_header, "config.json");
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&(bytes.len() as u64 * 2).to_le_bytes());
    std::fs::write(long_header.join("model.safetensors"), &b).unwrap();
    expect_err(&long_header, &["model.safetensors"]);

    let bad_offsets = scratch("offsets");
    with_config(&bad_offsets, "config.json");
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&header).unwrap();
    v["model.norm.weight"]["data_offsets"] = serde_json::json!([0, 10_000_000]);
    let mut h = v.to_string().into_bytes();
    h.resize(n.max(h.len()), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    std::fs::write(bad_offsets.join("model.safetensors"), out).unwrap();
    expect_err(&bad_offsets, &["model.safetensors"]);

    let wrong_shape = scratch("shape");
    let cfg = std::fs::read_to_string(model_dir().join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 160", "\"intermediate_size\": 128");
    std::fs::write(wrong_shape.join("config.json"), cfg).unwrap();
    std::fs::copy(model_dir().join("model.safetensors"), wrong_shape.join("model.safetensors")).unwrap();
    expect_err(&wrong_shape, &["model.safetensors", "gate_proj", "[128, 64]", "[160, 64]"]);

    let missing_weight = scratch("missingweight");
    with_config(&missing_weight, "config.json");
    let w: Vec<_> = fixture_weights().into_iter().filter(|(n, _)| n != "model.norm.weight").collect();
    save_file(&w, None, &missing_weight.join("model.safetensors")).unwrap();
    expect_err(&missing_weight, &["missing weight", "model.norm.weight"]);

    let int_weight = scratch("intweight");
    with_config(&int_weight, "config.json");
    let w: Vec<_> = fixture_weights()
        .into_iter()
        .map(|(n, t)| if n == "model.norm.weight" { (n, t.to_dtype(DType::U32).unwrap()) } else { (n, t) })
        .collect();
    save_file(&w, None, &int_weight.join("model.safetensors")).unwrap();
    expect_err(&int_weight, &["model.norm.weight", "dtype"]);
}

#[test]
fn bad_forward_inputs_are_rejected() {
    let m = load_model();
    let ctx = Ctx::inference(&m.store);
    let mut b = inputs().batch();
    b.ids[1][3] = 384;
    let e = m.forward(&b, &ctx, None, false).err().unwrap().to_string();
    assert!(e.contains("inputIds") && e.contains("384") && e.contains("[1, 3]"), "{e}");
    let mut b = inputs().batch();
    b.attention_mask.as_mut().unwrap()[0].pop();
    let e = m.forward(&b, &ctx, None, false).err().unwrap().to_string();
    assert!(e.contains("attentionMask"), "{e}");
}

#[test]
fn packed_rows_equal_the_examples_run_alone() {
    let m = load_model();
    let ctx = Ctx::new(&m.store, true);
    let ids = &inputs().input_ids[0];
    let (a, b) = (ids[..6].to_vec(), ids[6..16].to_vec());
    let alone = |x: &Vec<u32>| m.forward(&peft_core::model::Batch::new(vec![x.clone()]), &ctx, None, false).unwrap();
    let mut packed = peft_core::model::Batch::new(vec![[a.clone(), b.clone()].concat()]);
    packed.position_ids = Some(vec![(0..6).chain(0..10).collect()]);
    packed.segment_ids = Some(vec![[vec![0u32; 6], vec![1u32; 10]].concat()]);
    let p = m.forward(&packed, &ctx, None, false).unwrap();
    let joined = Tensor::cat(&[alone(&a), alone(&b)], 1).unwrap();
    let d = (p - joined).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "packed differs by {d}");
}
