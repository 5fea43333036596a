//! The per-module arithmetic of `add_weighted_adapter` (PEFT 0.21 `tuners/lora/model.py`),
//! in f64, for one targeted module. wᵢ are the user's weights, sᵢ the adapters' scalings;
//! the new adapter has r = lora_alpha, so its own scaling is 1 and every sᵢ is folded in:
//! - `cat`: A = [w₁s₁A₁; w₂s₂A₂; …], B = [B₁ B₂ …], so B·A = Σ wᵢ sᵢ BᵢAᵢ exactly;
//! - `linear`, `ties`, `dare_*`, `magnitude_prune`: the merge runs on the A's with weights
//!   sign(wᵢsᵢ)·√|wᵢsᵢ| and on the B's with √|wᵢsᵢ| (`_generalized_task_arithmetic_weighted_adapter`);
//! - `*svd`: the merge runs on ΔWᵢ = sᵢBᵢAᵢ with weights wᵢ (PEFT PR #3111 took out a second
//!   sᵢ), then ΔW ≈ U_r S_r V_rᵀ gives B = U_r S_r, A = V_rᵀ, optionally clamped to the
//!   `svd_clamp` quantile of their values (`_svd_generalized_task_arithmetic_weighted_adapter`).
use super::merge_utils::{merge, quantile, Merge, SignMethod};
use super::weighted::lora_config;
use crate::error::{Error, Result};
use crate::model::ParamStore;
use crate::tuners::svd_fast::{low_rank_svd, top_svd, EXACT_LIMIT};
use crate::tuners::Tuners;
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    Cat,
    /// The merge applied to the A and B factors separately.
    Factors(Merge),
    /// The merge applied to the delta weights, then a truncated SVD.
    Svd(Merge),
}

impl Combination {
    pub fn merge(self) -> Option<Merge> {
        match self {
            Combination::Cat => None,
            Combination::Factors(m) | Combination::Svd(m) => Some(m),
        }
    }
}

/// One source adapter's LoRA at a module, in f64 row-major.
struct Source {
    a: Vec<f64>,
    b: Vec<f64>,
    r: usize,
    weight: f64,
    scaling: f64,
}

fn flat(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// How the sources are combined: everything `add_weighted_adapter` settled beforehand.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Recipe {
    pub combination: Combination,
    pub new_rank: usize,
    /// 1 (no pruning) for the types without a density.
    pub density: f64,
    pub sign: SignMethod,
    pub clamp: Option<f64>,
}

/// The new A [new_rank, in] and B [out, new_rank] of the module at `path`.
pub(crate) fn combine_module(
    tuners: &Tuners,
    store: &ParamStore,
    path: &str,
    adapters: &[&str],
    weights: &[f64],
    recipe: &Recipe,
    rng: &mut StdRng,
) -> Result<(Tensor, Tensor)> {
    let Recipe { combination, new_rank, density, sign, clamp } = *recipe;
    let mut sources = Vec::new();
    let (mut out, mut inp, mut dtype, mut device) = (0, 0, DType::F32, candle_core::Device::Cpu);
    for (name, &weight) in adapters.iter().zip(weights) {
        let ids = tuners.params_at(path, name);
        if ids.len() < 2 {
            continue; // this adapter does not target the module (PEFT skips it too)
        }
        let config = lora_config(tuners, name)?;
        let (r_cfg, alpha) = config.rank_alpha(path)?;
        let (a, b) = (store.get(ids[0]).value(), store.get(ids[1]).value());
        let (r, i) = a.dims2()?;
        (out, inp, dtype, device) = (b.dim(0)?, i, a.dtype(), a.device().clone());
        sources.push(Source { a: flat(&a)?, b: flat(&b)?, r, weight, scaling: config.scaling(r_cfg, alpha) });
    }
    if sources.is_empty() {
        return Err(Error::arg(
            "adapters",
            format!("at least one adapter with a LoRA on `{path}` (the combined adapter targets it)"),
            format!("none of {}", adapters.join(", ")),
        ));
    }
    let (a, b) = match combination {
        Combination::Cat => cat(&sources, out, inp, new_rank),
        Combination::Factors(kind) => factors(&sources, kind, path, new_rank, density, sign, rng)?,
        Combination::Svd(kind) => {
            let k = out.min(inp);
            if new_rank > k {
                return Err(Error::arg("svd_rank", format!("at most {k} for `{path}` ({out} x {inp})"), new_rank));
            }
            let (u, s, vt) = if kind == Merge::TaskArithmetic {
                // Σ wᵢsᵢBᵢAᵢ is `cat`'s product: its SVD from the factors, never forming ΔW.
                let total: usize = sources.iter().map(|s| s.r).sum();
                let (a_cat, b_cat) = cat(&sources, out, inp, total);
                truncate(low_rank_svd(&b_cat, &a_cat, out, total, inp)?, out, inp, total, new_rank)
            } else {
                let deltas = sources.iter().map(|s| delta(s, out, inp)).collect::<Vec<_>>();
                let weights: Vec<f64> = sources.iter().map(|s| s.weight).collect();
                let dw = merge(kind, &deltas, &weights, density, sign, rng);
                let seed = if k > EXACT_LIMIT { rng.random() } else { 0 };
                top_svd(&dw, out, inp, new_rank, seed)?
            };
            svd_factors(u, &s, vt, out, new_rank, clamp)
        }
    };
    let a = Tensor::from_vec(a, (new_rank, inp), &device)?.to_dtype(dtype)?;
    let b = Tensor::from_vec(b, (out, new_rank), &device)?.to_dtype(dtype)?;
    Ok((a, b))
}

/// sᵢ BᵢAᵢ, row-major [out, in].
fn delta(s: &Source, out: usize, inp: usize) -> Vec<f64> {
    let mut d = vec![0.0; out * inp];
    for o in 0..out {
        for k in 0..s.r {
            let bk = s.b[o * s.r + k] * s.scaling;
            d[o * inp..(o + 1) * inp].iter_mut().zip(&s.a[k * inp..(k + 1) * inp]).for_each(|(x, a)| *x += bk * a);
        }
    }
    d
}

/// `cat`: ranks stacked in adapter order; rows/columns past their sum stay zero.
fn cat(sources: &[Source], out: usize, inp: usize, new_rank: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut a, mut b) = (vec![0.0; new_rank * inp], vec![0.0; out * new_rank]);
    let mut row = 0;
    for s in sources {
        let f = s.weight * s.scaling;
        a[row * inp..(row + s.r) * inp].iter_mut().zip(&s.a).for_each(|(x, v)| *x = v * f);
        for o in 0..out {
            b[o * new_rank + row..o * new_rank + row + s.r].copy_from_slice(&s.b[o * s.r..(o + 1) * s.r]);
        }
        row += s.r;
    }
    (a, b)
}

/// The merge on the factors; every source must have the new rank at this module.
fn factors(
    sources: &[Source],
    kind: Merge,
    path: &str,
    new_rank: usize,
    density: f64,
    sign: SignMethod,
    rng: &mut StdRng,
) -> Result<(Vec<f64>, Vec<f64>)> {
    if let Some(s) = sources.iter().find(|s| s.r != new_rank) {
        return Err(Error::arg(
            "adapters",
            format!("rank {new_rank} on every module for this combination_type"),
            format!("rank {} on `{path}` (from a rank_pattern)", s.r),
        ));
    }
    // The sign goes on A only, so that a negative weight is not cancelled (PEFT PR #2918).
    let root = |s: &Source| (s.weight * s.scaling).abs().sqrt();
    let wa: Vec<f64> = sources.iter().map(|s| if s.weight * s.scaling >= 0.0 { root(s) } else { -root(s) }).collect();
    let wb: Vec<f64> = sources.iter().map(root).collect();
    let a_tasks: Vec<Vec<f64>> = sources.iter().map(|s| s.a.clone()).collect();
    let b_tasks: Vec<Vec<f64>> = sources.iter().map(|s| s.b.clone()).collect();
    let a = merge(kind, &a_tasks, &wa, density, sign, rng);
    let b = merge(kind, &b_tasks, &wb, density, sign, rng);
    Ok((a, b))
}

/// The first `r` of `k` singular triplets; past `k` (a product of smaller rank than the
/// requested svd_rank), zero singular values with zero vectors. torch's full SVD would give
/// arbitrary orthonormal vectors there: the product B·A is the same, but a `svd_clamp`
/// quantile may then differ slightly.
fn truncate((u, s, vt): (Vec<f64>, Vec<f64>, Vec<f64>), out: usize, inp: usize, k: usize, r: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let u = (0..out).flat_map(|o| (0..r).map(|j| if j < k { u[o * k + j] } else { 0.0 }).collect::<Vec<_>>()).collect();
    let s = (0..r).map(|j| if j < k { s[j] } else { 0.0 }).collect();
    let mut v = vt[..k.min(r) * inp].to_vec();
    v.resize(r * inp, 0.0);
    (u, s, v)
}

/// (U_r [out, r], S_r, V_rᵀ [r, in]) → (A = V_rᵀ, B = U_r S_r), clamped to ±quantile(B ∪ A, clamp).
/// Singular vectors are defined up to sign: A and B may differ from torch's in sign (their
/// product does not), and so may the clamp threshold when a clamp is set.
fn svd_factors(u: Vec<f64>, s: &[f64], vt: Vec<f64>, out: usize, r: usize, clamp: Option<f64>) -> (Vec<f64>, Vec<f64>) {
    let mut b: Vec<f64> = (0..out * r).map(|i| u[i] * s[i % r]).collect();
    let mut a = vt;
    if let Some(q) = clamp {
        let all: Vec<f64> = b.iter().chain(&a).copied().collect();
        let hi = quantile(&all, q);
        // torch.clamp(x, -hi, hi): the upper bound wins when -hi > hi.
        b.iter_mut().chain(a.iter_mut()).for_each(|x| *x = x.max(-hi).min(hi));
    }
    (a, b)
}
