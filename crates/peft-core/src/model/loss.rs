//! transformers' causal-LM loss: logits[:, :-1] against labels[:, 1:], labels of -100
//! ignored, mean over the counted tokens.
use super::{Batch, CausalLm, Ctx};
use crate::error::{Error, Result};
use crate::ops;
use candle_core::{Device, Tensor};

pub const IGNORE_INDEX: i64 = -100;

/// Shifted targets and weights for `labels` [b][t]: (targets u32 [b*(t-1)], weights, count).
pub fn shifted_targets(labels: &[Vec<i64>], vocab_size: usize, device: &Device) -> Result<(Tensor, Tensor, usize)> {
    let mut targets = Vec::new();
    let mut weights = Vec::new();
    for (r, row) in labels.iter().enumerate() {
        for (c, &l) in row.iter().enumerate().skip(1) {
            if l == IGNORE_INDEX {
                targets.push(0u32);
                weights.push(0f32);
            } else if l < 0 || l as usize >= vocab_size {
                return Err(Error::arg("labels", format!("token ids below {vocab_size}, or -100 to ignore"), format!("{l} at [{r}, {c}]")));
            } else {
                targets.push(l as u32);
                weights.push(1f32);
            }
        }
    }
    let count = weights.iter().filter(|w| **w > 0.0).count();
    let n = targets.len();
    Ok((Tensor::from_vec(targets, n, device)?, Tensor::from_vec(weights, n, device)?, count))
}

/// Sum of the token losses and the number of counted tokens. Dividing by a count taken
/// over several micro-batches gives the correctly normalised accumulated loss.
pub fn causal_lm_loss_sum(logits: &Tensor, labels: &[Vec<i64>]) -> Result<(Tensor, usize)> {
    let (b, t, v) = logits.dims3()?;
    // Every position's logits row, its target the next label; the last position of each
    // sequence has none (weight 0, skipped by the fused kernel). Reading the contiguous
    // logits whole avoids copying logits[:, :-1] (b·(t-1)·vocab floats) and, in the
    // backward, padding that copy's gradient back out to [b, t, vocab].
    let (targets, weights, count) = row_targets(labels, b, t, v, logits.device())?;
    Ok((ops::cross_entropy_sum(&logits.reshape((b * t, v))?, &targets, &weights)?, count))
}

/// Per position of a [b, t] batch, the next label and its weight (0: ignored, or the last
/// position), flattened to [b·t]; and the number of counted tokens.
fn row_targets(labels: &[Vec<i64>], b: usize, t: usize, v: usize, device: &Device) -> Result<(Tensor, Tensor, usize)> {
    // Prompt tuning / p-tuning prepend virtual positions to the logits; PEFT prepends as
    // many -100 labels (`PeftModelForCausalLM.forward`), so labels of the caller's length fit.
    let extended;
    let labels = match labels.first().map(Vec::len) {
        Some(n) if n < t && labels.len() == b && labels.iter().all(|r| r.len() == n) => {
            extended = labels.iter().map(|r| [vec![IGNORE_INDEX; t - n], r.clone()].concat()).collect::<Vec<_>>();
            &extended[..]
        }
        _ => labels,
    };
    if labels.len() != b || labels.iter().any(|r| r.len() != t) {
        return Err(Error::arg("labels", format!("shape [{b}, {t}] (the shape of inputIds)"), format!("{} rows", labels.len())));
    }
    if t < 2 {
        return Err(Error::arg("labels", "sequences of at least 2 tokens", format!("length {t}")));
    }
    let (shifted, weights_shifted, count) = shifted_targets(labels, v, device)?;
    let pad = Tensor::zeros((b, 1), shifted.dtype(), device)?;
    let targets = Tensor::cat(&[&shifted.reshape((b, t - 1))?, &pad], 1)?.flatten_all()?;
    let wpad = Tensor::zeros((b, 1), weights_shifted.dtype(), device)?;
    let weights = Tensor::cat(&[&weights_shifted.reshape((b, t - 1))?, &wpad], 1)?.flatten_all()?;
    Ok((targets, weights, count))
}

impl CausalLm {
    /// The causal-LM loss sum and count of `causal_lm_loss_sum(forward(batch), labels)`,
    /// without the [tokens × vocab] logits: the LM head and the cross-entropy run chunk by
    /// chunk (`ops::linear_cross_entropy_sum`). When something attached changes the LM head
    /// (an adapter on `lm_head`) it falls back to the logits, with the same result.
    pub fn loss_sum(&self, batch: &Batch, ctx: &Ctx, labels: &[Vec<i64>]) -> Result<(Tensor, usize)> {
        self.loss_sum_chunked(batch, ctx, labels, ops::default_chunk_rows(self.config.vocab_size))
    }

    /// `loss_sum` with `chunk_rows` tokens per chunk.
    pub fn loss_sum_chunked(&self, batch: &Batch, ctx: &Ctx, labels: &[Vec<i64>], chunk_rows: usize) -> Result<(Tensor, usize)> {
        let x = self.hidden_states(batch, ctx, None, false)?;
        let weight = match &self.lm_head {
            None => Some(self.embed_tokens),
            Some(head) if head.bias.is_none() && !ctx.hooks.is_some_and(|h| h.changes_linear(&head.path, ctx)) => Some(head.weight),
            Some(_) => None,
        };
        let Some(weight) = weight else { return causal_lm_loss_sum(&self.head(&x, ctx)?, labels) };
        let (b, t, hidden) = x.dims3()?;
        let (targets, weights, count) = row_targets(labels, b, t, self.config.vocab_size, &self.device)?;
        let softcap = self.config.arch.final_logit_softcapping;
        let h = x.reshape((b * t, hidden))?;
        let sum = match ctx.store.get(weight).quantized() {
            // Each chunk dequantizes the whole head tile by tile; larger chunks would do that less
            // often, but measured on the Llama-3.2-1B shape it costs ~4% of a step, and 4× chunks
            // added 300 MB to its 2 GB peak.
            Some(q) => ops::qlinear_cross_entropy_sum(&h, &q, &targets, &weights, softcap, chunk_rows)?,
            None => ops::linear_cross_entropy_sum(&h, &ctx.param(weight), &targets, &weights, softcap, chunk_rows)?,
        };
        Ok((sum, count))
    }
}

/// Mean loss over counted tokens (NaN when none are counted, as transformers gives).
pub fn causal_lm_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<Tensor> {
    let (sum, count) = causal_lm_loss_sum(logits, labels)?;
    Ok((sum / count as f64)?)
}
