//! SoRA (Ding et al. 2023, "Sparse Low-rank Adaptation of Pre-trained Language Models", §3,
//! eqs. 3-5): h = W₀x + W_u (g ⊙ (W_d x)), a LoRA of rank r_max with a gate vector g ∈ ℝʳ
//! between the projections. g is trained by proximal gradient descent with an L1 penalty λ‖g‖₁:
//! after each optimizer step, g ← T_{η·λ}(g), the soft threshold T_ξ(z) = sign(z)·max(|z| − ξ, 0)
//! at the step's learning rate η (eq. 5). Gates that reach zero switch their rank off, so the
//! training prunes the rank. The update s·W_u diag(g) W_d merges.
//!
//! The threshold is a training procedure rather than part of the layer, so the Trainer runs
//! `proximal_step` after each optimizer step, as it runs AdaLoRA's allocator. Our own `peft_type`
//! "SORA"; tensors `<module>.lora_A.weight` [r, in] (W_d), `lora_B.weight` [out, r] (W_u),
//! `sora_gate.weight` [r] (init 1, so the adapter starts as LoRA).
use crate::error::{Error, Result};
use crate::model::{CausalLm, Ctx, Linear, ParamId, ParamStore};
use crate::tuners::fields::Fields;
use crate::tuners::lora::layer::{delta_weight, low_rank_forward};
use crate::tuners::low_rank::{low_rank_plumbing, merges_delta, parse_fields, LowRank};
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig, Tuners};
use candle_core::{DType, Tensor};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct SoraConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// LoRA's fields; `r` is r_max.
    pub low_rank: LowRank,
    /// λ, the L1 penalty on the gates: each step thresholds them by learning rate · λ.
    pub sparse_lambda: f64,
}

impl SoraConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, low_rank, warnings) =
            parse_fields(value, "SORA", "SoraConfig", json!({"sparse_lambda": 0.1}), "the largest rank (r_max)", source)?;
        let sparse_lambda = f.num_in("sparse_lambda", |x| x >= 0.0 && x.is_finite(), "a number >= 0 (the L1 penalty on the gates)")?;
        Ok((SoraConfig { low_rank, sparse_lambda, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for SoraConfig {
    low_rank_plumbing!("SORA");

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let (a, b) = self.low_rank.add_factors(t, bc)?;
        let dev = bc.store.get(t.weight).value().device().clone();
        let gate = bc.store.add(param_name(&t.path, "sora_gate", bc.adapter), Tensor::ones(self.low_rank.r, bc.dtype, &dev)?, false)?;
        Ok(Box::new(SoraLayer {
            adapter: bc.adapter.to_string(),
            a,
            b,
            gate,
            scaling: self.low_rank.scaling(),
            dropout: self.low_rank.lora_dropout,
        }))
    }
}

#[derive(Debug)]
pub struct SoraLayer {
    pub adapter: String,
    pub a: ParamId,
    pub b: ParamId,
    pub gate: ParamId,
    pub scaling: f64,
    pub dropout: f64,
}

impl SoraLayer {
    fn delta(&self, store: &ParamStore) -> Result<Tensor> {
        let gated_a = store.get(self.a).value().broadcast_mul(&store.get(self.gate).value().unsqueeze(1)?)?;
        delta_weight(&gated_a, &store.get(self.b).value(), self.scaling)
    }
}

impl AdapterLayer for SoraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.a, self.b, self.gate]
    }

    /// `result + s · B (g ⊙ (A dropout(x)))`: the gate scales A's rows, then LoRA's forward.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let gated_a = ctx.param(self.a).broadcast_mul(&ctx.param(self.gate).unsqueeze(1)?)?;
        low_rank_forward(x, result, &gated_a, &ctx.param(self.b), self.scaling, self.dropout, ctx)
    }

    merges_delta!();
}

/// T_ξ(z) = sign(z)·max(|z| − ξ, 0), element-wise.
pub fn soft_threshold(z: &Tensor, xi: f64) -> Result<Tensor> {
    let shrunk = (z.abs()? - xi)?.relu()?;
    Ok((z.sign()? * shrunk)?)
}

/// The proximal step of eq. 5 for every active, trainable SoRA adapter: each gate g ← T_{lr·λ}(g).
/// Returns, per adapter, (gates still non-zero, gates in all): the rank the training kept.
pub fn proximal_step(model: &CausalLm, tuners: &Tuners, lr: f64) -> Result<Vec<(String, usize, usize)>> {
    if !(lr.is_finite() && lr >= 0.0) {
        return Err(Error::arg("lr", "a finite learning rate >= 0", lr.to_string()));
    }
    if tuners.is_merged() {
        return Err(Error::Unsupported("SoRA's proximal step: the adapters are merged; unmerge them before training".into()));
    }
    let mut kept = Vec::new();
    for name in tuners.active() {
        let Some(c) = tuners.config(name)?.as_any().downcast_ref::<SoraConfig>() else { continue };
        let (mut alive, mut total) = (0, 0);
        for id in tuners.params(name)? {
            let p = model.store.get(id);
            if !p.name.contains(".sora_gate.") || !p.requires_grad() {
                continue;
            }
            let g = soft_threshold(&p.value(), lr * c.sparse_lambda)?;
            alive += g.ne(0.0)?.to_dtype(DType::F64)?.sum_all()?.to_vec0::<f64>()? as usize;
            total += g.elem_count();
            p.set(&g)?;
        }
        kept.push((name.clone(), alive, total));
    }
    Ok(kept)
}
