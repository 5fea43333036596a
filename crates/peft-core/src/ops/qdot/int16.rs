//! Dot products in integers for the block types that are one f16 scale times 32 small
//! integers, plus an f16 offset for the `_1` types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): the
//! offset's part, `m · Σ x`, takes each activation block's sum once. The activation row is quantized once per call to 16-bit
//! integers, one f32 scale per 32 values (`Q16Rows`), and each block's `Σ q_w · q_x` runs
//! through `_mm256_madd_epi16` (ggml's `ggml_vec_dot_q8_0_q8_0` does the same with 8-bit
//! activations, `_mm256_maddubs_epi16`). Per block that is two sign extensions, two
//! multiply-adds, one conversion and one FMA for each activation row, where the f32 path
//! converts all 32 weights to f32 and multiplies them one by one.
//!
//! The integer sums are exact: |q_w| ≤ 128 and |q_x| ≤ 32767, so each i32 lane (four
//! products) stays below 2²⁴ and converts to f32 exactly. The only rounding beyond f32's is
//! the activations' own: each is within half a step, `amax / 65534`, of its value (`amax`
//! the largest |x| of its 32), so the product differs from the f32 one by at most
//! `Σ |w| · amax / 65534` per block, 2⁻¹⁶ of the block's largest activation; 8-bit
//! activations would be 128 times coarser (they changed greedy tokens of SmolLM2).
use super::Kernel;
use half::f16;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Values per activation block: the weight blocks' size.
pub const QK: usize = 32;

/// A block of 32 values that are `d · q (+ m)` for one f16 scale `d`, integers `|q| ≤ 128`
/// and, for the `OFFSET` types, one f16 offset `m`.
pub trait BlockInts: Sized + Sync {
    /// Whether the values carry the offset `m` (Q4_1, Q5_1).
    const OFFSET: bool = false;

    /// The integers in order, the scale and the offset (zero without one): the scalar path.
    fn ints(&self) -> ([i8; 32], f16, f16);

    /// The integers as the 32 bytes of one vector, the scale and the offset.
    ///
    /// # Safety
    /// The CPU has AVX2; `block` points at a block. `#[inline(always)]`, as `Decode`'s decoders.
    #[cfg(target_arch = "x86_64")]
    unsafe fn ints_avx2(block: *const Self) -> (__m256i, f16, f16);
}

/// `m` rows of activations as 16-bit integers and one scale per 32 values: value j of block
/// b of row i is `q[i·k + j] · d[i·k/32 + b]`; `sum` holds each block's Σ of those values.
pub struct Q16Rows {
    q: Vec<i16>,
    d: Vec<f32>,
    sum: Vec<f32>,
    k: usize,
}

impl Q16Rows {
    /// Rounds each value to the nearest step of `amax / 32767` for its block of 32 (ties to
    /// even). A block of zeros gets scale 0; non-finite values make their block's dots NaN or
    /// infinite, as the f32 path's would be.
    pub fn quantize(x: &[f32], m: usize) -> Q16Rows {
        #[cfg(target_arch = "x86_64")]
        if Kernel::detect() == Kernel::Avx2 {
            // SAFETY: AVX2 was detected.
            return unsafe { quantize_avx2(x, m) };
        }
        round_rows(x, m)
    }

    /// Activation rows held.
    pub fn rows(&self) -> usize {
        self.q.len() / self.k.max(1)
    }

    /// The rounded activations, `q · d` (exact in f64): what the dots multiply by.
    pub fn values(&self) -> Vec<f64> {
        self.q.iter().enumerate().map(|(j, &q)| q as f64 * self.d[j / QK] as f64).collect()
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Row `i`'s integers, scales and block sums.
    pub(super) fn row(&self, i: usize) -> (&[i16], &[f32], &[f32]) {
        let blocks = i * self.k / QK..(i + 1) * self.k / QK;
        (&self.q[i * self.k..(i + 1) * self.k], &self.d[blocks.clone()], &self.sum[blocks])
    }
}

/// [`Q16Rows::quantize`] compiled for AVX2, where the rounding is one instruction (libm's
/// `rintf` call otherwise).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], m: usize) -> Q16Rows {
    round_rows(x, m)
}

#[inline(always)]
fn round_rows(x: &[f32], m: usize) -> Q16Rows {
    let k = x.len() / m.max(1);
    assert!(x.len() == m * k && k.is_multiple_of(QK), "Q16Rows: {m} rows of whole 32-value blocks, got {} values", x.len());
    let mut q = vec![0i16; x.len()];
    let d: Vec<f32> = x
        .chunks_exact(QK)
        .zip(q.chunks_exact_mut(QK))
        .map(|(xs, qs)| {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let inv = if amax > 0.0 { 32767.0 / amax } else { 0.0 };
            for (q, v) in qs.iter_mut().zip(xs) {
                // |v · inv| ≤ 32767 up to one rounding; `as` saturates (and maps NaN to 0).
                *q = (v * inv).round_ties_even() as i16;
            }
            // f32::max skips NaN: a block holding one scales its dots to NaN instead.
            if xs.iter().any(|v| v.is_nan()) {
                f32::NAN
            } else {
                amax / 32767.0
            }
        })
        .collect();
    let sum = q.chunks_exact(QK).zip(&d).map(|(qs, d)| qs.iter().map(|&v| v as i32).sum::<i32>() as f32 * d).collect();
    Q16Rows { q, d, sum, k }
}

/// For each weight row r of `w` (rows of `x`'s width, one after another) and each row i of
/// `x`: `out[r·m + i] = Σ_b d_w[b] · d_x[i][b] · Σ_j q_w[b][j] · q_x[i][b][j] (+ m_w[b] · sum_x[i][b])`.
pub fn dot_rows<T: BlockInts>(kernel: Kernel, w: &[T], x: &Q16Rows, out: &mut [f32]) {
    let (m, bpr) = (x.rows(), x.k / QK);
    assert!(
        bpr > 0 && w.len().is_multiple_of(bpr) && out.len() == w.len() / bpr * m,
        "dot_rows (int): {} weight blocks and {} outputs for {m} rows of {} values",
        w.len(),
        out.len(),
        x.k
    );
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2 {
        let kernels = [avx2::dot_rows::<T, 1>, avx2::dot_rows::<T, 2>, avx2::dot_rows::<T, 3>, avx2::dot_rows::<T, 4>];
        // SAFETY: lengths checked above.
        return unsafe { in_fours(w, x, out, kernels) };
    }
    let _ = kernel;
    for (wr, out) in w.chunks_exact(bpr).zip(out.chunks_exact_mut(m)) {
        for (i, o) in out.iter_mut().enumerate() {
            let (xq, xd, xs) = x.row(i);
            *o = wr
                .iter()
                .enumerate()
                .map(|(b, block)| {
                    let (q, d, m) = block.ints();
                    let s: i32 = q.iter().zip(&xq[b * QK..(b + 1) * QK]).map(|(&a, &c)| a as i32 * c as i32).sum();
                    let scaled = d.to_f32() * xd[b] * s as f32;
                    if T::OFFSET {
                        scaled + m.to_f32() * xs[b]
                    } else {
                        scaled
                    }
                })
                .sum();
        }
    }
}

/// An AVX2 kernel for rows `first..first + M` of the activations, M its index + 1 in [`in_fours`].
#[cfg(target_arch = "x86_64")]
pub(super) type RowsKernel<W> = unsafe fn(&[W], &Q16Rows, usize, &mut [f32]);

/// Runs the activation rows through `kernels` up to four at a time, so the accumulators stay
/// in registers.
///
/// # Safety
/// `w`, `x` and `out` have the lengths the kernels expect.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn in_fours<W>(w: &[W], x: &Q16Rows, out: &mut [f32], kernels: [RowsKernel<W>; 4]) {
    assert_eq!(Kernel::detect(), Kernel::Avx2, "dot_rows: AVX2 asked for on a CPU without it");
    let m = x.rows();
    for first in (0..m).step_by(4) {
        // SAFETY: AVX2/FMA/F16C were detected; the caller vouches for the lengths.
        unsafe { kernels[(m - first).min(4) - 1](w, x, first, out) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::avx2::hsum;
    use super::super::legacy::f32_of;
    use super::{BlockInts, Q16Rows, QK};
    use std::arch::x86_64::*;

    /// Rows `first..first + M` of `x` against each weight row of `w`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows<T: BlockInts, const M: usize>(w: &[T], x: &Q16Rows, first: usize, out: &mut [f32]) {
        let (m, bpr) = (x.rows(), x.k / QK);
        let rows: [(&[i16], &[f32], &[f32]); M] = std::array::from_fn(|i| x.row(first + i));
        for (wr, out) in w.chunks_exact(bpr).zip(out.chunks_exact_mut(m)) {
            // Even and odd blocks into separate accumulators: consecutive FMAs would wait on each other.
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            let mut offsets = [[0f32; 2]; M];
            for (b, block) in wr.iter().enumerate() {
                let (q, d, m) = T::ints_avx2(block);
                let d = f32_of(d);
                let lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
                let hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
                for ((a, off), (xq, xd, xs)) in acc.iter_mut().zip(&mut offsets).zip(&rows) {
                    let xp = xq.as_ptr().add(b * QK) as *const __m256i;
                    let s = _mm256_add_epi32(
                        _mm256_madd_epi16(lo, _mm256_loadu_si256(xp)),
                        _mm256_madd_epi16(hi, _mm256_loadu_si256(xp.add(1))),
                    );
                    a[b % 2] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd[b]), _mm256_cvtepi32_ps(s), a[b % 2]);
                    if T::OFFSET {
                        off[b % 2] += f32_of(m) * xs[b];
                    }
                }
            }
            for ((o, a), off) in out[first..first + M].iter_mut().zip(&acc).zip(offsets) {
                *o = hsum(_mm256_add_ps(a[0], a[1])) + (off[0] + off[1]);
            }
        }
    }
}
