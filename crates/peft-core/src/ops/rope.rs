//! Fused rotate-half RoPE. The rotation is orthogonal, so the backward is the same
//! kernel rotating the other way (sin negated); cos and sin are constants.
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernel::{contiguous, dispatch, fused, rows_per_task, Real};

/// Rotate-half RoPE. `x`: [b, heads, t, d]; `cos`, `sin`: [b, t, d/2] (or broadcastable
/// to it, e.g. [1, t, d/2]). Same semantics as [`super::composite::rope`], which it falls
/// back to off the CPU, for dtypes other than f32/f64 and for other shapes. No gradient
/// flows to `cos` and `sin`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !fused(&[x, cos, sin]) || x.rank() != 4 || x.dim(3)? % 2 != 0 {
        return super::composite::rope(x, cos, sin);
    }
    let (b, _, t, d) = x.dims4()?;
    let shape = (b, t, d / 2);
    match (cos.broadcast_as(shape), sin.broadcast_as(shape)) {
        (Ok(cos), Ok(sin)) => x.apply_op3(&cos, &sin, Rope { inverse: false }),
        _ => super::composite::rope(x, cos, sin),
    }
}

/// `[x1, x2] -> [x1 c - x2 s, x2 c + x1 s]`, or with `inverse` the transpose
/// `[x1 c + x2 s, x2 c - x1 s]`.
struct Rope {
    inverse: bool,
}

fn rotate<T: Real>(
    inverse: bool,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (b, h, t, d) = l1.shape().dims4()?;
    let half = d / 2;
    if d % 2 != 0 || l2.dims() != [b, t, half] || l3.dims() != [b, t, half] {
        candle_core::bail!("rope: x {:?}, cos {:?}, sin {:?}", l1.dims(), l2.dims(), l3.dims());
    }
    let (x, cos, sin) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?, contiguous::<T>(s3, l3)?);
    let mut out = vec![T::ZERO; x.len()];
    let rows = rows_per_task(d);
    out.par_chunks_mut(rows * d).zip(x.par_chunks(rows * d)).enumerate().for_each(|(task, (out, x))| {
        for (i, (out, x)) in out.chunks_mut(d).zip(x.chunks(d)).enumerate() {
            let row = task * rows + i;
            let at = (row / (h * t) * t + row % t) * half;
            let (c, s) = (&cos[at..at + half], &sin[at..at + half]);
            let (x1, x2) = x.split_at(half);
            let (o1, o2) = out.split_at_mut(half);
            for j in 0..half {
                if inverse {
                    o1[j] = x1[j] * c[j] + x2[j] * s[j];
                    o2[j] = x2[j] * c[j] - x1[j] * s[j];
                } else {
                    o1[j] = x1[j] * c[j] - x2[j] * s[j];
                    o2[j] = x2[j] * c[j] + x1[j] * s[j];
                }
            }
        }
    });
    Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "peft-rope"
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
        dispatch!("rope", s1, rotate(self.inverse, (s1, l1), (s2, l2), (s3, l3)))
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
        super::cuda::rope(self.inverse, (s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.apply_op3_no_bwd(cos, sin, &Rope { inverse: !self.inverse })?;
        Ok((Some(dx), None, None))
    }
}
