//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: blocks of 32 values with one f16 scale (and, for the
//! `_1` types, an f16 offset). Layouts as ggml's `block_q4_0` … `block_q8_0`; each value is
//! computed as candle's `to_float` does (`q · d`, or `q · d + m`, two roundings, no FMA).
// Off x86-64 only the scalar path runs: the block mirrors and helpers go unused there.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]
use super::Decode;
use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use half::f16;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

// candle keeps the block fields crate-private; these mirrors have the same `repr(C)` layout
// (ggml's), checked by size, and are read through a pointer cast.
#[repr(C)]
struct Q4_0 {
    d: f16,
    qs: [u8; 16],
}
#[repr(C)]
struct Q4_1 {
    d: f16,
    m: f16,
    qs: [u8; 16],
}
#[repr(C)]
struct Q5_0 {
    d: f16,
    qh: [u8; 4],
    qs: [u8; 16],
}
#[repr(C)]
struct Q5_1 {
    d: f16,
    m: f16,
    qh: [u8; 4],
    qs: [u8; 16],
}
#[repr(C)]
struct Q8_0 {
    d: f16,
    qs: [i8; 32],
}
const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<Q4_0>() == size_of::<BlockQ4_0>() && align_of::<Q4_0>() == align_of::<BlockQ4_0>());
    assert!(size_of::<Q4_1>() == size_of::<BlockQ4_1>() && align_of::<Q4_1>() == align_of::<BlockQ4_1>());
    assert!(size_of::<Q5_0>() == size_of::<BlockQ5_0>() && align_of::<Q5_0>() == align_of::<BlockQ5_0>());
    assert!(size_of::<Q5_1>() == size_of::<BlockQ5_1>() && align_of::<Q5_1>() == align_of::<BlockQ5_1>());
    assert!(size_of::<Q8_0>() == size_of::<BlockQ8_0>() && align_of::<Q8_0>() == align_of::<BlockQ8_0>());
};

/// An f16 scale as f32 through F16C (exact, as `half`'s `to_f32`, whose portable build
/// converts in software with branches: a tenth of the decode profile).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn f32_of(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16)))
}

/// Eight bytes at `p`, zero-extended to eight i32 lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn bytes8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

/// The 32 four-bit values of `qs[16]` in ggml's order: values 0–15 are the low nibbles of
/// bytes 0–15, values 16–31 their high nibbles. Four vectors of eight.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> [__m256i; 4] {
    let (a, b) = (bytes8(qs.as_ptr()), bytes8(qs.as_ptr().add(8)));
    let mask = _mm256_set1_epi32(0xF);
    [_mm256_and_si256(a, mask), _mm256_and_si256(b, mask), _mm256_srli_epi32(a, 4), _mm256_srli_epi32(b, 4)]
}

/// The fifth bit of each of the 32 values (bit i of `qh` for value i), as 0 or 16.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn fifth_bits(qh: &[u8; 4]) -> [__m256i; 4] {
    let bits = _mm256_set1_epi32(u32::from_le_bytes(*qh) as i32);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let one = _mm256_set1_epi32(1);
    let mut out = [_mm256_setzero_si256(); 4];
    for (g, o) in out.iter_mut().enumerate() {
        let shift = _mm256_add_epi32(lane, _mm256_set1_epi32(8 * g as i32));
        *o = _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(bits, shift), one), 4);
    }
    out
}

/// `out[g] = f32(q[g])`: exact (|q| < 2²⁴).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn unscaled(q: [__m256i; 4], out: *mut __m256) {
    for (g, q) in q.into_iter().enumerate() {
        *out.add(g) = _mm256_cvtepi32_ps(q);
    }
}

/// `out[g] = f32(q[g]) · d (+ m)`, as candle: a product, then a sum.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn scale(q: [__m256i; 4], d: f16, m: Option<f16>, out: *mut __m256) {
    let d = _mm256_set1_ps(f32_of(d));
    for (g, q) in q.into_iter().enumerate() {
        let v = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
        *out.add(g) = match m {
            Some(m) => _mm256_add_ps(v, _mm256_set1_ps(f32_of(m))),
            None => v,
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn minus(mut q: [__m256i; 4], k: i32) -> [__m256i; 4] {
    for v in q.iter_mut() {
        *v = _mm256_sub_epi32(*v, _mm256_set1_epi32(k));
    }
    q
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn or(a: [__m256i; 4], b: [__m256i; 4]) -> [__m256i; 4] {
    [_mm256_or_si256(a[0], b[0]), _mm256_or_si256(a[1], b[1]), _mm256_or_si256(a[2], b[2]), _mm256_or_si256(a[3], b[3])]
}

impl Decode for BlockQ4_0 {
    const CHUNK: usize = 32;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        let b = &*(blocks as *const Q4_0);
        scale(minus(nibbles(&b.qs), 8), b.d, None, out)
    }
    const SCALED: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_unscaled_avx2(blocks: *const Self, out: *mut __m256) -> f32 {
        let b = &*(blocks as *const Q4_0);
        unscaled(minus(nibbles(&b.qs), 8), out);
        f32_of(b.d)
    }
}

impl Decode for BlockQ4_1 {
    const CHUNK: usize = 32;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        let b = &*(blocks as *const Q4_1);
        scale(nibbles(&b.qs), b.d, Some(b.m), out)
    }
}

impl Decode for BlockQ5_0 {
    const CHUNK: usize = 32;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        let b = &*(blocks as *const Q5_0);
        scale(minus(or(nibbles(&b.qs), fifth_bits(&b.qh)), 16), b.d, None, out)
    }
    const SCALED: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_unscaled_avx2(blocks: *const Self, out: *mut __m256) -> f32 {
        let b = &*(blocks as *const Q5_0);
        unscaled(minus(or(nibbles(&b.qs), fifth_bits(&b.qh)), 16), out);
        f32_of(b.d)
    }
}

impl Decode for BlockQ5_1 {
    const CHUNK: usize = 32;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        let b = &*(blocks as *const Q5_1);
        scale(or(nibbles(&b.qs), fifth_bits(&b.qh)), b.d, Some(b.m), out)
    }
}

impl Decode for BlockQ8_0 {
    const CHUNK: usize = 32;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        let b = &*(blocks as *const Q8_0);
        scale(q8_bytes(b), b.d, None, out)
    }
    const SCALED: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_unscaled_avx2(blocks: *const Self, out: *mut __m256) -> f32 {
        let b = &*(blocks as *const Q8_0);
        unscaled(q8_bytes(b), out);
        f32_of(b.d)
    }
}

/// The 32 signed bytes of a Q8_0 block, four vectors of eight.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q8_bytes(b: &Q8_0) -> [__m256i; 4] {
    let p = b.qs.as_ptr();
    let mut q = [_mm256_setzero_si256(); 4];
    for (g, v) in q.iter_mut().enumerate() {
        *v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8 * g) as *const __m128i));
    }
    q
}
