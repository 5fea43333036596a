//! IDPG (Wu et al. 2022, "IDPG: An Instance-Dependent Prompt Generation Method", NAACL 2022,
//! §2, eqs. 1-2): the prompt is generated per instance by a light bottleneck generator,
//! P(x) = W_up σ(W_down M(x) + b_down) + b_up ∈ ℝˡˣᵈ (reshaped), from a representation M(x)
//! of the input, and prepended as in prompt tuning. Ours, where the paper leaves a choice or
//! uses a second model: M(x) is the mean of the input embeddings over the positions before the
//! first loss target (`batch::prompt_context_mask`: never the answer) (the paper encodes x with the
//! frozen model in a first pass; this costs no extra forward), σ = tanh, and b_up is a prompt
//! tuning prompt with its inits (so W_up = 0, the default start, is prompt tuning).
//!
//! Our own `peft_type` "IDPG": prompt tuning's fields plus `generator_hidden` (m, default 64).
//! Tensors: `prompt_embeddings` [l, d] (b_up), `prompt_encoder.idpg_down.weight` [m, d],
//! `prompt_encoder.idpg_down_bias.weight` [m], `prompt_encoder.idpg_up.weight` [l·d, m].
use crate::error::Result;
use crate::model::linear::linear;
use crate::model::{Ctx, ParamId, PromptInputs};
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::init::kaiming_uniform;
use crate::tuners::prompt_tuning::learning;
use crate::tuners::prompt_tuning::PromptTuningConfig;
use crate::tuners::smop::pooled_input;
use crate::tuners::{AdapterLayer, BuildCtx, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct IdpgConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub prompt: PromptTuningConfig,
    pub generator_hidden: usize,
    /// false: W_up Kaiming-uniform too (tests); true (default): W_up = 0.
    pub init_weights: bool,
}

impl IdpgConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (prompt, fields, warnings) = learning::with_own_fields(
            value,
            source,
            "IDPG",
            "IdpgConfig",
            &[("generator_hidden", json!(64)), ("init_weights", json!(true))],
        )?;
        let generator_hidden = fields.positive("generator_hidden", "the generator's bottleneck width")?;
        let init_weights = fields.bool("init_weights")?;
        Ok((IdpgConfig { fields, targets: TargetSpec::default(), prompt, generator_hidden, init_weights }, warnings))
    }
}

impl TunerConfig for IdpgConfig {
    config_plumbing!();
    learning::own_prompt_plumbing!("IDPG", "idpg_");

    fn peft_type(&self) -> &'static str {
        "IDPG"
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Ok(Box::new(IdpgLayer::create(&self.prompt, self.generator_hidden, self.init_weights, "idpg_", site, bc)?))
    }
}

#[derive(Debug)]
pub struct IdpgLayer {
    pub adapter: String,
    /// b_up as a prompt [l, d].
    pub bias: ParamId,
    /// W_down [m, d], b_down [m].
    pub down: [ParamId; 2],
    /// W_up [l·d, m].
    pub up: ParamId,
}

impl IdpgLayer {
    /// The generator (b_up: the prompt of `prompt` at the prompt `site`; W_down [m, d] and b_down
    /// Kaiming-uniform / 0; W_up 0 with `zero_up`), its tensors `prompt_encoder.<prefix>down…`.
    pub fn create(prompt: &PromptTuningConfig, m: usize, zero_up: bool, prefix: &str, site: &HookSite, bc: &mut BuildCtx) -> Result<Self> {
        let bias = prompt.create_hook(site, bc)?.params()[0];
        let (device, (l, d)) = {
            let v = bc.store.get(bias).value();
            (v.device().clone(), v.dims2()?)
        };
        let down = kaiming_uniform(m, d, bc.rng, bc.dtype, &device)?;
        let up =
            if zero_up { Tensor::zeros((l * d, m), bc.dtype, &device)? } else { kaiming_uniform(l * d, m, bc.rng, bc.dtype, &device)? };
        let a = bc.adapter;
        let mut add = |attr: &str, t: Tensor| bc.store.add(learning::param_name(a, &format!("{prefix}{attr}.weight")), t, false);
        let down = [add("down", down)?, add("down_bias", Tensor::zeros(m, bc.dtype, &device)?)?];
        let up = add("up", up)?;
        Ok(IdpgLayer { adapter: a.to_string(), bias, down, up })
    }

    /// P(x) per row [b, l, d] from M(x), the mean of `inputs.embeddings` over the positions it
    /// may read (`PromptInputs::mask`: never a loss target).
    pub fn generate(&self, inputs: &PromptInputs, ctx: &Ctx) -> Result<Tensor> {
        let (bias, dw, db, up) = (ctx.param(self.bias), ctx.param(self.down[0]), ctx.param(self.down[1]), ctx.param(self.up));
        let (l, d) = bias.dims2()?;
        let pooled = pooled_input(inputs, bias.dtype())?; // M(x) [b, d]
        let h = linear(&pooled, &dw, Some(&db))?.tanh()?;
        let p = linear(&h, &up, None)?.reshape((pooled.dim(0)?, l, d))?;
        Ok(p.broadcast_add(&bias)?)
    }
}

impl AdapterLayer for IdpgLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.bias, self.down[0], self.down[1], self.up]
    }

    fn instance_tokens(&self, inputs: &PromptInputs, ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(Some(self.generate(inputs, ctx)?))
    }
}
