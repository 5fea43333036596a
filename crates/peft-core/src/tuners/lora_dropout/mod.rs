//! LoRA Dropout (Lin et al. 2024, "LoRA Dropout as a Sparsity Regularizer for Overfitting
//! Control", §3.1, eq. 5): in training, random masks drop whole input columns of A and output
//! rows of B, ΔW = s · (diag(m_B) B)(A diag(m_A)), m_A ∈ {0,1}ⁱⁿ, m_B ∈ {0,1}ᵒᵘᵗ ~ Bernoulli(1 − p),
//! a fresh draw each forward, so that each step tunes a sparse sub-update (the paper's sparsity
//! regulariser). We scale the kept entries by 1/(1 − p) each (inverted dropout), so that
//! E[ΔW_masked] = ΔW and evaluation runs the plain, unmasked LoRA; the paper's test-time
//! ensemble (averaging several masked forwards) is not implemented. Outside training it is
//! LoRA and merges as LoRA. Our own `peft_type` "LORA_DROPOUT"; tensors as LoRA's
//! (`<module>.lora_A.weight` [r, in], `lora_B.weight` [out, r]).
use crate::error::Result;
use crate::model::{Ctx, Linear, ParamId, ParamStore};
use crate::tuners::fields::Fields;
use crate::tuners::init::dropout_mask;
use crate::tuners::lora::layer::{delta_weight, low_rank_forward};
use crate::tuners::low_rank::{low_rank_plumbing, merges_delta, parse_fields, LowRank};
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct LoraDropoutConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// LoRA's fields (`lora_dropout` is LoRA's own dropout on the layer input).
    pub low_rank: LowRank,
    /// p, the rate at which columns of A and rows of B are dropped in training.
    pub param_dropout: f64,
}

impl LoraDropoutConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, low_rank, warnings) =
            parse_fields(value, "LORA_DROPOUT", "LoraDropoutConfig", json!({"param_dropout": 0.1}), "the rank", source)?;
        Ok((LoraDropoutConfig { low_rank, param_dropout: f.prob("param_dropout")?, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for LoraDropoutConfig {
    low_rank_plumbing!("LORA_DROPOUT");

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let (a, b) = self.low_rank.add_factors(t, bc)?;
        let (scaling, dropout) = (self.low_rank.scaling(), self.low_rank.lora_dropout);
        Ok(Box::new(LoraDropoutLayer { adapter: bc.adapter.to_string(), a, b, scaling, dropout, param_dropout: self.param_dropout }))
    }
}

#[derive(Debug)]
pub struct LoraDropoutLayer {
    pub adapter: String,
    pub a: ParamId,
    pub b: ParamId,
    pub scaling: f64,
    pub dropout: f64,
    pub param_dropout: f64,
}

impl LoraDropoutLayer {
    fn delta(&self, store: &ParamStore) -> Result<Tensor> {
        delta_weight(&store.get(self.a).value(), &store.get(self.b).value(), self.scaling)
    }
}

impl AdapterLayer for LoraDropoutLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.a, self.b]
    }

    /// Training: A's columns and B's rows masked (inverted dropout), then LoRA's forward.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (mut a, mut b) = (ctx.param(self.a), ctx.param(self.b));
        if ctx.training && self.param_dropout > 0.0 {
            let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
            let (dt, dev) = (a.dtype(), a.device().clone());
            let m_a = dropout_mask(&[1, a.dim(1)?], self.param_dropout, &mut rng, dt, &dev)?;
            let m_b = dropout_mask(&[b.dim(0)?, 1], self.param_dropout, &mut rng, dt, &dev)?;
            a = a.broadcast_mul(&m_a)?;
            b = b.broadcast_mul(&m_b)?;
        }
        low_rank_forward(x, result, &a, &b, self.scaling, self.dropout, ctx)
    }

    merges_delta!();
}
