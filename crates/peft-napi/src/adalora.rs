//! AdaLoRA's rank allocation on a model handle (PEFT's `AdaLoraModel.update_and_allocate`).
//! The allocator's importance EMAs live in the model state, one per adapter name, and are
//! rebuilt when the adapter of that name is no longer the one they scored.
use crate::error::Result;
use crate::job::OptionalNumberJob;
use crate::model::{with_model_mut, ModelState, NativeModel};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use peft_core::tuners::adalora::{AdaLoraConfig, RankAllocator};
use peft_core::Error;

/// The one active adapter, which must be AdaLoRA (PEFT allows one trainable AdaLoRA adapter).
fn active_adalora(m: &ModelState) -> peft_core::Result<String> {
    let active = m.tuners.active();
    let [name] = active else {
        return Err(Error::arg("active adapters", "exactly one active AdaLoRA adapter for updateAndAllocate", format!("{active:?}")));
    };
    let config = m.tuners.config(name)?;
    if config.as_any().downcast_ref::<AdaLoraConfig>().is_none() {
        let found = format!("`{name}` ({})", config.peft_type());
        return Err(Error::arg("active adapter", "an AdaLoRA adapter (updateAndAllocate is AdaLoRA's rank allocation)", found));
    }
    if m.tuners.is_merged() {
        return Err(Error::Unsupported("updateAndAllocate: the adapters are merged; unmerge them before training".into()));
    }
    Ok(name.clone())
}

#[napi]
impl NativeModel {
    /// `update_and_allocate(global_step)` for the active AdaLoRA adapter: call it after the
    /// optimizer step and before the gradients are cleared (it scores parameters by
    /// |weight · gradient|). Resolves to the rank budget applied at this step, or null when
    /// the schedule made no allocation; the allocation is recorded as the config's rank_pattern.
    #[napi(ts_return_type = "Promise<number | null>")]
    pub fn update_and_allocate(&self, global_step: i64) -> Result<AsyncTask<OptionalNumberJob>> {
        let step = u64::try_from(global_step).map_err(|_| crate::error::invalid("globalStep", "an integer >= 0", global_step))?;
        let shared = self.inner.clone();
        Ok(OptionalNumberJob::spawn(move || {
            with_model_mut(&shared, |m| {
                let name = active_adalora(m)?;
                if !m.allocators.get(&name).is_some_and(|a| a.is_current(&m.llama)) {
                    let fresh = RankAllocator::new(&m.tuners, &m.llama, &name)?;
                    m.allocators.insert(name.clone(), fresh);
                }
                let alloc = m.allocators.get_mut(&name).ok_or_else(|| Error::arg("adapter", "an allocator", &name))?;
                Ok(alloc.update_and_allocate(&mut m.tuners, &m.llama, step)?.map(|b| b as f64))
            })
        }))
    }
}
