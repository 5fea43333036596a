//! Plumbing shared by the fused CPU kernels: the float types they cover, reading a
//! strided input as one contiguous slice, how many rows make one rayon task, and the
//! element-wise frame of the gated activations.
use std::borrow::Cow;

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// The float types with fused CPU kernels (f32 for training, f64 for gradient checks).
pub(crate) trait Real: WithDType {
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
        }
    };
}
real!(f32);
real!(f64);

/// True when every tensor is on the CPU with one dtype that has fused kernels.
pub(crate) fn fused_cpu(ts: &[&Tensor]) -> bool {
    let dtype = ts[0].dtype();
    matches!(dtype, DType::F32 | DType::F64) && ts.iter().all(|t| t.device().is_cpu() && t.dtype() == dtype && t.elem_count() > 0)
}

/// True when the fused kernels cover these tensors: [`fused_cpu`], or (feature `cuda`)
/// one CUDA device with f32, f64, bf16 or f16 (see `ops/cuda`).
pub(crate) fn fused(ts: &[&Tensor]) -> bool {
    #[cfg(feature = "cuda")]
    if super::cuda::fused_cuda(ts) {
        return true;
    }
    fused_cpu(ts)
}

/// Calls `$f::<f32>` or `$f::<f64>` after the dtype of `$s`, or fails for other dtypes.
macro_rules! dispatch {
    ($name:expr, $s:expr, $f:ident($($arg:expr),*)) => {
        match $s {
            candle_core::CpuStorage::F32(_) => $f::<f32>($($arg),*),
            candle_core::CpuStorage::F64(_) => $f::<f64>($($arg),*),
            _ => candle_core::bail!("{}: no fused kernel for this dtype", $name),
        }
    };
}
pub(crate) use dispatch;

/// The elements of `s` under `l` in row-major order: borrowed when `l` is contiguous,
/// gathered otherwise (transposed, narrowed or broadcast views).
pub(crate) fn contiguous<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [T]>> {
    let data = T::cpu_storage_as_slice(s)?;
    if let Some((start, end)) = l.contiguous_offsets() {
        return Ok(Cow::Borrowed(&data[start..end]));
    }
    let (dims, stride) = (l.dims(), l.stride());
    let rank = dims.len();
    let mut out = Vec::with_capacity(l.shape().elem_count());
    if out.capacity() == 0 {
        return Ok(Cow::Owned(out));
    }
    let (last, last_stride) = (dims[rank - 1], stride[rank - 1]);
    let mut index = vec![0usize; rank - 1];
    let mut base = l.start_offset();
    loop {
        out.extend((0..last).map(|j| data[base + j * last_stride]));
        // Odometer over all but the last dimension.
        let mut k = rank - 1;
        loop {
            if k == 0 {
                return Ok(Cow::Owned(out));
            }
            k -= 1;
            index[k] += 1;
            base += stride[k];
            if index[k] < dims[k] {
                break;
            }
            base -= stride[k] * dims[k];
            index[k] = 0;
        }
    }
}

/// Elements per rayon task of the gated activations.
const GATED_BLOCK: usize = 1 << 14;

/// The forward of a gated activation `act(gate) * up` (`silu_mul`, `gelu_mul`): both
/// inputs of one shape read contiguously, `block(gate, up, out)` over blocks of 16K
/// elements in parallel.
pub(crate) fn gated_forward<T: Real>(
    name: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    block: impl Fn(&[T], &[T], &mut [T]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    if l1.dims() != l2.dims() {
        candle_core::bail!("{name}: gate {:?}, up {:?}", l1.dims(), l2.dims());
    }
    let (gate, up) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?);
    let mut out = vec![T::ZERO; gate.len()];
    let blocks = out.par_chunks_mut(GATED_BLOCK).zip(gate.par_chunks(GATED_BLOCK)).zip(up.par_chunks(GATED_BLOCK));
    blocks.for_each(|((out, gate), up)| block(gate, up, out));
    Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
}

/// Its backward, `(gate, up, grad)` to one `[2, ...shape]` buffer (d gate then d up, one
/// allocation for both): `block(gate, up, grad, dgate, dup)` over the same blocks.
pub(crate) fn gated_backward<T: Real>(
    name: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
    block: impl Fn(&[T], &[T], &[T], &mut [T], &mut [T]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    if l1.dims() != l2.dims() || l1.dims() != l3.dims() {
        candle_core::bail!("{name}: shapes {:?} {:?} {:?}", l1.dims(), l2.dims(), l3.dims());
    }
    let (gate, up, grad) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?, contiguous::<T>(s3, l3)?);
    let n = gate.len();
    let mut out = vec![T::ZERO; 2 * n];
    let (dgate, dup) = out.split_at_mut(n);
    dgate
        .par_chunks_mut(GATED_BLOCK)
        .zip(dup.par_chunks_mut(GATED_BLOCK))
        .zip(gate.par_chunks(GATED_BLOCK).zip(up.par_chunks(GATED_BLOCK)).zip(grad.par_chunks(GATED_BLOCK)))
        .for_each(|((dgate, dup), ((gate, up), grad))| block(gate, up, grad, dgate, dup));
    let mut dims = vec![2];
    dims.extend_from_slice(l1.dims());
    Ok((T::to_cpu_storage_owned(out), Shape::from(dims)))
}

/// Rows of `row_len` elements per rayon task: about 16K elements, so small inputs stay
/// on one thread and large ones split evenly. Fixed, so results do not depend on the
/// number of threads.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    ((1 << 14) / row_len.max(1)).max(1)
}

/// The last dimension of a layout (the row length), failing on scalars.
pub(crate) fn row_len(name: &str, l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("{name}: needs a non-empty last dimension, got {:?}", l.dims()),
    }
}

/// Lanes of the reductions below: independent accumulators that the compiler can keep
/// in one SIMD register, instead of one serial chain of dependent adds.
const LANES: usize = 8;

/// The largest element (NaNs are skipped); -inf for an empty row.
#[inline]
pub(crate) fn max<T: Real>(x: &[T]) -> T {
    let mut acc = [T::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            acc[k] = if c[k] > acc[k] { c[k] } else { acc[k] };
        }
    }
    let tail = chunks.remainder().iter();
    tail.chain(&acc).fold(T::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `sum(f(a[i], b[i]))` over two slices of one length, in lanes.
#[inline]
pub(crate) fn sum_zip<T: Real>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    let mut acc = [T::ZERO; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (ca, cb) in (&mut ca).zip(&mut cb) {
        for k in 0..LANES {
            acc[k] += f(ca[k], cb[k]);
        }
    }
    let tail = ca.remainder().iter().zip(cb.remainder());
    let tail = tail.fold(T::ZERO, |s, (&a, &b)| s + f(a, b));
    acc.iter().fold(tail, |s, &v| s + v)
}

/// `out[i] = exp(x[i] - max)`, returning their sum (in f64, from lanes of `T` flushed
/// every 512 elements, so long f32 rows keep f64-like accuracy).
#[inline]
pub(crate) fn exp_shifted<T: Real>(out: Option<&mut [T]>, x: &[T], max: T) -> f64 {
    const BLOCK: usize = 512;
    let mut total = 0f64;
    let mut flush = |acc: &mut [T; LANES], tail: T| {
        total += acc.iter().fold(tail.to_f64(), |s, &v| s + v.to_f64());
        *acc = [T::ZERO; LANES];
    };
    let mut acc = [T::ZERO; LANES];
    match out {
        Some(out) => {
            for (o, x) in out.chunks_mut(BLOCK).zip(x.chunks(BLOCK)) {
                let mut tail = T::ZERO;
                let mut oc = o.chunks_exact_mut(LANES);
                let mut xc = x.chunks_exact(LANES);
                for (o, x) in (&mut oc).zip(&mut xc) {
                    for k in 0..LANES {
                        o[k] = (x[k] - max).exp();
                        acc[k] += o[k];
                    }
                }
                for (o, &x) in oc.into_remainder().iter_mut().zip(xc.remainder()) {
                    *o = (x - max).exp();
                    tail += *o;
                }
                flush(&mut acc, tail);
            }
        }
        None => {
            for x in x.chunks(BLOCK) {
                let mut xc = x.chunks_exact(LANES);
                for x in &mut xc {
                    for k in 0..LANES {
                        acc[k] += (x[k] - max).exp();
                    }
                }
                let tail = xc.remainder().iter().fold(T::ZERO, |s, &x| s + (x - max).exp());
                flush(&mut acc, tail);
            }
        }
    }
    total
}

/// [`exp_shifted`] in place: `x[i] = exp(x[i] - max)`, returning their sum (same lanes,
/// same f64 flushes).
#[inline]
pub(crate) fn exp_shifted_in_place<T: Real>(x: &mut [T], max: T) -> f64 {
    const BLOCK: usize = 512;
    let mut total = 0f64;
    for x in x.chunks_mut(BLOCK) {
        let mut acc = [T::ZERO; LANES];
        let mut tail = T::ZERO;
        let mut xc = x.chunks_exact_mut(LANES);
        for x in &mut xc {
            for k in 0..LANES {
                x[k] = (x[k] - max).exp();
                acc[k] += x[k];
            }
        }
        for x in xc.into_remainder() {
            *x = (*x - max).exp();
            tail += *x;
        }
        total += acc.iter().fold(tail.to_f64(), |s, &v| s + v.to_f64());
    }
    total
}
