//! Fused RMSNorm. Forward: one pass per row. Backward: one fused kernel giving dx per
//! row and dweight as per-block partial sums added in a fixed order (deterministic).
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::kernel::{contiguous, dispatch, fused, row_len, rows_per_task, sum_zip, Real};

/// LLaMA RMSNorm, `x * rsqrt(mean(x^2) + eps) * weight` over the last dimension.
/// Same semantics as [`super::composite::rms_norm`], which it falls back to off the CPU,
/// for dtypes other than f32/f64 (where the f32 round trip matters) and for a weight
/// that is not a vector of the row length.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let fits = fused(&[x, weight]) && x.rank() >= 1 && weight.dims() == [x.dim(D::Minus1)?];
    if !fits {
        return super::composite::rms_norm(x, weight, eps);
    }
    x.apply_op2(weight, RmsNorm { eps })
}

struct RmsNorm {
    eps: f64,
}

/// `1 / sqrt(mean(x^2) + eps)`, in the order candle's composite computes it.
#[inline]
fn inv_rms<T: Real>(x: &[T], eps: f64) -> T {
    let ss = sum_zip(x, x, |a, b| a * b);
    T::ONE / (ss * T::from_f64(1.0 / x.len() as f64) + T::from_f64(eps)).sqrt()
}

fn forward<T: Real>(eps: f64, (s1, l1): (&CpuStorage, &Layout), (s2, l2): (&CpuStorage, &Layout)) -> Result<(CpuStorage, Shape)> {
    let d = row_len("rms_norm", l1)?;
    if l2.shape().elem_count() != d {
        candle_core::bail!("rms_norm: weight {:?} for rows of {d}", l2.dims());
    }
    let (x, w) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?);
    let mut out = vec![T::ZERO; x.len()];
    let chunk = rows_per_task(d) * d;
    out.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(out, x)| {
        for (out, x) in out.chunks_mut(d).zip(x.chunks(d)) {
            let inv = inv_rms(x, eps);
            for ((o, &x), &w) in out.iter_mut().zip(x).zip(w.iter()) {
                *o = x * inv * w;
            }
        }
    });
    Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "peft-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!("rms_norm", s1, forward(self.eps, (s1, l1), (s2, l2)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::cuda::rms_norm_fwd(self.eps, (s1, l1), (s2, l2))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, d) = (x.elem_count(), w.elem_count());
        // One kernel, one buffer: dx (n values) followed by dweight (d values).
        let packed = x.apply_op3_no_bwd(w, grad, &RmsNormBwd { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = packed.narrow(0, n, d)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `(x, weight, grad) -> [dx.flatten(), dweight]`, with `r = inv_rms(x)`:
/// `dx = r * g * w - r^3 * x * mean(g * w * x)`, `dweight = sum_rows(g * x * r)`.
struct RmsNormBwd {
    eps: f64,
}

fn backward<T: Real>(
    eps: f64,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let d = row_len("rms_norm bwd", l1)?;
    let (x, w, g) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?, contiguous::<T>(s3, l3)?);
    if w.len() != d || g.len() != x.len() {
        candle_core::bail!("rms_norm bwd: shapes {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
    }
    let n = x.len();
    let mut out = vec![T::ZERO; n + d];
    let (dx, dw) = out.split_at_mut(n);
    let inv_d = T::from_f64(1.0 / d as f64);
    let chunk = rows_per_task(d) * d;
    let partials: Vec<Vec<T>> = dx
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .zip(g.par_chunks(chunk))
        .map(|((dx, x), g)| {
            let mut dw = vec![T::ZERO; d];
            for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                let r = inv_rms(x, eps);
                let dot = (0..d).fold(T::ZERO, |acc, j| acc + g[j] * w[j] * x[j]);
                let c = r * r * r * dot * inv_d;
                for j in 0..d {
                    dx[j] = r * (g[j] * w[j]) - c * x[j];
                    dw[j] += g[j] * (x[j] * r);
                }
            }
            dw
        })
        .collect();
    for partial in partials {
        for (acc, v) in dw.iter_mut().zip(partial) {
            *acc += v;
        }
    }
    Ok((T::to_cpu_storage_owned(out), Shape::from(n + d)))
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "peft-rms-norm-bwd"
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
        dispatch!("rms_norm bwd", s1, backward(self.eps, (s1, l1), (s2, l2), (s3, l3)))
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
        super::cuda::rms_norm_bwd(self.eps, (s1, l1), (s2, l2), (s3, l3))
    }
}
