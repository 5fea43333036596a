//! SVDs that scale to 4096-wide layers, for `add_weighted_adapter`'s svd combinations. The
//! one-sided Jacobi SVD of `linalg.rs` costs O(m·n²) per sweep: fine on small layers, hours
//! on a 7B model's. Two shortcuts:
//! - a product ΔW = B·A of rank R (plain `svd` and `cat` sums): thin QR of B and Aᵀ, then
//!   the SVD of the R × R core R_B·R_Aᵀ; exact, O((m + n)·R²);
//! - any dense ΔW (the pruned `*_svd` types) above `EXACT_LIMIT`: the randomized subspace
//!   iteration of Halko, Martinsson & Tropp 2011 (Algorithm 4.4) for the top r triplets, the
//!   same family of method as torch's `svd_lowrank` (which PEFT offers for PiSSA).
use super::linalg::svd;
use crate::error::Result;
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Dense matrices with a smaller side up to this use the exact Jacobi SVD.
pub const EXACT_LIMIT: usize = 512;
/// Extra columns sampled beyond the rank, and subspace iterations (Halko et al. §4.5, §10).
const OVERSAMPLE: usize = 10;
const POWER_ITERS: usize = 6;

/// Thin QR of a row-major m × k matrix by modified Gram-Schmidt, applied twice ("twice is
/// enough", Giraud et al. 2005) for orthogonality to working precision. Columns that are
/// dependent on earlier ones get a zero column in Q and a zero diagonal in R.
fn qr(x: &[f64], m: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut cols: Vec<Vec<f64>> = (0..k).map(|j| (0..m).map(|i| x[i * k + j]).collect()).collect();
    let mut r = vec![0.0; k * k];
    let scale = cols.iter().map(|c| norm(c)).fold(0.0, f64::max);
    for j in 0..k {
        for _pass in 0..2 {
            for p in 0..j {
                let d: f64 = cols[p].iter().zip(&cols[j]).map(|(a, b)| a * b).sum();
                r[p * k + j] += d;
                let (lo, hi) = cols.split_at_mut(j);
                hi[0].iter_mut().zip(&lo[p]).for_each(|(c, q)| *c -= d * q);
            }
        }
        let n = norm(&cols[j]);
        if n > 1e-13 * scale {
            r[j * k + j] = n;
            cols[j].iter_mut().for_each(|c| *c /= n);
        } else {
            cols[j].iter_mut().for_each(|c| *c = 0.0);
        }
    }
    let q = (0..m).flat_map(|i| cols.iter().map(move |c| c[i])).collect();
    (q, r)
}

fn norm(c: &[f64]) -> f64 {
    c.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn matmul(a: &[f64], (m, k): (usize, usize), b: &[f64], n: usize) -> Result<Vec<f64>> {
    let ta = Tensor::from_slice(a, (m, k), &Device::Cpu)?;
    let tb = Tensor::from_slice(b, (k, n), &Device::Cpu)?;
    Ok(ta.matmul(&tb)?.flatten_all()?.to_vec1::<f64>()?)
}

fn transpose(a: &[f64], m: usize, n: usize) -> Vec<f64> {
    (0..n).flat_map(|j| (0..m).map(move |i| a[i * n + j])).collect()
}

/// SVD of ΔW = b·a with b [m, k] and a [k, n] (row-major): (U [m, k], s [k] descending,
/// Vt [k, n]); singular values past the product's rank are 0.
pub fn low_rank_svd(b: &[f64], a: &[f64], m: usize, k: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let (qb, rb) = qr(b, m, k);
    let (qa, ra) = qr(&transpose(a, k, n), n, k);
    let core = matmul(&rb, (k, k), &transpose(&ra, k, k), k)?; // R_B · R_Aᵀ
    let (uc, s, vct) = svd(&core, k, k);
    let u = matmul(&qb, (m, k), &uc, k)?;
    let vt = matmul(&vct, (k, k), &transpose(&qa, n, k), n)?; // (Q_A·V_c)ᵀ
    Ok((u, s, vt))
}

/// The top `r` singular triplets of a dense row-major m × n matrix: (U [m, r], s [r], Vt [r, n]).
/// Exact (Jacobi) when min(m, n) <= `EXACT_LIMIT`, randomized (seeded, so reproducible) above.
pub fn top_svd(dw: &[f64], m: usize, n: usize, r: usize, seed: u64) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let k = m.min(n);
    if k <= EXACT_LIMIT {
        let (u, s, vt) = svd(dw, m, n);
        let u = (0..m).flat_map(|i| u[i * k..i * k + r].to_vec()).collect();
        return Ok((u, s[..r].to_vec(), vt[..r * n].to_vec()));
    }
    randomized_svd(dw, m, n, r, POWER_ITERS, seed)
}

/// Halko et al. 2011, Algorithm 4.4 (randomized subspace iteration with `niter` iterations)
/// then Algorithm 5.1: the top `r` triplets (U [m, r], s [r], Vt [r, n]).
pub fn randomized_svd(dw: &[f64], m: usize, n: usize, r: usize, niter: usize, seed: u64) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let l = (r + OVERSAMPLE).min(m.min(n));
    let mut rng = StdRng::seed_from_u64(seed);
    let omega: Vec<f64> = (0..n * l).map(|_| rng.random_range(-1.0..1.0)).collect();
    let dwt = transpose(dw, m, n);
    let mut q = qr(&matmul(dw, (m, n), &omega, l)?, m, l).0;
    for _ in 0..niter {
        let z = qr(&matmul(&dwt, (n, m), &q, l)?, n, l).0;
        q = qr(&matmul(dw, (m, n), &z, l)?, m, l).0;
    }
    let small = matmul(&transpose(&q, m, l), (l, m), dw, n)?; // Qᵀ·ΔW, l × n
    let (us, s, vt) = svd(&small, l, n);
    let u = matmul(&q, (m, l), &us, l)?;
    let u = (0..m).flat_map(|i| u[i * l..i * l + r].to_vec()).collect();
    Ok((u, s[..r].to_vec(), vt[..r * n].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    fn reconstruct(u: &[f64], s: &[f64], vt: &[f64], m: usize, n: usize) -> Vec<f64> {
        let r = s.len();
        let us: Vec<f64> = (0..m * r).map(|i| u[i] * s[i % r]).collect();
        matmul(&us, (m, r), vt, n).unwrap()
    }

    #[test]
    fn low_rank_svd_matches_the_dense_one() {
        let (m, k, n) = (40, 6, 30);
        let (b, a) = (random(m * k, 1), random(k * n, 2));
        let dw = matmul(&b, (m, k), &a, n).unwrap();
        let (u, s, vt) = low_rank_svd(&b, &a, m, k, n).unwrap();
        let (_, s_exact, _) = svd(&dw, m, n);
        for j in 0..k {
            assert!((s[j] - s_exact[j]).abs() < 1e-12 * s_exact[0], "singular value {j}");
        }
        let back = reconstruct(&u, &s, &vt, m, n);
        assert!(back.iter().zip(&dw).all(|(x, y)| (x - y).abs() < 1e-12));
    }

    #[test]
    fn low_rank_svd_of_a_rank_deficient_product() {
        // Two identical rank-1 halves: the product has rank 1 of k = 2.
        let (m, n) = (5, 4);
        let col = random(m, 3);
        let b: Vec<f64> = col.iter().flat_map(|&x| [x, x]).collect();
        let a = random(2 * n, 4);
        let dw = matmul(&b, (m, 2), &a, n).unwrap();
        let (u, s, vt) = low_rank_svd(&b, &a, m, 2, n).unwrap();
        assert!(s[1].abs() < 1e-12 * s[0]);
        let back = reconstruct(&u, &s, &vt, m, n);
        assert!(back.iter().zip(&dw).all(|(x, y)| (x - y).abs() < 1e-12));
    }

    #[test]
    fn randomized_svd_finds_the_top_triplets() {
        // Low rank plus noise whose spectrum decays: the top r singular values agree with
        // the exact ones, and the rank-r reconstruction is as good as the exact truncation.
        let (m, n, r) = (120, 90, 5);
        let (b, a) = (random(m * 8, 5), random(8 * n, 6));
        let mut dw = matmul(&b, (m, 8), &a, n).unwrap();
        dw.iter_mut().zip(random(m * n, 7)).for_each(|(x, e)| *x += 1e-3 * e);
        let (u, s, vt) = randomized_svd(&dw, m, n, r, POWER_ITERS, 0).unwrap();
        let (ue, se, vte) = top_svd(&dw, m, n, r, 0).unwrap();
        for j in 0..r {
            assert!((s[j] - se[j]).abs() < 1e-9 * se[0], "singular value {j}: {} vs {}", s[j], se[j]);
        }
        let err = |x: &[f64]| x.iter().zip(&dw).map(|(p, q)| (p - q) * (p - q)).sum::<f64>().sqrt();
        let (e_rand, e_exact) = (err(&reconstruct(&u, &s, &vt, m, n)), err(&reconstruct(&ue, &se, &vte, m, n)));
        assert!(e_rand <= e_exact * (1.0 + 1e-9), "{e_rand} vs {e_exact}");
    }
}
