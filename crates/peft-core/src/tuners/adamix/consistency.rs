//! AdaMix's consistency regularisation (Wang et al. 2022, §2.3): the same batch through two
//! stochastic routings A and A', and the symmetric KL between their predictions added to the
//! loss, λ/2 · (KL(p_A ‖ p_A') + KL(p_A' ‖ p_A)), averaged over the scored predictions (those
//! whose next-token label is not -100; every position without labels). It keeps the experts
//! close enough for the inference-time average of their weights to stand for them. λ is the
//! config's `consistency_weight` (0: off, no second pass). The second pass draws its routes from
//! a seed taken from the first pass's generator, so a step stays reproducible.
use super::AdaMixConfig;
use crate::error::Result;
use crate::model::{loss, Batch, CausalLm, Ctx};
use crate::tuners::{Tuners, WithTuners};
use candle_core::{Tensor, D};
use rand::Rng;

/// The aux loss's name in `Ctx::aux_losses` and the training metrics.
pub const NAME: &str = "adamix_consistency";

/// The largest `consistency_weight` of the running AdaMix adapters (0 when none).
pub fn weight(tuners: &Tuners) -> f64 {
    if !tuners.is_enabled() {
        return 0.0;
    }
    (tuners.active().iter())
        .filter_map(|n| tuners.config(n).ok()?.as_any().downcast_ref::<AdaMixConfig>())
        .map(|c| c.consistency_weight)
        .fold(0.0, f64::max)
}

/// In a training pass with a weight > 0: runs `batch` again with other routes and records
/// λ/2 · symmetric KL between `logits` (this pass's [b, t, vocab]) and the new ones under `NAME`.
pub fn add_consistency_loss(model: &CausalLm, tuners: &Tuners, batch: &Batch, ctx: &Ctx, logits: &Tensor) -> Result<()> {
    let lambda = weight(tuners);
    if !ctx.training || lambda == 0.0 {
        return Ok(());
    }
    let seed: u64 = ctx.rng.lock().unwrap_or_else(|e| e.into_inner()).random();
    let mut other = Ctx::new(ctx.store, ctx.no_grad).with_tuners(tuners).training(seed);
    other.labels = ctx.labels.clone();
    let again = model.forward(batch, &other, None, false)?;
    ctx.add_aux_loss(NAME, (symmetric_kl(logits, &again, ctx.labels.as_deref())? * (lambda / 2.0))?);
    Ok(())
}

/// Σ_v (p − q)(log p − log q) per prediction, averaged over the scored ones: [] scalar.
pub fn symmetric_kl(a: &Tensor, b: &Tensor, labels: Option<&[Vec<i64>]>) -> Result<Tensor> {
    let (rows, t, _) = a.dims3()?;
    let (lp, lq) = (log_softmax(a)?, log_softmax(b)?);
    let per = ((lp.exp()? - lq.exp()?)? * (&lp - &lq)?)?.sum(D::Minus1)?; // [b, t]
                                                                          // Prediction i is scored when label i + 1 counts (the loss's shift, labels right-aligned
                                                                          // to the logits as the loss takes them); without labels every prediction is.
    let scored = |r: usize, i: usize| match labels {
        Some(l) => (i + 1 + l[r].len()).checked_sub(t).and_then(|j| l[r].get(j)).is_some_and(|&x| x != loss::IGNORE_INDEX),
        None => true,
    };
    let w: Vec<f64> = (0..rows * t).map(|e| f64::from(u8::from(scored(e / t, e % t)))).collect();
    let weights = Tensor::from_vec(w, (rows, t), a.device())?.to_dtype(a.dtype())?;
    let count = weights.sum_all()?.to_dtype(candle_core::DType::F64)?.to_vec0::<f64>()?.max(1.0);
    Ok(((per * weights)?.sum_all()? / count)?)
}

/// log softmax over the last axis from ops that all record a backward.
fn log_softmax(z: &Tensor) -> Result<Tensor> {
    let shifted = z.broadcast_sub(&z.max_keepdim(D::Minus1)?.detach())?;
    Ok(shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?)
}
