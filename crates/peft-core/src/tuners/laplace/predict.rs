//! Laplace-LoRA's predictive distribution over next tokens (Yang et al. 2024, method and experiments:
//! evaluated over the answer tokens of multiple-choice questions):
//! - `Glm`: the linearised model f(x; θ) ≈ f(x; θ_MAP) + J (θ − θ_MAP) makes the logits
//!   Gaussian, N(f_MAP, J Σ Jᵀ) (Immer et al. 2021, the GLM predictive); the probit
//!   approximation of its softmax (MacKay 1992; Lu et al. 2020, for the softmax) scales each
//!   logit by κ_c = 1/√(1 + π/8 · Var f_c). One backward per target token and position, so
//!   it needs `targets` (a multiple-choice set), not the whole vocabulary.
//! - `Mc`: the average softmax over `samples` draws of the LoRA weights from the Kronecker
//!   posterior (`posterior.rs`), any vocabulary.
//! - `Map`: the softmax at θ_MAP (what the adapter alone predicts), for comparison.
use super::capture::{check_running, lora_sites, probed_forward};
use super::posterior::LaplacePosterior;
use crate::error::{Error, Result};
use crate::model::{Batch, CausalLm, Ctx};
use crate::ops::softmax_last_dim;
use crate::tuners::{Tuners, WithTuners};
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictMethod {
    Map,
    Glm,
    Mc,
}

impl PredictMethod {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "map" => Ok(PredictMethod::Map),
            "glm" => Ok(PredictMethod::Glm),
            "mc" => Ok(PredictMethod::Mc),
            _ => Err(Error::arg("method", "\"glm\" (linearised, probit), \"mc\" (sampled LoRA weights) or \"map\"", format!("\"{s}\""))),
        }
    }
}

pub struct PredictOptions {
    /// Per row, the positions whose next token is predicted; None: each row's last kept token.
    pub positions: Option<Vec<Vec<usize>>>,
    /// Token ids the distribution is over (renormalised over them); None: the whole vocabulary.
    pub targets: Option<Vec<u32>>,
    pub method: PredictMethod,
    pub samples: usize,
    pub seed: u64,
}

/// Probabilities [n, width] (n = the positions of all rows in order; width = the targets or
/// the vocabulary), and for `Glm` the logits' variances [n, width].
pub struct Prediction {
    pub width: usize,
    pub probs: Vec<f32>,
    pub logit_variance: Option<Vec<f32>>,
    pub positions: Vec<(usize, usize)>,
}

/// Each row's positions, checked against the batch.
fn positions(batch: &Batch, given: Option<&[Vec<usize>]>) -> Result<Vec<(usize, usize)>> {
    let (b, t) = batch.dims();
    let Some(given) = given else {
        let last = |r: usize| {
            batch.attention_mask.as_ref().and_then(|m| m[r].iter().rposition(|&v| v != 0).map(|i| i + t - m[r].len())).unwrap_or(t - 1)
        };
        return Ok((0..b).map(|r| (r, last(r))).collect());
    };
    if given.len() != b {
        return Err(Error::arg("positions", format!("one list of positions per row of inputIds ({b})"), format!("{} lists", given.len())));
    }
    let mut out = Vec::new();
    for (r, row) in given.iter().enumerate() {
        if row.is_empty() {
            return Err(Error::arg(format!("positions[{r}]"), "at least one position", "an empty list"));
        }
        for &p in row {
            if p >= t {
                return Err(Error::arg(format!("positions[{r}]"), format!("positions below the sequence length {t}"), p));
            }
            out.push((r, p));
        }
    }
    Ok(out)
}

fn check_targets(targets: Option<&[u32]>, vocab: usize) -> Result<()> {
    match targets {
        Some([]) => Err(Error::arg("targetTokens", "at least one token id", "an empty list")),
        Some(t) => match t.iter().find(|&&id| id as usize >= vocab) {
            Some(id) => Err(Error::arg("targetTokens", format!("token ids below the vocabulary size {vocab}"), id)),
            None => Ok(()),
        },
        None => Ok(()),
    }
}

/// The logits [n, width] at `at` from logits [b, t, vocab] (f64), restricted to `targets`.
fn pick(logits: &Tensor, at: &[(usize, usize)], targets: Option<&[u32]>) -> Result<Tensor> {
    let rows = at.iter().map(|&(r, p)| logits.get(r)?.get(p)).collect::<candle_core::Result<Vec<_>>>()?;
    let rows = Tensor::stack(&rows, 0)?.to_dtype(DType::F64)?;
    Ok(match targets {
        Some(t) => rows.index_select(&Tensor::new(t, rows.device())?, 1)?,
        None => rows,
    })
}

pub fn predict(
    posterior: &LaplacePosterior,
    model: &CausalLm,
    tuners: &Tuners,
    batch: &Batch,
    opts: &PredictOptions,
) -> Result<Prediction> {
    batch.validate(model.config.vocab_size, 0)?;
    check_running(tuners, &posterior.adapter)?;
    check_targets(opts.targets.as_deref(), model.config.vocab_size)?;
    let at = positions(batch, opts.positions.as_deref())?;
    let targets = opts.targets.as_deref();
    let map_logits =
        || -> Result<Tensor> { pick(&model.forward(batch, &Ctx::new(&model.store, true).with_tuners(tuners), None, false)?, &at, targets) };
    let (probs, variance) = match opts.method {
        PredictMethod::Map => (softmax_last_dim(&map_logits()?)?, None),
        PredictMethod::Mc => (mc(posterior, model, opts, &map_logits)?, None),
        PredictMethod::Glm => {
            let targets = targets.ok_or_else(|| Error::arg("targetTokens", "the token ids to predict over (the linearised predictive takes one backward per target; use method \"mc\" for the whole vocabulary)", "none"))?;
            let (mean, var) = glm(posterior, model, tuners, batch, &at, targets)?;
            let kappa = ((&var * (std::f64::consts::PI / 8.0))? + 1.0)?.sqrt()?.recip()?;
            (softmax_last_dim(&(mean * kappa)?)?, Some(var))
        }
    };
    let width = probs.dim(1)?;
    let flat = |t: Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
    Ok(Prediction { width, probs: flat(probs)?, logit_variance: variance.map(flat).transpose()?, positions: at })
}

/// The mean softmax over posterior samples of every LoRA matrix; the MAP weights are put back
/// afterwards, also on an error.
fn mc(posterior: &LaplacePosterior, model: &CausalLm, opts: &PredictOptions, logits: &dyn Fn() -> Result<Tensor>) -> Result<Tensor> {
    if opts.samples == 0 {
        return Err(Error::arg("samples", "at least one posterior sample", 0));
    }
    let maps: Vec<Tensor> =
        posterior.matrices.iter().map(|m| model.store.get(m.param).value().copy()).collect::<candle_core::Result<_>>()?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut run = || -> Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for _ in 0..opts.samples {
            for (m, map) in posterior.matrices.iter().zip(&maps) {
                let offset = m.sample_offset(posterior.prior_precision, &mut rng)?;
                model.store.get(m.param).set(&(map.to_dtype(DType::F64)? + offset)?.to_dtype(map.dtype())?)?;
            }
            let p = softmax_last_dim(&logits()?)?;
            sum = Some(match sum {
                Some(s) => (s + p)?,
                None => p,
            });
        }
        Ok((sum.expect("samples > 0") / opts.samples as f64)?)
    };
    let out = run();
    for (m, map) in posterior.matrices.iter().zip(&maps) {
        model.store.get(m.param).set(map)?;
    }
    out
}

/// The GLM predictive's logit means and variances J Σ Jᵀ (diagonal) [n, targets].
fn glm(
    posterior: &LaplacePosterior,
    model: &CausalLm,
    tuners: &Tuners,
    batch: &Batch,
    at: &[(usize, usize)],
    targets: &[u32],
) -> Result<(Tensor, Tensor)> {
    let sites = lora_sites(tuners, &posterior.adapter)?;
    let pass = probed_forward(model, tuners, &sites, batch)?;
    let mean = pick(&pass.logits.detach(), at, Some(targets))?;
    let mut var = Vec::with_capacity(at.len() * targets.len());
    for &(r, p) in at {
        for &c in targets {
            let captured = pass.captures(&pass.logits.get(r)?.get(p)?.get(c as usize)?)?;
            let mut v = 0.0;
            for (site, cap) in sites.iter().zip(&captured) {
                let (u, gu) = site.inner(&model.store, cap)?;
                for (param, jac) in [(site.a, gu.t()?.matmul(&cap.x)?), (site.b, cap.g.t()?.matmul(&u)?)] {
                    let m = posterior.matrices.iter().find(|m| m.param == param).ok_or_else(|| {
                        Error::Unsupported(format!(
                            "Laplace-LoRA: no posterior for `{}`; fit again after changing the adapter",
                            model.store.get(param).name
                        ))
                    })?;
                    v += (&jac * m.covariance_times(&jac, posterior.prior_precision)?)?.sum_all()?.to_scalar::<f64>()?;
                }
            }
            var.push(v);
        }
    }
    Ok((mean, Tensor::from_vec(var, (at.len(), targets.len()), &candle_core::Device::Cpu)?))
}
