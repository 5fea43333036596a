//! Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0: blocks of 32 values with one f16 scale (and, for the
//! `_1` types, an f16 offset). Layouts as ggml's `block_q4_0` … `block_q8_0`; each value is
//! computed as candle's `to_float` does (`q · d`, or `q · d + m`, two roundings, no FMA).
// Off x86-64 only the scalar path runs: the block mirrors and helpers go unused there.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]
use super::{BlockInts, Decode};
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

/// The 32 values of a Q4_0 or Q5_0 block's nibbles, in order (low nibbles, then high), as bytes.
fn nibble_bytes(qs: &[u8; 16]) -> [u8; 32] {
    std::array::from_fn(|j| if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 })
}

/// The nibbles of `qs[16]` as 32 bytes in ggml's order: low nibbles in the low half, high in the high.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn nibble_bytes_avx2(qs: &[u8; 16]) -> __m256i {
    let v = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0xF);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask))
}

impl BlockInts for BlockQ4_0 {
    fn ints(&self) -> ([i8; 32], f16, f16) {
        // SAFETY: Q4_0 has BlockQ4_0's layout (checked by size above).
        let b = unsafe { &*(self as *const Self as *const Q4_0) };
        (nibble_bytes(&b.qs).map(|q| q as i8 - 8), b.d, f16::ZERO)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(block: *const Self) -> (__m256i, f16, f16) {
        let b = &*(block as *const Q4_0);
        (_mm256_sub_epi8(nibble_bytes_avx2(&b.qs), _mm256_set1_epi8(8)), b.d, f16::ZERO)
    }
}

/// Bit j of `qh` (little-endian) as 16 added to value j's nibble: the five-bit values of
/// Q5_0 and Q5_1 (0–31).
fn five_bit_values(qs: &[u8; 16], qh: &[u8; 4]) -> [u8; 32] {
    let (n, qh) = (nibble_bytes(qs), u32::from_le_bytes(*qh));
    std::array::from_fn(|j| n[j] | ((((qh >> j) & 1) as u8) << 4))
}

/// All ones in byte j where bit j of `qh` is set (ggml's `bytes_from_bits_32`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn bits_as_bytes(qh: &[u8; 4]) -> __m256i {
    let qh = _mm256_set1_epi32(i32::from_le_bytes(*qh));
    // Byte j takes byte j / 8 of qh (the shuffle stays within each 128-bit half).
    let spread = _mm256_shuffle_epi8(qh, _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
    // Byte j of the mask has every bit but j % 8 set.
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)), _mm256_set1_epi8(-1))
}

impl BlockInts for BlockQ4_1 {
    const OFFSET: bool = true;
    fn ints(&self) -> ([i8; 32], f16, f16) {
        // SAFETY: Q4_1 has BlockQ4_1's layout (checked by size above).
        let b = unsafe { &*(self as *const Self as *const Q4_1) };
        (nibble_bytes(&b.qs).map(|q| q as i8), b.d, b.m)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(block: *const Self) -> (__m256i, f16, f16) {
        let b = &*(block as *const Q4_1);
        (nibble_bytes_avx2(&b.qs), b.d, b.m)
    }
}

impl BlockInts for BlockQ5_0 {
    fn ints(&self) -> ([i8; 32], f16, f16) {
        // SAFETY: as for Q4_0.
        let b = unsafe { &*(self as *const Self as *const Q5_0) };
        (five_bit_values(&b.qs, &b.qh).map(|q| q as i8 - 16), b.d, f16::ZERO)
    }
    /// As ggml: the nibble or'ed with 0xF0 (minus 16, as an i8) where the fifth bit is clear.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(block: *const Self) -> (__m256i, f16, f16) {
        let b = &*(block as *const Q5_0);
        let high = _mm256_andnot_si256(bits_as_bytes(&b.qh), _mm256_set1_epi8(0xF0u8 as i8));
        (_mm256_or_si256(nibble_bytes_avx2(&b.qs), high), b.d, f16::ZERO)
    }
}

impl BlockInts for BlockQ5_1 {
    const OFFSET: bool = true;
    fn ints(&self) -> ([i8; 32], f16, f16) {
        // SAFETY: as for Q4_1.
        let b = unsafe { &*(self as *const Self as *const Q5_1) };
        (five_bit_values(&b.qs, &b.qh).map(|q| q as i8), b.d, b.m)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(block: *const Self) -> (__m256i, f16, f16) {
        let b = &*(block as *const Q5_1);
        let high = _mm256_and_si256(bits_as_bytes(&b.qh), _mm256_set1_epi8(0x10));
        (_mm256_or_si256(nibble_bytes_avx2(&b.qs), high), b.d, b.m)
    }
}

impl BlockInts for BlockQ8_0 {
    fn ints(&self) -> ([i8; 32], f16, f16) {
        // SAFETY: as for Q4_0.
        let b = unsafe { &*(self as *const Self as *const Q8_0) };
        (b.qs, b.d, f16::ZERO)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn ints_avx2(block: *const Self) -> (__m256i, f16, f16) {
        let b = &*(block as *const Q8_0);
        (_mm256_loadu_si256(b.qs.as_ptr() as *const __m256i), b.d, f16::ZERO)
    }
}
