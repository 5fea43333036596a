//! A GGUF's `<arch>.*` metadata as the `config.json` it was converted from, then read by the
//! one config reader (`ModelConfig::from_json`). What `convert_hf_to_gguf.py` does not store
//! (Gemma 3's local RoPE base, sliding pattern and query scale, Phi-3's partial rotary factor
//! as a fraction) is filled in the way llama.cpp hard-codes it.
use super::file::GgufFile;
use super::read::corrupt;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tokenizer::GgufTokenizerSpec;
use serde_json::{json, Map, Value};

/// `general.architecture` -> transformers' `model_type`.
const ARCHITECTURES: &[(&str, &str)] =
    &[("llama", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3"), ("phi3", "phi3"), ("gemma3", "gemma3_text")];

/// llama.cpp's `general.architecture` for a model type (Mistral is written as llama).
pub fn gguf_architecture(model_type: &str) -> Option<&'static str> {
    match model_type {
        "mistral" => Some("llama"),
        t => ARCHITECTURES.iter().find(|(_, m)| *m == t).map(|(a, _)| *a),
    }
}

/// The model type of a GGUF file, or a refusal naming the supported architectures.
pub fn model_type_of(file: &GgufFile) -> Result<&'static str> {
    match file.get_str("general.architecture")? {
        Some(arch) => ARCHITECTURES.iter().find(|(a, _)| *a == arch).map(|(_, t)| *t).ok_or_else(|| {
            let supported: Vec<&str> = ARCHITECTURES.iter().map(|(a, _)| *a).collect();
            corrupt(&file.path, format!("architecture `{arch}` is not supported (supported: {})", supported.join(", ")))
        }),
        None => Err(corrupt(&file.path, "metadata `general.architecture` is missing")),
    }
}

/// The resolved config from the metadata and the tensor list.
pub fn config_from_metadata(file: &GgufFile, tok: &GgufTokenizerSpec) -> Result<ModelConfig> {
    let path = file.path.as_path();
    let model_type = model_type_of(file)?;
    let arch = file.get_str("general.architecture")?.unwrap_or_default().to_string();
    let key = |k: &str| format!("{arch}.{k}");
    // Dimensions up to 2^31 keep every product of two of them inside usize.
    let int = |k: &str| -> Result<Option<usize>> {
        match file.get_u64(&key(k))? {
            Some(v) if v == 0 || v > 1 << 31 => Err(corrupt(path, format!("metadata `{}` is {v}, expected 1 to 2^31", key(k)))),
            v => Ok(v.map(|v| v as usize)),
        }
    };
    let req = |k: &str| int(k)?.ok_or_else(|| corrupt(path, format!("metadata `{}` is missing", key(k))));
    let hidden = req("embedding_length")?;
    let layers = req("block_count")?;
    let heads = req("attention.head_count")?;
    let kv_heads = int("attention.head_count_kv")?.unwrap_or(heads);
    if heads % kv_heads != 0 {
        return Err(corrupt(
            path,
            format!("{} ({kv_heads}) does not divide {} ({heads})", key("attention.head_count_kv"), key("attention.head_count")),
        ));
    }
    let key_length = int("attention.key_length")?;
    let rope_dims = int("rope.dimension_count")?;
    // Phi-3 stores the rotated dims (partial rotary), the others the head size.
    let head_dim =
        if model_type == "phi3" { key_length.unwrap_or(hidden / heads) } else { key_length.or(rope_dims).unwrap_or(hidden / heads) };
    let mut checks = vec![("attention.value_length", int("attention.value_length")?)];
    if model_type != "phi3" {
        checks.push(("rope.dimension_count", rope_dims));
    }
    for (k, v) in checks {
        if let Some(v) = v.filter(|&v| v != head_dim) {
            return Err(Error::Unsupported(format!(
                "{}: metadata `{}` = {v} differs from the head size {head_dim}",
                path.display(),
                key(k)
            )));
        }
    }
    let embd_rows = file.tensor_info("token_embd.weight").map(|t| t.dims[0]);
    // Gemma's converter cuts the embeddings to the real vocabulary: the tensor is the truth.
    let vocab_size = match (int("vocab_size")?, embd_rows) {
        (Some(v), _) => v,
        (None, Some(rows)) => rows,
        (None, None) if !tok.tokens.is_empty() => tok.tokens.len(),
        _ => return Err(corrupt(path, format!("no vocabulary size: no {}, token_embd.weight or tokens", key("vocab_size")))),
    };
    if tok.tokens.len() > vocab_size {
        return Err(corrupt(path, format!("{} tokens but a vocabulary of {vocab_size}", tok.tokens.len())));
    }
    let has = |suffix: &str| file.tensors.iter().any(|t| t.name.starts_with("blk.") && t.name.ends_with(suffix));
    let eot = file.get_u64("tokenizer.ggml.eot_token_id")?.and_then(|v| u32::try_from(v).ok());
    let mut eos: Vec<u32> = tok.eos_token_id.into_iter().collect();
    eos.extend(eot.filter(|e| !eos.contains(e)));
    let eps = file
        .get_f64(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| corrupt(path, format!("metadata `{}` is missing", key("attention.layer_norm_rms_epsilon"))))?;
    let mut c = Map::new();
    let mut set = |k: &str, v: Value| {
        c.insert(k.to_string(), v);
    };
    set("model_type", model_type.into());
    set("vocab_size", vocab_size.into());
    set("hidden_size", hidden.into());
    set("intermediate_size", req("feed_forward_length")?.into());
    set("num_hidden_layers", layers.into());
    set("num_attention_heads", heads.into());
    set("num_key_value_heads", kv_heads.into());
    set("head_dim", head_dim.into());
    set("rms_norm_eps", eps.into());
    set("rope_theta", file.get_f64(&key("rope.freq_base"))?.unwrap_or(if model_type == "gemma3_text" { 1e6 } else { 10000.0 }).into());
    set("rope_scaling", rope_scaling(file, &key)?);
    set("max_position_embeddings", req("context_length")?.into());
    set("tie_word_embeddings", file.tensor_info("output.weight").is_none().into());
    set("attention_bias", (has("attn_output.bias") || (model_type != "qwen2" && has("attn_q.bias"))).into());
    set("mlp_bias", ["ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"].iter().any(|s| has(s)).into());
    set("bos_token_id", tok.bos_token_id.map(Value::from).unwrap_or(Value::Null));
    set("eos_token_id", eos.into());
    set("pad_token_id", tok.pad_token_id.map(Value::from).unwrap_or(Value::Null));
    // 0 is "no window" (converters write it for models without one); a bad value is an error
    // naming the key, never silently no window.
    let window = match file.get_u64(&key("attention.sliding_window"))? {
        None | Some(0) => None,
        Some(v) if v > 1 << 31 => {
            return Err(corrupt(path, format!("metadata `{}` is {v}, expected 0 (none) to 2^31", key("attention.sliding_window"))))
        }
        Some(v) => Some(v as usize),
    };
    match model_type {
        "phi3" => {
            let rotary = rope_dims.unwrap_or(head_dim);
            set("partial_rotary_factor", (rotary as f64 / head_dim as f64).into());
            // llama.cpp runs Phi-3 without its window ("Phi SWA is currently disabled"); so do we,
            // so that a GGUF computes what llama.cpp computes on it.
            set("sliding_window", Value::Null);
        }
        "gemma3_text" => {
            set("sliding_window", window.map(Value::from).unwrap_or(Value::Null));
            set("sliding_window_pattern", if window.is_some() { 6 } else { 1 }.into());
            set("rope_local_base_freq", 10000.0.into());
            // llama.cpp: 1/sqrt(n_embd / n_head) for the 62-layer (27B) model, else 1/sqrt(head_dim).
            set("query_pre_attn_scalar", if layers == 62 { hidden / heads } else { head_dim }.into());
            set("final_logit_softcapping", file.get_f64(&key("final_logit_softcapping"))?.map(Value::from).unwrap_or(Value::Null));
        }
        _ => {}
    }
    ModelConfig::from_json(&Value::Object(c), path)
}

/// `<arch>.rope.scaling.*` as `rope_scaling`: none or linear (llama 3's `rope_freqs` tensor is refused at load).
fn rope_scaling(file: &GgufFile, key: &dyn Fn(&str) -> String) -> Result<Value> {
    match file.get_str(&key("rope.scaling.type"))? {
        None | Some("none") => Ok(Value::Null),
        Some("linear") => {
            let factor = file.get_f64(&key("rope.scaling.factor"))?.unwrap_or(1.0);
            Ok(if factor == 1.0 { Value::Null } else { json!({ "rope_type": "linear", "factor": factor }) })
        }
        Some(kind) => Err(Error::Unsupported(format!("{}: RoPE scaling `{kind}` is not supported", file.path.display()))),
    }
}
