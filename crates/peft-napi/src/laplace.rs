//! Laplace-LoRA on a model handle (peft-core `tuners::laplace`): a fit that JS feeds batch by
//! batch (each batch a job off the JS thread, so an AbortSignal stops it between batches), the
//! posterior it ends in, predictions, and the posterior's files.
use crate::batch::{rows, BatchInput};
use crate::error::{closed, invalid, to_js, Result};
use crate::job::{Float32Job, UnitJob};
use crate::model::{with_model, with_model_mut, NativeModel};
use napi::bindgen_prelude::{AsyncTask, Uint32Array, Uint8Array};
use napi_derive::napi;
use peft_core::model::Batch;
use peft_core::tuners::laplace::{io, predict, Curvature, FitOptions, LaplaceFit, LaplacePosterior, PredictMethod, PredictOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    fit: Option<LaplaceFit>,
    posterior: Option<Arc<LaplacePosterior>>,
}

/// A Laplace-LoRA fit in progress, then its posterior.
#[napi]
pub struct NativeLaplace {
    state: Arc<Mutex<State>>,
}

fn lock(s: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl NativeLaplace {
    fn posterior(&self) -> Result<Arc<LaplacePosterior>> {
        lock(&self.state).posterior.clone().ok_or_else(|| closed("the Laplace fit (finish it first)"))
    }
}

#[napi(object)]
pub struct LaplaceSummary {
    pub adapter: String,
    pub prior_precision: f64,
    pub log_marginal_likelihood: f64,
    pub hessian: String,
    pub tokens: u32,
    pub max_factor_side: u32,
    pub factor_rank: u32,
}

#[napi]
impl NativeModel {
    /// Starts a fit over `adapter`'s LoRA matrices (options: hessian, maxFactorSide, factorRank, seed).
    #[napi]
    pub fn laplace_begin(
        &self,
        adapter: String,
        hessian: String,
        max_factor_side: u32,
        factor_rank: u32,
        seed: u32,
    ) -> Result<NativeLaplace> {
        let options = FitOptions {
            curvature: Curvature::parse(&hessian).map_err(to_js)?,
            max_factor_side: max_factor_side as usize,
            factor_rank: factor_rank as usize,
            seed: seed as u64,
        };
        let fit = with_model(&self.inner, |m| LaplaceFit::new(&m.llama, &m.tuners, &adapter, options))?;
        Ok(NativeLaplace { state: Arc::new(Mutex::new(State { fit: Some(fit), posterior: None })) })
    }

    /// Adds batch `index` (a forward and a backward) to the fit.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn laplace_add_batch(&self, fit: &NativeLaplace, index: u32, batch: BatchInput) -> Result<AsyncTask<UnitJob>> {
        let b = batch.to_fisher(index as usize)?;
        let (shared, state) = (self.inner.clone(), fit.state.clone());
        Ok(UnitJob::spawn(move || {
            let mut s = lock(&state);
            let fit = s.fit.as_mut().ok_or_else(|| closed("the Laplace fit (already finished)"))?;
            with_model(&shared, |m| fit.add_batch(&m.llama, &m.tuners, &b.batch, &b.labels).map_err(|e| at_batch(index, e)))
        }))
    }

    /// Ends the fit: the posterior with `prior_precision`, or the one maximising the marginal likelihood.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn laplace_finish(&self, fit: &NativeLaplace, prior_precision: Option<f64>) -> Result<AsyncTask<UnitJob>> {
        let (shared, state) = (self.inner.clone(), fit.state.clone());
        Ok(UnitJob::spawn(move || {
            let mut s = lock(&state);
            let f = s.fit.as_ref().ok_or_else(|| closed("the Laplace fit (already finished)"))?;
            let post = with_model(&shared, |m| LaplacePosterior::from_fit(f, &m.llama, prior_precision))?;
            s.fit = None;
            s.posterior = Some(Arc::new(post));
            Ok(())
        }))
    }

    /// The fitted posterior's numbers.
    #[napi]
    pub fn laplace_summary(&self, fit: &NativeLaplace) -> Result<LaplaceSummary> {
        let p = fit.posterior()?;
        let lml = with_model(&self.inner, |m| p.log_marginal_likelihood(&m.llama, p.prior_precision))?;
        Ok(LaplaceSummary {
            adapter: p.adapter.clone(),
            prior_precision: p.prior_precision,
            log_marginal_likelihood: lml,
            hessian: p.hessian.clone(),
            tokens: p.tokens as u32,
            max_factor_side: p.max_factor_side as u32,
            factor_rank: p.factor_rank as u32,
        })
    }

    /// Probabilities [positions, width] then, for "glm", the logit variances of the same shape.
    #[napi(ts_return_type = "Promise<Float32Array>")]
    #[allow(clippy::too_many_arguments)]
    pub fn laplace_predict(
        &self,
        fit: &NativeLaplace,
        ids: Uint32Array,
        batch: u32,
        seq: u32,
        attention_mask: Option<Uint8Array>,
        positions: Option<Vec<Vec<u32>>>,
        targets: Option<Vec<u32>>,
        method: String,
        samples: u32,
        seed: u32,
    ) -> Result<AsyncTask<Float32Job>> {
        let (b, t) = (batch as usize, seq as usize);
        let mut input = Batch::new(rows(&ids, b, t, "inputIds")?);
        if let Some(m) = attention_mask {
            input.attention_mask = Some(rows(&m, b, t, "attentionMask")?);
        }
        let method = PredictMethod::parse(&method).map_err(to_js)?;
        let positions = positions.map(|p| p.into_iter().map(|r| r.into_iter().map(|x| x as usize).collect()).collect());
        let opts = PredictOptions { positions, targets, method, samples: samples as usize, seed: seed as u64 };
        let (shared, post) = (self.inner.clone(), fit.posterior()?);
        Ok(Float32Job::spawn(move || {
            // exclusive: Monte Carlo sets sampled weights in the store while it runs
            with_model_mut(&shared, |m| {
                let p = predict(&post, &m.llama, &m.tuners, &input, &opts)?;
                Ok(p.probs.into_iter().chain(p.logit_variance.unwrap_or_default()).collect())
            })
        }))
    }

    /// Writes `laplace_state.safetensors` and `laplace_config.json` into `dir`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn laplace_save(&self, fit: &NativeLaplace, dir: String) -> Result<AsyncTask<UnitJob>> {
        let (shared, post) = (self.inner.clone(), fit.posterior()?);
        Ok(UnitJob::spawn(move || with_model(&shared, |m| io::save(&post, &m.tuners, &PathBuf::from(&dir)))))
    }

    /// The posterior saved in `dir` for `adapter` (small files: read on the calling thread).
    #[napi]
    pub fn laplace_load(&self, dir: String, adapter: String) -> Result<NativeLaplace> {
        if adapter.is_empty() {
            return Err(invalid("adapterName", "an adapter name", "\"\""));
        }
        let post = with_model(&self.inner, |m| io::load(&PathBuf::from(&dir), &m.llama, &m.tuners, &adapter))?;
        Ok(NativeLaplace { state: Arc::new(Mutex::new(State { fit: None, posterior: Some(Arc::new(post)) })) })
    }
}

fn at_batch(i: u32, e: peft_core::Error) -> peft_core::Error {
    match e {
        peft_core::Error::InvalidArgument { name, expected, found } => {
            peft_core::Error::InvalidArgument { name: format!("batches[{i}].{name}"), expected, found }
        }
        e => e,
    }
}
