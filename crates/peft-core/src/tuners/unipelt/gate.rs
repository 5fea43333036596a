//! The three gated layers of UniPELT: each wraps an existing layer (or, for the prefix,
//! sits at the attention beside the prefix layer) and one `Gate`.
use crate::error::Result;
use crate::model::linear::linear;
use crate::model::ParamId;
use crate::model::{Ctx, Linear};
use crate::tuners::bottleneck::config::name;
use crate::tuners::bottleneck::BottleneckLayer;
use crate::tuners::init::{kaiming_uniform, uniform};
use crate::tuners::{AdapterLayer, BuildCtx};
use candle_core::{Device, Tensor};

/// G = σ(x W_Gᵀ + b_G), W_G [1, d], b_G [1]: nn.Linear(d, 1) with its default init, as the
/// official gates (`nn.Linear(in_features, 1)`).
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    pub weight: ParamId,
    pub bias: ParamId,
}

impl Gate {
    /// `base_model.model.<path>.<attr>.<adapter>.{weight,bias}`.
    pub fn build(path: &str, attr: &str, d: usize, bc: &mut BuildCtx, device: &Device) -> Result<Self> {
        let w = kaiming_uniform(1, d, bc.rng, bc.dtype, device)?;
        let b = uniform(1, 1.0 / (d as f64).sqrt(), bc.rng, bc.dtype, device)?;
        let weight = bc.store.add(name(path, attr, bc.adapter, "weight"), w, false)?;
        let bias = bc.store.add(name(path, attr, bc.adapter, "bias"), b, false)?;
        Ok(Gate { weight, bias })
    }

    /// [.., 1] in the gate's dtype: σ(z) = (1 + tanh(z/2)) / 2 from differentiable ops. Not
    /// 1 / (1 + e^(−z)): past |z| ≈ 88 in f32, e^(−z) overflows and its backward is 0 · ∞ = NaN
    /// (real models' hidden states reach such z; SmolLM2's do at init).
    pub fn eval(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (w, b) = (ctx.param(self.weight), ctx.param(self.bias));
        let z = linear(&x.to_dtype(w.dtype())?, &w, Some(&b))?;
        Ok((((z * 0.5)?.tanh()? + 1.0)? * 0.5)?)
    }

    pub fn params(&self) -> [ParamId; 2] {
        [self.weight, self.bias]
    }
}

/// LoRA on a linear, gated: `result + G_L(x) · (s·B A x)`.
pub struct GatedLora {
    pub lora: Box<dyn AdapterLayer>,
    pub gate: Gate,
}

impl AdapterLayer for GatedLora {
    fn adapter_name(&self) -> &str {
        self.lora.adapter_name()
    }

    fn params(&self) -> Vec<ParamId> {
        let mut p = self.lora.params();
        p.extend(self.gate.params());
        p
    }

    /// LoRA's own forward on a zero result gives its contribution s·B A x alone.
    fn forward(&self, base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let delta = self.lora.forward(base, x, result.zeros_like()?, ctx)?;
        let g = self.gate.eval(x, ctx)?;
        let gated = delta.to_dtype(g.dtype())?.broadcast_mul(&g)?;
        Ok((result.to_dtype(g.dtype())? + gated)?.to_dtype(result.dtype())?)
    }
}

/// The serial bottleneck after the FFN, gated: `h_F + G_A(h_F) · A(h_F)`.
pub struct GatedAdapter {
    pub adapter: BottleneckLayer,
    pub gate: Gate,
}

impl AdapterLayer for GatedAdapter {
    fn adapter_name(&self) -> &str {
        &self.adapter.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        let mut p = self.adapter.params();
        p.extend(self.gate.params());
        p
    }

    fn sublayer(&self, _input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let delta = self.adapter.delta(&output, ctx)?;
        let g = self.gate.eval(&output, ctx)?;
        let gated = delta.broadcast_mul(&g.to_dtype(delta.dtype())?)?;
        Ok((output.to_dtype(gated.dtype())? + gated)?.to_dtype(output.dtype())?)
    }
}

/// G_P at one attention: the gate of this adapter's key/value prefix.
pub struct PrefixGate {
    pub adapter: String,
    pub gate: Gate,
}

impl AdapterLayer for PrefixGate {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        self.gate.params().to_vec()
    }

    /// [b, t] from the attention input [b, t, d].
    fn prefix_gate(&self, x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(Some(self.gate.eval(x, ctx)?.squeeze(2)?))
    }
}
