//! Attention's `softmax(scores * scale + bias)` in one pass, the additive mask read per
//! (batch, query) row instead of broadcast over the heads. The composite materialises
//! three [b, heads, t, kv] tensors (scaled, biased, softmax), keeps all of them in the
//! graph, and in the backward adds a zero-filled gradient for the broadcast bias as well;
//! this op keeps only the probabilities.
//!
//! [`attention_probs`] goes one step further for training: `softmax(q kᵀ * scale + bias)`
//! from the queries and keys, so the [b, heads, t, kv] scores are never a tensor of the
//! graph. candle's graph keeps every op's inputs alive until backward, and its backward
//! pays a zero-filled buffer and an add for every node; the scores and their two reshapes
//! were three such nodes of the largest size in the layer (and grow with t²).
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernel::{contiguous, dispatch, exp_shifted_in_place, fused_cpu, max, rows_per_task, Real};
use super::softmax::SoftmaxBwd;

/// `softmax_last_dim(scores * scale + bias)`, as [`super::composite::scaled_masked_softmax`].
/// `scores`: [b, heads, t, kv]; `bias`: broadcastable to [b, 1, t, kv] (an additive mask,
/// 0 or a large negative number). The bias is a constant: no gradient flows to it (the
/// unfused path is taken when it tracks one). Off the CPU and for dtypes other than
/// f32/f64, scales and adds in the input dtype, then takes the softmax in f32 at least
/// and casts back (as the model did before this op).
pub fn scaled_masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    if !fused_cpu(&[scores, bias]) || scores.rank() != 4 || bias.track_op() {
        return unfused(scores, bias, scale);
    }
    let (b, _, t, kv) = scores.dims4()?;
    match bias.broadcast_as((b, 1, t, kv)) {
        Ok(bias) => scores.apply_op2(&bias, MaskedSoftmax { scale }),
        Err(_) => unfused(scores, bias, scale),
    }
}

/// `softmax(q kᵀ * scale + bias)` per query head: `q` [b, kv_heads, rep * t, hd] (each key
/// head's `rep` query heads folded into the rows), `k` [b, kv_heads, kv, hd], `bias`
/// broadcastable to [b, 1, t, kv]. Returns [b, kv_heads, rep * t, kv], bit for bit what
/// `scaled_masked_softmax(q.matmul(kᵀ) as [b, heads, t, kv])` gives (the same matmul call,
/// the same softmax kernel). Gradients flow to `q` and `k`; `bias` is a constant.
pub fn attention_probs(q: &Tensor, k: &Tensor, bias: &Tensor, scale: f64, heads: usize) -> Result<Tensor> {
    let (b, kv_heads, rows, hd) = q.dims4()?;
    let kv = k.dim(2)?;
    let rep = (heads / kv_heads.max(1)).max(1);
    let fits = fused_cpu(&[q, k, bias])
        && !bias.track_op()
        && heads.is_multiple_of(kv_heads.max(1))
        && rows.is_multiple_of(rep)
        && k.dims4()? == (b, kv_heads, kv, hd)
        && q.is_contiguous();
    let t = rows / rep;
    let unfused = || scaled_masked_softmax(&q.matmul(&k.t()?)?.reshape((b, heads, t, kv))?, bias, scale)?.reshape((b, kv_heads, rows, kv));
    if !fits {
        return unfused();
    }
    match bias.broadcast_as((b, 1, t, kv)) {
        Ok(bias) => q.apply_op3(k, &bias, AttentionProbs { scale, heads }),
        Err(_) => unfused(),
    }
}

struct AttentionProbs {
    scale: f64,
    heads: usize,
}

impl CustomOp3 for AttentionProbs {
    fn name(&self) -> &'static str {
        "peft-attention-probs"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, kv_heads, rows, hd) = lq.shape().dims4()?;
        let kv = lk.dim(2)?;
        // Tensor::matmul(q, k.t()) makes exactly this call.
        let scores = sq.matmul(sk, (b * kv_heads, rows, kv, hd), lq, &lk.transpose(2, 3)?)?;
        let t = rows * kv_heads / self.heads;
        let as_heads = Layout::contiguous((b, self.heads, t, kv));
        let (probs, _) = dispatch!("attention_probs", sq, forward(self.scale, (&scores, &as_heads), (sb, lb)))?;
        Ok((probs, Shape::from((b, kv_heads, rows, kv))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        _bias: &Tensor,
        probs: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // d scores = scale · p ⊙ (dp − Σ dp ⊙ p) per row; then dq = ds k, dk = dsᵀ q.
        let ds = probs.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd { scale: self.scale })?;
        let dq = if q.track_op() { Some(ds.matmul(&k.detach())?) } else { None };
        let dk = if k.track_op() { Some(ds.t()?.matmul(&q.detach())?) } else { None };
        Ok((dq, dk, None))
    }
}

fn unfused(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let dtype = scores.dtype();
    let x = (scores * scale)?.broadcast_add(bias)?;
    super::softmax_last_dim(&x.to_dtype(super::composite::promoted(dtype))?)?.to_dtype(dtype)
}

struct MaskedSoftmax {
    scale: f64,
}

fn forward<T: Real>(scale: f64, (s1, l1): (&CpuStorage, &Layout), (s2, l2): (&CpuStorage, &Layout)) -> Result<(CpuStorage, Shape)> {
    let (b, h, t, kv) = l1.shape().dims4()?;
    if l2.dims() != [b, 1, t, kv] {
        candle_core::bail!("scaled_masked_softmax: scores {:?}, bias {:?}", l1.dims(), l2.dims());
    }
    let (x, bias) = (contiguous::<T>(s1, l1)?, contiguous::<T>(s2, l2)?);
    let scale = T::from_f64(scale);
    let mut out = vec![T::ZERO; x.len()];
    let rows = rows_per_task(kv);
    out.par_chunks_mut(rows * kv).zip(x.par_chunks(rows * kv)).enumerate().for_each(|(task, (out, x))| {
        for (i, (out, x)) in out.chunks_mut(kv).zip(x.chunks(kv)).enumerate() {
            let row = task * rows + i;
            // Row (batch, head, query) reads the bias row (batch, query).
            let at = (row / (h * t) * t + row % t) * kv;
            let bias = &bias[at..at + kv];
            // The same arithmetic as the composite: (x * scale) then + bias.
            for ((o, &x), &m) in out.iter_mut().zip(x).zip(bias) {
                *o = x * scale + m;
            }
            let m = max(out);
            let sum = T::from_f64(exp_shifted_in_place(out, m));
            for o in out.iter_mut() {
                *o /= sum;
            }
        }
    });
    Ok((T::to_cpu_storage_owned(out), l1.shape().clone()))
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "peft-scaled-masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch!("scaled_masked_softmax", s1, forward(self.scale, (s1, l1), (s2, l2)))
    }

    fn bwd(&self, _scores: &Tensor, _bias: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ds = res.apply_op2_no_bwd(grad, &SoftmaxBwd { scale: self.scale })?;
        Ok((Some(ds), None))
    }
}
