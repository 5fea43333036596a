//! Bias tuning in the spirit of BitFit (Ben Zaken et al. 2022, "BitFit: Simple
//! Parameter-efficient Fine-tuning for Transformer-based Masked Language-models", §2:
//! train only the bias terms). LLaMA's linears have no bias, so this method adds a
//! zero-initialised one to each targeted linear, `y = x Wᵀ + b + δ`, and trains δ.
//! Merging adds δ to the linear's bias (creating one). Our own `peft_type`
//! "BIAS_TUNING"; parameters `<linear>.bias_tuning.<adapter>.weight`.
pub mod config;

pub use config::BiasTuningConfig;

use crate::error::Result;
use crate::model::{Ctx, Linear};
use crate::model::{ParamId, ParamStore};
use crate::tuners::AdapterLayer;
use candle_core::Tensor;

#[derive(Debug)]
pub struct BiasLayer {
    pub adapter: String,
    pub delta: ParamId,
}

impl AdapterLayer for BiasLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.delta]
    }

    fn forward(&self, _base: &Linear, _x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let d = ctx.param(self.delta);
        let dt = result.dtype();
        Ok(result.to_dtype(d.dtype())?.broadcast_add(&d)?.to_dtype(dt)?)
    }

    /// The weight is unchanged (a copy: the store refuses a value derived from itself).
    fn merge(&mut self, weight: &Tensor, _store: &ParamStore) -> Result<Tensor> {
        Ok(weight.copy()?)
    }

    fn unmerge(&mut self, weight: &Tensor, _store: &ParamStore) -> Result<Tensor> {
        Ok(weight.copy()?)
    }

    fn merge_bias(&mut self, bias: Option<&Tensor>, _out: usize, store: &ParamStore) -> Result<Option<Tensor>> {
        let d = store.get(self.delta).value();
        Ok(Some(match bias {
            Some(b) => (b + d.to_dtype(b.dtype())?)?,
            None => d.copy()?,
        }))
    }

    fn unmerge_bias(&mut self, bias: &Tensor, store: &ParamStore) -> Result<Option<Tensor>> {
        Ok(Some((bias - store.get(self.delta).value().to_dtype(bias.dtype())?)?))
    }
}
