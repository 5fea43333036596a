//! One (IA)³ layer, after PEFT's `ia3.Linear` (`forward`, `merge`, `unmerge`).
use crate::error::Result;
use crate::model::{Ctx, Linear};
use crate::model::{ParamId, ParamStore};
use crate::tuners::AdapterLayer;
use candle_core::Tensor;

#[derive(Debug)]
pub struct Ia3Layer {
    pub adapter: String,
    /// `ia3_l`: [1, in] when `feedforward`, else [out, 1].
    pub l: ParamId,
    /// Scales the layer input (x ⊙ l) rather than its output.
    pub feedforward: bool,
    /// The base layer's bias, scaled with the output at merge (non-feed-forward only).
    pub bias: Option<ParamId>,
}

/// `a ⊙ l` over the last axis, computed in l's dtype and cast back to a's.
fn scale(a: &Tensor, l: &Tensor) -> Result<Tensor> {
    Ok(a.to_dtype(l.dtype())?.broadcast_mul(&l.flatten_all()?)?.to_dtype(a.dtype())?)
}

impl AdapterLayer for Ia3Layer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.l]
    }

    /// Feed-forward modules: `base(x ⊙ l)` (PEFT's `interm = (x * ia3_scaling)`).
    fn transform_input(&self, x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        if !self.feedforward {
            return Ok(None);
        }
        Ok(Some(scale(x, &ctx.param(self.l))?))
    }

    /// Other modules: `base(x) ⊙ l`, the running result (bias included) scaled as PEFT does.
    fn forward(&self, _base: &Linear, _x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        if self.feedforward {
            return Ok(result);
        }
        scale(&result, &ctx.param(self.l))
    }

    /// W ⊙ l: l [out, 1] scales rows, l [1, in] scales columns; a bias is scaled with the
    /// output (non-feed-forward only), as `Linear.merge`.
    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let l = store.get(self.l).value();
        if let (false, Some(b)) = (self.feedforward, self.bias) {
            let bias = store.get(b).value();
            store.get(b).set(&bias.to_dtype(l.dtype())?.mul(&l.flatten_all()?)?)?;
        }
        Ok(weight.to_dtype(l.dtype())?.broadcast_mul(&l)?.to_dtype(weight.dtype())?)
    }

    /// W / (l + 1e-8) (`Linear.unmerge`: "Unmerge result can be inaccurate for (IA)^3").
    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let l = (store.get(self.l).value() + 1e-8)?;
        if let (false, Some(b)) = (self.feedforward, self.bias) {
            let bias = store.get(b).value();
            store.get(b).set(&bias.to_dtype(l.dtype())?.div(&l.flatten_all()?)?)?;
        }
        Ok(weight.to_dtype(l.dtype())?.broadcast_div(&l)?.to_dtype(weight.dtype())?)
    }
}
