//! `y = x Wᵀ` through a frozen weight kept quantized (`model::QWeight`). The weight is
//! dequantized one tile of rows at a time into a scratch buffer that the next tile reuses,
//! and each tile is one gemm into its columns of `y`; the whole weight never exists in f32.
//! The backward gives only the input gradient, `dx = dy W`, tile by tile the same way: a
//! frozen weight needs no gradient of its own (bitsandbytes' `MatMul4Bit`, mlx's
//! `QuantizedMatmul::vjp`). Activations stay f32, so the result equals the dense linear over
//! the dequantized weight up to the order of the sums (llama.cpp's q8 activations do not).
use super::kernel::contiguous;
use crate::model::linear::linear;
use crate::model::QWeight;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// `x`: [..., in]; `w`: [out, in]. Returns [..., out]; the gradient flows to `x` only.
pub fn qlinear(x: &Tensor, w: &Arc<QWeight>, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.apply_op1(QLinear { w: w.clone(), decode: !x.track_op() })?
    } else {
        // Other dtypes (f64 gradient checks) and devices: the dense weight, for this call only.
        let dense = w.to_tensor(x.dtype(), x.device())?;
        linear(x, &dense, None)?
    };
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `dy W` for `dy` [m, out]: the input gradient of [`qlinear`], outside any graph.
pub fn qlinear_input_grad(dy: &Tensor, w: &Arc<QWeight>) -> Result<Tensor> {
    let (out, k) = w.dims();
    let m = dy.elem_count() / out.max(1);
    if dy.dims().last() != Some(&out) {
        candle_core::bail!("qlinear: gradient {:?} for a {out}×{k} weight", dy.dims());
    }
    if !(dy.device().is_cpu() && dy.dtype() == DType::F32) {
        return dy.matmul(&w.to_tensor(dy.dtype(), dy.device())?.reshape((out, k))?);
    }
    dy.apply_op1_no_bwd(&QLinearInputGrad { w: w.clone(), x_shape: Shape::from((m, k)) })
}

/// About 4 MiB of f32 per tile: large enough for an efficient gemm, small beside a layer.
fn tile_rows(cols: usize, rows: usize) -> usize {
    ((1 << 20) / cols.max(1)).clamp(16, rows.max(1))
}

fn parallelism(flops: usize) -> gemm::Parallelism {
    // Below this a single thread beats the cost of waking the pool (as candle decides).
    if flops < 1 << 18 {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    }
}

/// Calls `f(first_row, rows, tile)` for each tile of rows of `w`, dequantized into one scratch
/// buffer that every tile reuses.
fn for_each_tile(w: &QWeight, mut f: impl FnMut(usize, usize, &[f32])) {
    let (n, k) = w.dims();
    let t = tile_rows(k, n);
    let mut scratch = vec![0f32; t * k];
    for r0 in (0..n).step_by(t) {
        let rows = t.min(n - r0);
        let tile = &mut scratch[..rows * k];
        w.dequantize_rows(r0, tile);
        f(r0, rows, tile);
    }
}

/// `y[m, n] = x[m, k] · Wᵀ`.
fn forward(x: &[f32], m: usize, w: &QWeight) -> Vec<f32> {
    let (n, k) = w.dims();
    let mut y = vec![0f32; m * n];
    for_each_tile(w, |r0, rows, tile| {
        // SAFETY: y has m rows of n; columns r0..r0+rows of it are written (dst_rs = n).
        // x is m × k row-major; the tile is rows × k row-major, read as its transpose.
        unsafe {
            gemm::gemm(m, rows, k, y.as_mut_ptr().add(r0), 1, n as isize, false,
                x.as_ptr(), 1, k as isize, tile.as_ptr(), k as isize, 1,
                0.0, 1.0, false, false, false, parallelism(m * rows * k));
        }
    });
    y
}

/// `dx[m, k] = dy[m, n] · W`.
fn input_grad(dy: &[f32], m: usize, w: &QWeight) -> Vec<f32> {
    let (n, k) = w.dims();
    let mut dx = vec![0f32; m * k];
    for_each_tile(w, |r0, rows, tile| {
        // SAFETY: dx is m × k; dy's columns r0..r0+rows are read (lhs_rs = n); the tile is
        // rows × k row-major. After the first tile the products accumulate (read_dst).
        unsafe {
            gemm::gemm(m, k, rows, dx.as_mut_ptr(), 1, k as isize, r0 > 0,
                dy.as_ptr().add(r0), 1, n as isize, tile.as_ptr(), 1, k as isize,
                1.0, 1.0, false, false, false, parallelism(m * rows * k));
        }
    });
    dx
}

/// The shape of `x Wᵀ` for an input of `dims`, and its row count m.
fn out_shape(dims: &[usize], w: &QWeight) -> Result<(usize, Shape)> {
    let (n, k) = w.dims();
    match dims.last() {
        Some(&kx) if kx == k => {}
        _ => candle_core::bail!("qlinear: input {dims:?} for a {n}×{k} weight"),
    }
    let mut out = dims.to_vec();
    *out.last_mut().expect("checked above") = n;
    Ok((dims.iter().product::<usize>() / k.max(1), Shape::from(out)))
}

/// Up to this many rows (tokens) an inference call multiplies through the storage type
/// (`QWeight::matmul_rows`): generation's decode steps. Above it, and whenever a gradient
/// may be asked for, the exact tiled path.
const DECODE_ROWS: usize = 8;

struct QLinear {
    w: Arc<QWeight>,
    /// No gradient can be asked for (the input tracks none).
    decode: bool,
}

impl CustomOp1 for QLinear {
    fn name(&self) -> &'static str {
        "qlinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, shape) = out_shape(l.dims(), &self.w)?;
        let x = contiguous::<f32>(s, l)?;
        if self.decode && m <= DECODE_ROWS {
            return Ok((CpuStorage::F32(self.w.matmul_rows(&x, m)), shape));
        }
        Ok((CpuStorage::F32(forward(&x, m, &self.w)), shape))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.apply_op1_no_bwd(&QLinearInputGrad { w: self.w.clone(), x_shape: x.shape().clone() })?))
    }
}

/// `dy ↦ dy W`, the backward of [`QLinear`] (itself not differentiated again).
struct QLinearInputGrad {
    w: Arc<QWeight>,
    x_shape: Shape,
}

impl CustomOp1 for QLinearInputGrad {
    fn name(&self) -> &'static str {
        "qlinear-input-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, _) = self.w.dims();
        let m = l.shape().elem_count() / n.max(1);
        let dy = match s {
            CpuStorage::F32(_) => contiguous::<f32>(s, l)?,
            _ => candle_core::bail!("qlinear: an f32 gradient was expected"),
        };
        Ok((CpuStorage::F32(input_grad(&dy, m, &self.w)), self.x_shape.clone()))
    }
}
