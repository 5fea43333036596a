//! llama.cpp's tensor names and Hugging Face's, the shape a config implies for each, and
//! llama.cpp's Q/K row permutation.
use crate::config::ModelConfig;
use crate::error::Result;
use candle_core::Tensor;

/// Per-layer parts of llama, mistral and qwen2: (GGUF stem, HF stem). Norms have weights
/// only; the rest may have biases.
const LLAMA_PARTS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

const QWEN3_PARTS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Phi-3: fused `attn_qkv` (rows q, k, v) and `ffn_up` holding gate_up_proj (gate half first).
const PHI3_PARTS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_qkv", "self_attn.qkv_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_up", "mlp.gate_up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Gemma 3: GGUF's `ffn_norm` is the pre-feedforward norm, the attention output's norm is
/// `post_attention_norm`.
const GEMMA3_PARTS: &[(&str, &str)] = &[
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

fn layer_parts(model_type: &str) -> &'static [(&'static str, &'static str)] {
    match model_type {
        "qwen3" => QWEN3_PARTS,
        "phi3" => PHI3_PARTS,
        "gemma3_text" => GEMMA3_PARTS,
        _ => LLAMA_PARTS,
    }
}

const GLOBALS: &[(&str, &str)] =
    &[("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"), ("output.weight", "lm_head.weight")];

fn is_norm(hf_stem: &str) -> bool {
    hf_stem.ends_with("layernorm") || hf_stem.ends_with("_norm")
}

/// Whether a Hugging Face weight name is a norm's weight.
pub(crate) fn is_norm_weight(hf_name: &str) -> bool {
    hf_name == "model.norm.weight" || hf_name.strip_suffix(".weight").is_some_and(is_norm)
}

/// `(layer, stem, suffix)` of `<prefix>N.<stem>.<suffix>`.
fn split_layer<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str, &'a str)> {
    let (n, rest) = name.strip_prefix(prefix)?.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    let (stem, suffix) = rest.rsplit_once('.')?;
    Some((n.parse().ok()?, stem, suffix))
}

fn translate(name: &str, model_type: &str, from_prefix: &str, to_prefix: &str, to_hf: bool) -> Option<String> {
    if let Some(&(g, h)) = GLOBALS.iter().find(|(g, h)| *(if to_hf { g } else { h }) == name) {
        return Some(if to_hf { h } else { g }.to_string());
    }
    let (layer, stem, suffix) = split_layer(name, from_prefix)?;
    let &(g, h) = layer_parts(model_type).iter().find(|(g, h)| *(if to_hf { g } else { h }) == stem)?;
    if suffix != "weight" && (suffix != "bias" || is_norm(h)) {
        return None;
    }
    Some(format!("{to_prefix}{layer}.{}.{suffix}", if to_hf { h } else { g }))
}

/// `blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` in a model of
/// `model_type`; None for names that architecture has not.
pub fn gguf_to_hf(name: &str, model_type: &str) -> Option<String> {
    translate(name, model_type, "blk.", "model.layers.", true)
}

/// The inverse of [`gguf_to_hf`].
pub fn hf_to_gguf(name: &str, model_type: &str) -> Option<String> {
    translate(name, model_type, "model.layers.", "blk.", false)
}

/// The layer index of a Hugging Face weight name, if it belongs to a layer.
pub(crate) fn layer_of(hf_name: &str) -> Option<usize> {
    split_layer(hf_name, "model.layers.").map(|(n, _, _)| n)
}

pub(crate) use crate::model::shapes::{expected_shape, shape_keys};

/// Every weight a checkpoint of `cfg` must have, in llama.cpp's file order. Lazy, so that an
/// absurd `block_count` costs nothing until a layer turns out to be missing.
pub(crate) fn required_names(cfg: &ModelConfig) -> impl Iterator<Item = String> + '_ {
    let layers = (0..cfg.num_hidden_layers).flat_map(move |l| {
        layer_parts(&cfg.arch.model_type).iter().flat_map(move |&(_, h)| {
            let bias = match h {
                _ if is_norm(h) => false,
                "self_attn.o_proj" => cfg.arch.o_bias,
                _ if h.starts_with("self_attn.") => cfg.arch.qkv_bias,
                _ => cfg.mlp_bias && h.starts_with("mlp."),
            };
            let suffixes: &[&str] = if bias { &["weight", "bias"] } else { &["weight"] };
            suffixes.iter().map(move |s| format!("model.layers.{l}.{h}.{s}"))
        })
    });
    std::iter::once("model.embed_tokens.weight".to_string())
        .chain(layers)
        .chain(std::iter::once("model.norm.weight".to_string()))
        .chain((!cfg.tie_word_embeddings).then(|| "lm_head.weight".to_string()))
}

/// The head count llama.cpp permuted a weight with: q by the query heads, k by the KV heads.
/// Only its `llama` architecture (LLaMA, Mistral) permutes; the others use rotate-half RoPE.
pub(crate) fn rope_heads(cfg: &ModelConfig, hf_name: &str) -> Option<usize> {
    if !matches!(cfg.arch.model_type.as_str(), "llama" | "mistral") {
        return None;
    }
    match split_layer(hf_name, "model.layers.")?.1 {
        "self_attn.q_proj" => Some(cfg.num_attention_heads),
        "self_attn.k_proj" => Some(cfg.num_key_value_heads),
        _ => None,
    }
}

/// llama.cpp's `permute(w, n_head)`: `w.reshape(n_head, 2, hd/2, *rest).swapaxes(1, 2)`. Its
/// RoPE rotates adjacent pairs of rows, HF's rotates row j with row j + hd/2 of each head.
pub(crate) fn to_gguf_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    swap_row_axes(t, n_head, true)
}

/// The inverse of [`to_gguf_rows`]: back to HF's rotate-half layout.
/// `from_gguf_rows` as a row order: row i of the result is row `order[i]` of the GGUF
/// tensor (rows [n_head, half, 2] read as [n_head, 2, half]).
pub(crate) fn from_gguf_row_order(rows: usize, n_head: usize) -> Vec<usize> {
    let half = rows / n_head / 2;
    (0..rows)
        .map(|r| {
            let (h, j, i) = (r / (2 * half), (r / half) % 2, r % half);
            h * 2 * half + 2 * i + j
        })
        .collect()
}

pub(crate) fn from_gguf_rows(t: &Tensor, n_head: usize) -> Result<Tensor> {
    swap_row_axes(t, n_head, false)
}

fn swap_row_axes(t: &Tensor, n_head: usize, to_gguf: bool) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let half = dims[0] / n_head / 2;
    let mut split = if to_gguf { vec![n_head, 2, half] } else { vec![n_head, half, 2] };
    split.extend_from_slice(&dims[1..]);
    Ok(t.reshape(split)?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}
