//! MoLE (Wu, Huang & Wei 2024, "Mixture of LoRA Experts", ICLR 2024, §3.2, eqs. 3-7): N LoRAs,
//! trained before and frozen, at each targeted linear; a learned gate per layer mixes them:
//!   E_Ω(x) = Normalization(E₁(x) ⊕ … ⊕ E_N(x)),  ε = Flatten(E_Ω(x)),
//!   G(ε) = softmax(ε e / τ),  O(x) = W₀x + Σᵢ Gᵢ(ε) Eᵢ(x),
//! with Eᵢ(x) = sᵢ Bᵢ Aᵢ x and only e [N·out → N] trained (τ the temperature). The paper's gating
//! balance loss (eq. 8), L_balance = −log Πᵢ qᵢ with qᵢ the mean gate of expert i over the tokens,
//! is added with `balance_loss_coef` (default 0). Ours, where the paper leaves a choice: the gate
//! is per token (ε of one token's N outputs; the sequence length varies), the normalisation is a
//! LayerNorm without affine parameters over each expert's output, e starts at 0 (all gates 1/N:
//! a new MoLE is the mean of its LoRAs). Each layer's mean gates are reported in the training
//! metrics as `routing/mole.expert{i}` (averaged over the layers).
//!
//! The LoRAs live in the adapter as frozen buffers (A stacked [N·r, in], B [out, N·r], with
//! each source's scaling folded into its B by `Tuners::add_mole_adapter`), saved with it. From
//! a config alone the experts are random (tests). Our own `peft_type` "MOLE"; tensors
//! `<module>.mole_gate.weight` [N, N·out], `mole_A`, `mole_B`. Per-token mixing: no merge.
mod compose;

use crate::error::Result;
use crate::model::linear::linear;
use crate::model::{Ctx, Linear, ParamId};
use crate::tuners::aux_loss::ROUTING_PREFIX;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::init::kaiming_uniform;
use crate::tuners::low_rank::{defaults, LowRank};
use crate::tuners::molora::num_experts;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{DType, Tensor, D};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct MoleConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// The experts' rank and scaling (lora_alpha / r).
    pub low_rank: LowRank,
    pub num_experts: usize,
    pub temperature: f64,
    pub balance_loss_coef: f64,
}

impl MoleConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let extra = json!({"r": 8, "num_experts": 2, "temperature": 1.0, "balance_loss_coef": 0.0, "adapter_names": null});
        let (f, warnings) = Fields::parse(value, "MOLE", "MoleConfig", defaults(extra), source)?;
        let low_rank = LowRank::parse(&f, "the rank of each LoRA expert")?;
        let num_experts = num_experts(&f)?;
        let temperature = f.num_in("temperature", |t| t.is_finite() && t > 0.0, "a finite number > 0")?;
        let balance_loss_coef = f.num_in("balance_loss_coef", |c| c.is_finite() && c >= 0.0, "a finite number >= 0")?;
        if !f.get("adapter_names").is_null() && f.strings("adapter_names").map_or(true, |n| n.len() != num_experts) {
            return Err(f.err("adapter_names", &format!("null or a list of num_experts ({num_experts}) names")));
        }
        Ok((MoleConfig { low_rank, num_experts, temperature, balance_loss_coef, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for MoleConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "MOLE"
    }

    fn default_targets(&self) -> &'static [&'static str] {
        crate::tuners::defaults::QV
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dev = bc.store.get(t.weight).value().device().clone();
        let (dt, n, r) = (bc.dtype, self.num_experts, self.low_rank.r);
        let gate = Tensor::zeros((n, n * t.out_features), dt, &dev)?;
        let a = kaiming_uniform(n * r, t.in_features, bc.rng, dt, &dev)?;
        let b = kaiming_uniform(t.out_features, n * r, bc.rng, dt, &dev)?;
        Ok(Box::new(MoleLayer {
            adapter: bc.adapter.to_string(),
            gate: bc.store.add(param_name(&t.path, "mole_gate", bc.adapter), gate, false)?,
            a: bc.store.add(param_name(&t.path, "mole_A", bc.adapter), a, false)?,
            b: bc.store.add(param_name(&t.path, "mole_B", bc.adapter), b, false)?,
            experts: n,
            r,
            scaling: self.low_rank.scaling(),
            temperature: self.temperature,
            balance_loss_coef: self.balance_loss_coef,
        }))
    }
}

pub struct MoleLayer {
    pub adapter: String,
    /// e [N, N·out] (trained).
    pub gate: ParamId,
    /// The experts' stacked factors (frozen buffers).
    pub a: ParamId,
    pub b: ParamId,
    pub experts: usize,
    pub r: usize,
    pub scaling: f64,
    pub temperature: f64,
    pub balance_loss_coef: f64,
}

/// LayerNorm over the last dim without affine parameters (eps 1e-5), with our own ops' backward.
fn normalize(x: &Tensor) -> Result<Tensor> {
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centered.broadcast_div(&(var + 1e-5)?.sqrt()?)?)
}

impl AdapterLayer for MoleLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.gate]
    }

    fn buffers(&self) -> Vec<ParamId> {
        vec![self.a, self.b]
    }

    /// `result + Σᵢ Gᵢ Eᵢ(x)` (eq. 7).
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (gate, a, b) = (ctx.param(self.gate), ctx.param(self.a), ctx.param(self.b));
        let (n, r, dt) = (self.experts, self.r, a.dtype());
        let out = b.dim(0)?;
        let lead = &result.dims()[..result.rank() - 1];
        let m: usize = lead.iter().product();
        let h = linear(&x.to_dtype(dt)?.reshape((m, x.dim(D::Minus1)?))?, &a, None)?; // [M, N·r]
        let h = h.reshape((m, n, r))?.transpose(0, 1)?.contiguous()?; // [N, M, r]
        let bt = b.reshape((out, n, r))?.permute((1, 2, 0))?.contiguous()?; // [N, r, out]
        let experts = (h.matmul(&bt)?.transpose(0, 1)?.contiguous()? * self.scaling)?; // [M, N, out]: Eᵢ(x)
        let eps = normalize(&experts)?.reshape((m, n * out))?;
        let g = crate::ops::softmax_last_dim(&(linear(&eps, &gate, None)? / self.temperature)?)?; // [M, N]
        let mixed = experts.broadcast_mul(&g.unsqueeze(D::Minus1)?)?.sum(1)?; // [M, out]
        if ctx.training {
            let q = g.mean(0)?; // [N]: each expert's mean gate
            if self.balance_loss_coef > 0.0 {
                ctx.add_aux_loss("mole_balance", (q.log()?.sum_all()? * -self.balance_loss_coef)?);
            }
            let qs = q.detach().to_dtype(DType::F64)?.to_vec1::<f64>()?;
            for (i, qi) in qs.into_iter().enumerate() {
                ctx.add_aux_loss(&format!("{ROUTING_PREFIX}mole.expert{i}"), Tensor::new(qi, &candle_core::Device::Cpu)?);
            }
        }
        let out_dtype = result.dtype();
        Ok((result.to_dtype(dt)? + mixed.reshape(result.dims())?)?.to_dtype(out_dtype)?)
    }
}
