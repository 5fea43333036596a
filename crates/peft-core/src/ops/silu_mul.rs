//! Fused SwiGLU gate `silu(gate) * up`, with one backward kernel for both inputs.
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::kernel::{dispatch, fused, gated_backward, gated_forward, Real};

/// `silu(gate) * up` for tensors of one shape. Same semantics as
/// [`super::composite::silu_mul`], which it falls back to off the CPU, for dtypes other
/// than f32/f64 and for shapes that differ.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if !fused(&[gate, up]) || gate.dims() != up.dims() {
        return super::composite::silu_mul(gate, up);
    }
    gate.apply_op2(up, SiluMul)
}

/// `(sigmoid(x), silu(x))`, silu as candle computes it.
#[inline(always)]
fn sigmoid_silu<T: Real>(x: T) -> (T, T) {
    let e = T::ONE + (T::ZERO - x).exp();
    (T::ONE / e, x / e)
}

struct SiluMul;

fn forward<T: Real>(gate: (&CpuStorage, &Layout), up: (&CpuStorage, &Layout)) -> Result<(CpuStorage, Shape)> {
    gated_forward("silu_mul", gate, up, |gate: &[T], up: &[T], out: &mut [T]| {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = sigmoid_silu(g).1 * u;
        }
    })
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "peft-silu-mul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!("silu_mul", s1, forward((s1, l1), (s2, l2)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::silu_mul_fwd((s1, l1), (s2, l2))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One kernel, one buffer: [2, ...shape], dgate then dup.
        let packed = gate.apply_op3_no_bwd(up, grad, &SiluMulBwd)?;
        Ok((Some(packed.get(0)?), Some(packed.get(1)?)))
    }
}

/// `(gate, up, g) -> [g * up * silu'(gate), g * silu(gate)]` with
/// `silu'(x) = sigmoid(x) * (1 - silu(x)) + silu(x)` (candle's form).
struct SiluMulBwd;

fn backward<T: Real>(
    gate: (&CpuStorage, &Layout),
    up: (&CpuStorage, &Layout),
    grad: (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    gated_backward("silu_mul bwd", gate, up, grad, |gate: &[T], up: &[T], grad: &[T], dgate: &mut [T], dup: &mut [T]| {
        for i in 0..dgate.len() {
            let (sig, silu) = sigmoid_silu(gate[i]);
            dgate[i] = grad[i] * up[i] * (sig * (T::ONE - silu) + silu);
            dup[i] = grad[i] * silu;
        }
    })
}

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "peft-silu-mul-bwd"
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
        dispatch!("silu_mul bwd", s1, backward((s1, l1), (s2, l2), (s3, l3)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::silu_mul_bwd((s1, l1), (s2, l2), (s3, l3))
    }
}
