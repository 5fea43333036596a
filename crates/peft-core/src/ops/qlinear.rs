//! `y = x Wᵀ` through a frozen weight kept quantized (`model::QWeight`). The weight is
//! dequantized one tile at a time into a buffer each thread keeps, and each tile is one
//! single-threaded gemm into its own part of `y`; the whole weight never exists in f32. The
//! backward gives only the input gradient, `dx = dy W`, the same way over blocks of `dx`'s
//! columns: a frozen weight needs no gradient of its own (bitsandbytes' `MatMul4Bit`, mlx's
//! `QuantizedMatmul::vjp`). Activations stay f32, so the result equals the dense linear over
//! the dequantized weight up to the order of the sums (llama.cpp's q8 activations do not).
use super::kernel::contiguous;
use crate::model::linear::linear;
use crate::model::QWeight;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use std::cell::RefCell;
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

/// Values of dequantized weight (4 MiB of f32) that each thread keeps for its tiles. A tile
/// is dequantized and multiplied by the same thread, so it is still in that core's cache when
/// gemm packs it, and the buffer serves every later tile and call: no call pays the kernel to
/// zero fresh pages (10% of a kept training step when each call allocated its tile). Held
/// per pool thread for the life of the process (more only for rows wider than 21845 values,
/// whose tiles are 48 rows): `src/plan/formula.ts` plans it as workspace.
pub const SCRATCH_FLOATS: usize = 1 << 20;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch, grown to `len` values if it is shorter.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// Tasks per pool thread: enough that a thread the host preempts (2 vCPUs shared with other
/// processes) leaves its share to the others, few enough that each gemm stays large.
const TASKS_PER_THREAD: usize = 4;

/// Runs `task(0..tasks)`, as rayon tasks that idle threads steal when the product is worth
/// it. Each task runs its own single-threaded gemm: gemm's own threading splits every block
/// evenly across threads and waits for the slowest, which stalls on a preempted thread.
fn for_each_task(tasks: usize, flops: usize, task: impl Fn(usize) + Sync + Send) {
    use rayon::prelude::*;
    // Below this a single thread beats the cost of waking the pool (as candle decides).
    if flops < 1 << 18 || tasks == 1 {
        (0..tasks).for_each(task)
    } else {
        (0..tasks).into_par_iter().for_each(task)
    }
}

/// How many of `total` rows (or columns) each task takes: a `TASKS_PER_THREAD`-th of one
/// thread's share, at most `cap`, in multiples of `align` (at least one).
fn per_task(total: usize, cap: usize, align: usize) -> usize {
    let share = total.div_ceil(TASKS_PER_THREAD * rayon::current_num_threads());
    (share.div_ceil(align) * align).min((cap / align).max(1) * align)
}

/// An output shared by tasks that each write their own part of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: the tasks write disjoint elements (see each use).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}
impl Out {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation.
        unsafe { self.0.add(offset) }
    }
}

/// Rows of a tile: gemm's f32 register tile on AVX2 is 16 × 6 (x2x6), so 48 rows fill it.
const ROW_ALIGN: usize = 48;

/// `y[m, n] = x[m, k] · Wᵀ`: each task dequantizes a tile of rows of `W` and writes the
/// matching columns of `y`.
fn forward(x: &[f32], m: usize, w: &QWeight) -> Vec<f32> {
    let (n, k) = w.dims();
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    let rows = per_task(n, (SCRATCH_FLOATS / k).max(1), ROW_ALIGN.min(n));
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let out = Out(y.as_mut_ptr());
    for_each_task(n.div_ceil(rows), m * n * k, |t| {
        let (r0, rows) = (t * rows, rows.min(n - t * rows));
        with_scratch(rows * k, |tile| {
            w.dequantize_block(r0, rows, 0, tile);
            // SAFETY: y has capacity for m rows of n; this task alone writes columns
            // r0..r0+rows of it (dst_rs = n), without reading them (read_dst false). x is m × k
            // row-major; the tile is rows × k row-major, read as its transpose.
            unsafe {
                gemm::gemm(
                    m,
                    rows,
                    k,
                    out.at(r0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    tile.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        })
    });
    // SAFETY: the tasks wrote every column of every row.
    unsafe { y.set_len(m * n) };
    y
}

/// `dx[m, k] = dy[m, n] · W`: each task owns a block of columns of `dx` (whole quantization
/// blocks of `W`'s rows) and sums its product over tiles of `W`'s rows, so every element of
/// `dx` is written by one task and read back only by it.
fn input_grad(dy: &[f32], m: usize, w: &QWeight) -> Vec<f32> {
    let (n, k) = w.dims();
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * k];
    }
    let block = w.dtype().block_size();
    // 256 columns per task where the row allows: a k-quant super-block, 8 legacy blocks.
    let cols = per_task(k, 256.max(block), block);
    let rows = (SCRATCH_FLOATS / cols).clamp(1, n);
    let mut dx: Vec<f32> = Vec::with_capacity(m * k);
    let out = Out(dx.as_mut_ptr());
    for_each_task(k.div_ceil(cols), m * n * k, |t| {
        let (c0, cols) = (t * cols, cols.min(k - t * cols));
        with_scratch(rows * cols, |scratch| {
            for r0 in (0..n).step_by(rows) {
                let rows = rows.min(n - r0);
                let tile = &mut scratch[..rows * cols];
                w.dequantize_block(r0, rows, c0, tile);
                // SAFETY: dx has capacity for m rows of k; this task alone writes columns
                // c0..c0+cols (dst_rs = k), first without reading them, then accumulating
                // (read_dst). dy's columns r0..r0+rows are read (lhs_rs = n); the tile is
                // rows × cols row-major.
                unsafe {
                    gemm::gemm(
                        m,
                        cols,
                        rows,
                        out.at(c0),
                        1,
                        k as isize,
                        r0 > 0,
                        dy.as_ptr().add(r0),
                        1,
                        n as isize,
                        tile.as_ptr(),
                        1,
                        cols as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        })
    });
    // SAFETY: the tasks wrote every column of every row.
    unsafe { dx.set_len(m * k) };
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
