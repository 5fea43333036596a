//! Thin SVD in f64 by one-sided Jacobi (Hestenes), for PiSSA's init: candle has no SVD.
//! Accurate to working precision for every singular value (unlike an eigen-decomposition
//! of WᵀW, which squares the condition number), and simple; cost O(sweeps · m · n²) with n
//! the smaller side, which is fine at init time.

/// `a` = U · diag(s) · Vt for a row-major `m × n` matrix; k = min(m, n).
/// Returns (U row-major m × k, s descending, Vt row-major k × n).
pub fn svd(a: &[f64], m: usize, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), m * n, "svd: buffer does not hold {m} x {n}");
    if m < n {
        // aᵀ = U' S V'ᵀ  =>  a = V' S U'ᵀ
        let at = transpose(a, m, n);
        let (u2, s, vt2) = svd(&at, n, m);
        return (transpose(&vt2, m, m), s, transpose(&u2, n, m));
    }
    // Columns of `a` (m >= n) as contiguous vectors; rotate pairs until all are orthogonal.
    let mut g: Vec<Vec<f64>> = (0..n).map(|j| (0..m).map(|i| a[i * n + j]).collect()).collect();
    let mut v: Vec<Vec<f64>> = (0..n).map(|j| (0..n).map(|i| f64::from(u8::from(i == j))).collect()).collect();
    let eps = 1e-15;
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) = (dot(&g[p], &g[p]), dot(&g[q], &g[q]), dot(&g[p], &g[q]));
                if gamma.abs() <= eps * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut g, p, q, c, s);
                rotate(&mut v, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let mut order: Vec<(f64, usize)> = g.iter().enumerate().map(|(j, c)| (dot(c, c).sqrt(), j)).collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut u = vec![0.0; m * n];
    let mut s = Vec::with_capacity(n);
    let mut vt = vec![0.0; n * n];
    for (k, &(sigma, j)) in order.iter().enumerate() {
        s.push(sigma);
        for i in 0..m {
            u[i * n + k] = if sigma > 0.0 { g[j][i] / sigma } else { 0.0 };
        }
        vt[k * n..(k + 1) * n].copy_from_slice(&v[j]);
    }
    (u, s, vt)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (lo, hi) = cols.split_at_mut(q);
    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
        let (xp, yq) = (*x, *y);
        *x = c * xp - s * yq;
        *y = s * xp + c * yq;
    }
}

fn transpose(a: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut t = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            t[j * m + i] = a[i * n + j];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: usize, n: usize) {
        let a: Vec<f64> = (0..m * n).map(|i| ((i * 7919 % 113) as f64 / 113.0 - 0.5) * (1.0 + (i % 5) as f64)).collect();
        let (u, s, vt) = svd(&a, m, n);
        let k = m.min(n);
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
        for i in 0..m {
            for j in 0..n {
                let r: f64 = (0..k).map(|l| u[i * k + l] * s[l] * vt[l * n + j]).sum();
                assert!((r - a[i * n + j]).abs() < 1e-10, "reconstruction at ({i},{j})");
            }
        }
        for p in 0..k {
            for q in 0..k {
                let d: f64 = (0..n).map(|j| vt[p * n + j] * vt[q * n + j]).sum();
                assert!((d - f64::from(u8::from(p == q))).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn svd_reconstructs_tall_wide_and_square() {
        check(9, 4);
        check(4, 9);
        check(6, 6);
    }
}
