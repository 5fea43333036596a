//! LN tuning (Zhao et al. 2023, "Tuning LayerNorm in Attention: Towards Efficient
//! Multi-Modal LLM Finetuning"): a trainable copy of each targeted norm's weight runs in
//! place of the original. PEFT 0.21: `LNTuningConfig`, `LNTuningLayer`
//! (`tuners/ln_tuning/`): `update_layer` deep-copies the layer into
//! `ln_tuning_layers[adapter]`; merging swaps the copy in as the base layer.
pub mod config;

pub use config::LnTuningConfig;

use crate::error::Result;
use crate::model::Ctx;
use crate::model::{ParamId, ParamStore};
use crate::tuners::AdapterLayer;
use candle_core::Tensor;

#[derive(Debug)]
pub struct LnTuningLayer {
    pub adapter: String,
    /// `<norm>.ln_tuning_layers.<adapter>.weight`.
    pub weight: ParamId,
    /// The base weight while merged (PEFT keeps it as the swapped-out layer).
    pub saved: Option<Tensor>,
}

impl AdapterLayer for LnTuningLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.weight]
    }

    /// `LNTuningLayer.forward`: the copy runs instead of the base layer.
    fn norm_weight(&self, _weight: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(Some(ctx.param(self.weight)))
    }

    /// `merge`: the copy becomes the base layer.
    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.saved = Some(weight.copy()?);
        Ok(store.get(self.weight).value().to_dtype(weight.dtype())?.copy()?)
    }

    /// `unmerge`: the original comes back.
    fn unmerge(&mut self, weight: &Tensor, _store: &ParamStore) -> Result<Tensor> {
        Ok(self.saved.take().unwrap_or_else(|| weight.clone()))
    }
}
