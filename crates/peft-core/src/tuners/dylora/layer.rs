//! One DyLoRA layer (Valipour et al., EACL 2023, §3.2): LoRA's factors A [r, in] and
//! B [out, r], run at a rank b ≤ r by truncation,
//!   W_dw↓b = W_dw[:b, :],  W_up↓b = W_up[:, :b]            (eqs. 4–5; W_dw = A, W_up = B)
//!   h = W₀x + (α / b) · W_up↓b W_dw↓b x                       (eq. 6)
//! with b ~ p_B, uniform over {r_min, …, r}, drawn once per training step (Algorithm 1) and
//! shared by every layer of the adapter; outside training b is `eval_rank`. The matmuls
//! and dropout are LoRA's (`lora::layer::low_rank_forward`, `delta_weight`).
use super::config::{DyLoraConfig, UpdateMode};
use crate::error::Result;
use crate::model::{Ctx, Linear};
use crate::model::{ParamId, ParamStore};
use crate::tuners::lora::layer::{delta_weight, low_rank_forward};
use crate::tuners::AdapterLayer;
use candle_core::Tensor;
use rand::Rng;

#[derive(Debug, Clone)]
pub struct DyLoraLayer {
    pub adapter: String,
    pub a: ParamId,
    pub b: ParamId,
    pub r: usize,
    pub r_min: usize,
    pub eval_rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub update_mode: UpdateMode,
}

impl DyLoraLayer {
    pub fn new(c: &DyLoraConfig, adapter: &str, a: ParamId, b: ParamId) -> Self {
        DyLoraLayer {
            adapter: adapter.to_string(),
            a,
            b,
            r: c.r,
            r_min: c.r_min,
            eval_rank: c.eval_rank,
            alpha: c.lora_alpha,
            dropout: c.lora_dropout,
            update_mode: c.update_mode,
        }
    }

    /// The rank of this forward pass: in training b ~ U{r_min, …, r} from the forward's
    /// seeded generator, drawn by the first layer and read by the others (one b per step,
    /// as in the paper); otherwise `eval_rank`.
    pub fn rank(&self, ctx: &Ctx) -> usize {
        if !ctx.training {
            return self.eval_rank;
        }
        let (lo, hi) = (self.r_min as u64, self.r as u64);
        ctx.draw_once(&format!("dylora/{}", self.adapter), |rng| rng.random_range(lo..=hi)) as usize
    }

    /// (A↓b, B↓b) at rank `b`. `frozen`: the paper's frozen mode, rows/columns below b
    /// detached so that only the b-th receives gradient (all ≤ r_min at b = r_min).
    pub fn truncated(a: &Tensor, b_factor: &Tensor, b: usize, frozen_below: usize) -> Result<(Tensor, Tensor)> {
        let cut = |t: &Tensor, dim: usize| -> Result<Tensor> {
            if frozen_below == 0 {
                return Ok(t.narrow(dim, 0, b)?.contiguous()?);
            }
            let fixed = t.narrow(dim, 0, frozen_below)?.detach();
            let live = t.narrow(dim, frozen_below, b - frozen_below)?;
            Ok(Tensor::cat(&[&fixed, &live], dim)?)
        };
        Ok((cut(a, 0)?, cut(b_factor, 1)?))
    }

    /// How many leading ranks enter detached at rank `b` in this pass.
    fn frozen_below(&self, b: usize, ctx: &Ctx) -> usize {
        let frozen = ctx.training && self.update_mode == UpdateMode::Frozen && b > self.r_min;
        if frozen {
            b - 1
        } else {
            0
        }
    }

    /// α/b · B↓b A↓b at `eval_rank`: the weight a merge adds.
    pub fn delta_weight(&self, store: &ParamStore) -> Result<Tensor> {
        let e = self.eval_rank;
        let (a, b) = Self::truncated(&store.get(self.a).value(), &store.get(self.b).value(), e, 0)?;
        delta_weight(&a, &b, self.alpha / e as f64)
    }

    fn shifted(&self, weight: &Tensor, store: &ParamStore, sign: f64) -> Result<Tensor> {
        let delta = (self.delta_weight(store)? * sign)?;
        Ok((weight.to_dtype(delta.dtype())? + delta)?.to_dtype(weight.dtype())?)
    }
}

impl AdapterLayer for DyLoraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.a, self.b]
    }

    /// Eq. 6 with the scaling α/b of the rank in use.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let b = self.rank(ctx);
        let (a, b_up) = Self::truncated(&ctx.param(self.a), &ctx.param(self.b), b, self.frozen_below(b, ctx))?;
        low_rank_forward(x, result, &a, &b_up, self.alpha / b as f64, self.dropout, ctx)
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.shifted(weight, store, 1.0)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.shifted(weight, store, -1.0)
    }
}
