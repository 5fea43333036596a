//! Sparse selective fine-tuning with a fixed mask: FishMask (Sung et al. 2021, "Training
//! Neural Networks with Fixed Sparse Masks", eq. 3) and diff pruning's fixed-mask form (Guo
//! et al. 2021, "Parameter-Efficient Transfer Learning with Diff Pruning", §3): each
//! targeted weight trains as W + ΔW where ΔW is zero outside a mask M chosen once before
//! training (by magnitude, Fisher information or at random, `select.rs`), so only the
//! masked entries δ = ΔW[M] are trained and stored. Forward: y = x Wᵀ + x ΔWᵀ, by
//! `ops::sparse_add` (below 3% density it loops over the k entries and never forms ΔW;
//! above, ΔW is built with candle's `index_add`, whose backward gathers ∂L/∂δ = (∂L/∂ΔW)[M]).
//! Merging adds δ at M.
//! Our own `peft_type` "SPARSE_MASK"; tensors `<linear>.sparse_delta.<adapter>` (trained,
//! zero-initialised, [k]) and the buffer `<linear>.sparse_indices.<adapter>` (int64 flat
//! row-major indices, [k]), saved as `<linear>.sparse_delta` / `<linear>.sparse_indices`.
pub mod config;
pub mod fisher;
pub mod select;

pub use config::SparseMaskConfig;
pub use fisher::{estimate_fisher, estimate_fisher_until, fisher_targets, FisherBatch};
pub use select::MaskType;

use crate::error::{Error, Result};
use crate::model::{CausalLm, ParamId, ParamStore};
use crate::model::{Ctx, Linear};
use crate::ops;
use crate::tuners::{AdapterLayer, InjectReport, Tuners};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Fisher scores [out, in] by linear module path.
pub type FisherScores = HashMap<String, Tensor>;

/// Injects `config` with its mask chosen from `fisher`, then keeps the config without the
/// scores: they are as large as the targeted weights and only the chosen indices are needed.
pub fn inject_with_fisher(
    tuners: &mut Tuners,
    model: &mut CausalLm,
    name: &str,
    config: SparseMaskConfig,
    fisher: Arc<FisherScores>,
    seed: u64,
) -> Result<InjectReport> {
    let report = tuners.inject(model, name, Box::new(config.with_fisher(fisher)), seed)?;
    let stored = tuners.config(name)?.as_any().downcast_ref::<SparseMaskConfig>().cloned();
    let mut plain = stored.ok_or_else(|| Error::Unsupported(format!("adapter `{name}` is not a SPARSE_MASK adapter")))?;
    plain.fisher = None;
    *tuners.config_mut(name)? = Box::new(plain);
    Ok(report)
}

#[derive(Debug)]
pub struct SparseMaskLayer {
    pub adapter: String,
    /// The targeted linear's module path (for errors).
    pub path: String,
    /// int64 [k]: flat indices into the weight [out, in].
    pub indices: ParamId,
    /// [k]: the trained values at those indices.
    pub delta: ParamId,
    pub out_features: usize,
    pub in_features: usize,
}

impl SparseMaskLayer {
    /// `weight` with `sign`·δ added at the indices, in the weight's dtype.
    fn add_to(&self, weight: &Tensor, store: &ParamStore, sign: f64) -> Result<Tensor> {
        let d = (store.get(self.delta).value().to_dtype(weight.dtype())? * sign)?;
        let idx = store.get(self.indices).value();
        Ok(weight.flatten_all()?.index_add(&idx, &d, 0)?.reshape(weight.shape())?)
    }
}

impl AdapterLayer for SparseMaskLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.delta]
    }

    fn buffers(&self) -> Vec<ParamId> {
        vec![self.indices]
    }

    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let d = ctx.param(self.delta);
        let dt = result.dtype();
        let y = ops::sparse_add(&result.to_dtype(d.dtype())?, &x.to_dtype(d.dtype())?, &d, &ctx.param(self.indices))?;
        Ok(y.to_dtype(dt)?)
    }

    /// Saved indices must be distinct flat positions inside the weight: index_add would
    /// otherwise fail mid-forward (CPU) or write out of bounds (a GPU kernel need not check).
    fn check_loaded(&self, store: &ParamStore, file: &Path) -> Result<()> {
        let numel = (self.out_features * self.in_features) as i64;
        let mut idx = store.get(self.indices).value().to_dtype(DType::I64)?.to_vec1::<i64>()?;
        idx.sort_unstable();
        let bad = idx
            .iter()
            .find(|&&i| i < 0 || i >= numel)
            .map(|i| format!("index {i}"))
            .or_else(|| idx.windows(2).find(|w| w[0] == w[1]).map(|w| format!("index {} twice", w[0])));
        match bad {
            None => Ok(()),
            Some(found) => Err(Error::Adapter {
                file: file.into(),
                message: format!(
                    "`{}`: sparse_indices must be distinct flat indices in [0, {numel}) of the {} x {} weight; found {found}",
                    self.path, self.out_features, self.in_features
                ),
            }),
        }
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.add_to(weight, store, 1.0)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.add_to(weight, store, -1.0)
    }
}
