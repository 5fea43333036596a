//! `BOTTLENECK_ADAPTER` / `PARALLEL_ADAPTER` configs (our own, PEFT's file conventions).
use super::{Activation, BottleneckLayer};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::{HookSite, Sublayer};
use crate::tuners::init::{kaiming_uniform, uniform};
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig, PEFT_PREFIX};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Houlsby: after attention and after the FFN.
    Serial,
    /// He et al.: beside the FFN (or the attention).
    Parallel,
}

#[derive(Debug, Clone)]
pub struct BottleneckConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub placement: Placement,
    pub bottleneck_size: usize,
    pub activation: Activation,
    pub scaling: f64,
    /// Sublayers carrying an adapter.
    pub sublayers: Vec<Sublayer>,
    pub init_weights: bool,
}

/// `base_model.model.<path>.<attr>.<adapter>.<suffix>`.
pub fn name(path: &str, attr: &str, adapter: &str, suffix: &str) -> String {
    format!("{PEFT_PREFIX}{path}.{attr}.{adapter}.{suffix}")
}

impl BottleneckConfig {
    pub fn from_value(value: &Value, source: &Path, placement: Placement) -> Result<(Self, Vec<crate::Warning>)> {
        let (peft_type, class, defaults) = match placement {
            Placement::Serial => (
                "BOTTLENECK_ADAPTER",
                "BottleneckAdapterConfig",
                json!({"bottleneck_size": 16, "non_linearity": "relu", "scaling": 1.0,
                "sublayers": ["self_attn", "mlp"], "layers_to_transform": null, "init_weights": true, "modules_to_save": null}),
            ),
            Placement::Parallel => (
                "PARALLEL_ADAPTER",
                "ParallelAdapterConfig",
                json!({"bottleneck_size": 16, "non_linearity": "relu", "scaling": 4.0,
                "sublayers": ["mlp"], "layers_to_transform": null, "init_weights": true, "modules_to_save": null}),
            ),
        };
        let (fields, warnings) = Fields::parse(value, peft_type, class, defaults, source)?;
        Self::from_fields(fields, placement).map(|c| (c, warnings))
    }

    pub fn from_fields(fields: Fields, placement: Placement) -> Result<Self> {
        let bottleneck_size = fields.positive("bottleneck_size", "the bottleneck width")?;
        let act = fields.opt_str("non_linearity")?.unwrap_or_default();
        let activation =
            Activation::parse(&act).ok_or_else(|| fields.err("non_linearity", "one of \"relu\", \"gelu\", \"silu\", \"tanh\""))?;
        let scaling = fields.num_in("scaling", |x| x.is_finite(), "a finite number")?;
        let sublayers = fields
            .strings("sublayers")
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| fields.err("sublayers", "a non-empty list of \"self_attn\" and \"mlp\""))?
            .iter()
            .map(|s| match s.as_str() {
                "self_attn" => Ok(Sublayer::Attention),
                "mlp" => Ok(Sublayer::Mlp),
                _ => Err(fields.err("sublayers", "a non-empty list of \"self_attn\" and \"mlp\"")),
            })
            .collect::<Result<Vec<_>>>()?;
        let init_weights = fields.bool("init_weights")?;
        fields.no_modules_to_save()?;
        fields.layer_indices(usize::MAX)?;
        Ok(BottleneckConfig {
            fields,
            targets: TargetSpec::default(),
            placement,
            bottleneck_size,
            activation,
            scaling,
            sublayers,
            init_weights,
        })
    }

    /// The sublayer sites this config adapts.
    pub fn sites(&self, model: &CausalLm) -> Result<Vec<HookSite>> {
        let layers = self.fields.layer_indices(model.layers.len())?;
        Ok(self.sublayers.iter().flat_map(|&k| HookSite::sublayers(model, k, layers.as_deref())).collect())
    }

    /// nn.Linear's init for down; up zero (init_weights) or nn.Linear's init.
    pub fn build(&self, site: &HookSite, bc: &mut BuildCtx, device: &Device) -> Result<BottleneckLayer> {
        let HookSite::Sublayer { path, hidden, .. } = site else {
            return Err(Error::Unsupported(format!("bottleneck adapters attach to sublayers, not `{}`", site.path())));
        };
        let (h, r, dt) = (*hidden, self.bottleneck_size, bc.dtype);
        let dw = kaiming_uniform(r, h, bc.rng, dt, device)?;
        let db = uniform(r, 1.0 / (h as f64).sqrt(), bc.rng, dt, device)?;
        let (uw, ub) = if self.init_weights {
            (Tensor::zeros((h, r), dt, device)?, Tensor::zeros(h, dt, device)?)
        } else {
            (kaiming_uniform(h, r, bc.rng, dt, device)?, uniform(h, 1.0 / (r as f64).sqrt(), bc.rng, dt, device)?)
        };
        let a = bc.adapter;
        let mut add = |attr: &str, suffix: &str, t: Tensor| bc.store.add(name(path, attr, a, suffix), t, false);
        let down = (add("adapter_down", "weight", dw)?, add("adapter_down", "bias", db)?);
        let up = (add("adapter_up", "weight", uw)?, add("adapter_up", "bias", ub)?);
        Ok(BottleneckLayer {
            adapter: a.to_string(),
            down,
            up,
            activation: self.activation,
            scaling: self.scaling,
            parallel: self.placement == Placement::Parallel,
        })
    }
}

impl TunerConfig for BottleneckConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        match self.placement {
            Placement::Serial => "BOTTLENECK_ADAPTER",
            Placement::Parallel => "PARALLEL_ADAPTER",
        }
    }

    /// The nonlinearity sits between the projections: nothing to fold into a weight.
    fn can_merge(&self) -> bool {
        false
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        self.sites(model).map(Some)
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("bottleneck adapters attach to sublayers, not the linear `{}`", t.path)))
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let device = bc.store.iter().next().map(|(_, p)| p.device()).unwrap_or(Device::Cpu);
        Ok(Box::new(self.build(site, bc, &device)?))
    }
}
