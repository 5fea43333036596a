//! Fused softmax over the last dimension, with a fused backward `y * (g - sum(g * y))`.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernel::{contiguous, dispatch, exp_shifted, fused, max, row_len, rows_per_task, sum_zip, Real};

/// Softmax over the last dimension. Same semantics as
/// [`super::composite::softmax_last_dim`], which it falls back to off the CPU and for
/// dtypes other than f32/f64.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if !fused(&[x]) || x.rank() == 0 {
        return super::composite::softmax_last_dim(x);
    }
    x.apply_op1(Softmax)
}

struct Softmax;

fn forward<T: Real>(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let d = row_len("softmax", l)?;
    let x = contiguous::<T>(s, l)?;
    let mut out = vec![T::ZERO; x.len()];
    let chunk = rows_per_task(d) * d;
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(out, x)| {
        for (out, x) in out.chunks_mut(d).zip(x.chunks(d)) {
            let max = max(x);
            let sum = T::from_f64(exp_shifted(Some(out), x, max));
            for o in out.iter_mut() {
                *o /= sum;
            }
        }
    });
    Ok((T::to_cpu_storage_owned(out), l.shape().clone()))
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "peft-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!("softmax", s, forward(s, l))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::softmax_fwd((s, l))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(grad, &SoftmaxBwd { scale: 1.0 })?))
    }
}

/// `(y, g) -> scale * y * (g - sum(g * y))` per row (the scale serves a softmax whose
/// input was `x * scale`).
pub(crate) struct SoftmaxBwd {
    pub scale: f64,
}

fn backward<T: Real>(scale: f64, (s1, l1): (&CpuStorage, &Layout), (s2, l2): (&CpuStorage, &Layout)) -> Result<(CpuStorage, Shape)> {
    let d = row_len("softmax bwd", l1)?;
    if l1.dims() != l2.dims() {
        candle_core::bail!("softmax bwd: y {:?}, grad {:?}", l1.dims(), l2.dims());
    }
    let (y, g) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?);
    let mut out = vec![T::ZERO; y.len()];
    let chunk = rows_per_task(d) * d;
    let (scale, scaled) = (T::from_f64(scale), scale != 1.0);
    out.par_chunks_mut(chunk).zip(y.par_chunks(chunk)).zip(g.par_chunks(chunk)).for_each(|((out, y), g)| {
        for ((out, y), g) in out.chunks_mut(d).zip(y.chunks(d)).zip(g.chunks(d)) {
            let dot = sum_zip(y, g, |y, g| y * g);
            if scaled {
                for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
                    *o = y * (g - dot) * scale;
                }
            } else {
                for ((o, &y), &g) in out.iter_mut().zip(y).zip(g) {
                    *o = y * (g - dot);
                }
            }
        }
    });
    Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "peft-softmax-bwd"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!("softmax bwd", s1, backward(self.scale, (s1, l1), (s2, l2)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::softmax_bwd((s1, l1), (s2, l2))
    }
}
