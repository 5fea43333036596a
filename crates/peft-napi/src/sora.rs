//! SoRA's proximal gate step on a model handle (Ding et al. 2023, eq. 5), run by the Trainer
//! after each optimizer step, as AdaLoRA's `updateAndAllocate`.
use crate::error::Result;
use crate::model::{with_model, NativeModel};
use napi_derive::napi;
use peft_core::tuners::sora::proximal_step;

/// One SoRA adapter's gates after a proximal step.
#[napi(object)]
pub struct SoraRank {
    pub adapter: String,
    /// Gates still non-zero (the ranks the training keeps).
    pub kept: u32,
    pub total: u32,
}

#[napi]
impl NativeModel {
    /// Soft-thresholds the gates of every active, trainable SoRA adapter by `lr` · sparse_lambda.
    /// Empty when no SoRA adapter is active.
    #[napi]
    pub fn sora_proximal_step(&self, lr: f64) -> Result<Vec<SoraRank>> {
        with_model(&self.inner, |m| {
            let kept = proximal_step(&m.llama, &m.tuners, lr)?;
            Ok(kept.into_iter().map(|(adapter, kept, total)| SoraRank { adapter, kept: kept as u32, total: total as u32 }).collect())
        })
    }
}
