//! Gemma's gated FFN activation `gelu_tanh(gate) * up` for inference, vectorized. candle's
//! `gelu` calls libm's scalar `tanhf` per element: 16% of Gemma 3's prompt processing.
//!
//! `0.5·x·(1 + tanh(u))` equals `x · sigmoid(2u) = x / (1 + e^(−2u))` (as
//! `1 + tanh(u) = 2·sigmoid(2u)`), with `u = √(2/π)·x·(1 + 0.044715·x²)` (transformers'
//! `gelu_pytorch_tanh`, candle's `gelu`). That form needs one exp and no cancellation: for
//! very negative `x` it keeps the tiny result's relative precision, where `1 + tanh` rounds to
//! zero. With AVX2 + FMA the exp is Cephes' `expf` (range reduction by ln 2 in two parts, a
//! degree-5 polynomial: within 2 ulp), eight lanes at a time; elsewhere the same formula with
//! the standard library's `exp`. When a gradient may be asked for, candle's differentiable
//! `gelu` runs instead (training keeps its existing backward).
use super::qdot::Kernel;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per rayon task.
const BLOCK: usize = 1 << 14;

/// `√(2/π)`, as candle's `SQRT_TWO_OVER_PI_F32`.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

/// `gelu_tanh(gate) * up`; the vectorized kernel when neither input tracks a gradient and
/// both are f32 CPU tensors of one shape, candle's `gelu` otherwise.
pub fn gelu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let plain = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op();
    if plain(gate) && plain(up) && gate.dims() == up.dims() && gate.elem_count() > 0 {
        return gate.apply_op2_no_bwd(up, &GeluMul);
    }
    gate.gelu()? * up
}

/// `out[i] = gelu_tanh(gate[i]) · up[i]` through `kernel` (tests compare the kernels).
pub fn gelu_mul_slices(kernel: Kernel, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == out.len() && up.len() == out.len(), "gelu_mul: lengths {} {} {}", gate.len(), up.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2 {
        assert_eq!(Kernel::detect(), Kernel::Avx2, "gelu_mul: AVX2 asked for on a CPU without it");
        // SAFETY: AVX2 and FMA were detected; lengths checked above.
        unsafe { avx2::gelu_mul(gate, up, out) };
        return;
    }
    let _ = kernel;
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = gelu_scalar(g) * u;
    }
}

#[inline(always)]
fn gelu_scalar(x: f32) -> f32 {
    let u = SQRT_TWO_OVER_PI * x * (1.0 + 0.044715 * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

struct GeluMul;

impl CustomOp2 for GeluMul {
    fn name(&self) -> &'static str {
        "peft-gelu-mul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (gate, up) = (super::kernel::contiguous::<f32>(s1, l1)?, super::kernel::contiguous::<f32>(s2, l2)?);
        let mut out = vec![0f32; gate.len()];
        let kernel = Kernel::detect();
        out.par_chunks_mut(BLOCK).zip(gate.par_chunks(BLOCK)).zip(up.par_chunks(BLOCK)).for_each(|((o, g), u)| {
            gelu_mul_slices(kernel, g, u, o);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{gelu_scalar, SQRT_TWO_OVER_PI};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len() / 8 * 8;
        let (c, a, one, minus_two) =
            (_mm256_set1_ps(SQRT_TWO_OVER_PI), _mm256_set1_ps(0.044715), _mm256_set1_ps(1.0), _mm256_set1_ps(-2.0));
        for i in (0..n).step_by(8) {
            let x = _mm256_loadu_ps(gate.as_ptr().add(i));
            // u = c·x·(1 + a·x²), in candle's order of operations.
            let inner = _mm256_add_ps(one, _mm256_mul_ps(_mm256_mul_ps(a, x), x));
            let u = _mm256_mul_ps(_mm256_mul_ps(c, x), inner);
            let e = exp(_mm256_mul_ps(minus_two, u));
            let g = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(g, _mm256_loadu_ps(up.as_ptr().add(i))));
        }
        for i in n..out.len() {
            out[i] = gelu_scalar(gate[i]) * up[i];
        }
    }

    /// Cephes' `expf`: `x = n·ln 2 + r` with ln 2 in two parts (exact products), `e^r` by a
    /// degree-5 polynomial, times 2ⁿ built in the exponent bits. Inputs are clamped to
    /// [−87.3, 88.3], where 2ⁿ stays a normal float: the result then saturates at about
    /// 1.2e−38 and 2.2e38 instead of going subnormal or infinite (the gelu above only adds
    /// one to it and divides).
    #[inline(always)]
    pub(super) unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(88.3));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for k in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(k));
        }
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
        let bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }
}
