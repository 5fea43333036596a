//! Half-precision rows (f16 and bf16 frozen bases), 32 values per chunk: F16C's conversion
//! for f16 and a 16-bit shift for bf16, both exact (as `half`'s `to_f32`, which candle uses).
// Off x86-64 only the scalar path runs: the block mirrors and helpers go unused there.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]
use super::Decode;
use half::{bf16, f16};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

impl Decode for f16 {
    const CHUNK: usize = 32;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        for v in 0..4 {
            *out.add(v) = _mm256_cvtph_ps(_mm_loadu_si128(blocks.add(8 * v) as *const __m128i));
        }
    }
}

impl Decode for bf16 {
    const CHUNK: usize = 32;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        for v in 0..4 {
            let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(blocks.add(8 * v) as *const __m128i));
            *out.add(v) = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
        }
    }
}
