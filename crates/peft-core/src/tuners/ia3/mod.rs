//! (IA)³ (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
//! than In-Context Learning", eq. in §3.3: learned vectors l that rescale activations,
//! k ⊙ l_k, v ⊙ l_v, and (l_ff ⊙ γ(W₁x)) W₂), after PEFT 0.21 `tuners/ia3` (`IA3Config`,
//! `IA3Model._check_target_module_feedforward`, `IA3Layer.update_layer`, `Linear`).
pub mod layer;

pub use layer::Ia3Layer;

use crate::error::Result;
use crate::model::CausalLm;
use crate::tuners::fields::{config_plumbing, object, targets_json, Fields};
use crate::tuners::init::normal;
use crate::tuners::targeting::{full_regex, TargetSpec, Targets};
use crate::tuners::{param_dict_name, AdapterLayer, BuildCtx, LinearInfo, TunerConfig, PEFT_VERSION};
use candle_core::Tensor;
use serde_json::{json, Map, Value};
use std::path::Path;

/// PEFT 0.21 `IA3Config().to_dict()`.
pub fn peft_defaults() -> Map<String, Value> {
    object(json!({
        "auto_mapping": null, "base_model_name_or_path": null, "exclude_modules": null, "fan_in_fan_out": false,
        "feedforward_modules": null, "inference_mode": false, "init_ia3_weights": true, "modules_to_save": null,
        "peft_type": "IA3", "peft_version": PEFT_VERSION, "revision": null, "target_modules": null, "task_type": null
    }))
}

#[derive(Debug, Clone)]
pub struct Ia3Config {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// Modules whose input (not output) is scaled; None until injection fills PEFT's default.
    pub feedforward_modules: Option<Targets>,
    pub init_ia3_weights: bool,
}

impl Ia3Config {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (mut f, mut warnings) = Fields::parse(value, "IA3", "IA3Config", peft_defaults(), source)?;
        f.refuse_unless_default(&["modules_to_save"], &peft_defaults())?;
        f.fix_fan_in_fan_out(&mut warnings)?;
        let feedforward_modules = f.targets("feedforward_modules")?;
        let init_ia3_weights = f.bool("init_ia3_weights")?;
        let targets = f.target_spec()?;
        let c = Ia3Config { fields: f, targets, feedforward_modules, init_ia3_weights };
        c.check_subset()?;
        Ok((c, warnings))
    }

    /// `IA3Config.__post_init__`: with both given as lists, the feed-forward modules must be
    /// among the targets. PEFT compares the strings, so it refuses its own save of
    /// `target_modules: "all-linear"` (written back as full module paths) beside short
    /// `feedforward_modules` names; an entry that ends a target path is accepted here.
    fn check_subset(&self) -> Result<()> {
        if let (Some(Targets::List(ff)), Some(Targets::List(t))) = (&self.feedforward_modules, &self.targets.target_modules) {
            let among_targets = |m: &String| t.iter().any(|x| x == m || x.ends_with(&format!(".{m}")));
            if let Some(bad) = ff.iter().find(|m| !among_targets(m)) {
                let f = &self.fields;
                return Err(f.err("feedforward_modules", &format!("a subset of `target_modules` ({t:?}); `{bad}` is not in it")));
            }
        }
        Ok(())
    }

    /// `_check_target_module_feedforward`: a regex must match the whole path; a list entry
    /// need only end it (PEFT's plain `key.endswith(target_key)`, no dot required).
    pub fn is_feedforward(&self, path: &str) -> Result<bool> {
        Ok(match &self.feedforward_modules {
            None => false,
            Some(Targets::Regex(p)) => full_regex(p, "feedforward_modules", &self.fields.source)?.is_match(path),
            Some(Targets::List(l)) => l.iter().any(|m| path.ends_with(m.as_str())),
        })
    }
}

impl TunerConfig for Ia3Config {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "IA3"
    }

    /// `TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING["llama"]`.
    fn default_targets(&self) -> &'static [&'static str] {
        &["k_proj", "v_proj", "down_proj"]
    }

    fn can_merge(&self) -> bool {
        true
    }

    /// `IA3Model._prepare_adapter_config`: no `feedforward_modules` given means LLaMA's
    /// (`TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING["llama"]`), written back.
    fn check_model(&mut self, _model: &CausalLm, _targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        if self.feedforward_modules.is_none() {
            let ff = Targets::List(vec!["down_proj".into()]);
            self.fields.map.insert("feedforward_modules".into(), targets_json(&ff));
            self.feedforward_modules = Some(ff);
        }
        Ok(Vec::new())
    }

    /// `IA3Layer.update_layer`: l is [1, in] on feed-forward modules, [out, 1] elsewhere;
    /// ones (`init_ia3_weights`), or standard normal (`torch.randn`) when false.
    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let feedforward = self.is_feedforward(&t.path)?;
        let (rows, cols) = if feedforward { (1, t.in_features) } else { (t.out_features, 1) };
        let dev = bc.store.get(t.weight).device();
        let l = if self.init_ia3_weights {
            Tensor::ones((rows, cols), bc.dtype, &dev)?
        } else {
            normal(rows, cols, 1.0, bc.rng, bc.dtype, &dev)?
        };
        let id = bc.store.add(param_dict_name(&t.path, "ia3_l", bc.adapter), l, false)?;
        Ok(Box::new(Ia3Layer { adapter: bc.adapter.to_string(), l: id, feedforward, bias: t.bias }))
    }
}
