//! A frozen 2-D weight kept in its storage type: a GGUF block quantization (Q4_0 … Q8_0,
//! the k-quants) or half precision. Its rows are contiguous runs of blocks (ggml stores a
//! [out, in] weight row by row), so any range of rows dequantizes on its own: the matmul in
//! `ops::qlinear` never holds more than one tile of the weight in f32 (bitsandbytes'
//! `MatMul4Bit` and unsloth's `fast_dequantize` dequantize one whole weight at a time).
//! Dequantization gives candle's values bit for bit (`GgmlType::to_float`, the same code as
//! `QTensor::dequantize`), through the SIMD decoders of `ops::qdot` where the CPU has them,
//! so a quantized base computes what the dequantize-to-f32 path computes.
use crate::error::{Error, Result};
use crate::ops::qdot::{self, Kernel};
use candle_core::quantized::k_quants::*;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// The blocks, typed (aligned) so that candle's dequantizers can read them.
enum Blocks {
    Q4_0(Vec<BlockQ4_0>),
    Q4_1(Vec<BlockQ4_1>),
    Q5_0(Vec<BlockQ5_0>),
    Q5_1(Vec<BlockQ5_1>),
    Q8_0(Vec<BlockQ8_0>),
    Q2K(Vec<BlockQ2K>),
    Q3K(Vec<BlockQ3K>),
    Q4K(Vec<BlockQ4K>),
    Q5K(Vec<BlockQ5K>),
    Q6K(Vec<BlockQ6K>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// Runs `$body` with `$v` bound to the typed block vector.
macro_rules! with_blocks {
    ($blocks:expr, $v:ident => $body:expr) => {
        match $blocks {
            Blocks::Q4_0($v) => $body,
            Blocks::Q4_1($v) => $body,
            Blocks::Q5_0($v) => $body,
            Blocks::Q5_1($v) => $body,
            Blocks::Q8_0($v) => $body,
            Blocks::Q2K($v) => $body,
            Blocks::Q3K($v) => $body,
            Blocks::Q4K($v) => $body,
            Blocks::Q5K($v) => $body,
            Blocks::Q6K($v) => $body,
            Blocks::F16($v) => $body,
            Blocks::BF16($v) => $body,
        }
    };
}

/// Copies little-endian block bytes into a typed vector. The block types are `repr(C)`
/// plain data (f16 scales and byte arrays), so any bytes are a valid value; the copy gives
/// them their alignment, which a slice of a memory-mapped file does not promise.
fn typed<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    let n = bytes.len() / std::mem::size_of::<T>();
    let mut v: Vec<T> = Vec::with_capacity(n);
    // SAFETY: `v` has capacity for n values of T; exactly n·size_of::<T>() bytes are
    // copied into it, and every bit pattern is a valid T (see above).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, n * std::mem::size_of::<T>());
        v.set_len(n);
    }
    v
}

pub struct QWeight {
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    blocks: Blocks,
}

impl QWeight {
    /// Storage types kept as they are; others (F32, Q8_1, Q8K) are dequantized at load.
    pub fn keeps(dtype: GgmlDType) -> bool {
        use GgmlDType::*;
        matches!(dtype, Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2K | Q3K | Q4K | Q5K | Q6K | F16 | BF16)
    }

    /// A [rows, cols] weight from its raw ggml bytes. `name` is for errors.
    pub fn from_bytes(name: &str, dtype: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let bad = |why: String| Error::arg(name, format!("a {dtype:?} weight of {rows}×{cols}"), why);
        if !Self::keeps(dtype) {
            return Err(bad(format!("storage type {dtype:?}, which is dequantized at load instead")));
        }
        if !cols.is_multiple_of(dtype.block_size()) {
            return Err(bad(format!("rows of {cols} values, not a multiple of the {}-value block", dtype.block_size())));
        }
        let want = rows * (cols / dtype.block_size()) * dtype.type_size();
        if bytes.len() != want {
            return Err(bad(format!("{} bytes of data where {want} were expected", bytes.len())));
        }
        use GgmlDType::*;
        let blocks = match dtype {
            Q4_0 => Blocks::Q4_0(typed(bytes)),
            Q4_1 => Blocks::Q4_1(typed(bytes)),
            Q5_0 => Blocks::Q5_0(typed(bytes)),
            Q5_1 => Blocks::Q5_1(typed(bytes)),
            Q8_0 => Blocks::Q8_0(typed(bytes)),
            Q2K => Blocks::Q2K(typed(bytes)),
            Q3K => Blocks::Q3K(typed(bytes)),
            Q4K => Blocks::Q4K(typed(bytes)),
            Q5K => Blocks::Q5K(typed(bytes)),
            Q6K => Blocks::Q6K(typed(bytes)),
            F16 => Blocks::F16(typed(bytes)),
            BF16 => Blocks::BF16(typed(bytes)),
            F32 | Q8_1 | Q8K => unreachable!("refused above"),
        };
        Ok(QWeight { dtype, rows, cols, blocks })
    }

    /// A half-precision weight from a dense tensor (safetensors' f16/bf16 frozen bases).
    pub fn from_half(name: &str, t: &Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let blocks = match t.dtype() {
            DType::F16 => Blocks::F16(t.flatten_all()?.to_vec1::<f16>()?),
            DType::BF16 => Blocks::BF16(t.flatten_all()?.to_vec1::<bf16>()?),
            other => return Err(Error::arg(name, "an f16 or bf16 weight", format!("{other:?}"))),
        };
        let dtype = if t.dtype() == DType::F16 { GgmlDType::F16 } else { GgmlDType::BF16 };
        Ok(QWeight { dtype, rows, cols, blocks })
    }

    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }

    /// [rows, cols] = [out_features, in_features].
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes held (the blocks).
    pub fn storage_bytes(&self) -> usize {
        self.rows * (self.cols / self.dtype.block_size()) * self.dtype.type_size()
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / self.dtype.block_size()
    }

    /// Rows `start..start + out.len() / cols` into `out` (row-major f32), in parallel.
    pub fn dequantize_rows(&self, start: usize, out: &mut [f32]) {
        self.dequantize_rows_with(Kernel::detect(), start, out)
    }

    /// [`Self::dequantize_rows`] through the given kernel (tests compare them).
    pub fn dequantize_rows_with(&self, kernel: Kernel, start: usize, out: &mut [f32]) {
        let (cols, bpr) = (self.cols, self.blocks_per_row());
        let n = out.len() / cols;
        assert!(start + n <= self.rows && out.len() == n * cols, "dequantize_rows: rows {start}..{} of {}", start + n, self.rows);
        // A few rows per task: enough work to amortise rayon's scheduling.
        let per_task = (16384 / cols).max(1);
        with_blocks!(&self.blocks, v => {
            out.par_chunks_mut(per_task * cols).enumerate().for_each(|(i, chunk)| {
                let r0 = start + i * per_task;
                let r1 = r0 + chunk.len() / cols;
                qdot::dequantize(kernel, &v[r0 * bpr..r1 * bpr], chunk);
            })
        })
    }

    /// Rows `r0..r0 + rows`, columns `c0..c0 + width` (`width = out.len() / rows`) into `out`,
    /// row-major with rows of `width`, on the calling thread: each of `ops::qlinear`'s tasks
    /// dequantizes its own block. `c0` and `width` are whole quantization blocks.
    pub fn dequantize_block(&self, r0: usize, rows: usize, c0: usize, out: &mut [f32]) {
        let (bs, bpr) = (self.dtype.block_size(), self.blocks_per_row());
        let width = out.len() / rows.max(1);
        assert!(
            r0 + rows <= self.rows
                && out.len() == rows * width
                && c0.is_multiple_of(bs)
                && width.is_multiple_of(bs)
                && c0 + width <= self.cols,
            "dequantize_block: rows {r0}..{}, columns {c0}..{} of a {}×{} weight in blocks of {bs}",
            r0 + rows,
            c0 + width,
            self.rows,
            self.cols
        );
        let (kernel, b0, nb) = (Kernel::detect(), c0 / bs, width / bs);
        with_blocks!(&self.blocks, v => {
            for (i, row) in out.chunks_mut(width.max(1)).enumerate() {
                let start = (r0 + i) * bpr + b0;
                qdot::dequantize(kernel, &v[start..start + nb], row);
            }
        })
    }

    /// Rows `ids` (token ids: an embedding lookup) as [ids.len(), cols] f32.
    pub fn gather_rows(&self, ids: &[u32], out: &mut [f32]) {
        let (cols, bpr) = (self.cols, self.blocks_per_row());
        let kernel = Kernel::detect();
        with_blocks!(&self.blocks, v => {
            out.par_chunks_mut(cols).zip(ids.par_iter()).for_each(|(row, &id)| {
                let r = id as usize;
                qdot::dequantize(kernel, &v[r * bpr..(r + 1) * bpr], row);
            })
        })
    }

    /// `x[m, cols] · Wᵀ` for a few rows without dequantizing the weight: decoding reads the
    /// 4–8 bits a weight is stored in, not 32. Each weight row is decoded once, in registers,
    /// and dotted with every row of `x` in f32 (`ops::qdot`): the result is the dense product
    /// over the dequantized weight up to the order of the sums. Q4_0, Q4_1, Q5_0, Q5_1 and
    /// Q8_0, Q4_K and Q6_K weights dot in integers with `x` rounded to 16 bits per 32-value block
    /// ([`Self::matmul_rows_int`]: within 2⁻¹⁶ of each block's largest |x|). For inference
    /// only: training uses the tiled path (`ops::qlinear`). `PEFT_NODE_Q8_DECODE` quantizes `x`
    /// to 8 bits per block instead, as llama.cpp does (candle's `vec_dot`: within ~1e-3 of the
    /// f32 product; it changed SmolLM2's greedy tokens).
    pub fn matmul_rows(&self, x: &[f32], m: usize) -> Vec<f32> {
        if q8_decode() && !matches!(self.blocks, Blocks::F16(_) | Blocks::BF16(_)) {
            return with_blocks!(&self.blocks, v => self.dot_q8(v, x, m));
        }
        let kernel = Kernel::detect();
        self.matmul_rows_int(kernel, x, m).unwrap_or_else(|| self.matmul_rows_with(kernel, x, m))
    }

    /// `x[m, cols] · Wᵀ` in integers for the types whose blocks are one scale times integers
    /// (plus an offset: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, and the k-quants Q4_K, Q6_K; None for the others): `x` is quantized to 16 bits per block once,
    /// then each weight row dots with it through `ops::qdot::int16`.
    pub fn matmul_rows_int(&self, kernel: Kernel, x: &[f32], m: usize) -> Option<Vec<f32>> {
        assert_eq!(x.len(), m * self.cols, "matmul_rows: {m} rows of {} values expected", self.cols);
        Some(match &self.blocks {
            Blocks::Q4_0(v) => self.dot_ints(kernel, v, x, m),
            Blocks::Q4_1(v) => self.dot_ints(kernel, v, x, m),
            Blocks::Q5_0(v) => self.dot_ints(kernel, v, x, m),
            Blocks::Q5_1(v) => self.dot_ints(kernel, v, x, m),
            Blocks::Q8_0(v) => self.dot_ints(kernel, v, x, m),
            Blocks::Q4K(v) => self.dot_super_ints(kernel, v, x, m),
            Blocks::Q6K(v) => self.dot_super_ints(kernel, v, x, m),
            _ => return None,
        })
    }

    /// [`Self::matmul_rows`] through the given kernel (tests compare them), f32 activations.
    pub fn matmul_rows_with(&self, kernel: Kernel, x: &[f32], m: usize) -> Vec<f32> {
        let (k, bpr) = (self.cols, self.blocks_per_row());
        assert_eq!(x.len(), m * k, "matmul_rows: {m} rows of {k} values expected");
        with_blocks!(&self.blocks, v => self.by_rows(m, |r0, out| {
            for (j, out) in out.chunks_mut(m).enumerate() {
                let r = r0 + j;
                qdot::dot_rows(kernel, &v[r * bpr..(r + 1) * bpr], x, m, out)
            }
        }))
    }

    /// y[m, rows], filling `yt` [rows, m] a run of rows at a time in parallel (`dot(first
    /// row, out)`, `out` holding the run's rows of m), then transposing.
    fn by_rows(&self, m: usize, dot: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        let (n, k) = (self.rows, self.cols);
        let mut yt = vec![0f32; n * m];
        // About 64k weights per task: a few tasks per thread for a decode-sized linear.
        let per_task = (65536 / k.max(1)).max(1);
        yt.par_chunks_mut(per_task * m).enumerate().for_each(|(i, chunk)| dot(i * per_task, chunk));
        if m == 1 {
            return yt;
        }
        let mut y = vec![0f32; m * n];
        for r in 0..n {
            for i in 0..m {
                y[i * n + r] = yt[r * m + i];
            }
        }
        y
    }

    fn dot_ints<T: qdot::BlockInts>(&self, kernel: Kernel, blocks: &[T], x: &[f32], m: usize) -> Vec<f32> {
        let bpr = self.blocks_per_row();
        let xq = qdot::Q16Rows::quantize(x, m);
        self.by_rows(m, |r0, out| qdot::int16::dot_rows(kernel, &blocks[r0 * bpr..(r0 + out.len() / m) * bpr], &xq, out))
    }

    fn dot_super_ints<T: qdot::SuperBlockInts>(&self, kernel: Kernel, blocks: &[T], x: &[f32], m: usize) -> Vec<f32> {
        let bpr = self.blocks_per_row();
        let xq = qdot::Q16Rows::quantize(x, m);
        self.by_rows(m, |r0, out| qdot::int16_k::dot_rows(kernel, &blocks[r0 * bpr..(r0 + out.len() / m) * bpr], &xq, out))
    }

    fn dot_q8<T: GgmlType>(&self, blocks: &[T], x: &[f32], m: usize) -> Vec<f32> {
        let (k, bpr) = (self.cols, self.blocks_per_row());
        let xq: Vec<Vec<T::VecDotType>> = x
            .chunks(k)
            .map(|row| {
                let mut q = vec![T::VecDotType::zeros(); k / T::VecDotType::BLCK_SIZE];
                T::VecDotType::from_float(row, &mut q);
                q
            })
            .collect();
        self.by_rows(m, |r0, out| {
            for (j, out) in out.chunks_mut(m).enumerate() {
                let w = &blocks[(r0 + j) * bpr..(r0 + j + 1) * bpr];
                for (o, xr) in out.iter_mut().zip(&xq) {
                    *o = T::vec_dot(k, w, xr);
                }
            }
        })
    }

    /// The whole weight, dequantized: for the uses that need it dense (DoRA's weight norm,
    /// merging, PiSSA's SVD, saving), one weight at a time.
    pub fn to_tensor(&self, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.dequantize_rows(0, &mut out);
        Tensor::from_vec(out, (self.rows, self.cols), device)?.to_dtype(dtype)
    }

    /// The weight with its rows reordered: row i of the result is row `order[i]` of this one.
    /// Quantization blocks never cross rows, so whole rows move as they are (llama.cpp's Q/K
    /// row permutation is undone this way without dequantizing).
    pub fn permute_rows(&self, order: &[usize]) -> QWeight {
        let bpr = self.blocks_per_row();
        let blocks = {
            macro_rules! gather {
                ($v:expr) => {
                    order.iter().flat_map(|&r| $v[r * bpr..(r + 1) * bpr].iter().cloned()).collect()
                };
            }
            match &self.blocks {
                Blocks::Q4_0(v) => Blocks::Q4_0(gather!(v)),
                Blocks::Q4_1(v) => Blocks::Q4_1(gather!(v)),
                Blocks::Q5_0(v) => Blocks::Q5_0(gather!(v)),
                Blocks::Q5_1(v) => Blocks::Q5_1(gather!(v)),
                Blocks::Q8_0(v) => Blocks::Q8_0(gather!(v)),
                Blocks::Q2K(v) => Blocks::Q2K(gather!(v)),
                Blocks::Q3K(v) => Blocks::Q3K(gather!(v)),
                Blocks::Q4K(v) => Blocks::Q4K(gather!(v)),
                Blocks::Q5K(v) => Blocks::Q5K(gather!(v)),
                Blocks::Q6K(v) => Blocks::Q6K(gather!(v)),
                Blocks::F16(v) => Blocks::F16(gather!(v)),
                Blocks::BF16(v) => Blocks::BF16(gather!(v)),
            }
        };
        QWeight { dtype: self.dtype, rows: self.rows, cols: self.cols, blocks }
    }
}

impl std::fmt::Debug for QWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QWeight({:?}, {}×{})", self.dtype, self.rows, self.cols)
    }
}

/// `PEFT_NODE_Q8_DECODE` is set (read once).
fn q8_decode() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("PEFT_NODE_Q8_DECODE").is_some())
}
