//! Whole models as GGUF, written the way llama.cpp's `convert_hf_to_gguf.py` writes them for
//! each architecture we load (llama, mistral, qwen2, qwen3, phi3, gemma3): the same metadata
//! keys and types (`conversion/{llama,qwen,phi,gemma}.py` `set_gguf_parameters`), Q/K rows
//! permuted for llama.cpp's interleaved RoPE (llama, mistral), Gemma's norms stored plus one
//! (`Gemma3Model.norm_shift`), 1-D tensors in f32 and 2-D ones in the `OutType`'s types.
//! Checked key by key against llama.cpp-converted files in `tests/gguf_export.rs`.
use super::config::gguf_architecture;
use super::names::{expected_shape, hf_to_gguf, is_norm_weight, layer_of, required_names, rope_heads, shape_keys, to_gguf_rows};
use super::quant::{tensor_type, OutType, TensorRole};
use super::write::{write_gguf_file, TensorEntry, Val};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::tokenizer::GgufTokenizerSpec;
use candle_core::quantized::GgmlDType;
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

fn u32_of(key: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::arg(key, "a value below 2^32", v))
}

/// transformers' Phi-3 default when the config has no `original_max_position_embeddings`.
const PHI3_ORIGINAL_CONTEXT: usize = 4096;

/// The `<arch>.*` keys, in the converter's order for that architecture.
fn arch_metadata(cfg: &ModelConfig, arch: &str, out: OutType) -> Result<Vec<(String, Val<'static>)>> {
    let mt = cfg.arch.model_type.as_str();
    let mut kv: Vec<(String, Val<'static>)> = Vec::new();
    let u32s = |kv: &mut Vec<(String, Val<'static>)>, keys: &[(&str, usize)]| -> Result<()> {
        for &(k, v) in keys {
            kv.push((format!("{arch}.{k}"), Val::U32(u32_of(k, v)?)));
        }
        Ok(())
    };
    let f32_of = |k: &str, v: f64| (format!("{arch}.{k}"), Val::F32(v as f32));
    let file_type =
        |kv: &mut Vec<(String, Val<'static>)>| kv.extend(out.file_type().map(|t| ("general.file_type".to_string(), Val::U32(t))));
    let head = cfg.head_dim;
    if mt == "phi3" {
        let original = match &cfg.rope_scaling {
            Some(RopeScaling::Longrope { .. }) => return Err(Error::Unsupported("a GGUF of Phi-3 with LongRoPE (its rope_factors tensors are not written yet); export the merged model with savePretrained and convert it with llama.cpp's convert_hf_to_gguf.py".into())),
            _ => cfg.source_json.as_ref().and_then(|j| j.get("original_max_position_embeddings")).and_then(|v| v.as_u64()).map_or(PHI3_ORIGINAL_CONTEXT, |v| v as usize),
        };
        u32s(
            &mut kv,
            &[
                ("context_length", cfg.max_position_embeddings),
                ("rope.scaling.original_context_length", original),
                ("embedding_length", cfg.hidden_size),
                ("feed_forward_length", cfg.intermediate_size),
                ("block_count", cfg.num_hidden_layers),
                ("attention.head_count", cfg.num_attention_heads),
                ("attention.head_count_kv", cfg.num_key_value_heads),
            ],
        )?;
        kv.push(f32_of("attention.layer_norm_rms_epsilon", cfg.rms_norm_eps));
        u32s(&mut kv, &[("rope.dimension_count", cfg.arch.rotary_dim)])?;
        kv.push(f32_of("rope.freq_base", cfg.rope_theta));
        file_type(&mut kv);
        u32s(&mut kv, &[("attention.sliding_window", cfg.arch.sliding_window.unwrap_or(0))])?;
        return Ok(kv);
    }
    u32s(
        &mut kv,
        &[
            ("block_count", cfg.num_hidden_layers),
            ("context_length", cfg.max_position_embeddings),
            ("embedding_length", cfg.hidden_size),
            ("feed_forward_length", cfg.intermediate_size),
            ("attention.head_count", cfg.num_attention_heads),
            ("attention.head_count_kv", cfg.num_key_value_heads),
        ],
    )?;
    kv.push(f32_of("rope.freq_base", cfg.rope_theta));
    if let Some(local) = cfg.arch.local_rope_theta.filter(|_| mt == "gemma3_text") {
        kv.push(f32_of("rope.freq_base_swa", local));
    }
    kv.push(f32_of("attention.layer_norm_rms_epsilon", cfg.rms_norm_eps));
    if mt != "qwen2" {
        u32s(&mut kv, &[("attention.key_length", head), ("attention.value_length", head)])?;
    }
    match &cfg.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            kv.push((format!("{arch}.rope.scaling.type"), Val::Str("linear")));
            kv.push(f32_of("rope.scaling.factor", *factor));
        }
        Some(other) => {
            let kind = if matches!(other, RopeScaling::Llama3 { .. }) { "llama3 (its rope_freqs tensor)" } else { "LongRoPE" };
            return Err(Error::Unsupported(format!("a GGUF with {kind} RoPE scaling is not written yet; export the merged model with savePretrained and convert it with llama.cpp's convert_hf_to_gguf.py")));
        }
    }
    file_type(&mut kv);
    match mt {
        "llama" | "mistral" => u32s(&mut kv, &[("vocab_size", cfg.vocab_size), ("rope.dimension_count", head)])?,
        "gemma3_text" => {
            if let Some(cap) = cfg.arch.final_logit_softcapping {
                kv.push(f32_of("final_logit_softcapping", cap));
            }
            if let Some(w) = cfg.arch.sliding_window {
                u32s(&mut kv, &[("attention.sliding_window", w)])?;
            }
        }
        _ => {}
    }
    Ok(kv)
}

/// `tokenizer.*` keys as the converter writes them; the config's special ids win over the
/// tokenizer's (they are what the model was trained with), a second eos becomes llama.cpp's
/// end-of-turn token.
fn tokenizer_metadata<'a>(cfg: &ModelConfig, tok: Option<&'a GgufTokenizerSpec>) -> Vec<(String, Val<'a>)> {
    let mut kv: Vec<(String, Val<'a>)> = Vec::new();
    let mut push = |k: &str, v: Val<'a>| kv.push((k.to_string(), v));
    if let Some(t) = tok {
        push("tokenizer.ggml.model", Val::Str(&t.model));
        if let Some(pre) = &t.pre {
            push("tokenizer.ggml.pre", Val::Str(pre));
        }
        push("tokenizer.ggml.tokens", Val::Strs(&t.tokens));
        if !t.token_types.is_empty() {
            push("tokenizer.ggml.token_type", Val::I32s(&t.token_types));
        }
        if !t.scores.is_empty() {
            push("tokenizer.ggml.scores", Val::F32s(&t.scores));
        }
        if !t.merges.is_empty() {
            push("tokenizer.ggml.merges", Val::Strs(&t.merges));
        }
    }
    let ids = [
        ("tokenizer.ggml.bos_token_id", cfg.bos_token_id.or(tok.and_then(|t| t.bos_token_id))),
        ("tokenizer.ggml.eos_token_id", cfg.eos_token_ids.first().copied().or(tok.and_then(|t| t.eos_token_id))),
        ("tokenizer.ggml.eot_token_id", cfg.eos_token_ids.get(1).copied()),
        ("tokenizer.ggml.unknown_token_id", tok.and_then(|t| t.unknown_token_id)),
        ("tokenizer.ggml.padding_token_id", cfg.pad_token_id.or(tok.and_then(|t| t.pad_token_id))),
    ];
    for (k, v) in ids.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))) {
        push(k, Val::U32(v));
    }
    for (key, b) in [
        ("tokenizer.ggml.add_bos_token", tok.and_then(|t| t.add_bos_token)),
        ("tokenizer.ggml.add_eos_token", tok.and_then(|t| t.add_eos_token)),
        ("tokenizer.ggml.add_space_prefix", tok.and_then(|t| t.add_space_prefix)),
    ] {
        if let Some(b) = b {
            push(key, Val::Bool(b));
        }
    }
    if let Some(tpl) = tok.and_then(|t| t.chat_template.as_deref()) {
        push("tokenizer.chat_template", Val::Str(tpl));
    }
    kv
}

/// Writes a model of `config` as a GGUF at `path`. `source(name)` gives each weight under its
/// Hugging Face name and shape when the writer reaches it (one at a time, so a model never
/// needs to be in memory whole: a benchmark can generate random weights on the fly).
/// `lm_head.weight` is not asked for when the config ties it.
pub fn write_gguf(
    path: &Path,
    config: &ModelConfig,
    mut source: impl FnMut(&str) -> Result<Tensor>,
    outtype: OutType,
    tokenizer: Option<&GgufTokenizerSpec>,
) -> Result<()> {
    let mt = config.arch.model_type.as_str();
    let arch = gguf_architecture(mt).ok_or_else(|| Error::Unsupported(format!("a GGUF of a {mt} model")))?;
    if let Some(t) = tokenizer.filter(|t| t.tokens.len() > config.vocab_size) {
        return Err(Error::arg("tokenizer", format!("at most vocab_size ({}) tokens", config.vocab_size), t.tokens.len()));
    }
    let mut kv: Vec<(String, Val)> = vec![("general.architecture".into(), Val::Str(arch)), ("general.type".into(), Val::Str("model"))];
    kv.extend(arch_metadata(config, arch, outtype)?);
    kv.push(("general.quantization_version".into(), Val::U32(2)));
    kv.extend(tokenizer_metadata(config, tokenizer));
    let hf_names: Vec<String> = required_names(config).collect();
    let tied_head = config.tie_word_embeddings;
    let entries: Vec<TensorEntry> = hf_names
        .iter()
        .map(|hf| {
            let name = hf_to_gguf(hf, mt).expect("required names have GGUF names");
            let dims = expected_shape(config, hf).expect("required names have shapes");
            let role = TensorRole { name: &name, dims: &dims, layer: layer_of(hf), n_layers: config.num_hidden_layers, tied_head };
            let ty = tensor_type(outtype, &role);
            TensorEntry { name, dims, ty }
        })
        .collect();
    write_gguf_file(path, &kv, &entries, |i| {
        let hf = &hf_names[i];
        let t = source(hf)?;
        let expected = &entries[i].dims;
        if t.dims() != expected.as_slice() {
            return Err(Error::WeightShape {
                file: path.into(),
                name: hf.clone(),
                expected: expected.clone(),
                found: t.dims().to_vec(),
                because: shape_keys(config, hf),
            });
        }
        let mut t = match rope_heads(config, hf) {
            Some(n_head) => to_gguf_rows(&t, n_head)?,
            None => t,
        };
        if config.arch.unit_offset_norms && is_norm_weight(hf) {
            t = t.to_dtype(candle_core::DType::F32)?.affine(1.0, 1.0)?;
        }
        Ok(t)
    })
}

/// [`write_gguf`] from a map of every weight (Hugging Face names); any other name is refused.
pub fn write_llama_gguf(
    path: &Path,
    config: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    tokenizer: Option<&GgufTokenizerSpec>,
    quant: GgmlDType,
) -> Result<()> {
    if quant == GgmlDType::Q8_1 {
        return Err(Error::Unsupported(format!("GGUF tensors in {quant:?} (llama.cpp never stores weights in it)")));
    }
    let required: std::collections::HashSet<String> = required_names(config).collect();
    let tied_head = |n: &str| n == "lm_head.weight" && config.tie_word_embeddings;
    if let Some(extra) = weights.keys().find(|n| !tied_head(n) && !required.contains(*n)) {
        return Err(Error::arg("weights", format!("only the {} weights the config implies", config.arch.model_type), format!("`{extra}`")));
    }
    let source = |hf: &str| weights.get(hf).cloned().ok_or_else(|| Error::MissingWeight { file: path.into(), name: hf.to_string() });
    write_gguf(path, config, source, OutType::Uniform(quant), tokenizer)
}
