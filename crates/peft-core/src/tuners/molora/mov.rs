//! MoV (Zadouri et al. 2024, eq. 5): h = (W₀x) ⊙ Σᵢ gᵢ(x) lᵢ, a soft mixture of E (IA)³
//! vectors lᵢ ∈ ℝᵒᵘᵗ (init 1, so the adapter starts as the base model) rescaling the
//! outputs of the keys, values and the FFN's intermediate activations. On LLaMA's SwiGLU the
//! intermediate activation is silu(gate x) ⊙ (up x), so scaling up_proj's output scales it
//! exactly: the default targets are k_proj, v_proj and up_proj.
use super::{num_experts, soft_gates};
use crate::error::Result;
use crate::model::{Ctx, Linear, ParamId};
use crate::tuners::fields::{config_plumbing, object, Fields};
use crate::tuners::init::kaiming_uniform;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Map, Value};
use std::path::Path;

pub fn defaults() -> Map<String, Value> {
    object(json!({
        "num_experts": 4, "target_modules": null, "exclude_modules": null, "layers_to_transform": null,
        "layers_pattern": null, "init_weights": true, "modules_to_save": null
    }))
}

#[derive(Debug, Clone)]
pub struct MovConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub num_experts: usize,
    /// true: every lᵢ = 1; false: 1 + N(0, 0.02)-ish noise (tests).
    pub init_weights: bool,
}

impl MovConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) = Fields::parse(value, "MOV", "MoVConfig", defaults(), source)?;
        f.no_modules_to_save()?;
        let c = MovConfig { num_experts: num_experts(&f)?, init_weights: f.bool("init_weights")?, targets: f.target_spec()?, fields: f };
        Ok((c, warnings))
    }
}

impl TunerConfig for MovConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "MOV"
    }

    fn default_targets(&self) -> &'static [&'static str] {
        &["k_proj", "v_proj", "up_proj"]
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dev = bc.store.get(t.weight).value().device().clone();
        let (dt, e) = (bc.dtype, self.num_experts);
        let router = kaiming_uniform(e, t.in_features, bc.rng, dt, &dev)?;
        let mut vectors = Tensor::ones((e, t.out_features), dt, &dev)?;
        if !self.init_weights {
            vectors = (vectors + crate::tuners::init::normal(e, t.out_features, 0.02, bc.rng, dt, &dev)?)?;
        }
        let router = bc.store.add(param_name(&t.path, "mov_router", bc.adapter), router, false)?;
        let vectors = bc.store.add(param_name(&t.path, "mov_experts", bc.adapter), vectors, false)?;
        Ok(Box::new(MovLayer { adapter: bc.adapter.to_string(), router, vectors }))
    }
}

#[derive(Debug)]
pub struct MovLayer {
    pub adapter: String,
    /// W_g [E, in] and the experts' vectors [E, out].
    pub router: ParamId,
    pub vectors: ParamId,
}

impl AdapterLayer for MovLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.router, self.vectors]
    }

    /// `result ⊙ (g(x) L)`: the gates [.., E] times the stacked vectors [E, out].
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (router, vectors) = (ctx.param(self.router), ctx.param(self.vectors));
        let gates = soft_gates(x, &router)?;
        let scale = gates.broadcast_matmul(&vectors)?;
        let out_dtype = result.dtype();
        Ok(result.to_dtype(scale.dtype())?.mul(&scale)?.to_dtype(out_dtype)?)
    }
}
