//! GGUF: round trips through the writer against the HF fixture, quantized types against
//! candle's own quantize/dequantize, llama.cpp's Q/K permutation by index, damaged files,
//! and the real SmolLM2-135M-Instruct file when `scripts/fetch-smollm2.mjs` has fetched it.
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use peft_core::io::gguf::{load_gguf, write_llama_gguf, GgufFile};
use peft_core::io::safetensors::load_checkpoint_dir;
use peft_core::tokenizer::GgufTokenizerSpec;
use peft_core::ModelConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[path = "gguf/corrupt.rs"]
mod corrupt;
#[path = "gguf/real_model.rs"]
mod real_model;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/hf-peft-tiny-llama/model")
}

/// A fresh temp path: tests run in parallel, so every call gets its own number.
fn tmp(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("peft-gguf-{}-{n}-{name}", std::process::id()))
}

fn fixture() -> (ModelConfig, HashMap<String, Tensor>) {
    let cfg = ModelConfig::from_file(&fixture_dir().join("config.json")).unwrap();
    let w = load_checkpoint_dir(&fixture_dir(), Some(DType::F32), &Device::Cpu).unwrap();
    (cfg, w.tensors)
}

fn spec(vocab: usize) -> GgufTokenizerSpec {
    GgufTokenizerSpec {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens: (0..vocab).map(|i| format!("tok{i}")).collect(),
        token_types: (0..vocab).map(|i| if i < 3 { 3 } else { 1 }).collect(),
        scores: vec![],
        merges: vec!["t o".into(), "to k".into()],
        bos_token_id: Some(0),
        eos_token_id: Some(1),
        pad_token_id: Some(2),
        unknown_token_id: None,
        add_bos_token: Some(false),
        add_eos_token: None,
        add_space_prefix: None,
        chat_template: Some("{% for m in messages %}{{ m['content'] }}{% endfor %}".into()),
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn write_fixture(name: &str, quant: GgmlDType) -> (PathBuf, ModelConfig, HashMap<String, Tensor>) {
    let (cfg, w) = fixture();
    let path = tmp(name);
    write_llama_gguf(&path, &cfg, &w, Some(&spec(cfg.vocab_size)), quant).unwrap();
    (path, cfg, w)
}

#[test]
fn f32_round_trip_matches_safetensors() {
    let (path, cfg, w) = write_fixture("f32.gguf", GgmlDType::F32);
    let ck = load_gguf(&path, DType::F32, &Device::Cpu, false).unwrap();
    assert_eq!(ck.weights.tensors.len(), w.len());
    for (name, t) in &w {
        let got = &ck.weights.tensors[name];
        assert_eq!(got.dims(), t.dims(), "{name}");
        assert_eq!(values(got), values(t), "{name}");
        assert_eq!(ck.weights.files[name], path);
    }
    let mut got = ck.config.clone();
    got.torch_dtype = cfg.torch_dtype.clone(); // GGUF has no torch_dtype
    got.source_json = cfg.source_json.clone(); // nor a config.json
    assert_eq!(got, cfg);
    let s = spec(cfg.vocab_size);
    assert_eq!((ck.tokenizer.model.as_str(), &ck.tokenizer.pre, &ck.tokenizer.tokens), (s.model.as_str(), &s.pre, &s.tokens));
    assert_eq!(
        (&ck.tokenizer.token_types, &ck.tokenizer.merges, &ck.tokenizer.chat_template),
        (&s.token_types, &s.merges, &s.chat_template)
    );
    assert_eq!((ck.tokenizer.bos_token_id, ck.tokenizer.eos_token_id, ck.tokenizer.pad_token_id), (Some(0), Some(1), Some(2)));
    assert_eq!((ck.tokenizer.add_bos_token, ck.tokenizer.add_eos_token), (Some(false), None));
    for dtype in [DType::F16, DType::BF16] {
        let ck = load_gguf(&path, dtype, &Device::Cpu, false).unwrap();
        for (name, t) in &w {
            assert_eq!(ck.weights.tensors[name].dtype(), dtype);
            assert_eq!(values(&ck.weights.tensors[name]), values(&t.to_dtype(dtype).unwrap()), "{name} {dtype:?}");
        }
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn q_and_k_rows_are_stored_in_llama_cpp_order() {
    let (path, cfg, w) = write_fixture("perm.gguf", GgmlDType::F32);
    let file = GgufFile::open(&path).unwrap();
    let hd = cfg.head_dim;
    for (gguf, hf, n_head) in [
        ("blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", cfg.num_attention_heads),
        ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", cfg.num_key_value_heads),
    ] {
        let info = file.tensor_info(gguf).unwrap();
        assert_eq!(info.dims, w[hf].dims());
        let raw: Vec<f32> = file.tensor_bytes(info).chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let hf_rows = w[hf].to_vec2::<f32>().unwrap();
        let cols = cfg.hidden_size;
        // permute(w, n_head) = w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2): stored row
        // (h, j, i) is HF row (h, i, j).
        for h in 0..n_head {
            for i in 0..2 {
                for j in 0..hd / 2 {
                    let stored = h * hd + j * 2 + i;
                    assert_eq!(
                        &raw[stored * cols..(stored + 1) * cols],
                        hf_rows[h * hd + i * hd / 2 + j].as_slice(),
                        "{gguf} h{h} i{i} j{j}"
                    );
                }
            }
        }
    }
    assert_eq!(file.get_u64("llama.rope.dimension_count").unwrap(), Some(hd as u64));
    assert_eq!(file.get_str("general.architecture").unwrap(), Some("llama"));
    std::fs::remove_file(path).unwrap();
}

/// Loaded tensors must equal candle's dequantize(quantize(w)) exactly (row-wise quantization
/// commutes with the Q/K row permutation) and be within `tol` relative RMS error of w.
fn check_quantized(path: &Path, w: &HashMap<String, Tensor>, stored: impl Fn(&[usize]) -> GgmlDType, tol: f64) {
    let ck = load_gguf(path, DType::F32, &Device::Cpu, false).unwrap();
    let file = GgufFile::open(path).unwrap();
    let mut worst = 0f64;
    for (name, t) in w {
        if name == "lm_head.weight" && ck.config.tie_word_embeddings {
            continue;
        }
        let ty = stored(t.dims());
        let info = file.tensor_info(&peft_core::io::gguf::hf_to_gguf(name, "llama").unwrap()).unwrap();
        assert_eq!(info.dtype, ty, "{name}");
        let got = values(&ck.weights.tensors[name]);
        let expected =
            if ty == GgmlDType::F32 { values(t) } else { values(&QTensor::quantize(t, ty).unwrap().dequantize(&Device::Cpu).unwrap()) };
        assert_eq!(got, expected, "{name} as {ty:?}");
        let orig = values(t);
        let err: f64 = got.iter().zip(&orig).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = orig.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        worst = worst.max(err / norm);
    }
    println!("{}: worst relative RMS error {worst:.4}", path.display());
    assert!(worst < tol, "{}: relative error {worst} >= {tol}", path.display());
}

#[test]
fn legacy_quants_match_candle_round_trip() {
    for (q, tol) in
        [(GgmlDType::Q8_0, 0.01), (GgmlDType::Q4_0, 0.15), (GgmlDType::Q4_1, 0.15), (GgmlDType::Q5_0, 0.08), (GgmlDType::F16, 0.001)]
    {
        let (path, _, w) = write_fixture(&format!("{q:?}.gguf"), q);
        check_quantized(&path, &w, |d| if d.len() == 1 { GgmlDType::F32 } else { q }, tol);
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn k_quant_falls_back_when_rows_are_shorter_than_a_block() {
    // The fixture's rows (64, 160) are not multiples of 256: llama.cpp falls back to a 32-wide type.
    let (path, _, w) = write_fixture("q4k-fallback.gguf", GgmlDType::Q4K);
    check_quantized(&path, &w, |d| if d.len() == 1 { GgmlDType::F32 } else { GgmlDType::Q5_0 }, 0.08);
    std::fs::remove_file(path).unwrap();
}

/// A tied model with 256-wide rows, so that every K-quant applies; deterministic weights.
fn synthetic() -> (ModelConfig, HashMap<String, Tensor>) {
    let json = serde_json::json!({"model_type": "llama", "vocab_size": 256, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 1});
    let cfg = ModelConfig::from_json(&json, Path::new("synthetic")).unwrap();
    let mut seed = 0x2545f4914f6cdd1du64;
    let mut w = HashMap::new();
    let mut names = vec![("model.embed_tokens.weight", vec![256, 256]), ("model.norm.weight", vec![256])];
    let l = "model.layers.0";
    for (n, s) in [
        ("input_layernorm", vec![256]),
        ("post_attention_layernorm", vec![256]),
        ("self_attn.q_proj", vec![256, 256]),
        ("self_attn.k_proj", vec![128, 256]),
        ("self_attn.v_proj", vec![128, 256]),
        ("self_attn.o_proj", vec![256, 256]),
        ("mlp.gate_proj", vec![512, 256]),
        ("mlp.up_proj", vec![512, 256]),
        ("mlp.down_proj", vec![256, 512]),
    ] {
        names.push((Box::leak(format!("{l}.{n}.weight").into_boxed_str()), s));
    }
    for (name, shape) in names {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        w.insert(name.to_string(), Tensor::from_vec(v, shape, &Device::Cpu).unwrap());
    }
    (cfg, w)
}

#[test]
fn k_quants_match_candle_round_trip() {
    let (cfg, w) = synthetic();
    for (q, tol) in [
        (GgmlDType::Q2K, 0.6),
        (GgmlDType::Q3K, 0.3),
        (GgmlDType::Q4K, 0.15),
        (GgmlDType::Q5K, 0.08),
        (GgmlDType::Q6K, 0.04),
        (GgmlDType::Q8K, 0.01),
    ] {
        let path = tmp(&format!("{q:?}.gguf"));
        write_llama_gguf(&path, &cfg, &w, None, q).unwrap();
        let ck = load_gguf(&path, DType::F32, &Device::Cpu, false).unwrap();
        assert!(ck.config.tie_word_embeddings && !ck.weights.tensors.contains_key("lm_head.weight"));
        assert_eq!((ck.config.rms_norm_eps, ck.config.rope_theta, ck.config.head_dim), (1e-5, 500000.0, 64));
        assert!(ck.tokenizer.tokens.is_empty() && ck.tokenizer.model.is_empty());
        check_quantized(&path, &w, |d| if d.len() == 1 { GgmlDType::F32 } else { q }, tol);
        std::fs::remove_file(path).unwrap();
    }
}
