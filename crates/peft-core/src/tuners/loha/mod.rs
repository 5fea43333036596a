//! LoHa (Hyeon-Woo et al. 2022, "FedPara", eq. 1: ΔW = (X₁Y₁ᵀ) ⊙ (X₂Y₂ᵀ), a Hadamard product
//! of two rank-r products, whose rank can reach r²), scaled by alpha/r, after PEFT 0.21
//! `tuners/loha` (`LoHaConfig`, `LoHaLayer.update_layer`, `reset_adapter_parameters`,
//! `HadaWeight`, `make_weight`) on the LyCORIS base (`tuners/lycoris.rs`).
use crate::error::Result;
use crate::tuners::fields::{config_plumbing, object, Fields};
use crate::tuners::init::kaiming_uniform;
use crate::tuners::lycoris::{DeltaWeight, LycorisFields, LycorisLayer};
use crate::tuners::{param_dict_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig, PEFT_VERSION};
use candle_core::Tensor;
use serde_json::{json, Map, Value};
use std::path::Path;

/// PEFT 0.21 `LoHaConfig().to_dict()`.
pub fn peft_defaults() -> Map<String, Value> {
    object(json!({
        "alpha": 8, "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": null, "exclude_modules": null,
        "inference_mode": false, "init_weights": true, "layers_pattern": null, "layers_to_transform": null,
        "module_dropout": 0.0, "modules_to_save": null, "peft_type": "LOHA", "peft_version": PEFT_VERSION, "r": 8,
        "rank_dropout": 0.0, "rank_pattern": {}, "revision": null, "target_modules": null, "task_type": null,
        "use_effective_conv2d": false
    }))
}

#[derive(Debug, Clone)]
pub struct LohaConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub lycoris: LycorisFields,
    pub init_weights: bool,
}

impl LohaConfig {
    pub fn from_value(value: &Value, raw: Option<&str>, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) = Fields::parse(value, "LOHA", "LoHaConfig", peft_defaults(), source)?;
        f.refuse_unless_default(&["modules_to_save"], &peft_defaults())?;
        let lycoris = LycorisFields::parse(&f, raw)?;
        let init_weights = f.bool("init_weights")?;
        Ok((LohaConfig { targets: f.target_spec()?, fields: f, lycoris, init_weights }, warnings))
    }
}

/// `make_weight` / `HadaWeight.forward`: (w1a w1b) ⊙ (w2a w2b); the custom backward PEFT
/// writes is this expression's ordinary derivative.
#[derive(Debug)]
pub struct Hadamard;

impl DeltaWeight for Hadamard {
    fn delta(&self, p: &[Tensor]) -> Result<Tensor> {
        Ok((p[0].matmul(&p[1])? * p[2].matmul(&p[3])?)?)
    }
}

impl TunerConfig for LohaConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "LOHA"
    }

    /// `TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING["llama"]`.
    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn can_merge(&self) -> bool {
        true
    }

    /// `create_adapter_parameters` (Linear): w1_a, w2_a [out, r], w1_b, w2_b [r, in];
    /// `reset_adapter_parameters`: kaiming-uniform (a = √5) except w2_b = 0, so ΔW starts at 0;
    /// `init_weights` false: all four kaiming-uniform.
    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let (r, alpha) = self.lycoris.rank_alpha(&self.fields, &t.path)?;
        let dev = bc.store.get(t.weight).device();
        let (dt, out, inp) = (bc.dtype, t.out_features, t.in_features);
        let w1a = kaiming_uniform(out, r, bc.rng, dt, &dev)?;
        let w1b = kaiming_uniform(r, inp, bc.rng, dt, &dev)?;
        let w2a = kaiming_uniform(out, r, bc.rng, dt, &dev)?;
        let w2b = if self.init_weights { Tensor::zeros((r, inp), dt, &dev)? } else { kaiming_uniform(r, inp, bc.rng, dt, &dev)? };
        let mut params = Vec::new();
        for (attr, v) in [("hada_w1_a", w1a), ("hada_w1_b", w1b), ("hada_w2_a", w2a), ("hada_w2_b", w2b)] {
            params.push(bc.store.add(param_dict_name(&t.path, attr, bc.adapter), v, false)?);
        }
        Ok(Box::new(LycorisLayer {
            adapter: bc.adapter.to_string(),
            params,
            delta: Hadamard,
            scaling: alpha / r as f64,
            rank_dropout: self.lycoris.rank_dropout,
            rank_dropout_scale: true,
            module_dropout: self.lycoris.module_dropout,
        }))
    }
}
