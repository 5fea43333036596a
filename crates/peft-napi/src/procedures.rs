//! Training procedures of the survey methods on a model handle, run by the Trainer as SoRA's
//! proximal step: FAR's node selection, LT-SFT's lottery step and PeriodicLoRA's restart after
//! an optimizer step, and Fish-Dip's Fisher mask before the step's forward.
use crate::batch::BatchInput;
use crate::error::Result;
use crate::model::{with_model, NativeModel};
use napi_derive::napi;
use peft_core::tuners::{far, fish_dip, lt_sft, periodic_lora};

/// One adapter's mask after a procedure rewrote it.
#[napi(object)]
pub struct MaskUpdate {
    pub adapter: String,
    /// Entries (FAR: FFN nodes) the mask keeps, and in all.
    pub kept: u32,
    pub total: u32,
}

fn updates(v: Vec<(String, usize, usize)>) -> Vec<MaskUpdate> {
    v.into_iter().map(|(adapter, kept, total)| MaskUpdate { adapter, kept: kept as u32, total: total as u32 }).collect()
}

#[napi]
impl NativeModel {
    /// After `steps_done` optimizer steps: FAR's node selection when its priming ends now, and
    /// LT-SFT's lottery step when its full fine-tuning ends now. Empty when neither is due.
    #[napi]
    pub fn mask_procedure_step(&self, steps_done: u32) -> Result<Vec<MaskUpdate>> {
        with_model(&self.inner, |m| {
            let mut out = far::select_nodes(&m.llama, &m.tuners, steps_done as usize)?;
            out.extend(lt_sft::lottery_step(&m.llama, &m.tuners, steps_done as usize)?);
            Ok(updates(out))
        })
    }

    /// Before step `step` (0-based): Fish-Dip's mask from the Fisher scores on `batches`, for
    /// every active Fish-Dip adapter due at this step. Empty when none is due.
    #[napi]
    pub fn fish_dip_update(&self, step: u32, batches: Vec<BatchInput>) -> Result<Vec<MaskUpdate>> {
        let batches = batches.iter().enumerate().map(|(i, b)| b.to_fisher(i)).collect::<Result<Vec<_>>>()?;
        with_model(&self.inner, |m| {
            if !fish_dip::due(&m.tuners, step as usize)? {
                return Ok(Vec::new());
            }
            Ok(updates(fish_dip::update_masks(&m.llama, &m.tuners, step as usize, &batches)?))
        })
    }

    /// After `steps_done` optimizer steps: every active PeriodicLoRA adapter whose stage ends now
    /// unloads its update into its merged buffer and restarts its factors (drawn from `seed`).
    #[napi]
    pub fn periodic_lora_restart(&self, steps_done: u32, seed: u32) -> Result<Vec<PeriodicRestart>> {
        with_model(&self.inner, |m| {
            let r = periodic_lora::restart(&m.llama, &m.tuners, steps_done as usize, seed as u64)?;
            Ok(r.into_iter().map(|(adapter, stage, reset)| PeriodicRestart { adapter, stage: stage as u32, reset }).collect())
        })
    }
}

/// One PeriodicLoRA adapter restarted: the stage that ended (1-based) and the parameters reset.
#[napi(object)]
pub struct PeriodicRestart {
    pub adapter: String,
    pub stage: u32,
    pub reset: Vec<String>,
}
