//! transformers' causal-LM loss: logits[:, :-1] against labels[:, 1:], labels of -100
//! ignored, mean over the counted tokens.
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
    // Every position's logits row, its target the next label; the last position of each
    // sequence has none (weight 0, skipped by the fused kernel). Reading the contiguous
    // logits whole avoids copying logits[:, :-1] (b·(t-1)·vocab floats) and, in the
    // backward, padding that copy's gradient back out to [b, t, vocab].
    let (shifted, weights_shifted, count) = shifted_targets(labels, v, logits.device())?;
    let pad = Tensor::zeros((b, 1), shifted.dtype(), logits.device())?;
    let targets = Tensor::cat(&[&shifted.reshape((b, t - 1))?, &pad], 1)?.flatten_all()?;
    let wpad = Tensor::zeros((b, 1), weights_shifted.dtype(), logits.device())?;
    let weights = Tensor::cat(&[&weights_shifted.reshape((b, t - 1))?, &wpad], 1)?.flatten_all()?;
    Ok((ops::cross_entropy_sum(&logits.reshape((b * t, v))?, &targets, &weights)?, count))
}

/// Mean loss over counted tokens (NaN when none are counted, as transformers gives).
pub fn causal_lm_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<Tensor> {
    let (sum, count) = causal_lm_loss_sum(logits, labels)?;
    Ok((sum / count as f64)?)
}
