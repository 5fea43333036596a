//! The `SSF` config (our own; PEFT's file conventions and targeting rules).
use super::SsfLayer;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::select::{is_norm, select_modules};
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct SsfConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// true: γ = 1, β = 0 (the identity); false: γ ~ 1 + N(0, 0.02), β ~ N(0, 0.02) as the paper's code.
    pub init_weights: bool,
    /// Whether a norm is targeted (then the adapter cannot merge).
    pub on_norms: bool,
}

impl SsfConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = json!({"target_modules": null, "exclude_modules": null, "layers_to_transform": null, "layers_pattern": null,
                              "init_weights": true, "modules_to_save": null});
        let (fields, warnings) = Fields::parse(value, "SSF", "SSFConfig", defaults, source)?;
        fields.no_modules_to_save()?;
        let targets = fields.target_spec()?;
        let init_weights = fields.bool("init_weights")?;
        Ok((SsfConfig { fields, targets, init_weights, on_norms: false }, warnings))
    }

    fn paths(&self, model: &CausalLm) -> Result<Vec<String>> {
        let linears: Vec<String> = model.linears().iter().map(|l| l.path.clone()).collect();
        select_modules(
            &self.targets,
            model,
            &self.fields.source,
            &|p| is_norm(model, p) || linears.iter().any(|l| l == p),
            "linear or norm layers",
        )
    }
}

impl TunerConfig for SsfConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "SSF"
    }

    /// The paper inserts SSF after every operation: every linear but the head, and the norms.
    fn default_targets(&self) -> &'static [&'static str] {
        &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "input_layernorm",
            "post_attention_layernorm",
            "norm",
        ]
    }

    fn can_merge(&self) -> bool {
        !self.on_norms
    }

    fn check_model(&mut self, model: &CausalLm, _targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        self.on_norms = self.paths(model)?.iter().any(|p| is_norm(model, p));
        Ok(Vec::new())
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        let norms = model.norms();
        let linears = model.linears();
        let sites = self
            .paths(model)?
            .into_iter()
            .map(|p| match linears.iter().find(|l| l.path == p) {
                Some(l) => LinearInfo::of(l, &model.store).map(HookSite::Linear),
                None => {
                    let norm = norms.iter().find(|n| n.path == p).expect("selected a norm");
                    Ok(HookSite::norm(norm, &model.store))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(sites))
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        self.create_hook(&HookSite::Linear(t.clone()), bc)
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let (path, dim, device, on_norm) = match site {
            HookSite::Linear(l) => (&l.path, l.out_features, bc.store.get(l.weight).device(), false),
            HookSite::Norm { path, weight, dim } => (path, *dim, bc.store.get(*weight).device(), true),
            _ => return Err(Error::Unsupported(format!("SSF attaches to linear and norm layers, not `{}`", site.path()))),
        };
        let (g, b) = if self.init_weights {
            (Tensor::ones(dim, bc.dtype, &device)?, Tensor::zeros(dim, bc.dtype, &device)?)
        } else {
            let n = crate::tuners::init::normal(2, dim, 0.02, bc.rng, bc.dtype, &device)?;
            ((n.get(0)? + 1.0)?, n.get(1)?)
        };
        let scale = bc.store.add(param_name(path, "ssf_scale", bc.adapter), g, false)?;
        let shift = bc.store.add(param_name(path, "ssf_shift", bc.adapter), b, false)?;
        Ok(Box::new(SsfLayer { adapter: bc.adapter.to_string(), path: path.clone(), scale, shift, on_norm }))
    }
}
