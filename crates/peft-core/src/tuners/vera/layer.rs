//! One VeRA layer, after PEFT's `vera.Linear` (`forward`, `get_delta_weight`, `merge`).
use crate::error::Result;
use crate::model::linear::linear;
use crate::model::{Ctx, Linear};
use crate::model::{ParamId, ParamStore};
use crate::tuners::init::dropout_mask;
use crate::tuners::AdapterLayer;
use candle_core::{DType, Tensor};

#[derive(Debug)]
pub struct VeraLayer {
    pub adapter: String,
    /// λ_b [out] and λ_d [r], trained.
    pub lambda_b: ParamId,
    pub lambda_d: ParamId,
    /// The adapter's shared frozen projections A [r, in_max], B [out_max, r].
    pub vera_a: ParamId,
    pub vera_b: ParamId,
    pub in_features: usize,
    pub out_features: usize,
    pub dropout: f64,
}

impl VeraLayer {
    /// A[:, :in] and B[:out, :], the slices of the shared projections this layer uses.
    fn sliced(&self, store: &ParamStore) -> Result<(Tensor, Tensor)> {
        let a = store.get(self.vera_a).value().detach().narrow(1, 0, self.in_features)?.contiguous()?;
        let b = store.get(self.vera_b).value().detach().narrow(0, 0, self.out_features)?.contiguous()?;
        Ok((a, b))
    }

    /// `get_delta_weight`: (λ_b ⊙ B) (λ_d ⊙ A), rows scaled by λ_b, A's rows by λ_d.
    pub fn delta_weight(&self, store: &ParamStore) -> Result<Tensor> {
        let (a, b) = self.sliced(store)?;
        let lb = store.get(self.lambda_b).value().unsqueeze(1)?;
        let ld = store.get(self.lambda_d).value().unsqueeze(1)?;
        let dt = lb.dtype();
        Ok(b.to_dtype(dt)?.broadcast_mul(&lb)?.matmul(&a.to_dtype(dt)?.broadcast_mul(&ld)?)?)
    }
}

impl AdapterLayer for VeraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.lambda_b, self.lambda_d]
    }

    fn buffers(&self) -> Vec<ParamId> {
        vec![self.vera_a, self.vera_b]
    }

    /// `result + λ_b ⊙ (B (λ_d ⊙ (A dropout(x))))`, in the adapter dtype, cast back.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (lb, ld) = (ctx.param(self.lambda_b), ctx.param(self.lambda_d));
        let dt = lb.dtype();
        let (a, b) = self.sliced(ctx.store)?;
        let mut x = x.to_dtype(dt)?;
        if ctx.training && self.dropout > 0.0 {
            let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
            x = (x.clone() * dropout_mask(x.dims(), self.dropout, &mut rng, dt, x.device())?)?;
        }
        let h = linear(&x, &a.to_dtype(dt)?, None)?.broadcast_mul(&ld)?;
        let y = linear(&h, &b.to_dtype(dt)?, None)?.broadcast_mul(&lb)?;
        let out_dtype = result.dtype();
        Ok((result.to_dtype(dt)? + y)?.to_dtype(out_dtype)?)
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let delta = self.delta_weight(store)?;
        Ok((weight.to_dtype(DType::F64)? + delta.to_dtype(DType::F64)?)?.to_dtype(weight.dtype())?)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let delta = self.delta_weight(store)?;
        Ok((weight.to_dtype(DType::F64)? - delta.to_dtype(DType::F64)?)?.to_dtype(weight.dtype())?)
    }
}
