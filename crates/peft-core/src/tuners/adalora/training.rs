//! AdaLoRA inside a training loop: the orthogonal regulariser added to a training forward's
//! loss (PEFT 0.21 `AdaLoraModel.forward`) and the check that a kept `RankAllocator` still
//! belongs to the adapter of its name (it may have been deleted and re-added since).
use super::{orth_regularization, AdaLoraConfig, RankAllocator};
use crate::error::Result;
use crate::model::CausalLm;
use crate::model::Ctx;
use crate::tuners::{param_dict_name, Tuners};
use candle_core::Tensor;

/// `AdaLoraModel.forward`: `outputs.loss += orth_reg_weight * regu_loss` (paper eq. 4) for
/// every active, trainable AdaLoRA adapter (PEFT trains one at a time). Only in training mode
/// (`ctx.training`, PyTorch's `model.train()`), so evaluation losses and perplexities stay
/// the plain cross-entropy; PEFT adds it to any forward with labels. A weight of 0 adds
/// nothing (PEFT refuses 0 with a ValueError; here it switches the term off).
pub fn regularized_loss(loss: Tensor, model: &CausalLm, tuners: &Tuners, ctx: &Ctx) -> Result<Tensor> {
    if !ctx.training || !tuners.is_enabled() {
        return Ok(loss);
    }
    let mut loss = loss;
    for name in tuners.active() {
        let weight = tuners.config(name)?.as_any().downcast_ref::<AdaLoraConfig>().map(|c| c.orth_reg_weight);
        // PEFT regularises the adapter being trained: a frozen AdaLoRA (loaded for inference) adds nothing.
        let trainable = || tuners.params(name).is_ok_and(|ids| ids.iter().any(|id| model.store.get(*id).requires_grad()));
        if weight.is_some_and(|w| w > 0.0) && trainable() {
            let reg = orth_regularization(model, tuners, name, ctx)?.to_dtype(loss.dtype())?.reshape(loss.shape())?;
            loss = (loss + reg)?;
        }
    }
    Ok(loss)
}

impl RankAllocator {
    /// Whether every lora_A/E/B parameter this allocator scores is still the one of that
    /// name in the model (false once the adapter was deleted, reloaded or re-added).
    pub fn is_current(&self, model: &CausalLm) -> bool {
        self.triplets().iter().all(|(path, ids)| {
            ["lora_A", "lora_E", "lora_B"]
                .iter()
                .zip(ids)
                .all(|(attr, id)| model.store.id(&param_dict_name(path, attr, &self.adapter)) == Some(*id))
        })
    }
}
