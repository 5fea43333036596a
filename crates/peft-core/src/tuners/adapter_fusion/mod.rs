//! AdapterFusion (Pfeiffer et al. 2021, "AdapterFusion: Non-Destructive Task Composition for
//! Transfer Learning", §3.2, Fig. 2): N task adapters, trained before and frozen, each give an
//! output z_{l,t,n} at layer l and token t; a per-layer attention over them, with the sublayer
//! output h_{l,t} as the query, mixes them:
//!   s_{l,t} = softmax(h_{l,t}ᵀ Q_l ⊗ z_{l,t,n}ᵀ K_l),   z'_{l,t,n} = z_{l,t,n}ᵀ V_l,
//!   Ψ'_{l,t} = s_{l,t}ᵀ Z'_{l,t}.
//! Only Q, K, V [d, d] are trained. The adapters are serial bottleneck adapters (Pfeiffer's:
//! after the FFN by default), z_n = h + δ_n(h); V starts as the identity (as the paper: "V is
//! initialized as an identity matrix"), so a new fusion is a convex mix of the adapters'
//! outputs; Q and K start N(0, 0.02²) (the `adapters` library's init).
//!
//! The N adapters live inside the fusion adapter as frozen buffers saved with it, so a fusion
//! saves, loads and runs on its own. `Tuners::add_fusion_adapter` (`compose.rs`) builds one
//! from trained bottleneck adapters; a fusion from a config alone gets random adapters
//! (tests). Our own `peft_type` "ADAPTER_FUSION". Tensors at each sublayer: `fusion_query`,
//! `fusion_key`, `fusion_value` [d, d] and `fusion_adapters.{n}.adapter_down/up` (weight, bias).
//! Attention-like mixing after a nonlinearity: nothing merges.
mod compose;

use crate::error::{Error, Result};
use crate::model::linear::linear;
use crate::model::{Ctx, ParamId};
use crate::tuners::bottleneck::config::{BottleneckConfig, Placement};
use crate::tuners::bottleneck::BottleneckLayer;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::init::normal;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{Device, Tensor, D};
use serde_json::{json, Value};
use std::path::Path;

/// Bound on `num_adapters` (each is a full bottleneck adapter kept at every layer).
pub const MAX_FUSED: usize = 16;

#[derive(Debug, Clone)]
pub struct AdapterFusionConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// The fused adapters' shape (serial bottleneck fields).
    pub adapter: BottleneckConfig,
    pub num_adapters: usize,
}

impl AdapterFusionConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = json!({"bottleneck_size": 16, "non_linearity": "relu", "scaling": 1.0, "sublayers": ["mlp"],
            "layers_to_transform": null, "init_weights": true, "modules_to_save": null, "num_adapters": 2, "adapter_names": null});
        let (fields, warnings) = Fields::parse(value, "ADAPTER_FUSION", "AdapterFusionConfig", defaults, source)?;
        let num_adapters = fields.positive("num_adapters", "the number of fused adapters")?;
        if num_adapters > MAX_FUSED {
            return Err(fields.err("num_adapters", &format!("at most {MAX_FUSED} adapters")));
        }
        if !fields.get("adapter_names").is_null() && fields.strings("adapter_names").map_or(true, |n| n.len() != num_adapters) {
            return Err(fields.err("adapter_names", &format!("null or a list of num_adapters ({num_adapters}) names")));
        }
        let adapter = BottleneckConfig::from_fields(fields.clone(), Placement::Serial)?;
        Ok((AdapterFusionConfig { fields, targets: TargetSpec::default(), adapter, num_adapters }, warnings))
    }
}

impl TunerConfig for AdapterFusionConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "ADAPTER_FUSION"
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn hook_sites(&self, model: &crate::model::CausalLm) -> Result<Option<Vec<HookSite>>> {
        self.adapter.sites(model).map(Some)
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("AdapterFusion attaches to sublayers, not the linear `{}`", t.path)))
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Sublayer { path, layer, kind, hidden } = site else {
            return Err(Error::Unsupported(format!("AdapterFusion attaches to sublayers, not `{}`", site.path())));
        };
        let device = bc.store.iter().next().map(|(_, p)| p.value().device().clone()).unwrap_or(Device::Cpu);
        // The fused adapters: random (non-zero up-projections) until `add_fusion_adapter` or a
        // load writes the trained ones over them.
        let expert_config = BottleneckConfig { init_weights: false, ..self.adapter.clone() };
        let adapters = (0..self.num_adapters)
            .map(|n| {
                let at = HookSite::Sublayer { path: format!("{path}.fusion_adapters.{n}"), layer: *layer, kind: *kind, hidden: *hidden };
                expert_config.build(&at, bc, &device)
            })
            .collect::<Result<Vec<_>>>()?;
        let (d, dt) = (*hidden, bc.dtype);
        let mut qkv = Vec::with_capacity(3);
        for attr in ["fusion_query", "fusion_key", "fusion_value"] {
            let w = if attr == "fusion_value" && self.adapter.init_weights {
                Tensor::eye(d, dt, &device)?
            } else {
                normal(d, d, 0.02, bc.rng, dt, &device)?
            };
            qkv.push(bc.store.add(param_name(path, attr, bc.adapter), w, false)?);
        }
        Ok(Box::new(FusionLayer { adapter: bc.adapter.to_string(), qkv: [qkv[0], qkv[1], qkv[2]], adapters }))
    }
}

pub struct FusionLayer {
    pub adapter: String,
    /// Q, K, V [d, d] (trained).
    pub qkv: [ParamId; 3],
    /// The fused adapters (frozen buffers).
    pub adapters: Vec<BottleneckLayer>,
}

impl AdapterLayer for FusionLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        self.qkv.to_vec()
    }

    /// Each fused adapter's down weight, down bias, up weight, up bias, in adapter order.
    fn buffers(&self) -> Vec<ParamId> {
        self.adapters.iter().flat_map(|a| a.params()).collect()
    }

    /// Ψ' = Σₙ sₙ (zₙ Vᵀ) = (Σₙ sₙ zₙ) Vᵀ, with the scores sₙ = (h Qᵀ)·(zₙ Kᵀ) = zₙ·(h Qᵀ K).
    fn sublayer(&self, _input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let [q, k, v] = self.qkv.map(|id| ctx.param(id));
        let h = output.to_dtype(q.dtype())?;
        let zs = self.adapters.iter().map(|a| Ok((&h + a.delta(&h, ctx)?)?)).collect::<Result<Vec<_>>>()?;
        let z = Tensor::stack(&zs, D::Minus2)?; // [.., N, d]
        let query = linear(&linear(&h, &q, None)?, &k.t()?.contiguous()?, None)?; // h Qᵀ K, [.., d]
        let scores = z.broadcast_mul(&query.unsqueeze(D::Minus2)?)?.sum(D::Minus1)?; // [.., N]
        let s = crate::ops::softmax_last_dim(&scores)?;
        let mixed = z.broadcast_mul(&s.unsqueeze(D::Minus1)?)?.sum(D::Minus2)?;
        Ok(linear(&mixed, &v, None)?.to_dtype(output.dtype())?)
    }
}
