//! What LoHa and LoKr share, after PEFT 0.21 `tuners/lycoris_utils.py` (`LycorisConfig`,
//! `LycorisLayer`) and the `forward`/`get_delta_weight` both layers repeat: the adapter is a
//! weight delta ΔW = f(params) · alpha/r added as `x ΔWᵀ`, with two training-only
//! regularisers: module dropout (skip the adapter for a whole step with probability p) and
//! rank dropout (zero whole output rows of ΔW).
use super::fields::Fields;
use crate::error::Result;
use crate::model::linear::linear;
use crate::model::{Ctx, Linear};
use crate::model::{ParamId, ParamStore};
use crate::tuners::AdapterLayer;
use candle_core::{DType, Tensor};
use rand::Rng;
use serde_json::Value;

/// The numeric fields of a `LycorisConfig` subclass.
#[derive(Debug, Clone)]
pub struct LycorisFields {
    pub r: usize,
    pub alpha: f64,
    pub rank_dropout: f64,
    pub module_dropout: f64,
    /// In the config's order: PEFT takes the first pattern that matches (`get_pattern_key`).
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
}

impl LycorisFields {
    pub fn parse(f: &Fields, raw: Option<&str>) -> Result<Self> {
        let r = f.positive("r", "the rank")?;
        let alpha = f.num("alpha")?;
        let rank_dropout = f.prob("rank_dropout")?;
        let module_dropout = f.prob("module_dropout")?;
        let rank_pattern =
            f.patterns("rank_pattern", raw, |v| v.as_u64().filter(|&r| r > 0).map(|r| r as usize), "positive integer ranks")?;
        let alpha_pattern = f.patterns("alpha_pattern", raw, Value::as_f64, "numbers")?;
        f.bool("use_effective_conv2d")?; // Conv layers only: kept, unused on linears
        Ok(LycorisFields { r, alpha, rank_dropout, module_dropout, rank_pattern, alpha_pattern })
    }

    /// Rank and alpha of the module at `path` (`_create_and_replace`: rank_pattern/alpha_pattern).
    pub fn rank_alpha(&self, f: &Fields, path: &str) -> Result<(usize, f64)> {
        Ok((f.pick(&self.rank_pattern, path, "rank_pattern", self.r)?, f.pick(&self.alpha_pattern, path, "alpha_pattern", self.alpha)?))
    }
}

/// A method's ΔW (unscaled) from its parameters, as they enter the graph.
pub trait DeltaWeight: Send + Sync + std::fmt::Debug {
    fn delta(&self, params: &[Tensor]) -> Result<Tensor>;
}

#[derive(Debug)]
pub struct LycorisLayer<D: DeltaWeight> {
    pub adapter: String,
    pub params: Vec<ParamId>,
    pub delta: D,
    /// alpha / r (`LycorisLayer.update_layer`).
    pub scaling: f64,
    pub rank_dropout: f64,
    /// Divide the kept rows by their share (LoHa always; LoKr with `rank_dropout_scale`).
    pub rank_dropout_scale: bool,
    pub module_dropout: f64,
}

impl<D: DeltaWeight> LycorisLayer<D> {
    /// `get_delta_weight`: f(params) · scaling, in the adapter dtype.
    pub fn delta_weight(&self, params: &[Tensor]) -> Result<Tensor> {
        Ok((self.delta.delta(params)? * self.scaling)?)
    }

    fn merged(&self, weight: &Tensor, store: &ParamStore, sign: f64) -> Result<Tensor> {
        let values: Vec<Tensor> = self.params.iter().map(|&id| store.get(id).value().clone()).collect();
        let delta = self.delta_weight(&values)?.to_dtype(DType::F64)?;
        Ok((weight.to_dtype(DType::F64)? + (delta * sign)?)?.to_dtype(weight.dtype())?)
    }
}

impl<D: DeltaWeight + 'static> AdapterLayer for LycorisLayer<D> {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        self.params.clone()
    }

    /// `forward`: in training the adapter is skipped when `torch.rand(1) <= module_dropout`;
    /// otherwise `result + x ΔWᵀ`, where in training rank dropout keeps each output row of ΔW
    /// when `rand > rank_dropout` (then divides by the kept share when scaling).
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let params: Vec<Tensor> = self.params.iter().map(|&id| ctx.param(id)).collect();
        let dt = params[0].dtype();
        let mut keep_rows = None;
        if ctx.training && (self.module_dropout > 0.0 || self.rank_dropout > 0.0) {
            let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
            if self.module_dropout > 0.0 && rng.random::<f64>() <= self.module_dropout {
                return Ok(result);
            }
            if self.rank_dropout > 0.0 {
                let out = result.dim(candle_core::D::Minus1)?;
                let mut mask: Vec<f64> = (0..out).map(|_| f64::from(u8::from(rng.random::<f64>() > self.rank_dropout))).collect();
                if self.rank_dropout_scale {
                    let mean = mask.iter().sum::<f64>() / out as f64;
                    mask.iter_mut().for_each(|m| *m /= mean); // all dropped: NaN, as PEFT's 0/0
                }
                keep_rows = Some(Tensor::from_vec(mask, (out, 1), x.device())?.to_dtype(dt)?);
            }
        }
        let mut w = self.delta_weight(&params)?;
        if let Some(mask) = keep_rows {
            w = w.broadcast_mul(&mask)?;
        }
        let out_dtype = result.dtype();
        Ok((result.to_dtype(dt)? + linear(&x.to_dtype(dt)?, &w, None)?)?.to_dtype(out_dtype)?)
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.merged(weight, store, 1.0)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.merged(weight, store, -1.0)
    }
}
