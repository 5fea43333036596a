//! The k-quants: super-blocks of 256 values. Q4_K, Q5_K and Q6_K decode in registers, each
//! value computed as candle's `to_float` does (`d1 · q − m1` for Q4_K/Q5_K, `(d · sc) · q` for
//! Q6_K; layouts as ggml's `block_q4_K` …). Q2_K and Q3_K, rare in practice (only the
//! smallest llama.cpp mixes use them), go through candle's scalar `to_float` one
//! super-block at a time.
// Off x86-64 only the scalar path runs: the block mirrors and helpers go unused there.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]
#[cfg(target_arch = "x86_64")]
use super::legacy::{bytes8, f32_of};
use super::Decode;
use candle_core::quantized::k_quants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, GgmlType};
use half::f16;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

// Mirrors of candle's crate-private block layouts (ggml's), checked by size.
#[repr(C)]
pub(super) struct Q4K {
    pub(super) d: f16,
    pub(super) dmin: f16,
    pub(super) scales: [u8; 12],
    pub(super) qs: [u8; 128],
}
#[repr(C)]
struct Q5K {
    d: f16,
    dmin: f16,
    scales: [u8; 12],
    qh: [u8; 32],
    qs: [u8; 128],
}
#[repr(C)]
pub(super) struct Q6K {
    pub(super) ql: [u8; 128],
    pub(super) qh: [u8; 64],
    pub(super) scales: [i8; 16],
    pub(super) d: f16,
}
const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<Q4K>() == size_of::<BlockQ4K>() && align_of::<Q4K>() == align_of::<BlockQ4K>());
    assert!(size_of::<Q5K>() == size_of::<BlockQ5K>() && align_of::<Q5K>() == align_of::<BlockQ5K>());
    assert!(size_of::<Q6K>() == size_of::<BlockQ6K>() && align_of::<Q6K>() == align_of::<BlockQ6K>());
};

/// Scale and minimum of sub-block `j` (six bits each, packed in 12 bytes): ggml's
/// `get_scale_min_k4`.
pub(super) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q4_K and Q5_K: for each 64 values (`j`), the low nibbles of 32 bytes are sub-block 2j and
/// the high nibbles sub-block 2j + 1; Q5_K adds bit 2j / 2j + 1 of `qh[l]` as 16.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn decode_k4(d: f16, dmin: f16, scales: &[u8; 12], qs: &[u8; 128], qh: Option<&[u8; 32]>, out: *mut __m256) {
    let (d, min) = (f32_of(d), f32_of(dmin));
    let (mask, one) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(1));
    for j in 0..4 {
        let (sc, m) = scale_min_k4(2 * j, scales);
        let (d1, m1) = (_mm256_set1_ps(d * sc as f32), _mm256_set1_ps(min * m as f32));
        let (sc, m) = scale_min_k4(2 * j + 1, scales);
        let (d2, m2) = (_mm256_set1_ps(d * sc as f32), _mm256_set1_ps(min * m as f32));
        for t in 0..4 {
            let v = bytes8(qs.as_ptr().add(32 * j + 8 * t));
            let (mut lo, mut hi) = (_mm256_and_si256(v, mask), _mm256_srli_epi32(v, 4));
            if let Some(qh) = qh {
                let h = bytes8(qh.as_ptr().add(8 * t));
                let hl = _mm256_and_si256(_mm256_srlv_epi32(h, _mm256_set1_epi32(2 * j as i32)), one);
                let hh = _mm256_and_si256(_mm256_srlv_epi32(h, _mm256_set1_epi32(2 * j as i32 + 1)), one);
                lo = _mm256_or_si256(lo, _mm256_slli_epi32(hl, 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi32(hh, 4));
            }
            *out.add(8 * j + t) = _mm256_sub_ps(_mm256_mul_ps(d1, _mm256_cvtepi32_ps(lo)), m1);
            *out.add(8 * j + 4 + t) = _mm256_sub_ps(_mm256_mul_ps(d2, _mm256_cvtepi32_ps(hi)), m2);
        }
    }
}

impl Decode for BlockQ4K {
    const CHUNK: usize = 256;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        let b = &*(blocks as *const Q4K);
        decode_k4(b.d, b.dmin, &b.scales, &b.qs, None, out)
    }
}

impl Decode for BlockQ5K {
    const CHUNK: usize = 256;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        let b = &*(blocks as *const Q5K);
        decode_k4(b.d, b.dmin, &b.scales, &b.qs, Some(&b.qh), out)
    }
}

impl Decode for BlockQ6K {
    const CHUNK: usize = 256;
    /// Per 128 values (`n`): bytes `ql[l]`, `ql[l + 32]` give the low four bits of values
    /// l, l + 32 (low nibbles) and l + 64, l + 96 (high nibbles); `qh[l]` the top two bits of
    /// each, two at a time. Sixteen values share each i8 scale.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
        let b = &*(blocks as *const Q6K);
        let d = f32_of(b.d);
        let (mask, three, bias) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(3), _mm256_set1_epi32(32));
        for n in 0..2 {
            let (ql, qh, sc) = (b.ql.as_ptr().add(64 * n), b.qh.as_ptr().add(32 * n), &b.scales[8 * n..]);
            for t in 0..4 {
                let (a, c, h) = (bytes8(ql.add(8 * t)), bytes8(ql.add(32 + 8 * t)), bytes8(qh.add(8 * t)));
                let q = [
                    _mm256_or_si256(_mm256_and_si256(a, mask), top_bits(h, 0, three)),
                    _mm256_or_si256(_mm256_and_si256(c, mask), top_bits(h, 2, three)),
                    _mm256_or_si256(_mm256_srli_epi32(a, 4), top_bits(h, 4, three)),
                    _mm256_or_si256(_mm256_srli_epi32(c, 4), top_bits(h, 6, three)),
                ];
                for (g, q) in q.into_iter().enumerate() {
                    let s = _mm256_set1_ps(d * sc[t / 2 + 2 * g] as f32);
                    *out.add(16 * n + 4 * g + t) = _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_sub_epi32(q, bias)));
                }
            }
        }
    }
}

/// Bits `s`, `s + 1` of each lane of `h`, moved to bits 4 and 5.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn top_bits(h: __m256i, s: i32, three: __m256i) -> __m256i {
    _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(h, _mm256_set1_epi32(s)), three), 4)
}

/// Q2_K and Q3_K: candle's scalar dequantizer into a stack buffer, then loaded.
macro_rules! decode_by_to_float {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            const CHUNK: usize = 256;
            #[cfg(target_arch = "x86_64")]
            #[inline(always)]
            unsafe fn decode_avx2(blocks: *const Self, out: *mut __m256) {
                let mut vals = [0f32; 256];
                <$t as GgmlType>::to_float(std::slice::from_raw_parts(blocks, 1), &mut vals);
                for v in 0..32 {
                    *out.add(v) = _mm256_loadu_ps(vals.as_ptr().add(8 * v));
                }
            }
        }
    )*};
}
decode_by_to_float!(BlockQ2K, BlockQ3K);
