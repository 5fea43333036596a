//! The empirical Fisher information of base weights, FishMask's criterion (Sung et al.
//! 2021, eq. 2): F̂_θ = 1/N Σᵢ (∇_θ log p(yᵢ | xᵢ))², here with one gradient per batch
//! (the causal-LM loss of the batch; batches of one example give the paper's per-example
//! estimate). The targeted weights train only while the batches run: their `requires_grad`
//! is restored afterwards, and no gradient is left in the store.
use super::config::DEFAULT_TARGETS;
use super::FisherScores;
use crate::error::{Error, Result};
use crate::model::{loss, Batch, CausalLm, Ctx, ParamId};
use crate::tuners::fields::Fields;
use crate::tuners::targeting::{self, TargetSpec, Targets};
use crate::tuners::{Tuners, WithTuners};
use candle_core::DType;
use serde_json::{json, Value};
use std::path::Path;

/// One batch for the estimate: inputs and next-token labels (-100 ignored), as training takes them.
pub struct FisherBatch {
    pub batch: Batch,
    pub labels: Vec<Vec<i64>>,
}

/// The targeting fields of `estimateFisher`'s options (snake_case, as in the config), and warnings.
pub fn fisher_targets(value: &Value, source: &Path) -> Result<(TargetSpec, Vec<crate::Warning>)> {
    let defaults = json!({"target_modules": null, "exclude_modules": null, "layers_to_transform": null, "layers_pattern": null});
    let (fields, warnings) = Fields::parse(value, "SPARSE_MASK", "estimateFisher options", defaults, source)?;
    Ok((fields.target_spec()?, warnings))
}

/// Fisher scores [out, in] (f32, or f64 for f64 models) of the linears `spec` selects on
/// the base model alone (attached adapters are not run), by module path. The targets
/// default to SPARSE_MASK's (`DEFAULT_TARGETS`) when `spec.target_modules` is None;
/// `source` names the options in errors.
pub fn estimate_fisher(model: &mut CausalLm, spec: &TargetSpec, batches: &[FisherBatch], source: &Path) -> Result<FisherScores> {
    estimate_fisher_until(model, spec, batches, source, &|| false)
}

/// As `estimate_fisher`, checking `cancelled` before each batch (a forward and a backward):
/// `Error::Aborted` when it says so, e.g. because the process is exiting.
pub fn estimate_fisher_until(
    model: &mut CausalLm,
    spec: &TargetSpec,
    batches: &[FisherBatch],
    source: &Path,
    cancelled: &dyn Fn() -> bool,
) -> Result<FisherScores> {
    if batches.is_empty() {
        return Err(Error::arg("batches", "at least one batch of inputIds and labels", "none"));
    }
    let mut spec = spec.clone();
    if spec.target_modules.is_none() {
        spec.target_modules = Some(Targets::List(DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()));
    }
    if let Some(t) = targeting::resolve_targets(&spec, model) {
        spec.target_modules = Some(t);
    }
    let paths = targeting::select(&spec, model, source)?;
    let weights: Vec<(String, ParamId)> =
        model.linears().into_iter().filter(|l| paths.contains(&l.path)).map(|l| (l.path.clone(), l.weight)).collect();
    let before: Vec<bool> = weights.iter().map(|(_, id)| model.store.get(*id).requires_grad()).collect();
    for (_, id) in &weights {
        model.store.get_mut(*id).set_requires_grad(true)?;
    }
    let result = accumulate(model, None, &weights, batches, cancelled);
    for ((_, id), on) in weights.iter().zip(before) {
        model.store.get_mut(*id).set_requires_grad(on)?;
    }
    result
}

/// The mean squared gradient of each of `weights` (keyed by the given names) over `batches`,
/// with `tuners` attached when given (Fish-Dip scores its deltas through the adapters).
pub(crate) fn accumulate(
    model: &CausalLm,
    tuners: Option<&Tuners>,
    weights: &[(String, ParamId)],
    batches: &[FisherBatch],
    cancelled: &dyn Fn() -> bool,
) -> Result<FisherScores> {
    let dtype = if model.dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let mut sums = FisherScores::new();
    for (i, b) in batches.iter().enumerate() {
        if cancelled() {
            return Err(Error::Aborted);
        }
        let mut ctx = Ctx::new(&model.store, false).with_labels(&b.labels);
        if let Some(t) = tuners {
            ctx = ctx.with_tuners(t);
        }
        let logits = model.forward(&b.batch, &ctx, None, false).map_err(|e| at_batch(i, e))?;
        let l = loss::causal_lm_loss(&logits, &b.labels).map_err(|e| at_batch(i, e))?;
        let grads = l.backward()?;
        for (path, id) in weights {
            let w = model.store.get(*id).value();
            let sq = match grads.get(&w) {
                Some(g) => g.to_dtype(dtype)?.sqr()?,
                None => w.zeros_like()?.to_dtype(dtype)?,
            };
            let acc = match sums.remove(path) {
                Some(acc) => (acc + sq)?,
                None => sq,
            };
            sums.insert(path.clone(), acc);
        }
    }
    let n = batches.len() as f64;
    sums.into_iter().map(|(p, s)| Ok((p, (s / n)?))).collect()
}

fn at_batch(i: usize, e: Error) -> Error {
    Error::arg(format!("batches[{i}]"), "inputIds and labels of the same shape", e)
}
