//! Integer dots for the two k-quants Gemma 3's llama.cpp mixes use, Q4_K and Q6_K, against
//! the same 16-bit activations as `int16.rs` (`Q16Rows`, one scale per 32 values). A
//! super-block of 256 values spans eight activation blocks; over activation block b each
//! weight is `s_lo · q` (its first 16 values) or `s_hi · q` (its last 16), minus `o` for
//! Q4_K:
//! - Q4_K: sub-block b (32 values) has one 6-bit scale and min: `s_lo = s_hi = d · sc`,
//!   `o = dmin · m`, `0 ≤ q ≤ 15`; the min's part is `−o · Σ x`, from the block's sum.
//! - Q6_K: sixteen sub-blocks of 16 with i8 scales: `s_lo = d · sc[2b]`, `s_hi = d · sc[2b+1]`,
//!   `−32 ≤ q ≤ 31`; the two halves' sums are scaled separately.
//!
//! The integer sums are exact and convert to f32 exactly: with `|q_x| ≤ 32767`, a
//! `_mm256_madd_epi16` lane (two products) is at most 2·32·32767 < 2²¹, and Q4_K's lane over
//! the whole block (four products) 4·15·32767 < 2²¹; the scalar path's 16-value sums are at
//! most 16·32·32767 < 2²⁴. Only the f32 products with the scales round, as in `int16.rs`.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]
use super::int16::{Q16Rows, QK};
use super::kquants::{scale_min_k4, Q4K, Q6K};
use super::Kernel;
use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Activation blocks per super-block.
const SUBS: usize = 256 / QK;

/// A super-block of 256 values `s · q − o` over eight 32-value activation blocks.
pub trait SuperBlockInts: Sized + Sync {
    /// Whether the two 16-value halves of an activation block have different scales (Q6_K).
    const HALVES: bool;

    /// The 256 integers in order, each activation block's `[s_lo, s_hi]` and `o`: the scalar path.
    fn ints(&self) -> ([i8; 256], [[f32; 2]; SUBS], [f32; SUBS]);

    /// The integers of activation block b as two vectors of 16 i16 (its halves) into `q[b]`,
    /// and the scales and offsets as [`Self::ints`].
    ///
    /// # Safety
    /// The CPU has AVX2; `#[inline(always)]`, called from the `#[target_feature]` kernel.
    #[cfg(target_arch = "x86_64")]
    unsafe fn ints_avx2(&self, q: &mut [[__m256i; 2]; SUBS]) -> ([[f32; 2]; SUBS], [f32; SUBS]);
}

impl SuperBlockInts for BlockQ4K {
    const HALVES: bool = false;

    fn ints(&self) -> ([i8; 256], [[f32; 2]; SUBS], [f32; SUBS]) {
        let b = mirror_q4k(self);
        let mut q = [0i8; 256];
        for j in 0..4 {
            for l in 0..32 {
                q[64 * j + l] = (b.qs[32 * j + l] & 0xF) as i8;
                q[64 * j + 32 + l] = (b.qs[32 * j + l] >> 4) as i8;
            }
        }
        let (s, o) = q4k_scales(b);
        (q, s, o)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(&self, q: &mut [[__m256i; 2]; SUBS]) -> ([[f32; 2]; SUBS], [f32; SUBS]) {
        let b = mirror_q4k(self);
        let mask = _mm256_set1_epi8(0xF);
        for j in 0..4 {
            let v = _mm256_loadu_si256(b.qs.as_ptr().add(32 * j) as *const __m256i);
            for (t, nib) in [_mm256_and_si256(v, mask), _mm256_and_si256(_mm256_srli_epi16(v, 4), mask)].into_iter().enumerate() {
                q[2 * j + t] = halves(nib);
            }
        }
        q4k_scales(b)
    }
}

fn mirror_q4k(b: &BlockQ4K) -> &Q4K {
    // SAFETY: `Q4K` mirrors `BlockQ4K`'s layout (size and alignment checked in kquants.rs).
    unsafe { &*(b as *const BlockQ4K as *const Q4K) }
}

fn q4k_scales(b: &Q4K) -> ([[f32; 2]; SUBS], [f32; SUBS]) {
    let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
    let (mut s, mut o) = ([[0f32; 2]; SUBS], [0f32; SUBS]);
    for j in 0..SUBS {
        let (sc, m) = scale_min_k4(j, &b.scales);
        // d · sc as candle's `to_float` computes it (exact in f32: 11 × 6 bits).
        s[j] = [d * sc as f32; 2];
        o[j] = dmin * m as f32;
    }
    (s, o)
}

impl SuperBlockInts for BlockQ6K {
    const HALVES: bool = true;

    /// Per 128 values (`n`): `ql[l]`, `ql[l + 32]` hold the low four bits of values l, l + 32
    /// (low nibbles) and l + 64, l + 96 (high nibbles); `qh[l]` their top two bits.
    fn ints(&self) -> ([i8; 256], [[f32; 2]; SUBS], [f32; SUBS]) {
        let b = mirror_q6k(self);
        let mut q = [0i8; 256];
        for n in 0..2 {
            let (ql, qh) = (&b.ql[64 * n..], &b.qh[32 * n..]);
            for l in 0..32 {
                let lows = [ql[l] & 0xF, ql[l + 32] & 0xF, ql[l] >> 4, ql[l + 32] >> 4];
                for (g, low) in lows.into_iter().enumerate() {
                    q[128 * n + 32 * g + l] = (low | ((qh[l] >> (2 * g)) & 3) << 4) as i8 - 32;
                }
            }
        }
        (q, q6k_scales(b), [0.0; SUBS])
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(&self, q: &mut [[__m256i; 2]; SUBS]) -> ([[f32; 2]; SUBS], [f32; SUBS]) {
        let b = mirror_q6k(self);
        let (m4, m2, bias) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
        for n in 0..2 {
            let a = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n) as *const __m256i);
            let c = _mm256_loadu_si256(b.ql.as_ptr().add(64 * n + 32) as *const __m256i);
            let h = _mm256_loadu_si256(b.qh.as_ptr().add(32 * n) as *const __m256i);
            // 16-bit shifts, then byte masks: the bits a shift moves across bytes are masked off.
            let lows = [a, c, _mm256_srli_epi16(a, 4), _mm256_srli_epi16(c, 4)];
            let tops = [h, _mm256_srli_epi16(h, 2), _mm256_srli_epi16(h, 4), _mm256_srli_epi16(h, 6)];
            for (g, (low, top)) in lows.into_iter().zip(tops).enumerate() {
                let top = _mm256_slli_epi16(_mm256_and_si256(top, m2), 4);
                let v = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(low, m4), top), bias);
                q[4 * n + g] = halves(v);
            }
        }
        (q6k_scales(b), [0.0; SUBS])
    }
}

fn mirror_q6k(b: &BlockQ6K) -> &Q6K {
    // SAFETY: `Q6K` mirrors `BlockQ6K`'s layout (size and alignment checked in kquants.rs).
    unsafe { &*(b as *const BlockQ6K as *const Q6K) }
}

fn q6k_scales(b: &Q6K) -> [[f32; 2]; SUBS] {
    let d = b.d.to_f32();
    std::array::from_fn(|j| [d * b.scales[2 * j] as f32, d * b.scales[2 * j + 1] as f32])
}

/// 32 signed bytes as two vectors of 16 i16 (first and last 16).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn halves(v: __m256i) -> [__m256i; 2] {
    [_mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)), _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1))]
}

/// As `int16::dot_rows` for super-blocks: `out[r·m + i]` = weight row r · activation row i.
pub fn dot_rows<T: SuperBlockInts>(kernel: Kernel, w: &[T], x: &Q16Rows, out: &mut [f32]) {
    let (m, k) = (x.rows(), x.cols());
    let bpr = k / 256;
    assert!(
        bpr > 0 && k.is_multiple_of(256) && w.len().is_multiple_of(bpr) && out.len() == w.len() / bpr * m,
        "dot_rows (int, k-quant): {} super-blocks and {} outputs for {m} rows of {k} values",
        w.len(),
        out.len(),
    );
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2 {
        let kernels = [avx2::dot_rows::<T, 1>, avx2::dot_rows::<T, 2>, avx2::dot_rows::<T, 3>, avx2::dot_rows::<T, 4>];
        // SAFETY: lengths checked above.
        return unsafe { super::int16::in_fours(w, x, out, kernels) };
    }
    let _ = kernel;
    for (wr, out) in w.chunks_exact(bpr).zip(out.chunks_exact_mut(m)) {
        for (i, o) in out.iter_mut().enumerate() {
            let (xq, xd, xs) = x.row(i);
            let mut total = 0f32;
            for (c, block) in wr.iter().enumerate() {
                let (q, s, off) = block.ints();
                for b in 0..SUBS {
                    let at = 256 * c + QK * b;
                    let half = |h: usize| -> f32 {
                        let r = QK * b + 16 * h..QK * b + 16 * h + 16;
                        q[r].iter().zip(&xq[at + 16 * h..]).map(|(&a, &v)| a as i32 * v as i32).sum::<i32>() as f32
                    };
                    let xb = xd[SUBS * c + b];
                    total += s[b][0] * xb * half(0) + s[b][1] * xb * half(1) - off[b] * xs[SUBS * c + b];
                }
            }
            *o = total;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::avx2::hsum;
    use super::{Q16Rows, SuperBlockInts, QK, SUBS};
    use std::arch::x86_64::*;

    /// Rows `first..first + M` of `x` against each weight row of `w`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows<T: SuperBlockInts, const M: usize>(w: &[T], x: &Q16Rows, first: usize, out: &mut [f32]) {
        let (m, bpr) = (x.rows(), x.cols() / 256);
        let rows: [(&[i16], &[f32], &[f32]); M] = std::array::from_fn(|i| x.row(first + i));
        let mut q = [[_mm256_setzero_si256(); 2]; SUBS];
        for (wr, out) in w.chunks_exact(bpr).zip(out.chunks_exact_mut(m)) {
            // Even and odd activation blocks into separate accumulators, as int16.rs.
            let mut acc = [[_mm256_setzero_ps(); 2]; M];
            let mut offsets = [0f32; M];
            for (c, block) in wr.iter().enumerate() {
                let (s, o) = block.ints_avx2(&mut q);
                for b in 0..SUBS {
                    let blk = SUBS * c + b;
                    for ((a, off), (xq, xd, xs)) in acc.iter_mut().zip(&mut offsets).zip(&rows) {
                        let xp = xq.as_ptr().add(QK * blk) as *const __m256i;
                        let lo = _mm256_madd_epi16(q[b][0], _mm256_loadu_si256(xp));
                        let hi = _mm256_madd_epi16(q[b][1], _mm256_loadu_si256(xp.add(1)));
                        let xb = xd[blk];
                        if T::HALVES {
                            a[0] = _mm256_fmadd_ps(_mm256_set1_ps(s[b][0] * xb), _mm256_cvtepi32_ps(lo), a[0]);
                            a[1] = _mm256_fmadd_ps(_mm256_set1_ps(s[b][1] * xb), _mm256_cvtepi32_ps(hi), a[1]);
                        } else {
                            let sum = _mm256_cvtepi32_ps(_mm256_add_epi32(lo, hi));
                            a[b % 2] = _mm256_fmadd_ps(_mm256_set1_ps(s[b][0] * xb), sum, a[b % 2]);
                            *off += o[b] * xs[blk];
                        }
                    }
                }
            }
            for ((o, a), off) in out[first..first + M].iter_mut().zip(&acc).zip(offsets) {
                *o = hsum(_mm256_add_ps(a[0], a[1])) - off;
            }
        }
    }
}
