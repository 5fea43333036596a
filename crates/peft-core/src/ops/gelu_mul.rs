//! Gemma's gated FFN activation `gelu_tanh(gate) * up`, fused, with one backward kernel for
//! both inputs. candle's `gelu` calls libm's scalar `tanhf` per element (17% of Gemma 3's
//! prompt processing) and its backward rebuilds the tanh from several tensor ops.
//!
//! `0.5·x·(1 + tanh(u))` equals `x · s` with `s = sigmoid(2u) = 1 / (1 + e)`, `e = e^(−2u)`
//! (as `1 + tanh(u) = 2·sigmoid(2u)`), with `u = √(2/π)·x·(1 + 0.044715·x²)` (transformers'
//! `gelu_pytorch_tanh`, candle's `gelu`). That form needs one exp and no cancellation: for
//! very negative `x` it keeps the tiny result's relative precision, where `1 + tanh` rounds
//! to zero. Its derivative is `s + x·s·(1 − s)·2u'` with `1 − s = e·s` and
//! `u' = √(2/π)·(1 + 3·0.044715·x²)`.
//!
//! Far tails, where the exact function is below any float the result is used with: `x` is
//! raised to −20 first (|gelu(−20)| < 1e−260; f32 keeps its exp argument ≤ 88.3, so there
//! gelu(x ≤ −10.1) is x / e^88.3, below 1e−37), and the derivative's `x·u'` factor takes `x` at
//! most 10 (beyond, `e·s` < 1e−37 and gelu' is 1 exactly), so no product overflows into NaN.
//!
//! The f32 kernel is Cephes' `expf` on AVX2 + FMA where detected (eight lanes; the tail of a
//! slice goes through the same lanes, zero-padded, so an element's result never depends on
//! how the tensor was split), the standard library's `exp` elsewhere and for f64. The forward
//! is the same kernel whether or not a gradient is tracked: a trained adapter's logits equal
//! the reloaded adapter's bit for bit.
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::kernel::{dispatch, fused_cpu, gated_backward, gated_forward, Real};
use super::qdot::Kernel;

/// `√(2/π)`, as candle's `SQRT_TWO_OVER_PI_F32` / `_F64`.
const SQRT_TWO_OVER_PI: f64 = 0.797_884_560_802_865_4;
const A: f64 = 0.044715;
/// Where `x` is raised to before anything else (see the module comment).
const LOWEST_X: f64 = -20.0;
/// The largest `x` the derivative's `x·u'` factor takes.
const FLAT_X: f64 = 10.0;
/// f32's exp argument clamp, AVX2's (Cephes') and the scalar kernel's alike.
const F32_MAX_EXP: f32 = 88.3;

/// `gelu_tanh(gate) * up` for tensors of one shape. Same semantics as
/// [`super::composite::gelu_mul`] (candle's `gelu`), which it falls back to off the CPU
/// (there is no CUDA kernel), for dtypes other than f32/f64 and for shapes that differ.
pub fn gelu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !fused_cpu(&[gate, up]) || gate.dims() != up.dims() {
        return super::composite::gelu_mul(gate, up);
    }
    gate.apply_op2(up, GeluMul)
}

/// `out[i] = gelu_tanh(gate[i]) · up[i]` through `kernel` (tests compare the kernels).
pub fn gelu_mul_slices(kernel: Kernel, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == out.len() && up.len() == out.len(), "gelu_mul: lengths {} {} {}", gate.len(), up.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if avx2_checked(kernel) {
        // SAFETY: AVX2 and FMA were detected; lengths checked above.
        unsafe { avx2::forward(gate, up, out) };
        return;
    }
    let _ = kernel;
    forward_scalar(gate, up, out);
}

/// The backward through `kernel`: `dgate[i] = grad[i]·up[i]·gelu'(gate[i])`,
/// `dup[i] = grad[i]·gelu(gate[i])`.
pub fn gelu_mul_backward_slices(kernel: Kernel, gate: &[f32], up: &[f32], grad: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    let n = gate.len();
    assert!(up.len() == n && grad.len() == n && dgate.len() == n && dup.len() == n, "gelu_mul bwd: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if avx2_checked(kernel) {
        // SAFETY: AVX2 and FMA were detected; lengths checked above.
        unsafe { avx2::backward(gate, up, grad, dgate, dup) };
        return;
    }
    let _ = kernel;
    backward_scalar(gate, up, grad, dgate, dup);
}

#[cfg(target_arch = "x86_64")]
fn avx2_checked(kernel: Kernel) -> bool {
    if kernel == Kernel::Avx2 {
        assert_eq!(Kernel::detect(), Kernel::Avx2, "gelu_mul: AVX2 asked for on a CPU without it");
    }
    kernel == Kernel::Avx2
}

/// `(x, e)`: `x` raised to [`LOWEST_X`] and `e = e^(−2u(x))`, its exp argument clamped
/// for f32 (for f64 it stays below 604 here, where exp is finite).
#[inline(always)]
fn raised_and_exp<T: Real>(x: T) -> (T, T) {
    let lowest = T::from_f64(LOWEST_X);
    let x = if x < lowest { lowest } else { x };
    let u = T::from_f64(SQRT_TWO_OVER_PI) * x * (T::ONE + T::from_f64(A) * x * x);
    let z = T::from_f64(-2.0) * u;
    let max = T::from_f64(if T::DTYPE == DType::F32 { F32_MAX_EXP as f64 } else { f64::MAX });
    (x, (if z > max { max } else { z }).exp())
}

fn forward_scalar<T: Real>(gate: &[T], up: &[T], out: &mut [T]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let (x, e) = raised_and_exp(g);
        *o = x / (T::ONE + e) * u;
    }
}

fn backward_scalar<T: Real>(gate: &[T], up: &[T], grad: &[T], dgate: &mut [T], dup: &mut [T]) {
    let (c, a3, two, flat) = (T::from_f64(SQRT_TWO_OVER_PI), T::from_f64(3.0 * A), T::from_f64(2.0), T::from_f64(FLAT_X));
    for i in 0..gate.len() {
        let (x, e) = raised_and_exp(gate[i]);
        let one_e = T::ONE + e;
        let (gelu, s) = (x / one_e, T::ONE / one_e);
        let xd = if x > flat { flat } else { x };
        let du = c * (T::ONE + a3 * xd * xd);
        let dgelu = s * (T::ONE + two * xd * du * (e * s));
        dgate[i] = grad[i] * up[i] * dgelu;
        dup[i] = grad[i] * gelu;
    }
}

/// The kernels of one dtype: f32 takes AVX2 where detected, f64 the scalar loops.
trait GeluKernels: Real {
    fn forward(gate: &[Self], up: &[Self], out: &mut [Self]);
    fn backward(gate: &[Self], up: &[Self], grad: &[Self], dgate: &mut [Self], dup: &mut [Self]);
}

impl GeluKernels for f32 {
    fn forward(gate: &[f32], up: &[f32], out: &mut [f32]) {
        gelu_mul_slices(Kernel::detect(), gate, up, out)
    }
    fn backward(gate: &[f32], up: &[f32], grad: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        gelu_mul_backward_slices(Kernel::detect(), gate, up, grad, dgate, dup)
    }
}

impl GeluKernels for f64 {
    fn forward(gate: &[f64], up: &[f64], out: &mut [f64]) {
        forward_scalar(gate, up, out)
    }
    fn backward(gate: &[f64], up: &[f64], grad: &[f64], dgate: &mut [f64], dup: &mut [f64]) {
        backward_scalar(gate, up, grad, dgate, dup)
    }
}

struct GeluMul;

fn forward<T: GeluKernels>(gate: (&CpuStorage, &Layout), up: (&CpuStorage, &Layout)) -> Result<(CpuStorage, Shape)> {
    gated_forward("gelu_mul", gate, up, T::forward)
}

impl CustomOp2 for GeluMul {
    fn name(&self) -> &'static str {
        "peft-gelu-mul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!("gelu_mul", s1, forward((s1, l1), (s2, l2)))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One kernel, one buffer: [2, ...shape], dgate then dup.
        let packed = gate.apply_op3_no_bwd(up, grad, &GeluMulBwd)?;
        Ok((Some(packed.get(0)?), Some(packed.get(1)?)))
    }
}

/// `(gate, up, g) -> [g·up·gelu'(gate), g·gelu(gate)]`.
struct GeluMulBwd;

fn backward<T: GeluKernels>(
    gate: (&CpuStorage, &Layout),
    up: (&CpuStorage, &Layout),
    grad: (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    gated_backward("gelu_mul bwd", gate, up, grad, T::backward)
}

impl CustomOp3 for GeluMulBwd {
    fn name(&self) -> &'static str {
        "peft-gelu-mul-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        dispatch!("gelu_mul bwd", s1, backward((s1, l1), (s2, l2), (s3, l3)))
    }
}

/// The scalar loops' arithmetic eight lanes at a time, in the same order (no fused
/// multiply-adds outside the exp), so the kernels differ only by the exp's rounding.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{A, F32_MAX_EXP, FLAT_X, LOWEST_X, SQRT_TWO_OVER_PI};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let whole = out.len() / 8 * 8;
        for i in (0..whole).step_by(8) {
            let y = gelu_mul8(_mm256_loadu_ps(gate.as_ptr().add(i)), _mm256_loadu_ps(up.as_ptr().add(i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
        }
        if whole < out.len() {
            store_part(&mut out[whole..], gelu_mul8(padded(&gate[whole..]), padded(&up[whole..])));
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn backward(gate: &[f32], up: &[f32], grad: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
        let whole = gate.len() / 8 * 8;
        let load = |s: &[f32], i: usize| _mm256_loadu_ps(s.as_ptr().add(i));
        for i in (0..whole).step_by(8) {
            let (dg, du) = gelu_mul_bwd8(load(gate, i), load(up, i), load(grad, i));
            _mm256_storeu_ps(dgate.as_mut_ptr().add(i), dg);
            _mm256_storeu_ps(dup.as_mut_ptr().add(i), du);
        }
        if whole < gate.len() {
            let (dg, du) = gelu_mul_bwd8(padded(&gate[whole..]), padded(&up[whole..]), padded(&grad[whole..]));
            store_part(&mut dgate[whole..], dg);
            store_part(&mut dup[whole..], du);
        }
    }

    /// A slice's tail (under 8 values) zero-padded into one vector: the tail runs through
    /// the same lanes as the rest, so an element's result never depends on where a slice ends.
    #[inline(always)]
    unsafe fn padded(tail: &[f32]) -> __m256 {
        let mut buf = [0f32; 8];
        buf[..tail.len()].copy_from_slice(tail);
        _mm256_loadu_ps(buf.as_ptr())
    }

    #[inline(always)]
    unsafe fn store_part(tail: &mut [f32], v: __m256) {
        let mut buf = [0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), v);
        tail.copy_from_slice(&buf[..tail.len()]);
    }

    #[inline(always)]
    unsafe fn gelu_mul8(gate: __m256, up: __m256) -> __m256 {
        let (x, e) = raised_and_exp(gate);
        _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e)), up)
    }

    /// `(g·up·gelu'(gate), g·gelu(gate))`, as `backward_scalar`.
    #[inline(always)]
    unsafe fn gelu_mul_bwd8(gate: __m256, up: __m256, g: __m256) -> (__m256, __m256) {
        let one = _mm256_set1_ps(1.0);
        let (x, e) = raised_and_exp(gate);
        let one_e = _mm256_add_ps(one, e);
        let (gelu, s) = (_mm256_div_ps(x, one_e), _mm256_div_ps(one, one_e));
        // min(FLAT_X, x): a NaN x stays NaN (the second operand is returned).
        let xd = _mm256_min_ps(_mm256_set1_ps(FLAT_X as f32), x);
        let a3xd = _mm256_mul_ps(_mm256_set1_ps((3.0 * A) as f32), xd);
        let du = _mm256_mul_ps(_mm256_set1_ps(SQRT_TWO_OVER_PI as f32), _mm256_add_ps(one, _mm256_mul_ps(a3xd, xd)));
        let t = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.0), xd), du), _mm256_mul_ps(e, s));
        let dgelu = _mm256_mul_ps(s, _mm256_add_ps(one, t));
        (_mm256_mul_ps(_mm256_mul_ps(g, up), dgelu), _mm256_mul_ps(g, gelu))
    }

    /// The scalar `raised_and_exp`: `max(LOWEST_X, x)` keeps a NaN `x` (the second operand).
    #[inline(always)]
    unsafe fn raised_and_exp(x: __m256) -> (__m256, __m256) {
        let x = _mm256_max_ps(_mm256_set1_ps(LOWEST_X as f32), x);
        let inner = _mm256_add_ps(_mm256_set1_ps(1.0), _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(A as f32), x), x));
        let u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(SQRT_TWO_OVER_PI as f32), x), inner);
        (x, exp(_mm256_mul_ps(_mm256_set1_ps(-2.0), u)))
    }

    /// Cephes' `expf`: `x = n·ln 2 + r` with ln 2 in two parts (exact products), `e^r` by a
    /// degree-5 polynomial, times 2ⁿ built in the exponent bits. Inputs are clamped to
    /// [−87.3, 88.3], where 2ⁿ stays a normal float: the result then saturates at about
    /// 1.2e−38 and 2.2e38 instead of going subnormal or infinite (gelu only adds one to it
    /// and divides).
    #[inline(always)]
    unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(F32_MAX_EXP));
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
