//! The LM head and the cross-entropy in one op, chunked over tokens, so that neither the
//! [tokens × vocab] logits nor their gradient ever exist whole: Liger Kernel's
//! `LigerFusedLinearCrossEntropyLoss` and Apple's Cut Cross-Entropy (Wijmans et al. 2024)
//! do the same. With a 128K vocabulary the logits of 1K tokens are 0.5 GB in f32, and the
//! plain path keeps them for the backward and writes as much again for their gradient.
//!
//! The forward computes each chunk's logits, its loss (the fused `cross_entropy_sum`) and
//! drops them; the backward computes each chunk's logits again, their gradient through the
//! same fused kernel, and from it dh = dz W and dW += dzᵀ h, the products the plain path's
//! `linear` backward computes on the whole matrix. Same kernels row by row, so the
//! gradients equal the plain path's up to the order of dW's sum over chunks.
use super::composite::promoted;
use super::precomputed::Precomputed;
use super::qlinear::{qlinear, qlinear_input_grad};
use crate::model::linear::linear;
use crate::model::QWeight;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, Var};
use std::sync::Arc;

/// About this many logits per chunk (32 MiB in f32): rows enough for an efficient matmul
/// against the head, a small fraction of the whole logits at large vocabularies.
const CHUNK_ELEMENTS: usize = 1 << 23;

/// Rows per chunk for a vocabulary of `vocab`.
pub fn default_chunk_rows(vocab: usize) -> usize {
    (CHUNK_ELEMENTS / vocab.max(1)).max(1)
}

/// Σ_i weights[i] · −log softmax(softcap(h[i] Wᵀ))[targets[i]], i.e.
/// `cross_entropy_sum(softcap(linear(h, w)), targets, weights)` without the logits.
/// `h`: [n, hidden]; `w`: [vocab, hidden]; `targets`: u32 [n]; `weights`: [n] (0 ignores a
/// row, which is then skipped); `softcap`: Gemma's `final_logit_softcapping`. Gradients
/// flow to `h` and `w` (to `w` only when it tracks one: a frozen head costs no dW).
pub fn linear_cross_entropy_sum(
    h: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    softcap: Option<f64>,
    chunk_rows: usize,
) -> Result<Tensor> {
    let (_, wh) = w.dims2()?;
    let (op, loss) = prepare(h, Head::Dense(w.detach()), wh, targets, weights, softcap, chunk_rows)?;
    if !h.track_op() && !w.track_op() {
        return Ok(loss);
    }
    h.apply_op2(w, LinearCrossEntropy { output: Some(Precomputed::new(loss)), ..op })
}

/// [`linear_cross_entropy_sum`] over a head kept quantized (frozen: the gradient is `h`'s).
pub fn qlinear_cross_entropy_sum(
    h: &Tensor,
    w: &Arc<QWeight>,
    targets: &Tensor,
    weights: &Tensor,
    softcap: Option<f64>,
    chunk_rows: usize,
) -> Result<Tensor> {
    let (op, loss) = prepare(h, Head::Quantized(w.clone()), w.dims().1, targets, weights, softcap, chunk_rows)?;
    if !h.track_op() {
        return Ok(loss);
    }
    h.apply_op1(LinearCrossEntropy { output: Some(Precomputed::new(loss)), ..op })
}

/// The op and the forward's loss.
fn prepare(
    h: &Tensor,
    head: Head,
    w_hidden: usize,
    targets: &Tensor,
    weights: &Tensor,
    softcap: Option<f64>,
    chunk_rows: usize,
) -> Result<(LinearCrossEntropy, Tensor)> {
    let (n, hidden) = h.dims2()?;
    if w_hidden != hidden || targets.dims() != [n] || weights.dims() != [n] {
        candle_core::bail!(
            "linear_cross_entropy: h {:?}, head rows of {w_hidden}, targets {:?}, weights {:?}",
            h.dims(),
            targets.dims(),
            weights.dims()
        );
    }
    let op = LinearCrossEntropy {
        chunks: chunks(weights, chunk_rows.max(1))?,
        head,
        targets: targets.clone(),
        weights: weights.clone(),
        softcap,
        output: None,
    };
    let mut total = 0f64;
    for &(start, len) in &op.chunks {
        total += op.chunk_loss(&h.narrow(0, start, len)?.detach(), start, len)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    let loss = Tensor::new(total, h.device())?.to_dtype(promoted(h.dtype()))?;
    Ok((op, loss))
}

/// The head's weight [vocab, hidden], detached: dense, or kept quantized.
#[derive(Clone)]
enum Head {
    Dense(Tensor),
    Quantized(Arc<QWeight>),
}

impl Head {
    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        match self {
            Head::Dense(w) => linear(h, w, None),
            Head::Quantized(q) => qlinear(h, q, None),
        }
    }

    /// dz W, outside any graph.
    fn input_grad(&self, dz: &Tensor) -> Result<Tensor> {
        match self {
            Head::Dense(w) => dz.matmul(w),
            Head::Quantized(q) => qlinear_input_grad(dz, q),
        }
    }

    fn vocab(&self) -> Result<usize> {
        match self {
            Head::Dense(w) => w.dim(0),
            Head::Quantized(q) => Ok(q.dims().0),
        }
    }
}

/// The (start, len) row ranges with at least one counted row.
fn chunks(weights: &Tensor, rows: usize) -> Result<Vec<(usize, usize)>> {
    let w = weights.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let starts = (0..w.len()).step_by(rows);
    Ok(starts.map(|s| (s, rows.min(w.len() - s))).filter(|&(s, len)| w[s..s + len].iter().any(|&x| x != 0.0)).collect())
}

struct LinearCrossEntropy {
    chunks: Vec<(usize, usize)>,
    head: Head,
    targets: Tensor,
    weights: Tensor,
    softcap: Option<f64>,
    output: Option<Precomputed>,
}

impl LinearCrossEntropy {
    /// The chunk's logits as the model's `head` gives them (soft-capped in the model dtype).
    fn logits(&self, z: &Tensor) -> Result<Tensor> {
        match self.softcap {
            Some(cap) => z.affine(1.0 / cap, 0.0)?.tanh()? * cap,
            None => Ok(z.clone()),
        }
    }

    /// The loss of rows start..start+len, from their logits before the cap `z`.
    fn loss_of(&self, z: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let logits = self.logits(z)?;
        let logits = logits.to_dtype(promoted(logits.dtype()))?;
        super::cross_entropy_sum(&logits, &self.targets.narrow(0, start, len)?, &self.weights.narrow(0, start, len)?)
    }

    fn chunk_loss(&self, h: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        self.loss_of(&self.head.logits(h)?, start, len)
    }

    fn output(&self) -> Result<&Precomputed> {
        self.output.as_ref().ok_or_else(|| candle_core::Error::Msg("linear_cross_entropy: no forward value".into()))
    }
}

impl LinearCrossEntropy {
    /// dh, and dW when the head is dense and tracked (`w`).
    fn backward(&self, h: &Tensor, w: Option<&Tensor>, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, hidden) = h.dims2()?;
        let vocab = self.head.vocab()?;
        let w_tracked = w.is_some_and(|w| w.track_op());
        let mut dh_parts = Vec::new();
        let mut dw: Option<Tensor> = None;
        let mut next = 0;
        for &(start, len) in &self.chunks {
            if start > next && h.track_op() {
                dh_parts.push(Tensor::zeros((start - next, hidden), h.dtype(), h.device())?);
            }
            let hc = h.narrow(0, start, len)?.detach();
            // The chunk's logits before the cap as a leaf: its gradient is dz.
            let z = Var::from_tensor(&self.head.logits(&hc)?)?;
            let loss = self.loss_of(z.as_tensor(), start, len)?;
            let dz = (loss * grad.detach().to_dtype(promoted(h.dtype()))?)?.backward()?.remove(z.as_tensor());
            let dz = match dz {
                Some(dz) => dz,
                None => Tensor::zeros((len, vocab), h.dtype(), h.device())?,
            };
            if h.track_op() {
                dh_parts.push(self.head.input_grad(&dz)?);
            }
            if w_tracked {
                let part = dz.t()?.matmul(&hc)?;
                dw = Some(match dw {
                    Some(acc) => (acc + part)?,
                    None => part,
                });
            }
            next = start + len;
        }
        let dh = if h.track_op() {
            if n > next {
                dh_parts.push(Tensor::zeros((n - next, hidden), h.dtype(), h.device())?);
            }
            Some(Tensor::cat(&dh_parts, 0)?)
        } else {
            None
        };
        let dw = match (dw, w) {
            (None, Some(w)) if w_tracked => Some(w.detach().zeros_like()?),
            (dw, _) => dw,
        };
        Ok((dh, dw))
    }
}

impl CustomOp1 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "peft-qlinear-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.output()?.cpu()
    }

    fn bwd(&self, h: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.backward(h, None, grad)?.0)
    }
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "peft-linear-cross-entropy"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.output()?.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.output()?.cuda()
    }

    fn bwd(&self, h: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.backward(h, Some(w), grad)
    }
}
