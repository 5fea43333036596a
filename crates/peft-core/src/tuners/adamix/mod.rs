//! AdaMix (Wang et al. 2022, "AdaMix: Mixture-of-Adaptations for Parameter-efficient Model
//! Tuning", EMNLP 2022, §2-3): each adapter position holds M bottleneck experts, M down- and M
//! up-projections. In training, every forward routes stochastically: one down-projection i and
//! one up-projection j are drawn uniformly per layer (§2.2, "stochastic routing"),
//! y = h + W_up,j f(W_down,i h). At inference the experts are merged by averaging their weights
//! (§2.3, "adaptation merging"): y = h + W̄_up f(W̄_down h), W̄ = (1/M) Σₘ Wₘ, so serving costs one
//! adapter. Its consistency regularisation (§2.3, a second routed forward and a symmetric KL
//! between the two, weight `consistency_weight`) is in `consistency.rs`.
//!
//! Placement, width, non-linearity, scaling and layers are the serial bottleneck adapter's
//! fields (Houlsby's placement, as the paper). Our own `peft_type` "ADAMIX"; tensors at each
//! sublayer: `adamix_down` [M, r, d], `adamix_down_bias` [M, r], `adamix_up` [M, d, r],
//! `adamix_up_bias` [M, d]; the up-projections start at zero (identity at init).
//! Draws go through `Ctx::draw_once`, so a checkpointed layer recomputes the same route.
use crate::error::{Error, Result};
use crate::model::linear::linear;
use crate::model::{CausalLm, Ctx, ParamId};
use crate::tuners::bottleneck::config::{name, BottleneckConfig, Placement};
use crate::tuners::bottleneck::Activation;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::init::{kaiming_uniform, uniform};
use crate::tuners::molora::num_experts;
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{Device, Tensor};
use rand::Rng;
use serde_json::{json, Value};
use std::path::Path;

pub mod consistency;

#[derive(Debug, Clone)]
pub struct AdaMixConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// The experts' shape (serial bottleneck fields).
    pub adapter: BottleneckConfig,
    pub num_experts: usize,
    /// λ of the consistency loss (`consistency.rs`); 0: off.
    pub consistency_weight: f64,
}

impl AdaMixConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = json!({"bottleneck_size": 16, "non_linearity": "relu", "scaling": 1.0, "sublayers": ["self_attn", "mlp"],
            "layers_to_transform": null, "init_weights": true, "modules_to_save": null, "num_experts": 4,
            "consistency_weight": 1.0});
        let (fields, warnings) = Fields::parse(value, "ADAMIX", "AdaMixConfig", defaults, source)?;
        let num_experts = num_experts(&fields)?;
        let consistency_weight =
            fields.num_in("consistency_weight", |w| w.is_finite() && w >= 0.0, "a finite number >= 0 (0: no consistency loss)")?;
        let adapter = BottleneckConfig::from_fields(fields.clone(), Placement::Serial)?;
        Ok((AdaMixConfig { fields, targets: TargetSpec::default(), adapter, num_experts, consistency_weight }, warnings))
    }
}

impl TunerConfig for AdaMixConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "ADAMIX"
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        self.adapter.sites(model).map(Some)
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("AdaMix attaches to sublayers, not the linear `{}`", t.path)))
    }

    /// nn.Linear's init for each expert's down-projection; up zero (init_weights) or nn.Linear's.
    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Sublayer { path, hidden, .. } = site else {
            return Err(Error::Unsupported(format!("AdaMix attaches to sublayers, not `{}`", site.path())));
        };
        let device = bc.store.iter().next().map(|(_, p)| p.value().device().clone()).unwrap_or(Device::Cpu);
        let (m, d, r, dt) = (self.num_experts, *hidden, self.adapter.bottleneck_size, bc.dtype);
        let dw = kaiming_uniform(m * r, d, bc.rng, dt, &device)?.reshape((m, r, d))?;
        let db = uniform(m * r, 1.0 / (d as f64).sqrt(), bc.rng, dt, &device)?.reshape((m, r))?;
        let (uw, ub) = if self.adapter.init_weights {
            (Tensor::zeros((m, d, r), dt, &device)?, Tensor::zeros((m, d), dt, &device)?)
        } else {
            (
                kaiming_uniform(m * d, r, bc.rng, dt, &device)?.reshape((m, d, r))?,
                uniform(m * d, 1.0 / (r as f64).sqrt(), bc.rng, dt, &device)?.reshape((m, d))?,
            )
        };
        let a = bc.adapter;
        let mut add = |attr: &str, t: Tensor| bc.store.add(name(path, attr, a, "weight"), t, false);
        let down = [add("adamix_down", dw)?, add("adamix_down_bias", db)?];
        let up = [add("adamix_up", uw)?, add("adamix_up_bias", ub)?];
        Ok(Box::new(AdaMixLayer {
            adapter: a.to_string(),
            path: path.clone(),
            down,
            up,
            experts: m,
            activation: self.adapter.activation,
            scaling: self.adapter.scaling,
        }))
    }
}

pub struct AdaMixLayer {
    pub adapter: String,
    pub path: String,
    /// (weight [M, r, d], bias [M, r]) and (weight [M, d, r], bias [M, d]).
    pub down: [ParamId; 2],
    pub up: [ParamId; 2],
    pub experts: usize,
    pub activation: Activation,
    pub scaling: f64,
}

/// Expert `i`'s slice of a stacked tensor, or (None) the mean over the experts.
fn pick(t: &Tensor, i: Option<usize>) -> Result<Tensor> {
    Ok(match i {
        Some(i) => t.get(i)?,
        None => t.mean(0)?,
    })
}

impl AdapterLayer for AdaMixLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.down[0], self.down[1], self.up[0], self.up[1]]
    }

    /// Training: h + s·(W_up,j f(W_down,i h + b_i) + b_j), (i, j) drawn once per forward for this
    /// layer; otherwise the averaged experts.
    fn sublayer(&self, _input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (i, j) = if ctx.training {
            let m = self.experts as u64;
            let route = ctx.draw_once(&format!("adamix/{}/{}", self.adapter, self.path), |rng| rng.random_range(0..m * m));
            (Some((route / m) as usize), Some((route % m) as usize))
        } else {
            (None, None)
        };
        let [dw, db, uw, ub] = [self.down[0], self.down[1], self.up[0], self.up[1]].map(|id| ctx.param(id));
        let h = output.to_dtype(dw.dtype())?;
        let z = self.activation.apply(&linear(&h, &pick(&dw, i)?, Some(&pick(&db, i)?))?)?;
        let y = (linear(&z, &pick(&uw, j)?, Some(&pick(&ub, j)?))? * self.scaling)?;
        Ok((h + y)?.to_dtype(output.dtype())?)
    }
}
