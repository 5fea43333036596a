//! Reference versions of the model's hot ops, built only from candle primitives that
//! record a backward. They define the semantics; the fused ops in this folder must
//! match them (forward and gradients) and are tested against them.
use candle_core::{DType, Result, Tensor, D};

/// LLaMA RMSNorm as transformers computes it: normalise in f32, cast back, then scale.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = if dtype == DType::F64 { x.clone() } else { x.to_dtype(DType::F32)? };
    let inv = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    xf.broadcast_mul(&inv)?.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Rotate-half RoPE. `x`: [b, heads, t, d]; `cos`, `sin`: [b, t, d/2].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let cos = cos.unsqueeze(1)?;
    let sin = sin.unsqueeze(1)?;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let a = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
    let b = (x2.broadcast_mul(&cos)? + x1.broadcast_mul(&sin)?)?;
    Tensor::cat(&[a, b], D::Minus1)
}

/// Softmax over the last dimension. The max is detached: the result does not depend on it.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Attention's `softmax(scores * scale + bias)`: `scores` [b, heads, t, kv], `bias` an
/// additive mask broadcastable to [b, 1, t, kv].
pub fn scaled_masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    softmax_last_dim(&(scores * scale)?.broadcast_add(bias)?)
}

/// LoRA's `result + scaling * u Bᵀ`: `u` [..., r] is `x Aᵀ`, `b` is [out, r].
pub fn lora_add(result: &Tensor, u: &Tensor, b: &Tensor, scaling: f64) -> Result<Tensor> {
    result + (u.broadcast_matmul(&b.t()?)? * scaling)?
}

/// A sparse mask's update: `result + x ΔWᵀ` with ΔW [out, in] zero but `delta` at the flat
/// `indices` (i64). candle's `index_add` has a backward that gathers δ's gradient.
pub fn sparse_add(result: &Tensor, x: &Tensor, delta: &Tensor, indices: &Tensor, (out, inp): (usize, usize)) -> Result<Tensor> {
    let dense = Tensor::zeros(out * inp, delta.dtype(), delta.device())?.index_add(indices, delta, 0)?.reshape((out, inp))?;
    result + x.broadcast_matmul(&dense.t()?)?
}

/// SwiGLU's gate: silu(gate) * up.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// Gemma's gate: gelu_tanh(gate) * up (transformers' `gelu_pytorch_tanh`; candle's `gelu`).
pub fn gelu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.gelu()? * up
}

/// Sum over rows of `weights[i] * -log softmax(logits[i])[targets[i]]`.
/// `logits`: [n, vocab]; `targets`: u32 [n]; `weights`: [n] in the logits' dtype
/// (0 for ignored positions, whose target may be any valid id).
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let logits = logits.to_dtype(promoted(logits.dtype()))?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let picked = shifted.gather(&targets.unsqueeze(1)?, 1)?;
    let nll = (lse - picked)?.squeeze(1)?;
    let weights = weights.to_dtype(nll.dtype())?;
    (nll * weights)?.sum_all()
}

/// Losses are computed in f32 at least, as transformers upcasts logits.
pub fn promoted(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}
