//! Sparse masks on a model handle: the Fisher estimate that chooses a "fisher" mask, and
//! adding a SPARSE_MASK adapter with those scores. The scores stay native (one tensor per
//! targeted weight), passed to the adapter by handle.
use crate::batch::BatchInput;
use crate::error::{closed, Result};
use crate::job::{FisherJob, WarningsJob};
use crate::model::{with_model_mut, NativeModel};
use crate::tensor::NativeTensor;
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use peft_core::tuners::sparse_mask::{
    estimate_fisher_until, fisher_targets, inject_with_fisher, FisherBatch, FisherScores, MaskType, SparseMaskConfig,
};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Empirical Fisher scores by linear module path (from `estimateFisher`).
#[napi]
pub struct NativeFisherScores {
    scores: Mutex<Option<Arc<FisherScores>>>,
    warnings: Vec<peft_core::Warning>,
}

impl NativeFisherScores {
    fn scores(&self) -> Result<Arc<FisherScores>> {
        self.scores.lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(|| closed("FisherScores"))
    }
}

#[napi]
impl NativeFisherScores {
    /// The module paths scored, sorted.
    #[napi(getter)]
    pub fn modules(&self) -> Result<Vec<String>> {
        let mut m: Vec<String> = self.scores()?.keys().cloned().collect();
        m.sort();
        Ok(m)
    }

    /// Frees the scores now (adapters already built from them keep only their indices).
    #[napi]
    pub fn dispose(&self) {
        self.scores.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Warnings about the options (unknown fields).
    #[napi(getter)]
    pub fn warnings(&self) -> Vec<crate::error::NativeWarning> {
        crate::error::to_js_warnings(self.warnings.clone())
    }

    /// The scores [out, in] of one module, or null when it was not scored.
    #[napi]
    pub fn get(&self, module: String) -> Result<Option<NativeTensor>> {
        Ok(self.scores()?.get(&module).map(|t| NativeTensor::new(t.clone(), None)))
    }
}

#[napi]
impl NativeModel {
    /// Fisher scores of the linears `options_json` targets (snake_case targeting fields),
    /// from the base model's gradients on `batches`.
    #[napi(ts_return_type = "Promise<NativeFisherScores>")]
    pub fn estimate_fisher(&self, env: napi::Env, options_json: String, batches: Vec<BatchInput>) -> Result<AsyncTask<FisherJob>> {
        let batches: Vec<FisherBatch> = batches.iter().enumerate().map(|(i, b)| b.to_fisher(i)).collect::<Result<_>>()?;
        let shared = self.inner.clone();
        // One forward + backward per batch: an exiting process stops it between batches.
        let exiting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        crate::cancel::register(&env, &exiting);
        Ok(FisherJob::spawn(move || {
            with_model_mut(&shared, |m| {
                let value: serde_json::Value =
                    serde_json::from_str(&options_json).map_err(|e| peft_core::Error::arg("options", "a JSON object", e))?;
                let source = Path::new("(estimateFisher options)");
                let (spec, warnings) = fisher_targets(&value, source)?;
                let cancelled = || exiting.load(std::sync::atomic::Ordering::SeqCst);
                let scores = estimate_fisher_until(&mut m.llama, &spec, &batches, source, &cancelled)?;
                Ok(NativeFisherScores { scores: Mutex::new(Some(Arc::new(scores))), warnings })
            })
        }))
    }

    /// `add_adapter` for a SPARSE_MASK config whose mask is chosen from `fisher`.
    #[napi(ts_return_type = "Promise<Array<NativeWarning>>")]
    pub fn add_sparse_mask_adapter(
        &self,
        name: String,
        config_json: String,
        seed: i64,
        fisher: &NativeFisherScores,
    ) -> Result<AsyncTask<WarningsJob>> {
        let shared = self.inner.clone();
        let scores = fisher.scores()?;
        Ok(WarningsJob::spawn(move || {
            with_model_mut(&shared, |m| {
                let value: serde_json::Value =
                    serde_json::from_str(&config_json).map_err(|e| peft_core::Error::arg("config", "a JSON object", e))?;
                let (config, mut warnings) = SparseMaskConfig::from_value(&value, Path::new("(config)"))?;
                if config.mask_type != MaskType::Fisher {
                    warnings.push(peft_core::Warning::new(
                        peft_core::WarningCode::IgnoredField,
                        "mask_type",
                        "the Fisher scores are not used: `mask_type` is not \"fisher\"",
                    ));
                }
                let mut config = config;
                peft_core::tuners::TunerConfig::set_base_model_name_or_path(&mut config, Some(m.source.clone()));
                let report = inject_with_fisher(&mut m.tuners, &mut m.llama, &name, config, scores, seed as u64)?;
                Ok(warnings.into_iter().chain(report.warnings).collect())
            })
        }))
    }
}
