//! A `config.json` written from resolved fields, for models that came without one (GGUF):
//! the keys transformers' config class of the architecture reads, in its own spelling.
use super::{ArchConfig, LayerType, ModelConfig, RopeScaling};
use serde_json::{json, Map, Value};

/// transformers' class for each `model_type`.
fn architecture(model_type: &str) -> &'static str {
    match model_type {
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "phi3" => "Phi3ForCausalLM",
        "gemma3_text" => "Gemma3ForCausalLM",
        _ => "LlamaForCausalLM",
    }
}

fn rope_scaling(s: &Option<RopeScaling>) -> Value {
    match s {
        None => Value::Null,
        Some(s) => serde_json::to_value(s).unwrap_or(Value::Null),
    }
}

pub(super) fn written(c: &ModelConfig, dtype: &str) -> Value {
    let a: &ArchConfig = &c.arch;
    let mut m = Map::new();
    m.insert("architectures".into(), json!([architecture(&a.model_type)]));
    m.insert("model_type".into(), a.model_type.clone().into());
    let act_key = if a.is_gemma() { "hidden_activation" } else { "hidden_act" };
    m.insert(act_key.into(), serde_json::to_value(a.hidden_act).unwrap_or(Value::Null));
    for (k, v) in [
        ("vocab_size", c.vocab_size),
        ("hidden_size", c.hidden_size),
        ("intermediate_size", c.intermediate_size),
        ("num_hidden_layers", c.num_hidden_layers),
        ("num_attention_heads", c.num_attention_heads),
        ("num_key_value_heads", c.num_key_value_heads),
        ("head_dim", c.head_dim),
        ("max_position_embeddings", c.max_position_embeddings),
    ] {
        m.insert(k.into(), v.into());
    }
    m.insert("rms_norm_eps".into(), c.rms_norm_eps.into());
    m.insert("rope_theta".into(), c.rope_theta.into());
    m.insert("rope_scaling".into(), rope_scaling(&c.rope_scaling));
    m.insert("tie_word_embeddings".into(), c.tie_word_embeddings.into());
    if a.model_type != "qwen2" {
        m.insert("attention_bias".into(), a.o_bias.into());
    }
    if a.model_type == "llama" {
        m.insert("mlp_bias".into(), c.mlp_bias.into());
    }
    m.insert("sliding_window".into(), a.sliding_window.map(Value::from).unwrap_or(Value::Null));
    if a.model_type.starts_with("qwen") {
        let sliding = a.layer_types.iter().position(|t| *t == LayerType::SlidingAttention);
        m.insert("use_sliding_window".into(), sliding.is_some().into());
        m.insert("max_window_layers".into(), sliding.unwrap_or(c.num_hidden_layers).into());
    }
    if a.model_type == "phi3" {
        m.insert("partial_rotary_factor".into(), (a.rotary_dim as f64 / c.head_dim as f64).into());
    }
    if a.is_gemma() {
        m.insert("query_pre_attn_scalar".into(), (1.0 / (a.attn_scale * a.attn_scale)).round().into());
        m.insert("rope_local_base_freq".into(), a.local_rope_theta.unwrap_or(10000.0).into());
        m.insert("final_logit_softcapping".into(), a.final_logit_softcapping.map(Value::from).unwrap_or(Value::Null));
        m.insert("attn_logit_softcapping".into(), Value::Null);
    }
    if a.layer_types.contains(&LayerType::SlidingAttention) {
        m.insert("layer_types".into(), serde_json::to_value(&a.layer_types).unwrap_or(Value::Null));
    }
    m.insert("bos_token_id".into(), c.bos_token_id.map(Value::from).unwrap_or(Value::Null));
    m.insert(
        "eos_token_id".into(),
        match c.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => (*one).into(),
            many => many.to_vec().into(),
        },
    );
    m.insert("pad_token_id".into(), c.pad_token_id.map(Value::from).unwrap_or(Value::Null));
    m.insert("torch_dtype".into(), dtype.into());
    Value::Object(m)
}
