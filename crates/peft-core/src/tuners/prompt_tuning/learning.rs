//! What PEFT's prompt-learning methods share (`PromptLearningConfig` in `peft/config.py`,
//! `_prepare_prompt_learning_config` in `utils/other.py`, `BasePromptEncoder` in
//! `tuners_utils.py`): the fields filled from the model at injection, one encoder at the
//! `prompt_encoder` site, and the file key `prompt_embeddings`.
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::fields::Fields;
use crate::{Warning, WarningCode};
use serde_json::{json, Value};

/// `PromptLearningConfig`'s fields (besides `PeftConfig`'s).
pub fn defaults() -> Value {
    json!({
        "num_virtual_tokens": null, "token_dim": null, "num_transformer_submodules": null,
        "num_attention_heads": null, "num_layers": null, "modules_to_save": null
    })
}

/// Checks the shared fields when parsing; returns `num_virtual_tokens`.
pub fn check(f: &Fields) -> Result<usize> {
    let n = f.positive("num_virtual_tokens", "the number of virtual tokens")?;
    for key in ["token_dim", "num_attention_heads", "num_layers"] {
        f.opt_positive(key, "filled from the model when null")?;
    }
    if let Some(s) = f.opt_positive("num_transformer_submodules", "1 for decoder-only models")? {
        if s != 1 {
            return Err(f.err("num_transformer_submodules", "1 (decoder-only models have one transformer submodule) or null"));
        }
    }
    f.no_modules_to_save()?;
    Ok(n)
}

/// The encoder's sizes after injection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dims {
    pub num_virtual_tokens: usize,
    pub token_dim: usize,
    pub num_attention_heads: usize,
    pub num_layers: usize,
}

/// `_prepare_prompt_learning_config`: fills the null fields from the model config and, for
/// prefix tuning (`kv`), sets `token_dim` = head_dim · num_key_value_heads and
/// `num_attention_heads` = num_key_value_heads (GQA, PEFT #1901), with an `adjusted` warning
/// where the config gave another value (PEFT replaces it silently). Other values given in the
/// config must fit the model.
pub fn fill(f: &mut Fields, model: &CausalLm, kv: bool) -> Result<(Dims, Vec<Warning>)> {
    let c = &model.config;
    let n = f.positive("num_virtual_tokens", "the number of virtual tokens")?;
    let mut want = vec![("num_layers", c.num_hidden_layers), ("num_transformer_submodules", 1)];
    if kv {
        want.extend([("token_dim", c.head_dim * c.num_key_value_heads), ("num_attention_heads", c.num_key_value_heads)]);
    } else {
        want.push(("token_dim", c.hidden_size));
    }
    let mut warnings = Vec::new();
    for (key, value) in &want {
        match f.get(key) {
            Value::Null => f.set(key, *value),
            v if v.as_u64() == Some(*value as u64) => {}
            // PEFT overwrites these two for prefix tuning whatever the config says.
            given if kv && (*key == "token_dim" || *key == "num_attention_heads") => {
                let message = format!(
                    "`{key}` {given} replaced by {value}: prefix tuning's keys and values have the model's {} key/value heads",
                    c.num_key_value_heads
                );
                warnings.push(Warning::new(WarningCode::Adjusted, *key, message));
                f.set(key, *value)
            }
            _ => {
                return Err(Error::InvalidConfig {
                    file: f.source.clone(),
                    key: key.to_string(),
                    expected: format!("{value} (from the model) or null"),
                    found: f.get(key).to_string(),
                })
            }
        }
    }
    if f.get("num_attention_heads").is_null() {
        f.set("num_attention_heads", c.num_attention_heads);
    }
    let get = |k: &str| f.get(k).as_u64().unwrap_or(0) as usize;
    let dims = Dims {
        num_virtual_tokens: n,
        token_dim: get("token_dim"),
        num_attention_heads: get("num_attention_heads"),
        num_layers: get("num_layers"),
    };
    Ok((dims, warnings))
}

/// PEFT's `named_parameters()` name of a prompt encoder tensor: `prompt_encoder.<adapter>.<attr>`.
pub fn param_name(adapter: &str, attr: &str) -> String {
    format!("prompt_encoder.{adapter}.{attr}")
}

/// `BasePromptEncoder._get_adapter_state_dict`: the (encoded) prompt is saved as
/// `prompt_embeddings`; other parameters of the encoder are not saved by PEFT.
pub fn checkpoint_key(param: &str, adapter: &str) -> String {
    if param == param_name(adapter, "embedding.weight") {
        "prompt_embeddings".into()
    } else {
        crate::tuners::remove_adapter_name(param, adapter)
    }
}

/// The config of a method that is prompt tuning plus fields of its own (SMoP, IDPG): prompt
/// tuning's reader checks everything but `own` (name, default), whose values (given or default)
/// are added to its fields under `peft_type`. Warnings name `class`.
pub fn with_own_fields(
    value: &Value,
    source: &std::path::Path,
    peft_type: &str,
    class: &str,
    own: &[(&str, Value)],
) -> Result<(super::PromptTuningConfig, Fields, Vec<crate::Warning>)> {
    let obj = value.as_object().ok_or_else(|| Error::Json { path: source.into(), message: "the config is not a JSON object".into() })?;
    if obj.get("peft_type").and_then(Value::as_str) != Some(peft_type) {
        let found = obj.get("peft_type").map_or("nothing".into(), Value::to_string);
        return Err(Error::InvalidConfig { file: source.into(), key: "peft_type".into(), expected: format!("\"{peft_type}\""), found });
    }
    let mut inner = obj.clone();
    own.iter().for_each(|(k, _)| drop(inner.remove(*k)));
    inner.insert("peft_type".into(), json!("PROMPT_TUNING"));
    let (prompt, warnings) = super::PromptTuningConfig::from_value(&Value::Object(inner), source)?;
    let mut fields = prompt.fields.clone();
    fields.set("peft_type", peft_type);
    for (k, default) in own {
        fields.set(k, obj.get(*k).cloned().unwrap_or_else(|| default.clone()));
    }
    Ok((prompt, fields, warnings.into_iter().map(|w| w.renaming_class("PromptTuningConfig", class)).collect()))
}

/// `check_model` of such a method: prompt tuning's fields filled from the model, copied over.
pub fn fill_from_prompt(
    prompt: &mut super::PromptTuningConfig,
    fields: &mut Fields,
    model: &CausalLm,
    targets: &[crate::tuners::LinearInfo],
) -> Result<Vec<crate::Warning>> {
    use crate::tuners::TunerConfig;
    let w = prompt.check_model(model, targets)?;
    for key in ["token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"] {
        fields.set(key, prompt.fields.get(key).clone());
    }
    Ok(w)
}

/// The file key of such a method's tensor: its own (`prompt_encoder.<prefix>…`, without the
/// adapter name), or prompt tuning's (`prompt_embeddings`).
pub fn own_checkpoint_key(param: &str, adapter: &str, prefix: &str) -> String {
    match param.strip_prefix(&param_name(adapter, prefix)) {
        Some(rest) => format!("prompt_encoder.{prefix}{rest}"),
        None => checkpoint_key(param, adapter),
    }
}

/// The `TunerConfig` methods of a method that is prompt tuning plus its own fields and tensors
/// (`fields`, `prompt`): no merging, prompt tuning's model checks and site, its tensors keyed
/// `prompt_encoder.<prefix>…`. `$what` names the method in errors.
macro_rules! own_prompt_plumbing {
    ($what:literal, $prefix:literal) => {
        fn can_merge(&self) -> bool {
            false
        }
        fn check_model(
            &mut self,
            model: &$crate::model::CausalLm,
            targets: &[$crate::tuners::LinearInfo],
        ) -> $crate::error::Result<Vec<$crate::Warning>> {
            $crate::tuners::prompt_tuning::learning::fill_from_prompt(&mut self.prompt, &mut self.fields, model, targets)
        }
        fn hook_sites(&self, model: &$crate::model::CausalLm) -> $crate::error::Result<Option<Vec<$crate::tuners::HookSite>>> {
            self.prompt.hook_sites(model)
        }
        fn create_linear(
            &self,
            t: &$crate::tuners::LinearInfo,
            _bc: &mut $crate::tuners::BuildCtx,
        ) -> $crate::error::Result<Box<dyn $crate::tuners::AdapterLayer>> {
            Err($crate::error::Error::Unsupported(format!("{} does not attach to linear layers (`{}`)", $what, t.path)))
        }
        fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
            $crate::tuners::prompt_tuning::learning::own_checkpoint_key(param_name, adapter, $prefix)
        }
    };
}
pub(crate) use own_prompt_plumbing;
