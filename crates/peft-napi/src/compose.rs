//! Combining adapters on a model handle: PEFT's `add_weighted_adapter`, LoRAHub's
//! element-wise composition, and the inference-mode loss its search evaluates.
use crate::batch::BatchInput;
use crate::error::{invalid, Result};
use crate::job::{NumberJob, WarningsJob};
use crate::model::{with_model, with_model_mut, NativeModel};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use peft_core::model::loss;
use peft_core::tuners::lora::WeightedOptions;

/// `add_weighted_adapter`'s keyword arguments (camelCase; defaults as PEFT's).
#[napi(object)]
pub struct WeightedAdapterOptions {
    pub combination_type: Option<String>,
    pub svd_rank: Option<u32>,
    pub svd_clamp: Option<f64>,
    pub svd_full_matrices: Option<bool>,
    pub density: Option<f64>,
    pub majority_sign_method: Option<String>,
    /// Seeds DARE's random masks (default 0).
    pub seed: Option<i64>,
}

#[napi]
impl NativeModel {
    /// Adds adapter `name`, the weighted combination of `adapters`; returns warnings.
    #[napi(ts_return_type = "Promise<Array<NativeWarning>>")]
    pub fn add_weighted_adapter(
        &self,
        adapters: Vec<String>,
        weights: Vec<f64>,
        name: String,
        options: Option<WeightedAdapterOptions>,
    ) -> Result<AsyncTask<WarningsJob>> {
        let d = WeightedOptions::default();
        let o = options.unwrap_or(WeightedAdapterOptions {
            combination_type: None,
            svd_rank: None,
            svd_clamp: None,
            svd_full_matrices: None,
            density: None,
            majority_sign_method: None,
            seed: None,
        });
        let seed = o.seed.unwrap_or(0);
        if seed < 0 {
            return Err(invalid("seed", "a non-negative integer", seed));
        }
        let opts = WeightedOptions {
            combination_type: o.combination_type.unwrap_or(d.combination_type),
            svd_rank: o.svd_rank.map(|r| r as usize),
            svd_clamp: o.svd_clamp,
            svd_full_matrices: o.svd_full_matrices.unwrap_or(d.svd_full_matrices),
            density: o.density,
            majority_sign_method: o.majority_sign_method.unwrap_or(d.majority_sign_method),
            seed: seed as u64,
        };
        let shared = self.inner.clone();
        Ok(WarningsJob::spawn(move || {
            with_model_mut(&shared, |m| {
                let names: Vec<&str> = adapters.iter().map(String::as_str).collect();
                m.tuners.add_weighted_adapter(&mut m.llama, &names, &weights, &name, &opts)
            })
        }))
    }

    /// Sets adapter `name` to LoRAHub's composition A = Σ wᵢAᵢ, B = Σ wᵢBᵢ (added on the
    /// first call); returns warnings.
    #[napi(ts_return_type = "Promise<Array<NativeWarning>>")]
    pub fn compose_lorahub(&self, adapters: Vec<String>, weights: Vec<f64>, name: String) -> Result<AsyncTask<WarningsJob>> {
        let shared = self.inner.clone();
        Ok(WarningsJob::spawn(move || {
            with_model_mut(&shared, |m| {
                let names: Vec<&str> = adapters.iter().map(String::as_str).collect();
                m.tuners.compose_lorahub(&mut m.llama, &names, &weights, &name)
            })
        }))
    }

    /// The mean causal-LM loss of a batch in inference mode: no graph, no dropout.
    #[napi(ts_return_type = "Promise<number>")]
    pub fn inference_loss(&self, input: BatchInput) -> Result<AsyncTask<NumberJob>> {
        let (input, labels) = input.to_labelled("")?;
        let shared = self.inner.clone();
        Ok(NumberJob::spawn(move || {
            with_model(&shared, |m| {
                let ctx = peft_core::tuners::WithTuners::with_tuners(peft_core::model::Ctx::inference(&m.llama.store), &m.tuners);
                let logits = m.llama.forward(&input, &ctx, None, false)?;
                let l = loss::causal_lm_loss(&logits, &labels)?;
                Ok(l.to_dtype(candle_core::DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
            })
        }))
    }
}
