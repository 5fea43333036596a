//! Whole-model GGUF export against llama.cpp's own converter: for every architecture, our
//! `write_gguf` of the shared tiny safetensors model must have the metadata keys, value types
//! and values, tensor names, types and shapes of `__test__/data/tiny-gguf/<arch>.f32.gguf`
//! (made by `convert_hf_to_gguf.py`, scripts/make-tiny-ggufs.sh), and the same tensor data.
use crate::common::tmp;
use candle_core::{DType, Device, Tensor};
use peft_core::io::gguf::{load_gguf, write_gguf, GgufFile, MetaValue, OutType};
use peft_core::io::safetensors::load_checkpoint_dir;
use peft_core::tokenizer::Tokenizer;
use peft_core::ModelConfig;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Keys the converter derives from the folder name and parameter count, which we do not write.
const NAMING_KEYS: &[&str] = &["general.name", "general.size_label"];

/// A comparable form of a metadata value: arrays by type, length and content.
fn meta(file: &GgufFile, key: &str) -> String {
    match file.get(key).unwrap() {
        MetaValue::Array { elem_type: 8, len, .. } => format!("strings[{len}] {:?}", file.get_str_array(key).unwrap().unwrap()),
        MetaValue::Array { elem_type: 5, len, .. } => format!("i32[{len}] {:?}", file.get_i32_array(key).unwrap().unwrap()),
        MetaValue::Array { elem_type: 6, len, .. } => format!("f32[{len}] {:?}", file.get_f32_array(key).unwrap().unwrap()),
        v => format!("{v:?}"),
    }
}

fn check_arch(arch: &str) {
    let model_dir = root().join("../shared/fixtures/hf-peft-tiny-arch").join(arch).join("model");
    let reference = GgufFile::open(&root().join("__test__/data/tiny-gguf").join(format!("{arch}.f32.gguf"))).unwrap();
    let cfg = ModelConfig::from_file(&model_dir.join("config.json")).unwrap();
    let weights = load_checkpoint_dir(&model_dir, Some(DType::F32), &Device::Cpu).unwrap();
    let spec = Tokenizer::from_pretrained_dir(&model_dir).unwrap().gguf_spec(cfg.vocab_size).unwrap();
    let path = tmp(&format!("{arch}.gguf"));
    let source = |name: &str| -> peft_core::Result<Tensor> { Ok(weights.tensors[name].clone()) };
    write_gguf(&path, &cfg, source, OutType::Uniform(candle_core::quantized::GgmlDType::F32), Some(&spec)).unwrap();
    let ours = GgufFile::open(&path).unwrap();

    let keys = |f: &GgufFile| -> std::collections::BTreeSet<String> {
        f.metadata.keys().filter(|k| !NAMING_KEYS.contains(&k.as_str())).cloned().collect()
    };
    assert_eq!(keys(&ours), keys(&reference), "{arch}: metadata keys");
    for key in keys(&reference) {
        assert_eq!(meta(&ours, &key), meta(&reference, &key), "{arch}: metadata `{key}`");
    }
    let tensors = |f: &GgufFile| -> std::collections::BTreeMap<String, (String, Vec<usize>)> {
        f.tensors.iter().map(|t| (t.name.clone(), (format!("{:?}", t.dtype), t.dims.clone()))).collect()
    };
    assert_eq!(tensors(&ours), tensors(&reference), "{arch}: tensor names, types and shapes");
    for info in &reference.tensors {
        let ours_info = ours.tensor_info(&info.name).unwrap();
        assert!(ours.tensor_bytes(ours_info) == reference.tensor_bytes(info), "{arch}: `{}` data differs from llama.cpp's", info.name);
    }
    // And it reads back into the weights it was written from (Gemma's norm shift undone).
    let back = load_gguf(&path, DType::F32, &Device::Cpu, false).unwrap();
    for (name, t) in &back.weights.tensors {
        let d = (t - &weights.tensors[name]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "{arch}: `{name}` reads back {d} off");
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn qwen2_matches_llama_cpp_converter() {
    check_arch("qwen2");
}

#[test]
fn qwen3_matches_llama_cpp_converter() {
    check_arch("qwen3");
}

#[test]
fn mistral_matches_llama_cpp_converter() {
    check_arch("mistral");
}

#[test]
fn phi3_matches_llama_cpp_converter() {
    check_arch("phi3");
}

#[test]
fn gemma3_matches_llama_cpp_converter() {
    check_arch("gemma3");
}
