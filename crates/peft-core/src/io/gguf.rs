//! GGUF checkpoints with the `llama` architecture (llama.cpp's format): the config from the
//! `llama.*` metadata, the tokenizer from `tokenizer.*`, and the weights renamed to Hugging
//! Face names, dequantized, and with llama.cpp's Q/K row permutation undone, so that a GGUF
//! model plugs into the same code as a safetensors one.
//! `read` parses headers defensively, `file` reads metadata and tensors, `write` writes files
//! (tests, `merge --gguf`), `names` maps names and undoes the permutation.
mod file;
mod names;
mod read;
mod write;

pub use file::GgufFile;
pub use names::{gguf_to_hf, hf_to_gguf};
pub use read::{MetaValue, TensorInfo, DEFAULT_ALIGNMENT};
pub use write::write_llama_gguf;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::io::safetensors::WeightMap;
use crate::tokenizer::GgufTokenizerSpec;
use candle_core::{DType, Device};
use read::corrupt;
use std::collections::HashSet;
use std::path::Path;

pub struct GgufCheckpoint {
    pub config: ModelConfig,
    /// Hugging Face names, HF shapes and row order, in the requested dtype.
    pub weights: WeightMap,
    pub tokenizer: GgufTokenizerSpec,
}

/// Loads a llama GGUF file, dequantizing every tensor to `dtype` (f32, f16 or bf16).
pub fn load_gguf(path: &Path, dtype: DType, device: &Device) -> Result<GgufCheckpoint> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::arg("dtype", "f32, f16 or bf16", format!("{dtype:?}")));
    }
    let file = GgufFile::open(path)?;
    match file.get_str("general.architecture")? {
        Some("llama") => {}
        Some(arch) => return Err(corrupt(path, format!("architecture `{arch}` is not supported (only `llama`)"))),
        None => return Err(corrupt(path, "metadata `general.architecture` is missing")),
    }
    if file.tensor_info("rope_freqs.weight").is_some() {
        return Err(Error::Unsupported(format!(
            "{}: tensor `rope_freqs.weight` (llama 3.1-style RoPE scaling) is not supported yet", path.display())));
    }
    let tokenizer = tokenizer_spec(&file)?;
    let config = config_from_metadata(&file, &tokenizer)?;
    let weights = load_weights(&file, &config, dtype, device)?;
    Ok(GgufCheckpoint { config, weights, tokenizer })
}

/// The tokenizer as the metadata describes it; empty (`model == ""`) when the file has none.
pub fn tokenizer_spec(file: &GgufFile) -> Result<GgufTokenizerSpec> {
    let id = |key: &str| -> Result<Option<u32>> {
        file.get_u64(key)?
            .map(|v| u32::try_from(v).map_err(|_| corrupt(&file.path, format!("metadata `{key}`: token id {v} is too large"))))
            .transpose()
    };
    let spec = GgufTokenizerSpec {
        model: file.get_str("tokenizer.ggml.model")?.unwrap_or_default().to_string(),
        pre: file.get_str("tokenizer.ggml.pre")?.map(String::from),
        tokens: file.get_str_array("tokenizer.ggml.tokens")?.unwrap_or_default(),
        token_types: file.get_i32_array("tokenizer.ggml.token_type")?.unwrap_or_default(),
        scores: file.get_f32_array("tokenizer.ggml.scores")?.unwrap_or_default(),
        merges: file.get_str_array("tokenizer.ggml.merges")?.unwrap_or_default(),
        bos_token_id: id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: id("tokenizer.ggml.eos_token_id")?,
        pad_token_id: id("tokenizer.ggml.padding_token_id")?,
        unknown_token_id: id("tokenizer.ggml.unknown_token_id")?,
        add_bos_token: file.get_bool("tokenizer.ggml.add_bos_token")?,
        add_eos_token: file.get_bool("tokenizer.ggml.add_eos_token")?,
        chat_template: file.get_str("tokenizer.chat_template")?.map(String::from),
    };
    let n = spec.tokens.len();
    for (key, len) in [("tokenizer.ggml.token_type", spec.token_types.len()), ("tokenizer.ggml.scores", spec.scores.len())] {
        if len != 0 && len != n {
            return Err(corrupt(&file.path, format!("metadata `{key}` has {len} entries but there are {n} tokens")));
        }
    }
    let ids = [("bos", spec.bos_token_id), ("eos", spec.eos_token_id), ("padding", spec.pad_token_id),
        ("unknown", spec.unknown_token_id), ("eot", id("tokenizer.ggml.eot_token_id")?)];
    for (what, v) in ids {
        if let Some(v) = v.filter(|&v| n > 0 && v as usize >= n) {
            return Err(corrupt(&file.path, format!("metadata `tokenizer.ggml.{what}_token_id` is {v}, past the {n} tokens")));
        }
    }
    Ok(spec)
}

/// The resolved config from the `llama.*` metadata and the tensor list.
pub fn config_from_metadata(file: &GgufFile, tok: &GgufTokenizerSpec) -> Result<ModelConfig> {
    let path = file.path.as_path();
    // Dimensions up to 2^31 keep every product of two of them inside usize.
    let int = |key: &str| -> Result<Option<usize>> {
        match file.get_u64(key)? {
            Some(v) if v == 0 || v > 1 << 31 => Err(corrupt(path, format!("metadata `{key}` is {v}, expected 1 to 2^31"))),
            v => Ok(v.map(|v| v as usize)),
        }
    };
    let req = |key: &str| int(key)?.ok_or_else(|| corrupt(path, format!("metadata `{key}` is missing")));
    let hidden = req("llama.embedding_length")?;
    let heads = req("llama.attention.head_count")?;
    let kv_heads = int("llama.attention.head_count_kv")?.unwrap_or(heads);
    if heads % kv_heads != 0 {
        return Err(corrupt(path, format!("llama.attention.head_count_kv ({kv_heads}) does not divide head_count ({heads})")));
    }
    let key_length = int("llama.attention.key_length")?;
    let rope_dims = int("llama.rope.dimension_count")?;
    let head_dim = key_length.or(rope_dims).unwrap_or(hidden / heads);
    for (key, v) in [("llama.attention.value_length", int("llama.attention.value_length")?), ("llama.rope.dimension_count", rope_dims)] {
        if let Some(v) = v.filter(|&v| v != head_dim) {
            return Err(Error::Unsupported(format!("{}: metadata `{key}` = {v} differs from the head size {head_dim}", path.display())));
        }
    }
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(corrupt(path, format!("head size {head_dim} is not a positive even number (RoPE rotates pairs)")));
    }
    if let Some(kind) = file.get_str("llama.rope.scaling.type")?.filter(|k| *k != "none") {
        return Err(Error::Unsupported(format!("{}: RoPE scaling `{kind}` is not supported", path.display())));
    }
    let embd_rows = file.tensor_info("token_embd.weight").map(|t| t.dims[0]);
    let vocab_size = match int("llama.vocab_size")? {
        Some(v) => v,
        None if !tok.tokens.is_empty() => tok.tokens.len(),
        None => embd_rows.ok_or_else(|| corrupt(path, "no vocabulary size: no llama.vocab_size, tokens or token_embd.weight"))?,
    };
    if tok.tokens.len() > vocab_size {
        return Err(corrupt(path, format!("{} tokens but a vocabulary of {vocab_size}", tok.tokens.len())));
    }
    let has = |suffix: &str| file.tensors.iter().any(|t| t.name.starts_with("blk.") && t.name.ends_with(suffix));
    let eot = file.get_u64("tokenizer.ggml.eot_token_id")?.and_then(|v| u32::try_from(v).ok());
    let mut eos_token_ids: Vec<u32> = tok.eos_token_id.into_iter().collect();
    eos_token_ids.extend(eot.filter(|e| !eos_token_ids.contains(e)));
    let mut cfg = ModelConfig::llama(vocab_size, hidden, req("llama.feed_forward_length")?, req("llama.block_count")?, heads, kv_heads);
    cfg.head_dim = head_dim;
    cfg.arch = crate::config::ArchConfig::llama(head_dim, cfg.num_hidden_layers);
    cfg.rms_norm_eps = file.get_f64("llama.attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| corrupt(path, "metadata `llama.attention.layer_norm_rms_epsilon` is missing"))?;
    cfg.rope_theta = file.get_f64("llama.rope.freq_base")?.unwrap_or(10000.0);
    cfg.max_position_embeddings = req("llama.context_length")?;
    cfg.tie_word_embeddings = file.tensor_info("output.weight").is_none();
    cfg.arch.qkv_bias = ["attn_q.bias", "attn_k.bias", "attn_v.bias"].iter().any(|s| has(s));
    cfg.arch.o_bias = has("attn_output.bias");
    cfg.mlp_bias = ["ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"].iter().any(|s| has(s));
    cfg.bos_token_id = tok.bos_token_id;
    cfg.eos_token_ids = eos_token_ids;
    cfg.pad_token_id = tok.pad_token_id;
    Ok(cfg)
}

fn load_weights(file: &GgufFile, cfg: &ModelConfig, dtype: DType, device: &Device) -> Result<WeightMap> {
    let path = file.path.as_path();
    // Check every name and shape before dequantizing anything: errors come fast and cheap.
    let mut plan = Vec::with_capacity(file.tensors.len());
    let mut seen = HashSet::new();
    for info in &file.tensors {
        let hf = gguf_to_hf(&info.name)
            .ok_or_else(|| corrupt(path, format!("tensor `{}` is not part of a llama model", info.name)))?;
        if let Some(layer) = names::layer_of(&hf).filter(|&l| l >= cfg.num_hidden_layers) {
            return Err(corrupt(path, format!(
                "tensor `{}` is for layer {layer}, but llama.block_count is {}", info.name, cfg.num_hidden_layers)));
        }
        let expected = names::expected_shape(cfg, &hf).expect("every llama name has a shape");
        if info.dims != expected {
            return Err(Error::WeightShape { file: path.into(), name: info.name.clone(), expected, found: info.dims.clone() });
        }
        seen.insert(hf.clone());
        plan.push((info, hf));
    }
    if let Some(missing) = names::required_names(cfg).find(|n| !seen.contains(n)) {
        let name = hf_to_gguf(&missing).unwrap_or(missing);
        return Err(Error::MissingWeight { file: path.into(), name });
    }
    let mut weights = WeightMap::default();
    for (info, hf) in plan {
        let mut t = file.tensor(info, dtype, device)?;
        if let Some(n_head) = names::rope_heads(cfg, &hf) {
            t = names::from_gguf_rows(&t, n_head)?;
        }
        weights.files.insert(hf.clone(), path.into());
        weights.tensors.insert(hf, t);
    }
    Ok(weights)
}
