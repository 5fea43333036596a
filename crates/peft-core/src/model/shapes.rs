//! The shape a config implies for every weight name, and the config keys it comes from: one
//! table for the safetensors loader, the GGUF reader and writer, and their error messages.
use crate::config::ModelConfig;

/// The [out, in] sizes of a weight (in = 0 for norms) as (value, "key(s) = value") pairs.
fn sizes(cfg: &ModelConfig, stem: &str) -> Option<((usize, String), (usize, String))> {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let hidden = (h, format!("hidden_size {h}"));
    let q = (nh * hd, format!("num_attention_heads {nh} × head_dim {hd}"));
    let kv = (nkv * hd, format!("num_key_value_heads {nkv} × head_dim {hd}"));
    let inter = (i, format!("intermediate_size {i}"));
    let none = (0, String::new());
    Some(match stem {
        "embed_tokens" | "lm_head" => ((cfg.vocab_size, format!("vocab_size {}", cfg.vocab_size)), hidden),
        "norm" | "input_layernorm" | "post_attention_layernorm" | "pre_feedforward_layernorm" | "post_feedforward_layernorm" => {
            (hidden, none)
        }
        "self_attn.q_norm" | "self_attn.k_norm" => ((hd, format!("head_dim {hd}")), none),
        "self_attn.qkv_proj" => {
            ((nh * hd + 2 * nkv * hd, format!("(num_attention_heads {nh} + 2 × num_key_value_heads {nkv}) × head_dim {hd}")), hidden)
        }
        "mlp.gate_up_proj" => ((2 * i, format!("2 × intermediate_size {i}")), hidden),
        "self_attn.q_proj" => (q, hidden),
        "self_attn.k_proj" | "self_attn.v_proj" => (kv, hidden),
        "self_attn.o_proj" => (hidden, q),
        "mlp.gate_proj" | "mlp.up_proj" => (inter, hidden),
        "mlp.down_proj" => (hidden, inter),
        _ => return None,
    })
}

/// (stem, suffix) of `model.layers.N.<stem>.<suffix>`, `model.<stem>.<suffix>` or `lm_head.<suffix>`.
fn stem_of(name: &str) -> Option<(&str, &str)> {
    let (head, suffix) = name.rsplit_once('.')?;
    let stem = match head.strip_prefix("model.layers.") {
        Some(rest) => rest.split_once('.').filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?.1,
        None => head.strip_prefix("model.").unwrap_or(head),
    };
    Some((stem, suffix))
}

/// The shape `cfg` implies for a Hugging Face weight name ([out, in] for linears), None for
/// names the model has not.
pub fn expected_shape(cfg: &ModelConfig, name: &str) -> Option<Vec<usize>> {
    let (stem, suffix) = stem_of(name)?;
    let ((out, _), (inp, _)) = sizes(cfg, stem)?;
    match suffix {
        "weight" if inp == 0 => Some(vec![out]),
        "weight" => Some(vec![out, inp]),
        "bias" if inp != 0 && stem != "embed_tokens" => Some(vec![out]),
        _ => None,
    }
}

/// The config keys and values behind `expected_shape`, for errors.
pub fn shape_keys(cfg: &ModelConfig, name: &str) -> String {
    match stem_of(name).and_then(|(stem, suffix)| Some((sizes(cfg, stem)?, suffix))) {
        Some(((out, inp), suffix)) if inp.0 == 0 || suffix == "bias" => format!("[{}]", out.1),
        Some(((out, inp), _)) => format!("[{}, {}]", out.1, inp.1),
        None => "no such weight".into(),
    }
}
