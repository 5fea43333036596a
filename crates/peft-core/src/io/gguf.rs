//! GGUF checkpoints (llama.cpp's format) of the architectures llama, qwen2, qwen3, phi3 and
//! gemma3: the config from the `<arch>.*` metadata (`config.rs`), the tokenizer from
//! `tokenizer.*`, and the weights renamed to Hugging Face names, dequantized, and with
//! llama.cpp's conversions undone (Q/K row permutation, Gemma's norm + 1), so that a GGUF
//! model plugs into the same code as a safetensors one.
//! `read` parses headers defensively, `file` reads metadata and tensors, `write` writes the
//! container, `model` whole models (`saveGguf` of a merged model), `lora` adapters, `quant`
//! picks each tensor's type, `names` maps names and undoes the permutation.
mod config;
mod file;
mod lora;
mod model;
mod names;
mod quant;
mod read;
mod write;

pub use config::{config_from_metadata, model_type_of};
pub use file::GgufFile;
pub use lora::{outtype, write_lora_gguf};
pub use model::{write_gguf, write_llama_gguf};
pub use names::{gguf_to_hf, hf_to_gguf};
pub use quant::{OutType, OUTTYPE_NAMES};
pub use read::{MetaValue, TensorInfo, DEFAULT_ALIGNMENT};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::io::safetensors::WeightMap;
use crate::model::QWeight;
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

/// Loads a GGUF file, dequantizing every tensor to `dtype` (f32, f16 or bf16), except, with
/// `keep_quantized` on the CPU, the 2-D weights in a storage type `QWeight` keeps.
pub fn load_gguf(path: &Path, dtype: DType, device: &Device, keep_quantized: bool) -> Result<GgufCheckpoint> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(Error::arg("dtype", "f32, f16 or bf16", format!("{dtype:?}")));
    }
    let file = GgufFile::open(path)?;
    if file.tensor_info("rope_freqs.weight").is_some() {
        return Err(Error::Unsupported(format!(
            "{}: tensor `rope_freqs.weight` (llama 3.1-style RoPE scaling) is not supported yet",
            path.display()
        )));
    }
    let tokenizer = tokenizer_spec(&file)?;
    let config = config_from_metadata(&file, &tokenizer)?;
    let keep = keep_quantized && device.is_cpu();
    let weights = load_weights(&file, &config, dtype, device, keep)?;
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
        add_space_prefix: file.get_bool("tokenizer.ggml.add_space_prefix")?,
        chat_template: file.get_str("tokenizer.chat_template")?.map(String::from),
    };
    let n = spec.tokens.len();
    for (key, len) in [("tokenizer.ggml.token_type", spec.token_types.len()), ("tokenizer.ggml.scores", spec.scores.len())] {
        if len != 0 && len != n {
            return Err(corrupt(&file.path, format!("metadata `{key}` has {len} entries but there are {n} tokens")));
        }
    }
    let ids = [
        ("bos", spec.bos_token_id),
        ("eos", spec.eos_token_id),
        ("padding", spec.pad_token_id),
        ("unknown", spec.unknown_token_id),
        ("eot", id("tokenizer.ggml.eot_token_id")?),
    ];
    for (what, v) in ids {
        if let Some(v) = v.filter(|&v| n > 0 && v as usize >= n) {
            return Err(corrupt(&file.path, format!("metadata `tokenizer.ggml.{what}_token_id` is {v}, past the {n} tokens")));
        }
    }
    Ok(spec)
}

fn load_weights(file: &GgufFile, cfg: &ModelConfig, dtype: DType, device: &Device, keep: bool) -> Result<WeightMap> {
    let path = file.path.as_path();
    // Check every name and shape before dequantizing anything: errors come fast and cheap.
    let mut plan = Vec::with_capacity(file.tensors.len());
    let mut seen = HashSet::new();
    for info in &file.tensors {
        let arch = cfg.arch.model_type.as_str();
        let hf =
            gguf_to_hf(&info.name, arch).ok_or_else(|| corrupt(path, format!("tensor `{}` is not part of a {arch} model", info.name)))?;
        if let Some(layer) = names::layer_of(&hf).filter(|&l| l >= cfg.num_hidden_layers) {
            return Err(corrupt(
                path,
                format!("tensor `{}` is for layer {layer}, but block_count is {}", info.name, cfg.num_hidden_layers),
            ));
        }
        let expected = names::expected_shape(cfg, &hf).expect("every known name has a shape");
        if info.dims != expected {
            let because = names::shape_keys(cfg, &hf);
            return Err(Error::WeightShape { file: path.into(), name: info.name.clone(), expected, found: info.dims.clone(), because });
        }
        seen.insert(hf.clone());
        plan.push((info, hf));
    }
    if let Some(missing) = names::required_names(cfg).find(|n| !seen.contains(n)) {
        let name = hf_to_gguf(&missing, &cfg.arch.model_type).unwrap_or(missing);
        return Err(Error::MissingWeight { file: path.into(), name });
    }
    let mut weights = WeightMap::default();
    for (info, hf) in plan {
        if keep && info.dims.len() == 2 && QWeight::keeps(info.dtype) {
            let (rows, cols) = (info.dims[0], info.dims[1]);
            let mut q = QWeight::from_bytes(&info.name, info.dtype, rows, cols, file.tensor_bytes(info))?;
            if let Some(n_head) = names::rope_heads(cfg, &hf) {
                q = q.permute_rows(&names::from_gguf_row_order(rows, n_head));
            }
            file.release(info);
            weights.files.insert(hf.clone(), path.into());
            weights.quantized.insert(hf, std::sync::Arc::new(q));
            continue;
        }
        let mut t = file.tensor(info, dtype, device)?;
        file.release(info);
        if let Some(n_head) = names::rope_heads(cfg, &hf) {
            t = names::from_gguf_rows(&t, n_head)?;
        }
        // convert_hf_to_gguf stores Gemma's zero-centred norm weights plus one (llama.cpp's
        // plain RMSNorm); transformers' GGUF loader subtracts it again, as we do.
        if cfg.arch.unit_offset_norms && names::is_norm_weight(&hf) {
            t = t.affine(1.0, -1.0)?;
        }
        weights.files.insert(hf.clone(), path.into());
        weights.tensors.insert(hf, t);
    }
    Ok(weights)
}
