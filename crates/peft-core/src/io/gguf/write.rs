//! Writes llama GGUF files the way llama.cpp's `convert_hf_to_gguf.py` does: the same
//! metadata keys and types, Q/K rows permuted for llama.cpp's interleaved RoPE, 1-D tensors
//! (norms, biases) kept in f32, and 2-D ones quantized where the row length allows.
//! Tensors are quantized and streamed one at a time into a temporary file that is renamed
//! into place, so memory stays at one tensor and a crash never leaves a partial file.
use super::names::{expected_shape, hf_to_gguf, required_names, rope_heads, shape_keys, to_gguf_rows};
use super::read::{ggml_type_id, DEFAULT_ALIGNMENT};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::io::safetensors::tensor_bytes;
use crate::tokenizer::GgufTokenizerSpec;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub(super) enum Val<'a> {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    Strs(&'a [String]),
    I32s(&'a [i32]),
    F32s(&'a [f32]),
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_kv(buf: &mut Vec<u8>, key: &str, v: &Val) {
    put_str(buf, key);
    let array_head = |buf: &mut Vec<u8>, elem_type: u32, len: usize| {
        buf.extend_from_slice(&9u32.to_le_bytes());
        buf.extend_from_slice(&elem_type.to_le_bytes());
        buf.extend_from_slice(&(len as u64).to_le_bytes());
    };
    match v {
        Val::U32(x) => buf.extend(4u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::F32(x) => buf.extend(6u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::Bool(x) => buf.extend(7u32.to_le_bytes().into_iter().chain([*x as u8])),
        Val::Str(s) => {
            buf.extend_from_slice(&8u32.to_le_bytes());
            put_str(buf, s);
        }
        Val::Strs(items) => {
            array_head(buf, 8, items.len());
            items.iter().for_each(|s| put_str(buf, s));
        }
        Val::I32s(items) => {
            array_head(buf, 5, items.len());
            items.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        }
        Val::F32s(items) => {
            array_head(buf, 6, items.len());
            items.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        }
    }
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file quantized to `q`; the K-quants
/// map to their "S" mixes, the closest to one type throughout. Q8_K has no file type.
fn file_type(q: GgmlDType) -> Option<u32> {
    use GgmlDType::*;
    Some(match q {
        F32 => 0, F16 => 1, Q4_0 => 2, Q4_1 => 3, Q8_0 => 7, Q5_0 => 8, Q5_1 => 9,
        Q2K => 10, Q3K => 11, Q4K => 14, Q5K => 16, Q6K => 18, BF16 => 32,
        Q8_1 | Q8K => return None,
    })
}

/// The type a tensor is stored in. Like llama.cpp: 1-D stays f32; a row length that is not
/// a multiple of the block size falls back to a 32-wide type of similar precision, then f16.
fn storage_type(dims: &[usize], quant: GgmlDType) -> GgmlDType {
    use GgmlDType::*;
    if dims.len() < 2 {
        return F32;
    }
    let row = dims[dims.len() - 1];
    let fallback = match quant {
        Q2K | Q3K => Q4_0,
        Q4K => Q5_0,
        Q5K => Q5_1,
        Q6K | Q8K => Q8_0,
        q => q,
    };
    [quant, fallback].into_iter().find(|t| row.is_multiple_of(t.block_size())).unwrap_or(F16)
}

fn encode(t: &Tensor, ty: GgmlDType) -> Result<Vec<u8>> {
    let t = t.to_device(&Device::Cpu)?;
    Ok(match ty {
        GgmlDType::F32 => tensor_bytes(&t.to_dtype(DType::F32)?)?.1,
        GgmlDType::F16 => tensor_bytes(&t.to_dtype(DType::F16)?)?.1,
        GgmlDType::BF16 => tensor_bytes(&t.to_dtype(DType::BF16)?)?.1,
        q => QTensor::quantize(&t, q)?.data()?.into_owned(),
    })
}

fn u32_of(key: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::arg(key, "a value below 2^32", v))
}

fn metadata<'a>(cfg: &ModelConfig, tok: Option<&'a GgufTokenizerSpec>, quant: GgmlDType) -> Result<Vec<(&'static str, Val<'a>)>> {
    let mut kv = vec![("general.architecture", Val::Str("llama")), ("general.type", Val::Str("model"))];
    for (key, v) in [("llama.block_count", cfg.num_hidden_layers), ("llama.context_length", cfg.max_position_embeddings),
        ("llama.embedding_length", cfg.hidden_size), ("llama.feed_forward_length", cfg.intermediate_size),
        ("llama.attention.head_count", cfg.num_attention_heads), ("llama.attention.head_count_kv", cfg.num_key_value_heads)] {
        kv.push((key, Val::U32(u32_of(key, v)?)));
    }
    kv.push(("llama.rope.freq_base", Val::F32(cfg.rope_theta as f32)));
    kv.push(("llama.attention.layer_norm_rms_epsilon", Val::F32(cfg.rms_norm_eps as f32)));
    let head_dim = u32_of("head_dim", cfg.head_dim)?;
    kv.push(("llama.attention.key_length", Val::U32(head_dim)));
    kv.push(("llama.attention.value_length", Val::U32(head_dim)));
    if let Some(ft) = file_type(quant) {
        kv.push(("general.file_type", Val::U32(ft)));
    }
    kv.push(("llama.vocab_size", Val::U32(u32_of("vocab_size", cfg.vocab_size)?)));
    kv.push(("llama.rope.dimension_count", Val::U32(head_dim)));
    if let Some(t) = tok {
        kv.push(("tokenizer.ggml.model", Val::Str(&t.model)));
        if let Some(pre) = &t.pre {
            kv.push(("tokenizer.ggml.pre", Val::Str(pre)));
        }
        kv.push(("tokenizer.ggml.tokens", Val::Strs(&t.tokens)));
        if !t.token_types.is_empty() {
            kv.push(("tokenizer.ggml.token_type", Val::I32s(&t.token_types)));
        }
        if !t.scores.is_empty() {
            kv.push(("tokenizer.ggml.scores", Val::F32s(&t.scores)));
        }
        if !t.merges.is_empty() {
            kv.push(("tokenizer.ggml.merges", Val::Strs(&t.merges)));
        }
    }
    // The config's special ids win: they are what the model was trained with. A second eos
    // becomes llama.cpp's end-of-turn token.
    let ids = [("tokenizer.ggml.bos_token_id", cfg.bos_token_id.or(tok.and_then(|t| t.bos_token_id))),
        ("tokenizer.ggml.eos_token_id", cfg.eos_token_ids.first().copied().or(tok.and_then(|t| t.eos_token_id))),
        ("tokenizer.ggml.eot_token_id", cfg.eos_token_ids.get(1).copied()),
        ("tokenizer.ggml.unknown_token_id", tok.and_then(|t| t.unknown_token_id)),
        ("tokenizer.ggml.padding_token_id", cfg.pad_token_id.or(tok.and_then(|t| t.pad_token_id)))];
    kv.extend(ids.into_iter().filter_map(|(k, v)| v.map(|v| (k, Val::U32(v)))));
    for (key, b) in [("tokenizer.ggml.add_bos_token", tok.and_then(|t| t.add_bos_token)),
        ("tokenizer.ggml.add_eos_token", tok.and_then(|t| t.add_eos_token))] {
        kv.extend(b.map(|b| (key, Val::Bool(b))));
    }
    if let Some(tpl) = tok.and_then(|t| t.chat_template.as_deref()) {
        kv.push(("tokenizer.chat_template", Val::Str(tpl)));
    }
    kv.push(("general.quantization_version", Val::U32(2)));
    Ok(kv)
}

/// Writes a llama checkpoint (Hugging Face names and layout) as GGUF, quantized to `quant`
/// where the row length allows. `lm_head.weight` is skipped when the config ties it.
pub fn write_llama_gguf(path: &Path, config: &ModelConfig, weights: &HashMap<String, Tensor>,
    tokenizer: Option<&GgufTokenizerSpec>, quant: GgmlDType) -> Result<()> {
    if config.arch.model_type != "llama" {
        return Err(Error::Unsupported(format!("writing a GGUF of a {} model (only llama so far)", config.arch.model_type)));
    }
    if config.rope_scaling.is_some() {
        return Err(Error::Unsupported("writing GGUF with llama3 RoPE scaling (rope_freqs.weight)".into()));
    }
    if quant == GgmlDType::Q8_1 {
        return Err(Error::Unsupported("GGUF tensors in Q8_1 (llama.cpp never stores weights in it)".into()));
    }
    struct Entry<'a> { hf: String, gguf: String, tensor: &'a Tensor, ty: GgmlDType }
    let mut entries: Vec<Entry> = Vec::new();
    for hf in required_names(config) {
        let tensor = weights.get(&hf).ok_or_else(|| Error::MissingWeight { file: path.into(), name: hf.clone() })?;
        let expected = expected_shape(config, &hf).expect("required names have shapes");
        if tensor.dims() != expected {
            let because = shape_keys(config, &hf);
            return Err(Error::WeightShape { file: path.into(), name: hf, expected, found: tensor.dims().to_vec(), because });
        }
        let ty = storage_type(&expected, quant);
        let gguf = hf_to_gguf(&hf, &config.arch.model_type).expect("required names have GGUF names");
        entries.push(Entry { hf, gguf, tensor, ty });
    }
    let tied_head = |n: &str| n == "lm_head.weight" && config.tie_word_embeddings;
    if let Some(extra) = weights.keys().find(|n| !tied_head(n) && !entries.iter().any(|e| &e.hf == *n)) {
        return Err(Error::arg("weights", "only the llama weights the config implies", format!("`{extra}`")));
    }
    let kv = metadata(config, tokenizer, quant)?;
    let tensors = entries
        .into_iter()
        .map(|e| {
            let t = match rope_heads(config, &e.hf) {
                Some(n_head) => to_gguf_rows(e.tensor, n_head)?,
                None => e.tensor.clone(),
            };
            Ok((e.gguf, t, e.ty))
        })
        .collect::<Result<Vec<_>>>()?;
    write_gguf(path, &kv, &tensors)
}

/// A GGUF file of `kv` metadata and `tensors` (GGUF name, tensor in llama.cpp's row order,
/// storage type), written through a temporary file renamed into place.
pub(super) fn write_gguf(path: &Path, kv: &[(&str, Val)], tensors: &[(String, Tensor, GgmlDType)]) -> Result<()> {
    let mut header = b"GGUF".to_vec();
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    kv.iter().for_each(|(k, v)| put_kv(&mut header, k, v));
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(tensors.len());
    for (name, t, ty) in tensors {
        if t.dims().last().is_some_and(|&row| !row.is_multiple_of(ty.block_size())) {
            return Err(Error::arg("outtype", format!("a type whose block ({}) divides every row", ty.block_size()), format!("{ty:?} for `{name}` of shape {:?}", t.dims())));
        }
        let size = (t.elem_count() / ty.block_size() * ty.type_size()) as u64;
        put_str(&mut header, name);
        header.extend_from_slice(&(t.rank() as u32).to_le_bytes());
        t.dims().iter().rev().for_each(|&d| header.extend_from_slice(&(d as u64).to_le_bytes()));
        header.extend_from_slice(&ggml_type_id(*ty).to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        sizes.push(size);
        offset += size.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    let pad = |len: u64| vec![0u8; (len.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT - len) as usize];
    header.extend(pad(header.len() as u64));
    let io = |e: std::io::Error| Error::io(path, e);
    write_streamed(path, |out| {
        out.write_all(&header).map_err(io)?;
        for ((name, t, ty), size) in tensors.iter().zip(sizes) {
            let bytes = encode(t, *ty)?;
            if bytes.len() as u64 != size {
                return Err(Error::Unsupported(format!("`{name}` encoded to {} bytes, expected {size}", bytes.len())));
            }
            out.write_all(&bytes).map_err(io)?;
            out.write_all(&pad(size)).map_err(io)?;
        }
        Ok(())
    })
}

/// Same tmp + fsync + rename pattern as `safetensors::write_atomic`, but streamed.
fn write_streamed(path: &Path, body: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>) -> Result<()> {
    if path.is_dir() {
        return Err(Error::arg("path", "a file path", format!("{} (a directory)", path.display())));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?);
        body(&mut out)?;
        let file = out.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
