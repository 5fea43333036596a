//! The modules of a decoder layer. Each carries its checkpoint path; its forward goes
//! through `Ctx::hooks` when something is attached, and is the plain op otherwise.
use super::decoder::Ctx;
use super::linear::linear;
use super::params::ParamId;
use crate::config::Activation;
use crate::error::Result;
use crate::ops;
use candle_core::{Tensor, D};

pub struct Linear {
    /// Module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl Linear {
    /// `x Wᵀ + b`, nothing attached.
    pub fn base(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let bias = self.bias.map(|b| ctx.param(b));
        match ctx.store.get(self.weight).quantized() {
            Some(q) => Ok(ops::qlinear(x, &q, bias.as_ref())?),
            None => Ok(linear(x, &ctx.param(self.weight), bias.as_ref())?),
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        match &ctx.hooks {
            Some(h) => h.linear(self, x, ctx),
            None => self.base(x, ctx),
        }
    }
}

/// RMSNorm over the last dim.
pub struct Norm {
    pub path: String,
    pub weight: ParamId,
    pub eps: f64,
    /// Gemma's x̂ · (1 + w): the stored weight is zero-centred.
    pub unit_offset: bool,
}

impl Norm {
    /// The norm of `x` with `weight` (the stored one, or an adapter's replacement of it).
    pub fn apply(&self, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
        if self.unit_offset {
            return Ok(ops::rms_norm(x, &weight.affine(1.0, 1.0)?, self.eps)?);
        }
        Ok(ops::rms_norm(x, weight, self.eps)?)
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        match &ctx.hooks {
            Some(h) => h.norm(self, x, ctx),
            None => self.apply(x, &ctx.param(self.weight)),
        }
    }
}

/// q, k and v as three linears, or as one stored `qkv_proj` (Phi-3: rows q, then k, then v).
pub enum QkvProj {
    Separate { q_proj: Linear, k_proj: Linear, v_proj: Linear },
    Fused { qkv_proj: Linear, q_rows: usize, kv_rows: usize },
}

pub struct Attention {
    /// `model.layers.{i}.self_attn`.
    pub path: String,
    pub qkv: QkvProj,
    pub o_proj: Linear,
    /// Per-head norms of queries and keys before RoPE (Qwen3, Gemma 3).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
}

impl Attention {
    /// Queries, keys and values [b, t, rows] of the input.
    pub fn qkv(&self, x: &Tensor, ctx: &Ctx) -> Result<(Tensor, Tensor, Tensor)> {
        Ok(match &self.qkv {
            QkvProj::Separate { q_proj, k_proj, v_proj } => (q_proj.forward(x, ctx)?, k_proj.forward(x, ctx)?, v_proj.forward(x, ctx)?),
            QkvProj::Fused { qkv_proj, q_rows, kv_rows } => {
                let y = qkv_proj.forward(x, ctx)?;
                (
                    y.narrow(D::Minus1, 0, *q_rows)?,
                    y.narrow(D::Minus1, *q_rows, *kv_rows)?,
                    y.narrow(D::Minus1, q_rows + kv_rows, *kv_rows)?,
                )
            }
        })
    }

    pub fn linears(&self) -> Vec<&Linear> {
        match &self.qkv {
            QkvProj::Separate { q_proj, k_proj, v_proj } => vec![q_proj, k_proj, v_proj, &self.o_proj],
            // Phi3Attention defines o_proj first.
            QkvProj::Fused { qkv_proj, .. } => vec![&self.o_proj, qkv_proj],
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match &mut self.qkv {
            QkvProj::Separate { q_proj, k_proj, v_proj } => vec![q_proj, k_proj, v_proj, &mut self.o_proj],
            QkvProj::Fused { qkv_proj, .. } => vec![&mut self.o_proj, qkv_proj],
        }
    }
}

/// gate and up as two linears, or one stored `gate_up_proj` (Phi-3: the gate half first).
pub enum GateUpProj {
    Separate { gate_proj: Linear, up_proj: Linear },
    Fused { gate_up_proj: Linear },
}

/// act(gate) * up, the gated FFN activation (also MixLoRA's experts, which reuse the MLP's weights).
pub fn gated_activation(act: Activation, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(match act {
        Activation::Silu => ops::silu_mul(gate, up)?,
        Activation::GeluPytorchTanh => ops::gelu_mul(gate, up)?,
    })
}

pub struct Mlp {
    /// `model.layers.{i}.mlp`.
    pub path: String,
    pub gate_up: GateUpProj,
    pub down_proj: Linear,
    pub act: Activation,
}

impl Mlp {
    /// down(act(gate(x)) * up(x)).
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (gate, up) = match &self.gate_up {
            GateUpProj::Separate { gate_proj, up_proj } => (gate_proj.forward(x, ctx)?, up_proj.forward(x, ctx)?),
            GateUpProj::Fused { gate_up_proj } => {
                let y = gate_up_proj.forward(x, ctx)?;
                let n = y.dim(D::Minus1)? / 2;
                (y.narrow(D::Minus1, 0, n)?.contiguous()?, y.narrow(D::Minus1, n, n)?.contiguous()?)
            }
        };
        self.down_proj.forward(&gated_activation(self.act, &gate, &up)?, ctx)
    }

    pub fn linears(&self) -> Vec<&Linear> {
        match &self.gate_up {
            GateUpProj::Separate { gate_proj, up_proj } => vec![gate_proj, up_proj, &self.down_proj],
            GateUpProj::Fused { gate_up_proj } => vec![gate_up_proj, &self.down_proj],
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match &mut self.gate_up {
            GateUpProj::Separate { gate_proj, up_proj } => vec![gate_proj, up_proj, &mut self.down_proj],
            GateUpProj::Fused { gate_up_proj } => vec![gate_up_proj, &mut self.down_proj],
        }
    }
}

pub struct Block {
    pub input_layernorm: Norm,
    pub self_attn: Attention,
    /// LLaMA: the norm before the MLP. Gemma: the norm of the attention output.
    pub post_attention_layernorm: Norm,
    /// Gemma only: the norm before the MLP and the norm of the MLP output.
    pub pre_feedforward_layernorm: Option<Norm>,
    pub post_feedforward_layernorm: Option<Norm>,
    pub mlp: Mlp,
    /// Whether this layer's attention slides (`layer_types`).
    pub sliding: bool,
}

impl Block {
    /// The layer's norms in `named_modules()` order (q/k norms belong to the attention).
    pub fn norms(&self) -> Vec<&Norm> {
        let mut v = vec![&self.input_layernorm, &self.post_attention_layernorm];
        v.extend(self.pre_feedforward_layernorm.iter().chain(&self.post_feedforward_layernorm));
        v
    }
}
