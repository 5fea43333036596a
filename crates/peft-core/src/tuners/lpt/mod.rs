//! LPT (Liu et al. 2022, "Late Prompt Tuning: A Late Prompt Might Be Better Than Many Prompts",
//! Findings of EMNLP 2022, §3): one prompt of l vectors, inserted at an intermediate layer i
//! rather than at the input, generated per instance from the hidden states there by a light
//! network: naive (mean) pooling of layer i's hidden states H_i, a down-projection, a
//! nonlinearity and an up-projection, P(x) = W_up σ(W_down pool(H_i) + b_down) + b_up ∈ ℝˡˣᵈ.
//! The generator is IDPG's (`IdpgLayer`, σ = tanh, b_up a prompt tuning prompt with its inits,
//! W_up = 0 at the default start), fed layer i's hidden states instead of the embeddings.
//! `insertion_layer` is i (0-based: the prompt enters decoder layer i; default: the middle,
//! num_hidden_layers / 2).
//!
//! How the prompt positions take part (the paper's encoder has no cache or RoPE; ours):
//! - they are reserved at the input as l virtual positions, as prompt tuning's, so the RoPE
//!   positions are 0..l-1 and the tokens' start at l (a uniform shift of the tokens, which RoPE's
//!   relative form leaves the layers below i unchanged by);
//! - below layer i they are placeholders (zeros) that no real token attends
//!   (`ModelHooks::virtual_hidden_below`): those layers compute what the base model computes;
//! - entering layer i their hidden states become P(x) (`ModelHooks::late_virtual_tokens`), and
//!   from there on they are ordinary leading positions: every token attends them (they come
//!   first, so causally), and they are cached like prompt tuning's, so decoding from the cache
//!   equals one full pass.
//! - pool(H_i) reads only the positions before the first loss target (`batch::prompt_context_mask`,
//!   the prompt part in training; the whole prompt in generation), never the answer.
//!
//! A late prompt runs alone at the prompt site (another adapter's virtual tokens would be hidden
//! below i too): that is refused when the pass runs. Our own `peft_type` "LPT": prompt tuning's
//! fields plus `generator_hidden` (m, default 64), `init_weights` and `insertion_layer`.
//! Tensors: `prompt_embeddings` [l, d] (b_up), `prompt_encoder.lpt_down.weight` [m, d],
//! `prompt_encoder.lpt_down_bias.weight` [m], `prompt_encoder.lpt_up.weight` [l·d, m].
use crate::error::{Error, Result};
use crate::model::{Ctx, ParamId, PromptInputs};
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::idpg::IdpgLayer;
use crate::tuners::prompt_tuning::learning;
use crate::tuners::prompt_tuning::PromptTuningConfig;
use crate::tuners::{AdapterLayer, BuildCtx, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct LptConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub prompt: PromptTuningConfig,
    pub generator_hidden: usize,
    /// false: W_up Kaiming-uniform too (tests); true (default): W_up = 0.
    pub init_weights: bool,
    /// None: the middle layer of the model.
    pub insertion_layer: Option<usize>,
}

impl LptConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let own = [("generator_hidden", json!(64)), ("init_weights", json!(true)), ("insertion_layer", Value::Null)];
        let (prompt, fields, warnings) = learning::with_own_fields(value, source, "LPT", "LptConfig", &own)?;
        let generator_hidden = fields.positive("generator_hidden", "the generator's bottleneck width")?;
        let init_weights = fields.bool("init_weights")?;
        let insertion_layer = match fields.get("insertion_layer") {
            Value::Null => None,
            v => Some(v.as_u64().ok_or_else(|| fields.err("insertion_layer", "a decoder layer index >= 0, or null for the middle layer"))?
                as usize),
        };
        Ok((LptConfig { fields, targets: TargetSpec::default(), prompt, generator_hidden, init_weights, insertion_layer }, warnings))
    }
}

impl TunerConfig for LptConfig {
    config_plumbing!();
    learning::own_prompt_plumbing!("LPT", "lpt_");

    fn peft_type(&self) -> &'static str {
        "LPT"
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Prompt { config, .. } = site else {
            return Err(Error::Unsupported(format!("LPT attaches at the prompt site, not `{}`", site.path())));
        };
        let layers = config.num_hidden_layers;
        let layer = self.insertion_layer.unwrap_or(layers / 2);
        if layer >= layers {
            return Err(self
                .fields
                .err("insertion_layer", &format!("a decoder layer index below {layers} (the model's num_hidden_layers)")));
        }
        let generator = IdpgLayer::create(&self.prompt, self.generator_hidden, self.init_weights, "lpt_", site, bc)?;
        Ok(Box::new(LptLayer { generator, layer }))
    }
}

#[derive(Debug)]
pub struct LptLayer {
    pub generator: IdpgLayer,
    /// The decoder layer the prompt enters.
    pub layer: usize,
}

impl AdapterLayer for LptLayer {
    fn adapter_name(&self) -> &str {
        &self.generator.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        self.generator.params()
    }

    /// The placeholders [l, d] the late prompt replaces at its layer.
    fn virtual_tokens(&self, ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(Some(ctx.param(self.generator.bias).zeros_like()?))
    }

    fn late_layer(&self) -> Option<usize> {
        Some(self.layer)
    }

    /// P(x) [b, l, d] from the hidden states entering the insertion layer.
    fn instance_tokens(&self, inputs: &PromptInputs, ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(Some(self.generator.generate(inputs, ctx)?))
    }
}
