//! One Kronecker factor of K-FAC (Martens & Grosse 2015), `Σ_t v_t v_tᵀ` over the per-token
//! vectors v (a LoRA matrix's inputs, or the gradients of its outputs), and its eigenbasis.
//!
//! Laplace-LoRA (Yang et al. 2024, the method section) keeps the large factors — the side of
//! the model dimension, d×d for lora_A's inputs and lora_B's output gradients — low rank by an
//! incremental truncated eigendecomposition, so memory stays O(d·k). We do the same: a factor
//! whose side exceeds `max_side` keeps `U diag(s) Uᵀ` with k = `rank` columns; each chunk of new
//! vectors X is folded in through the eigenvectors of the small Gram matrix of
//! M = [U diag(√s), Xᵀ] (MMᵀ = U diag(s) Uᵀ + XᵀX), keeping its top k. Smaller factors are
//! summed densely and decomposed once, exactly.
//!
//! What the truncation drops is not zero curvature. Counting it as 0 left those directions at
//! the prior variance 1/λ, which made the posterior far too wide (docs/laplace.md). So a
//! low-rank factor also keeps its trace (a running scalar) and gives every unlisted direction
//! the same eigenvalue, the dropped mass spread evenly: (trace − Σ s)/(d − k). This is the
//! "low rank plus isotropic" form of probabilistic PCA, whose maximum-likelihood noise
//! variance is exactly the mean of the discarded eigenvalues (Tipping & Bishop 1999, eq. 8).
//! It keeps the factor's trace, the total curvature, and memory stays O(d·k).
use crate::error::Result;
use crate::tuners::linalg::svd;
use candle_core::{DType, Device, Tensor};

/// Columns folded into a low-rank factor at once (beyond its rank): bounds the Gram matrix.
const CHUNK: usize = 64;

#[derive(Debug, Clone)]
pub enum KronFactor {
    /// The sum `Σ v vᵀ` [d, d] (f64).
    Dense(Tensor),
    /// `U diag(s) Uᵀ + flat·(I − U Uᵀ)`: U [d, k'] orthonormal columns, s [k'] descending,
    /// k' ≤ `rank`; `trace` = Σ ‖v‖² of everything added, so flat = (trace − Σ s)/(d − k').
    LowRank { u: Tensor, s: Vec<f64>, rank: usize, side: usize, trace: f64 },
}

/// Eigenpairs of a factor: u [d, k] (f64, orthonormal columns), s [k] ≥ 0; the d − k
/// eigenvalues not listed all equal `flat` ≥ 0 (k < d only for a low-rank factor).
#[derive(Debug, Clone)]
pub struct Eigen {
    pub u: Tensor,
    pub s: Vec<f64>,
    pub flat: f64,
}

impl Eigen {
    /// How many eigenvalues are not listed (they equal `flat`).
    pub fn unlisted(&self) -> Result<usize> {
        Ok(self.u.dim(0)? - self.s.len())
    }
}

impl KronFactor {
    /// An empty factor of `side`: dense up to `max_side`, else low rank `rank`.
    pub fn new(side: usize, max_side: usize, rank: usize) -> Result<Self> {
        if side <= max_side {
            return Ok(KronFactor::Dense(Tensor::zeros((side, side), DType::F64, &Device::Cpu)?));
        }
        Ok(KronFactor::LowRank { u: Tensor::zeros((side, 0), DType::F64, &Device::Cpu)?, s: Vec::new(), rank, side, trace: 0.0 })
    }

    /// Adds `Σ_t x_t x_tᵀ` for the rows of `x` [n, d] (f64).
    pub fn add(&mut self, x: &Tensor) -> Result<()> {
        match self {
            KronFactor::Dense(sum) => *sum = (&*sum + x.t()?.matmul(x)?)?,
            KronFactor::LowRank { u, s, rank, trace, .. } => {
                *trace += x.sqr()?.sum_all()?.to_scalar::<f64>()?;
                let n = x.dim(0)?;
                for start in (0..n).step_by(CHUNK.max(*rank)) {
                    let len = CHUNK.max(*rank).min(n - start);
                    let (nu, ns) = fold(u, s, &x.narrow(0, start, len)?, *rank)?;
                    *u = nu;
                    *s = ns;
                }
            }
        }
        Ok(())
    }

    /// The eigenpairs of `scale` × this factor.
    pub fn eigen(&self, scale: f64) -> Result<Eigen> {
        match self {
            KronFactor::Dense(sum) => {
                let d = sum.dim(0)?;
                // symmetric PSD: the SVD's left vectors are eigenvectors, its values eigenvalues
                let (u, s, _) = svd(&sum.flatten_all()?.to_vec1::<f64>()?, d, d);
                Ok(Eigen { u: Tensor::from_vec(u, (d, d), &Device::Cpu)?, s: s.iter().map(|v| v * scale).collect(), flat: 0.0 })
            }
            KronFactor::LowRank { u, s, .. } => {
                Ok(Eigen { u: u.clone(), s: s.iter().map(|v| v * scale).collect(), flat: self.flat() * scale })
            }
        }
    }

    /// The eigenvalue of every direction a low-rank factor does not list: the dropped mass
    /// spread evenly (0 for a dense factor, or when nothing was dropped). Clamped at 0
    /// against rounding in trace − Σ s.
    pub fn flat(&self) -> f64 {
        match self {
            KronFactor::Dense(_) => 0.0,
            KronFactor::LowRank { s, side, trace, .. } if *side > s.len() => {
                ((trace - s.iter().sum::<f64>()) / (side - s.len()) as f64).max(0.0)
            }
            KronFactor::LowRank { .. } => 0.0,
        }
    }

    pub fn side(&self) -> Result<usize> {
        Ok(match self {
            KronFactor::Dense(sum) => sum.dim(0)?,
            KronFactor::LowRank { side, .. } => *side,
        })
    }
}

/// The top-`rank` eigenpairs of U diag(s) Uᵀ + XᵀX, from the Gram matrix C = MᵀM of
/// M = [U diag(√s), Xᵀ]: C = V Σ Vᵀ gives MMᵀ's eigenvectors M V Σ^{-1/2} with values Σ.
fn fold(u: &Tensor, s: &[f64], x: &Tensor, rank: usize) -> Result<(Tensor, Vec<f64>)> {
    let roots = Tensor::from_vec(s.iter().map(|v| v.max(0.0).sqrt()).collect::<Vec<_>>(), (1, s.len()), &Device::Cpu)?;
    let m = Tensor::cat(&[&u.broadcast_mul(&roots)?, &x.t()?], 1)?; // [d, k' + n]
    let w = m.dim(1)?;
    let gram = m.t()?.matmul(&m)?.flatten_all()?.to_vec1::<f64>()?;
    let (v, sigma, _) = svd(&gram, w, w);
    let scale = sigma.first().copied().unwrap_or(0.0);
    let keep = sigma.iter().take(rank).take_while(|&&x| x > scale * 1e-14 && x > 0.0).count();
    let v = Tensor::from_vec(v, (w, w), &Device::Cpu)?.narrow(1, 0, keep)?;
    let inv_roots = Tensor::from_vec(sigma[..keep].iter().map(|x| 1.0 / x.sqrt()).collect::<Vec<_>>(), (1, keep), &Device::Cpu)?;
    Ok((m.matmul(&v)?.broadcast_mul(&inv_roots)?, sigma[..keep].to_vec()))
}
