//! Fused weighted cross-entropy. The forward reads each row once for its max and once
//! for its sum of exponentials and keeps only those two numbers per row; no [n, vocab]
//! temporary exists until the backward writes the gradient itself. Rows of weight 0 are
//! skipped in both directions.
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernel::{contiguous, dispatch, exp_shifted, fused_cpu, max, row_len, rows_per_task, Real};

/// Sum over rows of `weights[i] * -log softmax(logits[i])[targets[i]]`, as
/// [`super::composite::cross_entropy_sum`]: `logits` [n, vocab] f32/f64, `targets` u32
/// [n], `weights` [n] (cast to the logits' dtype). Falls back to the composite off the
/// CPU, for other dtypes (bf16 logits are upcast to f32 there) and other shapes.
/// Gradients flow to `logits`, and to `weights` when they track one.
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() {
        return cross_entropy_sum_cuda(logits, targets, weights);
    }
    let fits = fused_cpu(&[logits])
        && logits.rank() == 2
        && targets.dtype() == DType::U32
        && targets.device().is_cpu()
        && weights.device().is_cpu()
        && weights.dtype().is_float()
        && targets.dims() == [logits.dim(0)?]
        && weights.dims() == [logits.dim(0)?];
    if !fits {
        return super::composite::cross_entropy_sum(logits, targets, weights);
    }
    let weights = weights.to_dtype(logits.dtype())?;
    let op = CrossEntropy { weight_grad: weights.track_op(), rows: OnceLock::new() };
    logits.apply_op3(targets, &weights, op)
}

/// On CUDA: half-precision logits are upcast to f32 first (as the composite does), then
/// the fused kernels run; weights that track a gradient take the composite.
#[cfg(feature = "cuda")]
fn cross_entropy_sum_cuda(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(super::composite::promoted(logits.dtype()))?;
    let same = |t: &Tensor| t.device().same_device(logits.device());
    let fits = super::cuda::fused_cuda(&[&logits])
        && logits.rank() == 2
        && targets.dtype() == DType::U32
        && same(targets)
        && same(weights)
        && weights.dtype().is_float()
        && !weights.track_op()
        && targets.dims() == [logits.dim(0)?]
        && weights.dims() == [logits.dim(0)?];
    if !fits {
        return super::composite::cross_entropy_sum(&logits, targets, weights);
    }
    let weights = weights.to_dtype(logits.dtype())?;
    let op = CrossEntropy { weight_grad: false, rows: OnceLock::new() };
    logits.apply_op3(targets, &weights, op)
}

/// Per row: the max logit, 1 / sum(exp(logit - max)) and the unweighted loss.
#[derive(Clone, Copy, Default)]
struct RowStats {
    max: f64,
    inv_sum: f64,
    nll: f64,
}

struct CrossEntropy {
    /// Compute rows of weight 0 too, for the weights' gradient (their loss).
    weight_grad: bool,
    /// Saved by the forward for the backward.
    rows: OnceLock<Arc<Vec<RowStats>>>,
}

fn row_stats<T: Real>(row: &[T], target: usize) -> RowStats {
    let max = max(row);
    let sum = exp_shifted(None, row, max);
    let nll = sum.ln() - (row[target] - max).to_f64();
    RowStats { max: max.to_f64(), inv_sum: 1.0 / sum, nll }
}

/// The inputs as slices, checked: (logits, targets, weights, vocab).
type Inputs<'a, T> = (std::borrow::Cow<'a, [T]>, std::borrow::Cow<'a, [u32]>, std::borrow::Cow<'a, [T]>, usize);

fn inputs<'a, T: Real>(
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> Result<Inputs<'a, T>> {
    let vocab = row_len("cross_entropy", l1)?;
    let n = l1.dims()[0];
    if l1.dims().len() != 2 || l2.dims() != [n] || l3.dims() != [n] {
        candle_core::bail!("cross_entropy: logits {:?}, targets {:?}, weights {:?}", l1.dims(), l2.dims(), l3.dims());
    }
    let targets = contiguous::<u32>(s2, l2)?;
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("cross_entropy: target {t} out of range for vocab {vocab}");
    }
    Ok((contiguous::<T>(s1, l1)?, targets, contiguous::<T>(s3, l3)?, vocab))
}

fn forward<T: Real>(
    op: &CrossEntropy,
    a: (&CpuStorage, &Layout),
    b: (&CpuStorage, &Layout),
    c: (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (logits, targets, weights, vocab) = inputs::<T>(a, b, c)?;
    let rows: Vec<RowStats> = logits
        .par_chunks(vocab)
        .zip(targets.par_iter().zip(weights.par_iter()))
        .with_min_len(rows_per_task(vocab))
        .map(|(row, (&t, &w))| if w == T::ZERO && !op.weight_grad { RowStats::default() } else { row_stats(row, t as usize) })
        .collect();
    let loss = rows.iter().zip(weights.iter()).fold(0f64, |acc, (r, &w)| if w == T::ZERO { acc } else { acc + w.to_f64() * r.nll });
    let _ = op.rows.set(Arc::new(rows));
    Ok((T::to_cpu_storage_owned(vec![T::from_f64(loss)]), Shape::from(())))
}

impl CustomOp3 for CrossEntropy {
    fn name(&self) -> &'static str {
        "peft-cross-entropy"
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
        dispatch!("cross_entropy", s1, forward(self, (s1, l1), (s2, l2), (s3, l3)))
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
        super::cuda::cross_entropy_fwd((s1, l1), (s2, l2), (s3, l3))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        weights: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let rows = self.rows.get().cloned();
        let dweights = match (&rows, self.weight_grad) {
            (Some(rows), true) => {
                let nll: Vec<f64> = rows.iter().map(|r| r.nll * g).collect();
                Some(Tensor::from_vec(nll, rows.len(), logits.device())?.to_dtype(logits.dtype())?)
            }
            _ => None,
        };
        let dlogits = logits.apply_op3_no_bwd(targets, weights, &CrossEntropyBwd { g, rows })?;
        Ok((Some(dlogits), None, dweights))
    }
}

/// `(logits, targets, weights) -> (softmax(logits) - onehot(targets)) * weights * g`,
/// from the forward's row statistics (recomputed if absent).
struct CrossEntropyBwd {
    g: f64,
    rows: Option<Arc<Vec<RowStats>>>,
}

fn backward<T: Real>(
    op: &CrossEntropyBwd,
    a: (&CpuStorage, &Layout),
    b: (&CpuStorage, &Layout),
    c: (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (logits, targets, weights, vocab) = inputs::<T>(a, b, c)?;
    let mut out = vec![T::ZERO; logits.len()];
    out.par_chunks_mut(vocab).zip(logits.par_chunks(vocab)).enumerate().with_min_len(rows_per_task(vocab)).for_each(|(i, (out, row))| {
        let w = weights[i];
        if w == T::ZERO {
            return;
        }
        let t = targets[i] as usize;
        let stats = op.rows.as_ref().map_or_else(|| row_stats(row, t), |rows| rows[i]);
        let (max, inv_sum) = (T::from_f64(stats.max), T::from_f64(stats.inv_sum));
        let scale = w * T::from_f64(op.g);
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (v - max).exp() * inv_sum * scale;
        }
        out[t] -= scale;
    });
    Ok((T::to_cpu_storage_owned(out), a.1.shape().clone()))
}

impl CustomOp3 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "peft-cross-entropy-bwd"
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
        dispatch!("cross_entropy bwd", s1, backward(self, (s1, l1), (s2, l2), (s3, l3)))
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
        super::cuda::cross_entropy_bwd(self.g, (s1, l1), (s2, l2), (s3, l3))
    }
}
