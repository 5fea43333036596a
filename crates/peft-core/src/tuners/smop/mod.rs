//! SMoP (Choi et al. 2023, "SMoP: Towards Efficient and Effective Prompt Tuning with Sparse
//! Mixture-of-Prompts", EMNLP 2023, §3, eqs. 1-3): k short soft prompts P₁…P_k ∈ ℝˡˣᵈ and a
//! router over them. The router reads the mean of the input embeddings (of the prompt part only
//! in training: `batch::prompt_context_mask`),
//! p(x) = softmax(W_r · mean(E(x))), picks the top-1 prompt j = argmax p(x), and prepends it
//! scaled by its probability, p_j(x) · P_j (as Switch Transformers' gate, so the router learns).
//! In training, Gaussian noise N(0, σ²) is added to the router logits (§3.2, router perturbation;
//! σ = `router_noise`, default 1). Each instance runs one short prompt: the cost of a prompt of
//! length l with the capacity of k·l.
//!
//! The prompts are PEFT's prompt tuning (`PromptTuningConfig`: its fields and inits, SPoT's
//! `init_from` included, for all k·l rows); `num_virtual_tokens` is l, each prompt's length.
//! Our own `peft_type` "SMOP"; tensors `prompt_embeddings` [k·l, d] (prompt i: rows i·l…) and
//! `prompt_encoder.smop_router.weight` [k, d] (nn.Linear's init). The prompt depends on the
//! instance: nothing merges.
use crate::error::Result;
use crate::model::{Ctx, ParamId, PromptInputs};
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::init::{kaiming_uniform, normal};
use crate::tuners::prompt_tuning::learning;
use crate::tuners::prompt_tuning::PromptTuningConfig;
use crate::tuners::{AdapterLayer, BuildCtx, TargetSpec, TunerConfig};
use candle_core::{DType, Tensor, D};
use serde_json::{json, Value};
use std::path::Path;

/// Bound on `num_prompts`.
pub const MAX_PROMPTS: usize = 64;

#[derive(Debug, Clone)]
pub struct SmopConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// Prompt tuning over all k·l rows.
    pub prompt: PromptTuningConfig,
    pub num_prompts: usize,
    pub router_noise: f64,
}

/// The mean of the input embeddings over the positions the prompt may read [b, d], in `dtype`:
/// `PromptInputs::mask`, the attended ones before the first loss target (`batch::prompt_context_mask`).
pub fn pooled_input(inputs: &PromptInputs, dtype: DType) -> Result<Tensor> {
    let x = inputs.embeddings.to_dtype(dtype)?;
    let (b, t, _) = x.dims3()?;
    let Some(mask) = inputs.mask else {
        return Ok(x.mean(1)?);
    };
    let m: Vec<f64> = mask.iter().flat_map(|r| r.iter().map(|&v| f64::from(v.min(1)))).collect();
    let m = Tensor::from_vec(m, (b, t, 1), x.device())?.to_dtype(dtype)?;
    let count = m.sum(1)?.clamp(1.0, f64::MAX)?; // [b, 1]
    Ok(x.broadcast_mul(&m)?.sum(1)?.broadcast_div(&count)?)
}

impl SmopConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let own = [("num_prompts", json!(4)), ("router_noise", json!(1.0))];
        let (mut prompt, fields, warnings) = learning::with_own_fields(value, source, "SMOP", "SmopConfig", &own)?;
        let num_prompts = fields.positive("num_prompts", "the number of soft prompts")?;
        if num_prompts > MAX_PROMPTS {
            return Err(fields.err("num_prompts", &format!("at most {MAX_PROMPTS}")));
        }
        let router_noise = fields.num_in("router_noise", |s| s.is_finite() && s >= 0.0, "a finite number >= 0")?;
        // Prompt tuning's init fills all k prompts: k·l rows.
        prompt.num_virtual_tokens *= num_prompts;
        prompt.fields.set("num_virtual_tokens", prompt.num_virtual_tokens);
        Ok((SmopConfig { fields, targets: TargetSpec::default(), prompt, num_prompts, router_noise }, warnings))
    }
}

impl TunerConfig for SmopConfig {
    config_plumbing!();
    learning::own_prompt_plumbing!("SMoP", "smop_");

    fn peft_type(&self) -> &'static str {
        "SMOP"
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let prompts = self.prompt.create_hook(site, bc)?.params()[0];
        let (device, hidden) = {
            let v = bc.store.get(prompts).value();
            (v.device().clone(), v.dim(1)?)
        };
        let router = kaiming_uniform(self.num_prompts, hidden, bc.rng, bc.dtype, &device)?;
        let router = bc.store.add(learning::param_name(bc.adapter, "smop_router.weight"), router, false)?;
        Ok(Box::new(SmopLayer {
            adapter: bc.adapter.to_string(),
            prompts,
            router,
            num_prompts: self.num_prompts,
            router_noise: self.router_noise,
        }))
    }
}

#[derive(Debug)]
pub struct SmopLayer {
    pub adapter: String,
    /// The k prompts stacked [k·l, d].
    pub prompts: ParamId,
    /// W_r [k, d].
    pub router: ParamId,
    pub num_prompts: usize,
    pub router_noise: f64,
}

impl AdapterLayer for SmopLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.prompts, self.router]
    }

    /// p_j(x) · P_j per row, j the top-1 of the (perturbed, in training) router logits: [b, l, d].
    fn instance_tokens(&self, inputs: &PromptInputs, ctx: &Ctx) -> Result<Option<Tensor>> {
        let (prompts, router) = (ctx.param(self.prompts), ctx.param(self.router));
        let k = self.num_prompts;
        let (kl, d) = prompts.dims2()?;
        let pooled = pooled_input(inputs, prompts.dtype())?; // [b, d]
        let b = pooled.dim(0)?;
        let mut logits = crate::model::linear::linear(&pooled, &router, None)?; // [b, k]
        if ctx.training && self.router_noise > 0.0 {
            let noise =
                normal(b, k, self.router_noise, &mut ctx.rng.lock().unwrap_or_else(|e| e.into_inner()), logits.dtype(), logits.device())?;
            logits = (logits + noise)?;
        }
        let p = crate::ops::softmax_last_dim(&logits)?;
        let top = logits.argmax_keepdim(D::Minus1)?; // [b, 1]
        let onehot =
            Tensor::arange(0u32, k as u32, logits.device())?.unsqueeze(0)?.broadcast_eq(&top.to_dtype(DType::U32)?)?.to_dtype(p.dtype())?; // [b, k]
        let gate = (&p * &onehot)?.sum_keepdim(D::Minus1)?; // [b, 1]: p_j
        let chosen = onehot.matmul(&prompts.reshape((k, kl / k * d))?)?; // [b, l·d]: P_j
        Ok(Some(chosen.broadcast_mul(&gate)?.reshape((b, kl / k, d))?))
    }
}
