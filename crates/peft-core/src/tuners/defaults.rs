//! PEFT's default `target_modules` per architecture (`peft/utils/constants.py`, PEFT 0.21:
//! `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING` and friends), used when a config
//! leaves `target_modules` unset. PEFT has no entry for phi3 (nor AdaLoRA for mistral): it
//! asks for `target_modules` then, and so do we.
use super::TunerConfig;
use crate::error::{Error, Result};

/// (model types, modules) rows of one PEFT mapping.
type Mapping = &'static [(&'static [&'static str], &'static [&'static str])];

/// LoRA's default targets on LLaMA (PEFT's mapping), also the default of our LoRA-expert methods.
pub const QV: &[&str] = &["q_proj", "v_proj"];
const LORA: Mapping = &[(&["llama", "mistral", "qwen2", "qwen3", "gemma3_text"], QV)];
const ADALORA: Mapping = &[(&["llama", "qwen2", "qwen3", "gemma3_text"], QV)];
const IA3: Mapping = &[
    (&["llama", "mistral"], &["k_proj", "v_proj", "down_proj"]),
    (&["qwen2", "qwen3", "gemma3_text"], &["q_proj", "v_proj", "down_proj"]),
];
const LN_TUNING: Mapping = &[
    (&["llama", "mistral"], &["input_layernorm", "post_attention_layernorm", "norm"]),
    (&["qwen2", "qwen3"], &["post_attention_layernorm"]),
    (&["gemma3_text"], &["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm", "norm"]),
];

/// The mapping PEFT reads for a `peft_type`; None for methods PEFT has not (ours keep their own list).
fn mapping(peft_type: &str) -> Option<Mapping> {
    Some(match peft_type {
        "LORA" | "LOHA" | "LOKR" | "VERA" | "DYLORA" => LORA,
        "ADALORA" => ADALORA,
        "IA3" => IA3,
        "LN_TUNING" => LN_TUNING,
        _ => return None,
    })
}

/// The default targets of `config` on a model of `model_type`: None when the method needs
/// none (prompt learning); an error naming the key when PEFT has no default for the architecture.
pub fn default_targets(config: &dyn TunerConfig, model_type: &str) -> Result<Option<Vec<String>>> {
    let own = config.default_targets();
    if own.is_empty() {
        return Ok(None);
    }
    let Some(rows) = mapping(config.peft_type()) else { return Ok(Some(own.iter().map(|s| s.to_string()).collect())) };
    match rows.iter().find(|(types, _)| types.contains(&model_type)) {
        Some((_, modules)) => Ok(Some(modules.iter().map(|s| s.to_string()).collect())),
        None => Err(Error::InvalidConfig {
            file: config.source().into(),
            key: "target_modules".into(),
            expected: format!("a list of module names: PEFT has no default {} targets for model_type `{model_type}` (e.g. [\"qkv_proj\", \"o_proj\"] for phi3)", config.peft_type()),
            found: "null".into(),
        }),
    }
}
