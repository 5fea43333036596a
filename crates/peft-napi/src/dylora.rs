//! DyLoRA on a model handle: the rank an adapter runs at outside training.
use crate::error::Result;
use crate::model::{with_model_mut, NativeModel};
use napi_derive::napi;

#[napi]
impl NativeModel {
    /// Sets the evaluation/generation/merge rank (`eval_rank`) of DyLoRA adapter `name`.
    #[napi]
    pub fn set_dylora_rank(&self, name: String, rank: u32) -> Result<()> {
        with_model_mut(&self.inner, |m| m.tuners.set_dylora_rank(&name, rank as usize))
    }
}
