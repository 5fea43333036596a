//! SSF (Lian et al. 2022, "Scaling & Shifting Your Features: A New Baseline for Efficient
//! Model Tuning", eq. 4): after a chosen operation, `y = γ ⊙ x + β` per output channel,
//! γ initialised to 1 and β to 0. After a linear it merges (eq. 5): W' = diag(γ) W,
//! b' = γ ⊙ b + β (LLaMA's linears have no bias: merging gives them one). After an
//! RMSNorm the shift has no bias to go into, so such an adapter cannot merge. Our own
//! `peft_type` "SSF"; parameters `<module>.ssf_scale.<adapter>.weight` / `ssf_shift`.
pub mod config;

pub use config::SsfConfig;

use crate::error::{Error, Result};
use crate::model::{Ctx, Linear};
use crate::model::{ParamId, ParamStore};
use crate::tuners::AdapterLayer;
use candle_core::Tensor;

#[derive(Debug)]
pub struct SsfLayer {
    pub adapter: String,
    pub path: String,
    pub scale: ParamId,
    pub shift: ParamId,
    /// After a norm rather than a linear.
    pub on_norm: bool,
}

impl SsfLayer {
    fn apply(&self, y: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (g, b) = (ctx.param(self.scale), ctx.param(self.shift));
        let dt = y.dtype();
        Ok(y.to_dtype(g.dtype())?.broadcast_mul(&g)?.broadcast_add(&b)?.to_dtype(dt)?)
    }

    fn values(&self, store: &ParamStore, dt: candle_core::DType) -> Result<(Tensor, Tensor)> {
        Ok((store.get(self.scale).value().to_dtype(dt)?, store.get(self.shift).value().to_dtype(dt)?))
    }
}

impl AdapterLayer for SsfLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.scale, self.shift]
    }

    fn forward(&self, _base: &Linear, _x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.apply(result, ctx)
    }

    fn norm_output(&self, y: Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.apply(y, ctx)
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        if self.on_norm {
            return Err(Error::Unsupported(format!(
                "SSF after the norm `{}` cannot be merged: RMSNorm has no bias for the shift",
                self.path
            )));
        }
        let (g, _) = self.values(store, weight.dtype())?;
        Ok(weight.broadcast_mul(&g.unsqueeze(1)?)?)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let (g, _) = self.values(store, weight.dtype())?;
        Ok(weight.broadcast_div(&g.unsqueeze(1)?)?)
    }

    fn merge_bias(&mut self, bias: Option<&Tensor>, out_features: usize, store: &ParamStore) -> Result<Option<Tensor>> {
        let dt = bias.map_or(store.get(self.shift).dtype(), |b| b.dtype());
        let (g, b) = self.values(store, dt)?;
        let _ = out_features;
        Ok(Some(match bias {
            Some(old) => ((old * &g)? + b)?,
            None => b.copy()?,
        }))
    }

    fn unmerge_bias(&mut self, bias: &Tensor, store: &ParamStore) -> Result<Option<Tensor>> {
        let (g, b) = self.values(store, bias.dtype())?;
        Ok(Some(((bias - b)? / g)?))
    }
}
