//! CUDA twins of the fused CPU kernels (feature `cuda`): the `cuda_fwd` of each CustomOp
//! in this folder's parent calls one function here. The kernels are in
//! `kernels/peft_ops.cu`, compiled to PTX by `build.rs` and loaded once per device through
//! candle's `CudaDevice::get_or_load_custom_func`, as candle-nn loads its own.
//!
//! Every function takes the op's inputs as (storage, layout) pairs, packs strided inputs
//! into contiguous buffers, dispatches on the dtype (f32, f64, bf16, f16) and returns a
//! new storage with the shape the CPU kernel returns.
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Tensor, WithDType};

/// The PTX of `kernels/peft_ops.cu`.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/peft_ops.ptx"));
const MODULE: &str = "peft_ops";

/// Threads per block of the row kernels (one block per row).
const ROW_THREADS: u32 = 256;
/// Threads per block for rows of the vocabulary (cross-entropy).
const VOCAB_THREADS: u32 = 1024;
/// Threads per block of the element-wise kernels.
const ELEM_THREADS: u32 = 256;
/// Rows per partial sum of RMSNorm's weight gradient.
const DW_ROWS_PER_CHUNK: usize = 64;

/// True when every tensor is on one CUDA device with one float dtype these kernels cover.
pub(crate) fn fused_cuda(ts: &[&Tensor]) -> bool {
    let first = ts[0];
    matches!(first.dtype(), DType::F32 | DType::F64 | DType::BF16 | DType::F16)
        && ts
            .iter()
            .all(|t| t.device().is_cuda() && t.device().same_device(first.device()) && t.dtype() == first.dtype() && t.elem_count() > 0)
}

/// An input as one contiguous buffer: the storage itself at the layout's offset when the
/// layout is contiguous, else a packed copy.
struct Input<'a> {
    owned: Option<CudaStorage>,
    borrowed: &'a CudaStorage,
    offset: usize,
    len: usize,
}

impl<'a> Input<'a> {
    fn new(s: &'a CudaStorage, l: &Layout) -> Result<Self> {
        let len = l.shape().elem_count();
        if l.is_contiguous() {
            return Ok(Input { owned: None, borrowed: s, offset: l.start_offset(), len });
        }
        // SAFETY: every element is written by the copy below.
        let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
        s.copy_strided_src(&mut dst, 0, l)?;
        Ok(Input { owned: Some(dst), borrowed: s, offset: 0, len })
    }

    fn view<T: CudaDType + DeviceRepr>(&self) -> Result<CudaView<'_, T>> {
        let s = self.owned.as_ref().unwrap_or(self.borrowed);
        Ok(s.as_cuda_slice::<T>()?.slice(self.offset..self.offset + self.len))
    }
}

/// The kernel `<name>_<dtype>` of our module on `$dev` (loaded once per device).
macro_rules! kernel {
    ($dev:expr, $t:ty, $name:expr) => {
        $dev.get_or_load_custom_func(&format!("{}_{}", $name, <$t as WithDType>::DTYPE.as_str()), MODULE, PTX)?
    };
}

fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
    // One block per row, capped (the kernels loop over rows beyond the grid).
    let blocks = rows.clamp(1, i32::MAX as usize) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

fn elems_cfg(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(ELEM_THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (ELEM_THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Calls `$f::<T>(...)` for the float dtype of `$s`.
macro_rules! by_dtype {
    ($name:expr, $s:expr, $f:ident($($arg:expr),*)) => {
        match $s.dtype() {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
            DType::BF16 => $f::<half::bf16>($($arg),*),
            DType::F16 => $f::<half::f16>($($arg),*),
            d => candle_core::bail!("{}: no CUDA kernel for {d:?}", $name),
        }
    };
}

type In<'a> = (&'a CudaStorage, &'a Layout);

fn last_dim(name: &str, l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("{name}: needs a non-empty last dimension, got {:?}", l.dims()),
    }
}

fn wrap<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

// ---- RMSNorm ----------------------------------------------------------------------------

pub(crate) fn rms_norm_fwd(eps: f64, x: In, w: In) -> Result<(CudaStorage, Shape)> {
    by_dtype!("rms_norm", x.0, rms_norm_fwd_t(eps, x, w))
}

fn rms_norm_fwd_t<T: CudaDType + DeviceRepr + WithDType>(eps: f64, x: In, w: In) -> Result<(CudaStorage, Shape)> {
    let d = last_dim("rms_norm", x.1)?;
    if w.1.shape().elem_count() != d {
        candle_core::bail!("rms_norm: weight {:?} for rows of {d}", w.1.dims());
    }
    let dev = x.0.device();
    let (xi, wi) = (Input::new(x.0, x.1)?, Input::new(w.0, w.1)?);
    let n = xi.len;
    let rows = n / d;
    // SAFETY: the kernel writes every element.
    let out = unsafe { dev.alloc::<T>(n)? };
    let f = kernel!(dev, T, "peft_rms_norm_fwd");
    let (xv, wv) = (xi.view::<T>()?, wi.view::<T>()?);
    let mut b = f.builder();
    b.arg(&xv);
    b.arg(&wv);
    b.arg(&out);
    candle_core::builder_arg!(b, rows, d, eps);
    // SAFETY: argument types match the kernel's signature.
    unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.w()?;
    Ok((wrap(out, dev), x.1.shape().clone()))
}

/// `[dx.flatten(), dweight]`, as the CPU `RmsNormBwd`.
pub(crate) fn rms_norm_bwd(eps: f64, x: In, w: In, g: In) -> Result<(CudaStorage, Shape)> {
    by_dtype!("rms_norm bwd", x.0, rms_norm_bwd_t(eps, x, w, g))
}

fn rms_norm_bwd_t<T: CudaDType + DeviceRepr + WithDType>(eps: f64, x: In, w: In, g: In) -> Result<(CudaStorage, Shape)> {
    let d = last_dim("rms_norm bwd", x.1)?;
    let n = x.1.shape().elem_count();
    if w.1.shape().elem_count() != d || g.1.shape().elem_count() != n {
        candle_core::bail!("rms_norm bwd: shapes {:?} {:?} {:?}", x.1.dims(), w.1.dims(), g.1.dims());
    }
    let dev = x.0.device();
    let (xi, wi, gi) = (Input::new(x.0, x.1)?, Input::new(w.0, w.1)?, Input::new(g.0, g.1)?);
    let (xv, wv, gv) = (xi.view::<T>()?, wi.view::<T>()?, gi.view::<T>()?);
    let rows = n / d;
    let chunks = rows.div_ceil(DW_ROWS_PER_CHUNK).max(1);
    // SAFETY: the kernels write dx (n values), each row's r, each partial and dweight (d).
    let out = unsafe { dev.alloc::<T>(n + d)? };
    let rbuf = unsafe { dev.alloc::<f64>(rows.max(1))? };
    let partial = unsafe { dev.alloc::<f64>(chunks * d)? };

    let f = kernel!(dev, T, "peft_rms_norm_bwd_dx");
    let mut b = f.builder();
    b.arg(&xv);
    b.arg(&wv);
    b.arg(&gv);
    b.arg(&out);
    b.arg(&rbuf);
    candle_core::builder_arg!(b, rows, d, eps);
    unsafe { b.launch(rows_cfg(rows, ROW_THREADS)) }.w()?;

    let cols = d.div_ceil(ROW_THREADS as usize) as u32;
    let f = kernel!(dev, T, "peft_rms_norm_bwd_dw_partial");
    let mut b = f.builder();
    b.arg(&xv);
    b.arg(&gv);
    b.arg(&rbuf);
    b.arg(&partial);
    candle_core::builder_arg!(b, rows, d, DW_ROWS_PER_CHUNK);
    let cfg = LaunchConfig { grid_dim: (cols, chunks as u32, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 };
    unsafe { b.launch(cfg) }.w()?;

    let f = kernel!(dev, T, "peft_rms_norm_bwd_dw_sum");
    let mut b = f.builder();
    b.arg(&partial);
    b.arg(&out);
    candle_core::builder_arg!(b, chunks, d, n);
    let cfg = LaunchConfig { grid_dim: (cols, 1, 1), block_dim: (ROW_THREADS, 1, 1), shared_mem_bytes: 0 };
    unsafe { b.launch(cfg) }.w()?;
    Ok((wrap(out, dev), Shape::from(n + d)))
}

// ---- RoPE ---------------------------------------------------------------------------------

/// x [b, h, t, d], cos/sin [b, t, d/2] (broadcast views are packed first).
pub(crate) fn rope(inverse: bool, x: In, cos: In, sin: In) -> Result<(CudaStorage, Shape)> {
    by_dtype!("rope", x.0, rope_t(inverse, x, cos, sin))
}

fn rope_t<T: CudaDType + DeviceRepr + WithDType>(inverse: bool, x: In, cos: In, sin: In) -> Result<(CudaStorage, Shape)> {
    let (b, h, t, d) = x.1.shape().dims4()?;
    let half = d / 2;
    if d % 2 != 0 || cos.1.dims() != [b, t, half] || sin.1.dims() != [b, t, half] {
        candle_core::bail!("rope: x {:?}, cos {:?}, sin {:?}", x.1.dims(), cos.1.dims(), sin.1.dims());
    }
    let dev = x.0.device();
    let (xi, ci, si) = (Input::new(x.0, x.1)?, Input::new(cos.0, cos.1)?, Input::new(sin.0, sin.1)?);
    let (xv, cv, sv) = (xi.view::<T>()?, ci.view::<T>()?, si.view::<T>()?);
    let n = xi.len;
    let out = unsafe { dev.alloc::<T>(n)? };
    let f = kernel!(dev, T, "peft_rope");
    let mut bld = f.builder();
    bld.arg(&xv);
    bld.arg(&cv);
    bld.arg(&sv);
    bld.arg(&out);
    candle_core::builder_arg!(bld, b, h, t, d, inverse as i32);
    unsafe { bld.launch(elems_cfg(n / 2)) }.w()?;
    Ok((wrap(out, dev), x.1.shape().clone()))
}

// ---- softmax ---------------------------------------------------------------------------------

pub(crate) fn softmax_fwd(x: In) -> Result<(CudaStorage, Shape)> {
    by_dtype!("softmax", x.0, softmax_fwd_t(x))
}

fn softmax_fwd_t<T: CudaDType + DeviceRepr + WithDType>(x: In) -> Result<(CudaStorage, Shape)> {
    let d = last_dim("softmax", x.1)?;
    let dev = x.0.device();
    let xi = Input::new(x.0, x.1)?;
    let xv = xi.view::<T>()?;
    let rows = xi.len / d;
    let out = unsafe { dev.alloc::<T>(xi.len)? };
    let f = kernel!(dev, T, "peft_softmax_fwd");
    let mut b = f.builder();
    b.arg(&xv);
    b.arg(&out);
    candle_core::builder_arg!(b, rows, d);
    unsafe { b.launch(rows_cfg(rows, row_threads(d))) }.w()?;
    Ok((wrap(out, dev), x.1.shape().clone()))
}

pub(crate) fn softmax_bwd(y: In, g: In) -> Result<(CudaStorage, Shape)> {
    by_dtype!("softmax bwd", y.0, softmax_bwd_t(y, g))
}

fn softmax_bwd_t<T: CudaDType + DeviceRepr + WithDType>(y: In, g: In) -> Result<(CudaStorage, Shape)> {
    let d = last_dim("softmax bwd", y.1)?;
    if y.1.dims() != g.1.dims() {
        candle_core::bail!("softmax bwd: y {:?}, grad {:?}", y.1.dims(), g.1.dims());
    }
    let dev = y.0.device();
    let (yi, gi) = (Input::new(y.0, y.1)?, Input::new(g.0, g.1)?);
    let (yv, gv) = (yi.view::<T>()?, gi.view::<T>()?);
    let rows = yi.len / d;
    let out = unsafe { dev.alloc::<T>(yi.len)? };
    let f = kernel!(dev, T, "peft_softmax_bwd");
    let mut b = f.builder();
    b.arg(&yv);
    b.arg(&gv);
    b.arg(&out);
    candle_core::builder_arg!(b, rows, d);
    unsafe { b.launch(rows_cfg(rows, row_threads(d))) }.w()?;
    Ok((wrap(out, dev), y.1.shape().clone()))
}

/// Short rows (attention over a few keys) waste most of a 256-thread block.
fn row_threads(d: usize) -> u32 {
    (d.next_multiple_of(32) as u32).clamp(32, ROW_THREADS)
}

// ---- SwiGLU ----------------------------------------------------------------------------------

pub(crate) fn silu_mul_fwd(gate: In, up: In) -> Result<(CudaStorage, Shape)> {
    by_dtype!("silu_mul", gate.0, silu_mul_fwd_t(gate, up))
}

fn silu_mul_fwd_t<T: CudaDType + DeviceRepr + WithDType>(gate: In, up: In) -> Result<(CudaStorage, Shape)> {
    if gate.1.dims() != up.1.dims() {
        candle_core::bail!("silu_mul: gate {:?}, up {:?}", gate.1.dims(), up.1.dims());
    }
    let dev = gate.0.device();
    let (gi, ui) = (Input::new(gate.0, gate.1)?, Input::new(up.0, up.1)?);
    let (gv, uv) = (gi.view::<T>()?, ui.view::<T>()?);
    let n = gi.len;
    let out = unsafe { dev.alloc::<T>(n)? };
    let f = kernel!(dev, T, "peft_silu_mul_fwd");
    let mut b = f.builder();
    b.arg(&gv);
    b.arg(&uv);
    b.arg(&out);
    candle_core::builder_arg!(b, n);
    unsafe { b.launch(elems_cfg(n)) }.w()?;
    Ok((wrap(out, dev), gate.1.shape().clone()))
}

/// `[2, ...shape]`: dgate then dup, as the CPU `SiluMulBwd`.
pub(crate) fn silu_mul_bwd(gate: In, up: In, g: In) -> Result<(CudaStorage, Shape)> {
    by_dtype!("silu_mul bwd", gate.0, silu_mul_bwd_t(gate, up, g))
}

fn silu_mul_bwd_t<T: CudaDType + DeviceRepr + WithDType>(gate: In, up: In, g: In) -> Result<(CudaStorage, Shape)> {
    if gate.1.dims() != up.1.dims() || gate.1.dims() != g.1.dims() {
        candle_core::bail!("silu_mul bwd: shapes {:?} {:?} {:?}", gate.1.dims(), up.1.dims(), g.1.dims());
    }
    let dev = gate.0.device();
    let (gi, ui, di) = (Input::new(gate.0, gate.1)?, Input::new(up.0, up.1)?, Input::new(g.0, g.1)?);
    let (gv, uv, dv) = (gi.view::<T>()?, ui.view::<T>()?, di.view::<T>()?);
    let n = gi.len;
    let out = unsafe { dev.alloc::<T>(2 * n)? };
    let f = kernel!(dev, T, "peft_silu_mul_bwd");
    let mut b = f.builder();
    b.arg(&gv);
    b.arg(&uv);
    b.arg(&dv);
    b.arg(&out);
    candle_core::builder_arg!(b, n);
    unsafe { b.launch(elems_cfg(n)) }.w()?;
    let mut dims = vec![2];
    dims.extend_from_slice(gate.1.dims());
    Ok((wrap(out, dev), Shape::from(dims)))
}

// ---- cross-entropy ----------------------------------------------------------------------------

fn ce_check(name: &str, logits: In, targets: In, weights: In) -> Result<(usize, usize)> {
    let vocab = last_dim(name, logits.1)?;
    let n = logits.1.dims()[0];
    if logits.1.dims().len() != 2 || targets.1.dims() != [n] || weights.1.dims() != [n] {
        candle_core::bail!("{name}: logits {:?}, targets {:?}, weights {:?}", logits.1.dims(), targets.1.dims(), weights.1.dims());
    }
    if targets.0.dtype() != DType::U32 {
        candle_core::bail!("{name}: targets must be u32, got {:?}", targets.0.dtype());
    }
    Ok((n, vocab))
}

/// The weighted loss sum, a scalar in the logits' dtype. A target out of range gives NaN
/// (the CPU kernel fails instead; `model::loss` validates labels before either).
pub(crate) fn cross_entropy_fwd(logits: In, targets: In, weights: In) -> Result<(CudaStorage, Shape)> {
    by_dtype!("cross_entropy", logits.0, cross_entropy_fwd_t(logits, targets, weights))
}

fn cross_entropy_fwd_t<T: CudaDType + DeviceRepr + WithDType>(logits: In, targets: In, weights: In) -> Result<(CudaStorage, Shape)> {
    let (n, vocab) = ce_check("cross_entropy", logits, targets, weights)?;
    let dev = logits.0.device();
    let (li, ti, wi) = (Input::new(logits.0, logits.1)?, Input::new(targets.0, targets.1)?, Input::new(weights.0, weights.1)?);
    let (lv, tv, wv) = (li.view::<T>()?, ti.view::<u32>()?, wi.view::<T>()?);
    let row_loss = unsafe { dev.alloc::<f64>(n.max(1))? };
    let out = unsafe { dev.alloc::<T>(1)? };
    let f = kernel!(dev, T, "peft_cross_entropy_rows");
    let mut b = f.builder();
    b.arg(&lv);
    b.arg(&tv);
    b.arg(&wv);
    b.arg(&row_loss);
    candle_core::builder_arg!(b, n, vocab);
    unsafe { b.launch(rows_cfg(n, VOCAB_THREADS)) }.w()?;
    let f = kernel!(dev, T, "peft_cross_entropy_sum");
    let mut b = f.builder();
    b.arg(&row_loss);
    b.arg(&out);
    candle_core::builder_arg!(b, n);
    unsafe { b.launch(rows_cfg(1, VOCAB_THREADS)) }.w()?;
    Ok((wrap(out, dev), Shape::from(())))
}

/// `(softmax(logits) - onehot(targets)) * weights * g`; the row statistics are recomputed
/// (one more read of the logits instead of state kept from the forward).
pub(crate) fn cross_entropy_bwd(g: f64, logits: In, targets: In, weights: In) -> Result<(CudaStorage, Shape)> {
    by_dtype!("cross_entropy bwd", logits.0, cross_entropy_bwd_t(g, logits, targets, weights))
}

fn cross_entropy_bwd_t<T: CudaDType + DeviceRepr + WithDType>(
    g: f64,
    logits: In,
    targets: In,
    weights: In,
) -> Result<(CudaStorage, Shape)> {
    let (n, vocab) = ce_check("cross_entropy bwd", logits, targets, weights)?;
    let dev = logits.0.device();
    let (li, ti, wi) = (Input::new(logits.0, logits.1)?, Input::new(targets.0, targets.1)?, Input::new(weights.0, weights.1)?);
    let (lv, tv, wv) = (li.view::<T>()?, ti.view::<u32>()?, wi.view::<T>()?);
    let out = unsafe { dev.alloc::<T>(n * vocab)? };
    let f = kernel!(dev, T, "peft_cross_entropy_bwd");
    let mut b = f.builder();
    b.arg(&lv);
    b.arg(&tv);
    b.arg(&wv);
    b.arg(&out);
    candle_core::builder_arg!(b, n, vocab, g);
    unsafe { b.launch(rows_cfg(n, VOCAB_THREADS)) }.w()?;
    Ok((wrap(out, dev), logits.1.shape().clone()))
}
