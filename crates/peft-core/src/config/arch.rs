//! What sets the architectures of the LLaMA family apart, resolved once from `config.json`
//! (or GGUF metadata) into plain fields that the decoder reads. Each difference is one field,
//! so the decoder has no `match model_type` anywhere: transformers' `LlamaForCausalLM`,
//! `MistralForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`, `Phi3ForCausalLM` and
//! `Gemma3ForCausalLM` (`gemma3_text`) are the same decoder with these switches.
use super::{kind, Reader};
use crate::error::Result;
use serde::Serialize;
use serde_json::Value;

/// The `model_type`s we load, as `config.json` spells them.
pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SwiGLU: silu(gate) * up.
    Silu,
    /// GeGLU with the tanh approximation (`gelu_pytorch_tanh`, Gemma).
    GeluPytorchTanh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    FullAttention,
    /// Keys more than `sliding_window - 1` positions back are masked (`sliding_window_overlay`).
    SlidingAttention,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchConfig {
    pub model_type: String,
    /// Biases on q/k/v (LLaMA's `attention_bias`; always on for Qwen2).
    pub qkv_bias: bool,
    /// A bias on o_proj (LLaMA's `attention_bias`; never for Qwen2).
    pub o_bias: bool,
    /// Per-head RMSNorm on queries and keys before RoPE (`q_norm`, `k_norm`: Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// One `qkv_proj` and one `gate_up_proj` instead of five linears (Phi-3).
    pub fused_projections: bool,
    pub hidden_act: Activation,
    /// How many leading dims of each head RoPE rotates (`partial_rotary_factor` · head_dim).
    pub rotary_dim: usize,
    pub sliding_window: Option<usize>,
    /// One entry per decoder layer.
    pub layer_types: Vec<LayerType>,
    /// RoPE base of the sliding layers when it differs from `rope_theta` (Gemma 3's local base).
    pub local_rope_theta: Option<f64>,
    /// The attention's softmax scale (1/√head_dim, or `query_pre_attn_scalar`^-½ for Gemma).
    pub attn_scale: f64,
    /// Norms compute x̂ · (1 + w) (Gemma's zero-centred weights) instead of x̂ · w.
    pub unit_offset_norms: bool,
    /// Gemma's four norms per layer: the attention and MLP outputs are normed before the residual add.
    pub sandwich_norms: bool,
    /// Input embeddings are multiplied by this (Gemma: √hidden, cast to the weights' dtype).
    pub embed_scale: Option<f64>,
    /// logits = c · tanh(logits / c) when set (Gemma 2-style).
    pub final_logit_softcapping: Option<f64>,
}

impl ArchConfig {
    /// Plain LLaMA with the given head size.
    pub fn llama(head_dim: usize, layers: usize) -> Self {
        ArchConfig {
            model_type: "llama".into(),
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
            fused_projections: false,
            hidden_act: Activation::Silu,
            rotary_dim: head_dim,
            sliding_window: None,
            layer_types: vec![LayerType::FullAttention; layers],
            local_rope_theta: None,
            attn_scale: 1.0 / (head_dim as f64).sqrt(),
            unit_offset_norms: false,
            sandwich_norms: false,
            embed_scale: None,
            final_logit_softcapping: None,
        }
    }

    pub fn is_sliding(&self, layer: usize) -> bool {
        self.layer_types.get(layer) == Some(&LayerType::SlidingAttention)
    }

    pub fn is_gemma(&self) -> bool {
        self.model_type == "gemma3_text"
    }
}

/// The architecture fields of a `config.json` whose `model_type` is supported.
pub(super) fn resolve(r: &Reader, model_type: &str, head_dim: usize, hidden: usize, layers: usize) -> Result<ArchConfig> {
    let mut a = ArchConfig::llama(head_dim, layers);
    a.model_type = model_type.to_string();
    let attention_bias = r.opt_bool("attention_bias")?.unwrap_or(false);
    (a.qkv_bias, a.o_bias) = (attention_bias, attention_bias);
    let act = r.opt_string("hidden_act")?.or(r.opt_string("hidden_activation")?);
    let window = r.opt_usize("sliding_window")?;
    match model_type {
        "llama" => {}
        // Mistral: every layer slides when `sliding_window` is set.
        "mistral" => a.sliding_window = window,
        "qwen2" | "qwen3" => {
            if model_type == "qwen2" {
                (a.qkv_bias, a.o_bias) = (true, false);
            } else {
                a.qk_norm = true;
            }
            // Qwen2Config: the window is used only with `use_sliding_window`, from layer `max_window_layers` on.
            if r.opt_bool("use_sliding_window")?.unwrap_or(false) {
                a.sliding_window = window;
                let from = r.opt_usize("max_window_layers")?.unwrap_or(layers);
                if a.sliding_window.is_some() {
                    for (i, t) in a.layer_types.iter_mut().enumerate() {
                        if i >= from {
                            *t = LayerType::SlidingAttention;
                        }
                    }
                }
            }
        }
        "phi3" => {
            a.fused_projections = true;
            a.sliding_window = window;
            let factor = partial_rotary_factor(r)?;
            a.rotary_dim = (head_dim as f64 * factor) as usize;
            if a.rotary_dim == 0 || !a.rotary_dim.is_multiple_of(2) || a.rotary_dim > head_dim {
                return Err(r.invalid(
                    "partial_rotary_factor",
                    &format!("a fraction of head_dim ({head_dim}) giving an even number of rotated dims"),
                    factor.to_string(),
                ));
            }
        }
        "gemma3_text" => {
            a.qk_norm = true;
            a.unit_offset_norms = true;
            a.sandwich_norms = true;
            a.sliding_window = window;
            a.embed_scale = Some((hidden as f64).sqrt());
            let scalar = r.opt_f64("query_pre_attn_scalar")?.unwrap_or(head_dim as f64);
            if !(scalar > 0.0 && scalar.is_finite()) {
                return Err(r.invalid("query_pre_attn_scalar", "a positive number", scalar.to_string()));
            }
            a.attn_scale = scalar.powf(-0.5);
            a.final_logit_softcapping = r.opt_f64("final_logit_softcapping")?;
            if let Some(cap) = r.opt_f64("attn_logit_softcapping")? {
                return Err(r.invalid(
                    "attn_logit_softcapping",
                    "null (attention soft-capping is Gemma 2's, not supported)",
                    cap.to_string(),
                ));
            }
            a.local_rope_theta = Some(local_rope_theta(r)?);
            // Gemma3TextConfig: layer i slides unless (i + 1) is a multiple of the pattern.
            let pattern = r.opt_usize("sliding_window_pattern")?.or(r.opt_usize("_sliding_window_pattern")?).unwrap_or(6).max(1);
            a.layer_types =
                (0..layers).map(|i| if (i + 1) % pattern != 0 { LayerType::SlidingAttention } else { LayerType::FullAttention }).collect();
        }
        _ => unreachable!("checked against SUPPORTED_MODEL_TYPES"),
    }
    let default_act = if a.is_gemma() { "gelu_pytorch_tanh" } else { "silu" };
    a.hidden_act = match act.as_deref().unwrap_or(default_act) {
        "silu" | "swish" => Activation::Silu,
        "gelu_pytorch_tanh" | "gelu_tanh" => Activation::GeluPytorchTanh,
        other => {
            let key = if a.is_gemma() { "hidden_activation" } else { "hidden_act" };
            return Err(r.invalid(key, "\"silu\" or \"gelu_pytorch_tanh\"", format!("{other:?}")));
        }
    };
    if let Some(types) = r.present("layer_types") {
        a.layer_types = layer_types(r, types, layers)?;
    }
    if a.layer_types.contains(&LayerType::SlidingAttention) {
        match a.sliding_window {
            None => return Err(r.invalid("sliding_window", "a window size (layer_types has sliding_attention layers)", "null".into())),
            Some(0) => return Err(r.invalid("sliding_window", "a positive integer", "0".into())),
            Some(_) => {}
        }
    } else if matches!(model_type, "mistral" | "phi3") && a.sliding_window.is_some() {
        // MistralModel and Phi3Model mask every layer with the window when it is set.
        a.layer_types = vec![LayerType::SlidingAttention; layers];
    }
    Ok(a)
}

fn layer_types(r: &Reader, v: &Value, layers: usize) -> Result<Vec<LayerType>> {
    let expected = format!("an array of {layers} \"full_attention\" / \"sliding_attention\" (num_hidden_layers)");
    let items = v.as_array().filter(|a| a.len() == layers).ok_or_else(|| r.invalid("layer_types", &expected, kind(v)))?;
    items
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(LayerType::FullAttention),
            Some("sliding_attention") => Ok(LayerType::SlidingAttention),
            _ => Err(r.invalid("layer_types", &expected, format!("an item {}", kind(t)))),
        })
        .collect()
}

fn partial_rotary_factor(r: &Reader) -> Result<f64> {
    let nested = r.obj.get("rope_parameters").and_then(|p| p.get("partial_rotary_factor")).and_then(Value::as_f64);
    Ok(nested.or(r.opt_f64("partial_rotary_factor")?).unwrap_or(1.0))
}

/// Gemma 3's sliding-layer RoPE base: `rope_parameters.sliding_attention.rope_theta`
/// (transformers 5) or `rope_local_base_freq` (transformers 4), 10000 by default.
fn local_rope_theta(r: &Reader) -> Result<f64> {
    let nested = r.obj.get("rope_parameters").and_then(|p| p.get("sliding_attention")).and_then(|s| s.get("rope_theta"));
    let theta = match nested {
        Some(v) => v.as_f64().ok_or_else(|| r.invalid("rope_parameters.sliding_attention.rope_theta", "a number", kind(v)))?,
        None => r.opt_f64("rope_local_base_freq")?.unwrap_or(10000.0),
    };
    if !(theta > 0.0 && theta.is_finite()) {
        return Err(r.invalid("rope_local_base_freq", "a positive number", theta.to_string()));
    }
    Ok(theta)
}
