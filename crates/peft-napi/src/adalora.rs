//! AdaLoRA's rank allocation on a model handle (PEFT's `AdaLoraModel.update_and_allocate`),
//! kept with the model state in the core; `afterStep` (`procedures.rs`) runs it with the
//! other methods' procedures.
use crate::error::Result;
use crate::job::OptionalNumberJob;
use crate::model::{with_model_mut, NativeModel};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;

fn step_arg(global_step: i64) -> Result<u64> {
    u64::try_from(global_step).map_err(|_| crate::error::invalid("globalStep", "an integer >= 0", global_step))
}

#[napi]
impl NativeModel {
    /// `update_and_allocate(global_step)` for the active AdaLoRA adapter: call it after the
    /// optimizer step and before the gradients are cleared (it scores parameters by
    /// |weight · gradient|). Resolves to the rank budget applied at this step, or null when
    /// the schedule made no allocation; the allocation is recorded as the config's rank_pattern.
    #[napi(ts_return_type = "Promise<number | null>")]
    pub fn update_and_allocate(&self, global_step: i64) -> Result<AsyncTask<OptionalNumberJob>> {
        let step = step_arg(global_step)?;
        let shared = self.inner.clone();
        Ok(OptionalNumberJob::spawn(move || with_model_mut(&shared, |m| Ok(m.update_and_allocate(step)?.map(|b| b as f64)))))
    }
}
