//! The `BIAS_TUNING` config (our own; PEFT's file conventions and linear targeting).
use super::BiasLayer;
use crate::error::Result;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct BiasTuningConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// true: δ = 0 (the identity); false: δ ~ N(0, 0.02).
    pub init_weights: bool,
}

impl BiasTuningConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = json!({"target_modules": null, "exclude_modules": null, "layers_to_transform": null, "layers_pattern": null,
                              "init_weights": true, "modules_to_save": null});
        let (fields, warnings) = Fields::parse(value, "BIAS_TUNING", "BiasTuningConfig", defaults, source)?;
        fields.no_modules_to_save()?;
        let targets = fields.target_spec()?;
        let init_weights = fields.bool("init_weights")?;
        Ok((BiasTuningConfig { fields, targets, init_weights }, warnings))
    }
}

impl TunerConfig for BiasTuningConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "BIAS_TUNING"
    }

    /// BitFit trains every bias of the encoder: here every linear but the head.
    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    }

    fn can_merge(&self) -> bool {
        true
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dev = bc.store.get(t.weight).device();
        let d = if self.init_weights {
            Tensor::zeros(t.out_features, bc.dtype, &dev)?
        } else {
            crate::tuners::init::normal(1, t.out_features, 0.02, bc.rng, bc.dtype, &dev)?.squeeze(0)?
        };
        let delta = bc.store.add(param_name(&t.path, "bias_tuning", bc.adapter), d, false)?;
        Ok(Box::new(BiasLayer { adapter: bc.adapter.to_string(), delta }))
    }
}
