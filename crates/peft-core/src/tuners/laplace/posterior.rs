//! The Laplace posterior over the LoRA weights (Yang et al. 2024, the method section; MacKay 1992):
//! `p(θ|D) ≈ N(θ_MAP, (H + λI)⁻¹)` with H ≈ G ⊗ A per LoRA matrix (K-FAC, `fit.rs`) and an
//! isotropic Gaussian prior of precision λ. With eigenbases G = Q_G diag(g) Q_Gᵀ and
//! A = Q_A diag(a) Q_Aᵀ, the precision is (Q_G ⊗ Q_A)(g aᵀ + λ)(Q_G ⊗ Q_A)ᵀ, so for a matrix
//! M [out, in] (vec row-major):
//!   Σ vec(M) = vec(M/λ + U_G [(U_Gᵀ M U_A) ⊙ (1/(g aᵀ + λ) − 1/λ)] U_Aᵀ)
//! when all eigenpairs are listed. A low-rank factor lists k of them and gives the rest one
//! flat eigenvalue (`kron.rs`); `apply` then splits M into the four blocks of listed/unlisted
//! directions on each side, each with its own eigenvalues of G ⊗ A.
//! A sample is θ_MAP + Σ^{1/2} z, by the same formula with square roots.
use super::fit::{LaplaceFit, MatrixCurvature};
use super::kron::Eigen;
use crate::error::{Error, Result};
use crate::model::{CausalLm, ParamId};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;

/// One LoRA matrix's posterior factors.
#[derive(Debug, Clone)]
pub struct KronPosterior {
    pub name: String,
    pub param: ParamId,
    /// G's eigenpairs (out side) and A's (in side, already divided by the token count).
    pub output: Eigen,
    pub input: Eigen,
    /// out × in: the number of weights.
    pub size: usize,
}

impl KronPosterior {
    /// f(g aᵀ) [k_out, k_in] over the listed eigenvalues g of G and a of A.
    fn block(&self, f: &impl Fn(f64) -> f64) -> Result<Tensor> {
        let (g, a) = (&self.output.s, &self.input.s);
        let values = g.iter().flat_map(|gi| a.iter().map(move |aj| f(gi * aj))).collect::<Vec<_>>();
        Ok(Tensor::from_vec(values, (g.len(), a.len()), &Device::Cpu)?)
    }

    /// f(G ⊗ A) vec(M) for M [out, in] (f64). With P = U_G U_Gᵀ, Q = U_A U_Aᵀ, flat eigenvalues
    /// g₀, a₀ and c = f(g₀a₀), the four blocks P M Q, P M (I−Q), (I−P) M Q, (I−P) M (I−Q) have
    /// eigenvalues g aᵀ, g a₀, g₀ aᵀ, g₀ a₀; collected, that is
    ///   c M + U_G [(U_Gᵀ M U_A) ⊙ (f(gaᵀ) − f(g a₀) − f(g₀ aᵀ) + c)] U_Aᵀ
    ///       + U_G diag(f(g a₀) − c) U_Gᵀ M + M U_A diag(f(g₀ a) − c) U_Aᵀ,
    /// which is only O(d·k) work and memory, never the d × d complement.
    fn apply(&self, m: &Tensor, f: impl Fn(f64) -> f64) -> Result<Tensor> {
        let (ug, ua) = (&self.output.u, &self.input.u);
        let (g0, a0) = (self.output.flat, self.input.flat);
        let c = f(g0 * a0);
        let row = self.output.s.iter().map(|g| f(g * a0) - c).collect::<Vec<_>>(); // [k_out]
        let col = self.input.s.iter().map(|a| f(g0 * a) - c).collect::<Vec<_>>(); // [k_in]
        let row = Tensor::from_slice(&row, (row.len(), 1), &Device::Cpu)?;
        let col = Tensor::from_slice(&col, (1, col.len()), &Device::Cpu)?;
        let inner = ug.t()?.matmul(m)?.matmul(ua)?;
        let weights = ((self.block(&f)? - c)?.broadcast_sub(&row)?.broadcast_sub(&col))?;
        let mut out = ((m * c)? + ug.matmul(&(inner * weights)?)?.matmul(&ua.t()?)?)?;
        if g0 != 0.0 || a0 != 0.0 {
            out = (out + ug.matmul(&ug.t()?.matmul(m)?.broadcast_mul(&row)?)?)?;
            out = (out + m.matmul(ua)?.broadcast_mul(&col)?.matmul(&ua.t()?)?)?;
        }
        Ok(out)
    }

    /// Σ M: the posterior covariance applied to M [out, in].
    pub fn covariance_times(&self, m: &Tensor, prior: f64) -> Result<Tensor> {
        self.apply(m, |x| 1.0 / (x + prior))
    }

    /// A draw of W − W_MAP: Σ^{1/2} z with z standard normal [out, in].
    pub fn sample_offset(&self, prior: f64, rng: &mut StdRng) -> Result<Tensor> {
        let (out, inp) = (self.output.u.dim(0)?, self.input.u.dim(0)?);
        let z = crate::tuners::init::normal(out, inp, 1.0, rng, DType::F64, &Device::Cpu)?;
        self.apply(&z, |x| 1.0 / (x + prior).sqrt())
    }

    /// Σ over every eigenvalue e of G ⊗ A of `f(e)`: the listed products, and the unlisted
    /// directions of either side at its flat eigenvalue.
    fn sum_over_spectrum(&self, f: impl Fn(f64) -> f64) -> Result<f64> {
        let (g0, a0) = (self.output.flat, self.input.flat);
        let (ng, na) = (self.output.unlisted()? as f64, self.input.unlisted()? as f64);
        let listed: f64 = self.block(&f)?.flatten_all()?.to_vec1::<f64>()?.into_iter().sum();
        let g_rest: f64 = self.output.s.iter().map(|g| f(g * a0)).sum::<f64>() * na;
        let a_rest: f64 = self.input.s.iter().map(|a| f(g0 * a)).sum::<f64>() * ng;
        Ok(listed + g_rest + a_rest + ng * na * f(g0 * a0))
    }
}

/// The fitted Laplace-LoRA posterior of one adapter.
#[derive(Debug, Clone)]
pub struct LaplacePosterior {
    pub adapter: String,
    /// "fisher" or "empirical".
    pub hessian: String,
    pub matrices: Vec<KronPosterior>,
    pub prior_precision: f64,
    pub tokens: usize,
    pub nll_sum: f64,
    pub max_factor_side: usize,
    pub factor_rank: usize,
}

/// `Σ log(e + λ)`, `Σ 1/(e + λ)` and the number of weights P over all matrices, and ‖θ_MAP‖².
struct Evidence {
    matrices: Vec<KronPosterior>,
    map_sq: f64,
    size: usize,
}

impl LaplacePosterior {
    /// Eigendecomposes the factors of `fit`; `prior`: the prior precision, or None to choose it
    /// by maximising the marginal likelihood (`fit_prior_precision`).
    pub fn from_fit(fit: &LaplaceFit, model: &CausalLm, prior: Option<f64>) -> Result<Self> {
        if fit.batches == 0 || fit.tokens == 0 {
            return Err(Error::arg("batches", "at least one batch with a token to fit the Laplace approximation on", "none"));
        }
        let to_posterior = |m: &MatrixCurvature| -> Result<KronPosterior> {
            let (out, inp) = (m.output.side()?, m.input.side()?);
            Ok(KronPosterior {
                name: m.name.clone(),
                param: m.param,
                output: m.output.eigen(1.0)?,
                input: m.input.eigen(1.0 / fit.tokens as f64)?,
                size: out * inp,
            })
        };
        let matrices = fit.matrices.iter().map(to_posterior).collect::<Result<Vec<_>>>()?;
        let mut post = LaplacePosterior {
            adapter: fit.adapter.clone(),
            hessian: fit.options.curvature.name().to_string(),
            matrices,
            prior_precision: 1.0,
            tokens: fit.tokens,
            nll_sum: fit.nll_sum,
            max_factor_side: fit.options.max_factor_side,
            factor_rank: fit.options.factor_rank,
        };
        post.prior_precision = match prior {
            Some(p) if p.is_finite() && p > 0.0 => p,
            Some(p) => {
                return Err(Error::arg("priorPrecision", "a finite positive number (or omit it to fit it by the marginal likelihood)", p))
            }
            None => post.fit_prior_precision(model)?,
        };
        Ok(post)
    }

    fn evidence_terms(&self, model: &CausalLm) -> Result<Evidence> {
        let mut map_sq = 0.0;
        for m in &self.matrices {
            map_sq += model.store.get(m.param).value().to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
        Ok(Evidence { matrices: self.matrices.clone(), map_sq, size: self.matrices.iter().map(|m| m.size).sum() })
    }

    /// The Laplace log marginal likelihood at prior precision λ (MacKay 1992; Immer et al.
    /// 2021, eq. 4; as laplace-torch's `log_marginal_likelihood`):
    ///   log Z(λ) = log p(D|θ) − ½ (λ ‖θ‖² + log det(H + λI) − P log λ),
    /// θ = θ_MAP held fixed (post hoc), log det over the Kronecker eigenvalues.
    pub fn log_marginal_likelihood(&self, model: &CausalLm, prior: f64) -> Result<f64> {
        let e = self.evidence_terms(model)?;
        let logdet = e.matrices.iter().map(|m| m.sum_over_spectrum(|x| (x + prior).ln())).sum::<Result<f64>>()?;
        Ok(-self.nll_sum - 0.5 * (prior * e.map_sq + logdet - e.size as f64 * prior.ln()))
    }

    /// d log Z / dλ = ½ (P/λ − ‖θ‖² − Σ 1/(e + λ)).
    pub fn log_marginal_likelihood_slope(&self, model: &CausalLm, prior: f64) -> Result<f64> {
        let e = self.evidence_terms(model)?;
        slope(&e, prior)
    }

    /// The λ maximising log Z: the slope P/λ − Σ 1/(e+λ) = Σ e/(λ(e+λ)) falls from +∞ to 0 as
    /// λ grows, so with ‖θ‖² > 0 it crosses ‖θ‖² once; found by bisection on log λ.
    pub fn fit_prior_precision(&self, model: &CausalLm) -> Result<f64> {
        let e = self.evidence_terms(model)?;
        let (mut lo, mut hi) = (-30f64, 30f64); // ln λ
        if slope(&e, hi.exp())? > 0.0 {
            return Err(Error::Unsupported(format!("Laplace-LoRA: the marginal likelihood grows without bound in the prior precision (the LoRA weights are {}); pass priorPrecision", if e.map_sq == 0.0 { "all zero" } else { "tiny" })));
        }
        if slope(&e, lo.exp())? < 0.0 {
            return Ok(lo.exp());
        }
        for _ in 0..100 {
            let mid = 0.5 * (lo + hi);
            if slope(&e, mid.exp())? > 0.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok((0.5 * (lo + hi)).exp())
    }
}

fn slope(e: &Evidence, prior: f64) -> Result<f64> {
    let trace = e.matrices.iter().map(|m| m.sum_over_spectrum(|x| 1.0 / (x + prior))).sum::<Result<f64>>()?;
    Ok(0.5 * (e.size as f64 / prior - e.map_sq - trace))
}
