//! The methods' procedures between optimizer steps on a model handle (the core's
//! `ModelState::before_step` / `after_step`, `state/steps.rs`): arguments and reports
//! converted, nothing decided here. The per-method calls at the end are the older API, kept
//! for callers of `PeftModel.soraProximalStep` etc. (deprecated: `afterStep` runs them all).
use crate::batch::BatchInput;
use crate::error::{invalid, to_js_warnings, NativeWarning, Result};
use crate::job::StepReportJob;
use crate::model::{with_model, with_model_mut, NativeModel};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use peft_core::state::{Kept, StepContext, StepReport};
use peft_core::tuners::sparse_mask::FisherBatch;
use peft_core::tuners::{far, fish_dip, lt_sft, periodic_lora, sora};

/// `afterStep`'s argument: the optimizer step just taken (0-based), its learning rate, and the
/// seed of what the procedures draw.
#[napi(object)]
pub struct NativeStepContext {
    pub step: i64,
    pub lr: f64,
    pub seed: i64,
}

/// One adapter's entries a procedure kept (SoRA: gates; FAR: FFN nodes; masks: entries), and in all.
#[napi(object)]
pub struct KeptCount {
    pub adapter: String,
    pub kept: u32,
    pub total: u32,
}

/// One PeriodicLoRA adapter restarted: the stage that ended (1-based).
#[napi(object)]
pub struct PeriodicStage {
    pub adapter: String,
    pub stage: u32,
}

/// What the procedures of one step did (the core's `StepReport`).
#[napi(object)]
pub struct NativeStepReport {
    /// AdaLoRA: the rank budget its allocation applied; absent when none was made.
    pub adalora_budget: Option<u32>,
    pub sora_ranks: Vec<KeptCount>,
    pub periodic_stages: Vec<PeriodicStage>,
    /// Parameters redrawn by a procedure: their optimizer state must be reset.
    pub reset_state: Vec<String>,
    pub mask_updates: Vec<KeptCount>,
}

fn counts(v: impl IntoIterator<Item = Kept>) -> Vec<KeptCount> {
    v.into_iter().map(|k| KeptCount { adapter: k.adapter, kept: k.kept as u32, total: k.total as u32 }).collect()
}

fn tuples(v: Vec<(String, usize, usize)>) -> Vec<KeptCount> {
    counts(v.into_iter().map(|(adapter, kept, total)| Kept { adapter, kept, total }))
}

pub fn to_js_report(r: StepReport) -> NativeStepReport {
    NativeStepReport {
        adalora_budget: r.adalora_budget.map(|b| b as u32),
        sora_ranks: counts(r.sora_ranks),
        periodic_stages: r.periodic_stages.into_iter().map(|(adapter, stage)| PeriodicStage { adapter, stage: stage as u32 }).collect(),
        reset_state: r.reset_state,
        mask_updates: counts(r.mask_updates),
    }
}

fn step_arg(name: &str, step: i64) -> Result<u64> {
    u64::try_from(step).map_err(|_| invalid(name, "an integer >= 0", step))
}

fn fisher_batches(batches: &[BatchInput]) -> Result<Vec<FisherBatch>> {
    batches.iter().enumerate().map(|(i, b)| b.to_fisher(i)).collect()
}

#[napi]
impl NativeModel {
    /// After each optimizer step, before the gradients are cleared: every active method's
    /// procedure (AdaLoRA's allocation, SoRA's proximal step, PeriodicLoRA's restart, FAR's and
    /// LT-SFT's masks, in that order). Resolves to what they did.
    #[napi]
    pub fn after_step(&self, context: NativeStepContext) -> Result<AsyncTask<StepReportJob>> {
        let ctx = StepContext { step: step_arg("step", context.step)?, lr: context.lr, seed: context.seed as u64 };
        let shared = self.inner.clone();
        Ok(StepReportJob::spawn(move || with_model_mut(&shared, |m| m.after_step(&ctx))))
    }

    /// Before the forward of step `step` (0-based): Fish-Dip's mask update from `batches`
    /// where one is due. Resolves to what ran.
    #[napi]
    pub fn before_step(&self, step: i64, batches: Vec<BatchInput>) -> Result<AsyncTask<StepReportJob>> {
        let step = step_arg("step", step)?;
        let batches = fisher_batches(&batches)?;
        let shared = self.inner.clone();
        Ok(StepReportJob::spawn(move || with_model(&shared, |m| m.before_step(step, &batches))))
    }

    /// Warnings about the active methods' schedules for a run of `total_steps` optimizer steps.
    #[napi]
    pub fn check_schedule(&self, total_steps: i64) -> Result<Vec<NativeWarning>> {
        let total = step_arg("totalSteps", total_steps)?;
        Ok(to_js_warnings(with_model(&self.inner, |m| Ok(m.check_schedule(total)))?))
    }

    /// SoRA's proximal step alone: soft-thresholds the gates of every active, trainable SoRA
    /// adapter by `lr` · sparse_lambda. Empty when no SoRA adapter is active.
    #[napi]
    pub fn sora_proximal_step(&self, lr: f64) -> Result<Vec<KeptCount>> {
        with_model(&self.inner, |m| Ok(tuples(sora::proximal_step(&m.llama, &m.tuners, lr)?)))
    }

    /// After `steps_done` optimizer steps: FAR's node selection when its priming ends now, and
    /// LT-SFT's lottery step when its full fine-tuning ends now. Empty when neither is due.
    #[napi]
    pub fn mask_procedure_step(&self, steps_done: u32) -> Result<Vec<KeptCount>> {
        with_model(&self.inner, |m| {
            let mut out = far::select_nodes(&m.llama, &m.tuners, steps_done as usize)?;
            out.extend(lt_sft::lottery_step(&m.llama, &m.tuners, steps_done as usize)?);
            Ok(tuples(out))
        })
    }

    /// Before step `step` (0-based): Fish-Dip's mask from the Fisher scores on `batches`, for
    /// every active Fish-Dip adapter due at this step. Empty when none is due.
    #[napi]
    pub fn fish_dip_update(&self, step: u32, batches: Vec<BatchInput>) -> Result<Vec<KeptCount>> {
        let batches = fisher_batches(&batches)?;
        with_model(&self.inner, |m| {
            if !fish_dip::due(&m.tuners, step as usize)? {
                return Ok(Vec::new());
            }
            Ok(tuples(fish_dip::update_masks(&m.llama, &m.tuners, step as usize, &batches)?))
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
