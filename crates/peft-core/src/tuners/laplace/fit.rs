//! Fitting Laplace-LoRA: K-FAC curvature of every LoRA matrix accumulated over batches
//! (Yang et al. 2024, the method section: the Laplace approximation with a K-FAC Fisher).
//!
//! For a linear `y = W v` with per-token inputs v_t and output gradients g_t, the Fisher of
//! vec(W) (row-major) is `Σ_t (g_t g_tᵀ) ⊗ (v_t v_tᵀ) ≈ G ⊗ A` with G = Σ_t g gᵀ and
//! A = (1/T) Σ_t v vᵀ (K-FAC, Martens & Grosse 2015, eq. 1 with the expectation over tokens).
//! LoRA's `h = W₀x + s·B A x` gives two such linears:
//! - lora_A [r, in]: inputs x, output gradients s·Bᵀg (the gradient of the loss w.r.t. A x);
//! - lora_B [out, r]: inputs s·A x, output gradients g.
//!
//! g comes from the loss with labels drawn from the model's own predictive (the Fisher, as
//! the paper defines it: an expectation over y ~ p(y|x, θ), one sample per token; the
//! default) or from the given labels (the empirical Fisher).
use super::capture::{capture, check_running, lora_sites, LoraSite};
use super::kron::KronFactor;
use crate::error::{Error, Result};
use crate::model::loss::{causal_lm_loss_sum, IGNORE_INDEX};
use crate::model::{Batch, CausalLm};
use crate::ops::softmax_last_dim;
use crate::tuners::Tuners;
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curvature {
    /// Labels sampled from the model (the Fisher = the GGN for a softmax likelihood).
    Fisher,
    /// The given labels (the empirical Fisher).
    Empirical,
}

impl Curvature {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fisher" => Ok(Curvature::Fisher),
            "empirical" => Ok(Curvature::Empirical),
            _ => Err(Error::arg(
                "hessian",
                "\"fisher\" (labels sampled from the model) or \"empirical\" (the given labels)",
                format!("\"{s}\""),
            )),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Curvature::Fisher => "fisher",
            Curvature::Empirical => "empirical",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FitOptions {
    pub curvature: Curvature,
    /// Factors with a larger side are kept low rank (`kron.rs`).
    pub max_factor_side: usize,
    /// The rank k of those factors.
    pub factor_rank: usize,
    /// Seeds the sampled labels.
    pub seed: u64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions { curvature: Curvature::Fisher, max_factor_side: 256, factor_rank: 32, seed: 0 }
    }
}

/// The two Kronecker factors of one LoRA matrix W [out, in]: `output` (G, out × out) and
/// `input` (T·A, in × in: the sum, divided by the token count at the end).
#[derive(Debug, Clone)]
pub struct MatrixCurvature {
    /// The parameter's name in the store (`...lora_A.<adapter>.weight`).
    pub name: String,
    pub param: crate::model::ParamId,
    pub output: KronFactor,
    pub input: KronFactor,
}

/// The curvature accumulated so far over the batches given to `add_batch`.
pub struct LaplaceFit {
    pub adapter: String,
    pub options: FitOptions,
    pub(crate) sites: Vec<LoraSite>,
    /// Two per site: lora_A then lora_B.
    pub matrices: Vec<MatrixCurvature>,
    /// Tokens whose activations entered the input factors.
    pub tokens: usize,
    /// Σ of the data labels' negative log-likelihood, and their count (for the evidence).
    pub nll_sum: f64,
    pub labels: usize,
    pub batches: usize,
    rng: StdRng,
}

impl LaplaceFit {
    pub fn new(model: &CausalLm, tuners: &Tuners, adapter: &str, options: FitOptions) -> Result<Self> {
        if options.factor_rank == 0 {
            return Err(Error::arg("factorRank", "a positive rank for the low-rank Kronecker factors", 0));
        }
        let sites = lora_sites(tuners, adapter)?;
        check_running(tuners, adapter)?;
        let mut matrices = Vec::new();
        for s in &sites {
            for id in [s.a, s.b] {
                let p = model.store.get(id);
                let (out, inp) = p.value().dims2()?;
                let factor = |side| KronFactor::new(side, options.max_factor_side, options.factor_rank);
                matrices.push(MatrixCurvature { name: p.name.clone(), param: id, output: factor(out)?, input: factor(inp)? });
            }
        }
        let rng = StdRng::seed_from_u64(options.seed);
        Ok(LaplaceFit { adapter: adapter.to_string(), options, sites, matrices, tokens: 0, nll_sum: 0.0, labels: 0, batches: 0, rng })
    }

    /// Adds one batch: `labels` [b][t] as for training (-100: not a target).
    pub fn add_batch(&mut self, model: &CausalLm, tuners: &Tuners, batch: &Batch, labels: &[Vec<i64>]) -> Result<()> {
        let (curvature, rng) = (self.options.curvature, &mut self.rng);
        let mut data_nll = (0.0, 0);
        let captured = capture(model, tuners, &self.sites, batch, |logits| {
            let (sum, count) = causal_lm_loss_sum(logits, labels)?;
            data_nll = (sum.to_dtype(DType::F64)?.to_scalar::<f64>()?, count);
            match curvature {
                Curvature::Empirical => Ok(sum),
                Curvature::Fisher => Ok(causal_lm_loss_sum(logits, &sample_labels(logits, labels, rng)?)?.0),
            }
        })?;
        for (site, c) in self.sites.iter().zip(&captured) {
            let (u, gu) = site.inner(&model.store, c)?;
            let i = self.matrices.iter().position(|m| m.param == site.a).unwrap_or(0);
            let [ma, mb] = &mut self.matrices[i..i + 2] else { unreachable!("two matrices per site") };
            ma.input.add(&c.x)?;
            ma.output.add(&gu)?;
            mb.input.add(&u)?;
            mb.output.add(&c.g)?;
        }
        self.tokens += captured.first().map_or(Ok(0), |c| c.x.dim(0))?;
        self.nll_sum += data_nll.0;
        self.labels += data_nll.1;
        self.batches += 1;
        Ok(())
    }
}

/// Labels as `labels` (same ignored positions) with each target drawn from the model's
/// predictive at the position before it.
fn sample_labels(logits: &Tensor, labels: &[Vec<i64>], rng: &mut StdRng) -> Result<Vec<Vec<i64>>> {
    let probs = softmax_last_dim(&logits.detach().to_dtype(DType::F64)?)?.to_vec3::<f64>()?;
    let mut out = labels.to_vec();
    for (r, row) in out.iter_mut().enumerate() {
        for c in 1..row.len() {
            if row[c] != IGNORE_INDEX {
                let p = probs
                    .get(r)
                    .and_then(|p| p.get(c - 1))
                    .ok_or_else(|| Error::arg("labels", "the shape of inputIds", format!("{} rows", labels.len())))?;
                row[c] = draw(p, rng.random::<f64>()) as i64;
            }
        }
    }
    Ok(out)
}

fn draw(p: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, &q) in p.iter().enumerate() {
        acc += q;
        if u < acc {
            return i;
        }
    }
    p.len() - 1
}
