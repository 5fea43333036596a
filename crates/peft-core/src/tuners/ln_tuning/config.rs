//! `LNTuningConfig` as PEFT 0.21 reads and writes it.
use super::LnTuningLayer;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::select::{is_norm, select_modules};
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct LnTuningConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
}

impl LnTuningConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = json!({"target_modules": null, "exclude_modules": null, "modules_to_save": null});
        let (fields, warnings) = Fields::parse(value, "LN_TUNING", "LNTuningConfig", defaults, source)?;
        fields.no_modules_to_save()?;
        let targets = fields.target_spec()?;
        Ok((LnTuningConfig { fields, targets }, warnings))
    }
}

impl TunerConfig for LnTuningConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "LN_TUNING"
    }

    /// TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING["llama"].
    fn default_targets(&self) -> &'static [&'static str] {
        &["input_layernorm", "post_attention_layernorm", "norm"]
    }

    fn can_merge(&self) -> bool {
        true
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        let paths = select_modules(
            &self.targets,
            model,
            &self.fields.source,
            &|p| is_norm(model, p),
            "norm layers (input_layernorm, post_attention_layernorm, norm)",
        )?;
        let norms = model.norms();
        let sites = paths
            .into_iter()
            .map(|path| {
                let norm = norms.iter().find(|n| n.path == path).expect("selected a norm");
                HookSite::norm(norm, &model.store)
            })
            .collect();
        Ok(Some(sites))
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("LN tuning adapts norm layers, not the linear `{}`", t.path)))
    }

    /// `update_layer`: a deep copy of the norm (its weight, in the adapter dtype).
    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Norm { path, weight, .. } = site else {
            return Err(Error::Unsupported(format!("LN tuning adapts norm layers, not `{}`", site.path())));
        };
        let w = bc.store.get(*weight).value().to_dtype(bc.dtype)?.copy()?; // own storage: the base stays as it is
        let id = bc.store.add(param_name(path, "ln_tuning_layers", bc.adapter), w, false)?;
        Ok(Box::new(LnTuningLayer { adapter: bc.adapter.to_string(), weight: id, saved: None }))
    }
}
