//! MoLoRA and MoV (Zadouri et al. 2024, "Pushing Mixture of Experts to the Limit: Extremely
//! Parameter Efficient MoE for Instruction Tuning", §2.2, eqs. 3-5): E lightweight experts per
//! targeted linear, mixed per token by a soft router (every expert runs: soft merging),
//! g(x) = softmax(W_g x) ∈ ℝᴱ.
//! - MoLoRA: h = W₀x + s · Σᵢ gᵢ(x) Bᵢ Aᵢ x, E LoRA experts (this file).
//! - MoV: h = (W₀x) ⊙ Σᵢ gᵢ(x) lᵢ, E (IA)³ vectors (`mov.rs`).
//!
//! The mixture depends on each token, so neither folds into the base weights. Our own
//! `peft_type`s "MOLORA" and "MOV"; the router is `<module>.lora_router.weight` [E, in]
//! (`mov_router` for MoV), `nn.Linear`'s default (Kaiming-uniform) init.
pub mod mov;

pub use mov::{MovConfig, MovLayer};

use crate::error::Result;
use crate::model::linear::linear;
use crate::model::{Ctx, Linear, ParamId};
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::init::kaiming_uniform;
use crate::tuners::lora::layer::adapter_input;
use crate::tuners::low_rank::{defaults, LowRank};
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{Tensor, D};
use serde_json::{json, Value};
use std::path::Path;

/// Bound on `num_experts` (per layer; the experts are small but each adds a full-width router row).
pub const MAX_EXPERTS: usize = 64;

/// `softmax(W_g x)` over the experts, [.., E], in the router's dtype.
pub fn soft_gates(x: &Tensor, router: &Tensor) -> Result<Tensor> {
    let logits = linear(&x.to_dtype(router.dtype())?, router, None)?;
    Ok(crate::ops::softmax_last_dim(&logits)?)
}

/// `num_experts`, checked against `MAX_EXPERTS`.
pub fn num_experts(f: &Fields) -> Result<usize> {
    let e = f.positive("num_experts", "the number of experts per layer")?;
    if e > MAX_EXPERTS {
        return Err(f.err("num_experts", &format!("at most {MAX_EXPERTS} experts")));
    }
    Ok(e)
}

#[derive(Debug, Clone)]
pub struct MoLoraConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// Each expert's LoRA fields (init_weights: every Bᵢ = 0, the adapter starts as the base model).
    pub low_rank: LowRank,
    pub num_experts: usize,
}

impl MoLoraConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) = Fields::parse(value, "MOLORA", "MoLoraConfig", defaults(json!({"r": 4, "num_experts": 4})), source)?;
        let low_rank = LowRank::parse(&f, "the rank of each expert")?;
        Ok((MoLoraConfig { low_rank, num_experts: num_experts(&f)?, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for MoLoraConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "MOLORA"
    }

    fn default_targets(&self) -> &'static [&'static str] {
        crate::tuners::defaults::QV
    }

    fn can_merge(&self) -> bool {
        false
    }

    /// The experts' factors are stacked: A [E·r, in] (expert i's rows i·r..(i+1)·r) and
    /// B [out, E·r] (its columns), so that one matmul each runs all experts.
    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dev = bc.store.get(t.weight).value().device().clone();
        let (dt, er, lr) = (bc.dtype, self.num_experts * self.low_rank.r, self.low_rank);
        let router = kaiming_uniform(self.num_experts, t.in_features, bc.rng, dt, &dev)?;
        let a = kaiming_uniform(er, t.in_features, bc.rng, dt, &dev)?;
        let b = if lr.init_weights {
            Tensor::zeros((t.out_features, er), dt, &dev)?
        } else {
            kaiming_uniform(t.out_features, er, bc.rng, dt, &dev)?
        };
        let router = bc.store.add(param_name(&t.path, "lora_router", bc.adapter), router, false)?;
        let a = bc.store.add(param_name(&t.path, "lora_A", bc.adapter), a, false)?;
        let b = bc.store.add(param_name(&t.path, "lora_B", bc.adapter), b, false)?;
        Ok(Box::new(MoLoraLayer {
            adapter: bc.adapter.to_string(),
            router,
            a,
            b,
            experts: self.num_experts,
            r: lr.r,
            scaling: lr.scaling(),
            dropout: lr.lora_dropout,
        }))
    }
}

#[derive(Debug)]
pub struct MoLoraLayer {
    pub adapter: String,
    pub router: ParamId,
    pub a: ParamId,
    pub b: ParamId,
    pub experts: usize,
    pub r: usize,
    pub scaling: f64,
    pub dropout: f64,
}

impl AdapterLayer for MoLoraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.router, self.a, self.b]
    }

    /// `result + s · B ((A dropout(x)) ⊙ g(x) per expert block)` = s Σᵢ gᵢ Bᵢ Aᵢ x: expert i's
    /// r down-projected features are scaled by its gate before the stacked up-projection.
    /// The router sees the undropped input.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (router, a, b) = (ctx.param(self.router), ctx.param(self.a), ctx.param(self.b));
        let dt = a.dtype();
        let gates = soft_gates(x, &router)?; // [.., E]
        let (xd, _) = adapter_input(x, dt, self.dropout, ctx)?;
        let h = linear(&xd, &a, None)?; // [.., E·r]
        let mut split = h.dims().to_vec();
        let last = split.len() - 1;
        split[last] = self.experts;
        split.push(self.r);
        let gated = h.reshape(split)?.broadcast_mul(&gates.unsqueeze(D::Minus1)?)?.reshape(h.dims())?;
        let y = (linear(&gated, &b, None)? * self.scaling)?;
        let out_dtype = result.dtype();
        Ok((result.to_dtype(dt)? + y)?.to_dtype(out_dtype)?)
    }
}
