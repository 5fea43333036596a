//! Dot products of quantized weight rows with f32 activations, and dequantization into f32,
//! block by block with AVX2 + FMA where the CPU has them (detected at run time), so a decode
//! step reads the 4–8 bits a weight is stored in and never writes a dequantized row out.
//!
//! Each storage type decodes one chunk of values (one block of 32, a k-quant super-block of
//! 256, or 32 half-precision values) into registers: `legacy.rs` (Q4_0 … Q8_0), `kquants.rs`
//! (Q2_K … Q6_K), `half.rs` (F16, BF16). The decoded values are exactly candle's
//! (`GgmlType::to_float`: the same products and sums, in the same order, without fusing), so
//! `dequantize` is bit-identical to candle's and the dot products differ from
//! dequantize-then-dot only in the order of the f32 sums (and, for the types whose blocks
//! are one scale times integers, in multiplying each block's sum by its scale once). Without AVX2 (or on other
//! architectures) the same functions run candle's scalar `to_float` one chunk at a time.
//! Decoding (`QWeight::matmul_rows`) dots the 32-value block types in integers instead, against
//! activations rounded to 16 bits (`int16.rs`), and Q4_K and Q6_K too (`int16_k.rs`); the f32
//! dots here serve the other k-quants and half precision, and every type when a caller asks for f32 activations.
//! AVX-512 is not used: this code was written and tested on an AVX2-only host.
mod half;
pub mod int16;
pub mod int16_k;
mod kquants;
mod legacy;

use candle_core::quantized::k_quants::GgmlType;
pub use int16::{BlockInts, Q16Rows};
pub use int16_k::SuperBlockInts;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Which implementation runs. `Kernel::detect()` picks the best the CPU has; tests force
/// each one to check them against each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// candle's `to_float`, one chunk at a time into a stack buffer, then a plain dot.
    Scalar,
    /// AVX2 + FMA + F16C decoding in registers.
    Avx2,
}

impl Kernel {
    pub fn detect() -> Kernel {
        use std::sync::OnceLock;
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                return Kernel::Avx2;
            }
            Kernel::Scalar
        })
    }

    /// What this CPU can run: always `Scalar`, and `Avx2` where detected.
    pub fn available() -> Vec<Kernel> {
        let mut ks = vec![Kernel::Scalar];
        if Kernel::detect() == Kernel::Avx2 {
            ks.push(Kernel::Avx2);
        }
        ks
    }
}

/// The largest chunk any storage type decodes at once (a k-quant super-block).
const MAX_CHUNK: usize = 256;

/// A storage type whose blocks decode a chunk at a time.
pub trait Decode: GgmlType {
    /// Values per decoded chunk: a multiple of 8 and of `BLCK_SIZE`, at most `MAX_CHUNK`.
    const CHUNK: usize;

    /// Writes the `CHUNK` values of the blocks at `blocks` into `CHUNK / 8` vectors at `out`.
    ///
    /// Implementations are `#[inline(always)]` without `#[target_feature]`, and are called only
    /// from the two `#[target_feature]` entry points below, into which they inline: a decoder
    /// that LLVM chose not to inline cost a call per block with its vectors passed through
    /// memory (18% of the decode profile).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `blocks` points at `CHUNK / BLCK_SIZE` blocks and `out`
    /// at room for `CHUNK / 8` vectors.
    #[cfg(target_arch = "x86_64")]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256);

    /// Whether each block of `CHUNK` values is one f16 scale `d` times integers (Q4_0, Q5_0,
    /// Q8_0): the dot products then sum `q · x` over the block and multiply by `d` once
    /// (ggml's order too), one multiply per block instead of one per value.
    const SCALED: bool = false;

    /// For `SCALED` types: the integers of the block at `blocks` as f32 (exact) into
    /// `CHUNK / 8` vectors at `out`, and the block's scale.
    ///
    /// # Safety
    /// As `decode_avx2`; called only when `SCALED`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_unscaled_avx2(blocks: *const Self, out: *mut __m256) -> f32 {
        let _ = (blocks, out);
        unreachable!("decode_unscaled_avx2 on a type that is not SCALED")
    }
}

/// `out[i] = Σ_c dequant(w)[c] · x[i·k + c]` for the `m` rows of `x` (k = the row's values):
/// one pass over the weight row serves every activation row.
pub fn dot_rows<T: Decode>(kernel: Kernel, w: &[T], x: &[f32], m: usize, out: &mut [f32]) {
    let k = w.len() * T::BLCK_SIZE;
    assert!(x.len() == m * k && out.len() == m, "dot_rows: {m} rows of {k} against {} values", x.len());
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2 {
        assert_eq!(Kernel::detect(), Kernel::Avx2, "dot_rows: AVX2 asked for on a CPU without it");
        // SAFETY: AVX2/FMA/F16C were detected; lengths checked above.
        unsafe {
            match m {
                1 => avx2::dot_rows::<T, 1>(w, x, out),
                2 => avx2::dot_rows::<T, 2>(w, x, out),
                3 => avx2::dot_rows::<T, 3>(w, x, out),
                4 => avx2::dot_rows::<T, 4>(w, x, out),
                _ => {
                    // More rows: four at a time, so the accumulators stay in registers.
                    for (xs, o) in x.chunks(4 * k).zip(out.chunks_mut(4)) {
                        dot_rows(kernel, w, xs, o.len(), o);
                    }
                }
            }
        }
        return;
    }
    let _ = kernel;
    dot_rows_scalar(w, x, out)
}

fn dot_rows_scalar<T: Decode>(w: &[T], x: &[f32], out: &mut [f32]) {
    let k = w.len() * T::BLCK_SIZE;
    let per = T::CHUNK / T::BLCK_SIZE;
    let mut buf = [0f32; MAX_CHUNK];
    out.iter_mut().for_each(|o| *o = 0.0);
    for (c, blocks) in w.chunks(per).enumerate() {
        let vals = &mut buf[..blocks.len() * T::BLCK_SIZE];
        T::to_float(blocks, vals);
        for (i, o) in out.iter_mut().enumerate() {
            let xs = &x[i * k + c * T::CHUNK..][..vals.len()];
            *o += dot(vals, xs);
        }
    }
}

/// The values of `w` into `out` (as candle's `to_float`, bit for bit).
pub fn dequantize<T: Decode>(kernel: Kernel, w: &[T], out: &mut [f32]) {
    assert_eq!(out.len(), w.len() * T::BLCK_SIZE, "dequantize: output length");
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2 {
        assert_eq!(Kernel::detect(), Kernel::Avx2, "dequantize: AVX2 asked for on a CPU without it");
        // SAFETY: AVX2/FMA/F16C were detected; lengths checked above.
        unsafe { avx2::dequantize(w, out) };
        return;
    }
    let _ = kernel;
    T::to_float(w, out)
}

/// Σ a·b in eight lanes (independent accumulators the compiler keeps in one SIMD register).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Decode, MAX_CHUNK};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows<T: Decode, const M: usize>(w: &[T], x: &[f32], out: &mut [f32]) {
        if T::SCALED {
            return dot_rows_scaled::<T, M>(w, x, out);
        }
        let k = w.len() * T::BLCK_SIZE;
        let per = T::CHUNK / T::BLCK_SIZE;
        let full = w.len() / per;
        let mut vals = [_mm256_setzero_ps(); MAX_CHUNK / 8];
        // Two accumulators per row: consecutive FMAs into one register would wait on each other.
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for c in 0..full {
            T::decode_avx2(w.as_ptr().add(c * per), vals.as_mut_ptr());
            for (i, a) in acc.iter_mut().enumerate() {
                let xp = x.as_ptr().add(i * k + c * T::CHUNK);
                for v in (0..T::CHUNK / 8).step_by(2) {
                    a[0] = _mm256_fmadd_ps(vals[v], _mm256_loadu_ps(xp.add(8 * v)), a[0]);
                    a[1] = _mm256_fmadd_ps(vals[v + 1], _mm256_loadu_ps(xp.add(8 * v + 8)), a[1]);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            out[i] = hsum(_mm256_add_ps(a[0], a[1]));
        }
        // Half-precision rows need not be a whole number of chunks.
        if full * per < w.len() {
            let mut tail = [0f32; 1];
            for i in 0..M {
                let r = &w[full * per..];
                let xs = &x[i * k + full * T::CHUNK..(i + 1) * k];
                super::dot_rows_scalar(r, xs, &mut tail);
                out[i] += tail[0];
            }
        }
    }

    /// `dot_rows` for `SCALED` types: per block, `d · Σ q·x`. The sums of even and odd
    /// blocks go to separate accumulators so consecutive blocks do not wait on each other.
    #[inline(always)]
    unsafe fn dot_rows_scaled<T: Decode, const M: usize>(w: &[T], x: &[f32], out: &mut [f32]) {
        const { assert!(M >= 1 && (!T::SCALED || T::CHUNK == T::BLCK_SIZE), "one block per chunk") };
        let k = w.len() * T::BLCK_SIZE;
        let mut q = [_mm256_setzero_ps(); MAX_CHUNK / 8];
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for (c, block) in w.iter().enumerate() {
            let d = _mm256_set1_ps(T::decode_unscaled_avx2(block, q.as_mut_ptr()));
            for (i, a) in acc.iter_mut().enumerate() {
                let xp = x.as_ptr().add(i * k + c * T::CHUNK);
                let mut s = [_mm256_mul_ps(q[0], _mm256_loadu_ps(xp)), _mm256_mul_ps(q[1], _mm256_loadu_ps(xp.add(8)))];
                for v in 2..T::CHUNK / 8 {
                    s[v % 2] = _mm256_fmadd_ps(q[v], _mm256_loadu_ps(xp.add(8 * v)), s[v % 2]);
                }
                a[c % 2] = _mm256_fmadd_ps(d, _mm256_add_ps(s[0], s[1]), a[c % 2]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            out[i] = hsum(_mm256_add_ps(a[0], a[1]));
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequantize<T: Decode>(w: &[T], out: &mut [f32]) {
        let per = T::CHUNK / T::BLCK_SIZE;
        let full = w.len() / per;
        let mut vals = [_mm256_setzero_ps(); MAX_CHUNK / 8];
        for c in 0..full {
            T::decode_avx2(w.as_ptr().add(c * per), vals.as_mut_ptr());
            let o = out.as_mut_ptr().add(c * T::CHUNK);
            for v in 0..T::CHUNK / 8 {
                _mm256_storeu_ps(o.add(8 * v), vals[v]);
            }
        }
        T::to_float(&w[full * per..], &mut out[full * T::CHUNK..]);
    }

    #[inline(always)]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}
