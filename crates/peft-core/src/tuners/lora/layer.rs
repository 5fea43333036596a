//! One LoRA layer on one linear for one adapter name, after PEFT's `lora.Linear`
//! (`tuners/lora/layer.py`: `update_layer`, `forward`, `get_delta_weight`, `merge`, `unmerge`).
use super::dora::{self, Dora, DoraInputs};
use crate::error::Result;
use crate::model::linear::linear;
use crate::model::{Ctx, Linear};
use crate::model::{ParamId, ParamStore};
use crate::tuners::init::dropout_mask;
use crate::tuners::AdapterLayer;
use candle_core::{DType, Tensor};

#[derive(Debug)]
pub struct LoraLayer {
    pub adapter: String,
    /// Module path of the base linear.
    pub path: String,
    pub base_weight: ParamId,
    /// `lora_A` [r, in] and `lora_B` [out, r].
    pub a: ParamId,
    pub b: ParamId,
    pub r: usize,
    pub alpha: f64,
    pub scaling: f64,
    pub dropout: f64,
    pub dora: Option<Dora>,
    /// PiSSA: the initial A, B whose product s·B₀A₀ was taken out of the base weight.
    pub pissa_init: Option<(Tensor, Tensor)>,
}

impl LoraLayer {
    /// s · B A in the adapter dtype (`get_delta_weight`).
    pub fn delta_weight(&self, store: &ParamStore) -> Result<Tensor> {
        delta_weight(&store.get(self.a).value(), &store.get(self.b).value(), self.scaling)
    }
}

/// s · B A (`get_delta_weight`); DyLoRA passes its truncated factors.
pub fn delta_weight(a: &Tensor, b: &Tensor, scaling: f64) -> Result<Tensor> {
    Ok((b.matmul(a)? * scaling)?)
}

/// The layer input in the adapter dtype `dt` (PEFT casts `x` to `lora_A`'s dtype), with
/// inverted dropout of rate `p` in training; and whether dropout was applied.
pub fn adapter_input(x: &Tensor, dt: DType, p: f64, ctx: &Ctx) -> Result<(Tensor, bool)> {
    let x = x.to_dtype(dt)?;
    if !(ctx.training && p > 0.0) {
        return Ok((x, false));
    }
    let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
    let mask = dropout_mask(x.dims(), p, &mut rng, dt, x.device())?;
    Ok(((x * mask)?, true))
}

/// `result + B(A(dropout(x))) · s` in the dtype of `a` (f32 under a half-precision base),
/// cast back to `result`'s dtype: plain LoRA's forward, and DyLoRA's on truncated factors.
pub fn low_rank_forward(x: &Tensor, result: Tensor, a: &Tensor, b: &Tensor, scaling: f64, dropout: f64, ctx: &Ctx) -> Result<Tensor> {
    let (x, _) = adapter_input(x, a.dtype(), dropout, ctx)?;
    let out = crate::ops::lora_add(&result.to_dtype(a.dtype())?, &linear(&x, a, None)?, b, scaling)?;
    Ok(out.to_dtype(result.dtype())?)
}

impl AdapterLayer for LoraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn params(&self) -> Vec<ParamId> {
        let mut p = vec![self.a, self.b];
        p.extend(self.dora.as_ref().map(|d| d.magnitude));
        p
    }

    /// `result + B(A(dropout(x))) · s`, computed in the adapter dtype (f32 under a half
    /// precision base, as PEFT casts `x` to `lora_A`'s dtype) and cast back.
    fn forward(&self, base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (a, b) = (ctx.param(self.a), ctx.param(self.b));
        let Some(d) = &self.dora else {
            return low_rank_forward(x, result, &a, &b, self.scaling, self.dropout, ctx);
        };
        let dt = a.dtype();
        let out_dtype = result.dtype();
        let (x, dropped) = adapter_input(x, dt, self.dropout, ctx)?;
        let result = result.to_dtype(dt)?;
        let weight = ctx.param(base.weight).to_dtype(dt)?;
        let bias = base.bias.map(|id| ctx.param(id).to_dtype(dt)).transpose()?;
        let magnitude = ctx.param(d.magnitude);
        let inputs =
            DoraInputs { x: &x, a: &a, b: &b, magnitude: &magnitude, weight: &weight, bias: bias.as_ref(), scaling: self.scaling, dropped };
        Ok(dora::forward(&inputs, result)?.to_dtype(out_dtype)?)
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let delta = self.delta_weight(store)?;
        let w = weight.to_dtype(delta.dtype())?;
        let merged = match &mut self.dora {
            None => (w + delta)?,
            Some(d) => {
                let m = store.get(d.magnitude).value().clone();
                d.merge(&w, &delta, &m)?
            }
        };
        Ok(merged.to_dtype(weight.dtype())?)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let delta = self.delta_weight(store)?;
        let w = weight.to_dtype(delta.dtype())?;
        let unmerged = match &mut self.dora {
            None => (w - delta)?,
            Some(d) => {
                let m = store.get(d.magnitude).value().clone();
                d.unmerge(&w, &delta, &m)?
            }
        };
        Ok(unmerged.to_dtype(weight.dtype())?)
    }

    /// PiSSA left W − s·B₀A₀ in the base; removing the adapter unmerged puts s·B₀A₀ back,
    /// so that deleting or unloading it gives the original model again (PEFT leaves the
    /// residual in place; its users must reload the base).
    fn restore_base(&self, store: &ParamStore) -> Result<()> {
        if let Some((a0, b0)) = &self.pissa_init {
            let w = store.get(self.base_weight).value();
            let principal = (b0.to_dtype(DType::F64)?.matmul(&a0.to_dtype(DType::F64)?)? * self.scaling)?;
            store.get(self.base_weight).set(&(w.to_dtype(DType::F64)? + principal)?)?;
        }
        Ok(())
    }
}
