//! DePT (Shi & Lipani 2024, "DePT: Decomposed Prompt Tuning for Parameter-Efficient
//! Fine-tuning", §2, eqs. 2-3): a shorter soft prompt P ∈ ℝᵐˣᵈ prepended as in prompt tuning,
//! plus a low-rank update of the frozen input embeddings, E' = E + A B, A ∈ ℝˢˣʳ, B ∈ ℝʳˣᵈ,
//! s = `max_length` (default min(256, the model's positions)): row j of A B is added to the embedding of the token at position j of the
//! input (positions count real tokens, cached ones included; a token at position ≥ s gets no
//! offset). A is Kaiming-uniform and B zero, so the offsets start at 0 (the paper's code, as
//! LoRA's init). The paper trains the two parts with different learning rates: give the
//! optimizer two parameter groups for that (names `prompt_embeddings` / `dept_A`, `dept_B`).
//!
//! The prompt is PEFT's prompt tuning (`PromptTuningConfig`, all its fields and inits); our
//! own `peft_type` "DEPT" adds `r` and `max_length`. Tensors: `prompt_embeddings` [m, d],
//! `prompt_encoder.dept_A.weight` [s, r], `prompt_encoder.dept_B.weight` [r, d].
use crate::error::{Error, Result};
use crate::model::{CausalLm, Ctx, ParamId};
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::init::kaiming_uniform;
use crate::tuners::prompt_tuning::learning;
use crate::tuners::prompt_tuning::PromptTuningConfig;
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{Tensor, D};
use serde_json::{json, Value};
use std::path::Path;

/// DePT's own fields (besides prompt tuning's) and their defaults; `max_length` null is
/// filled at injection with min(256, the model's max_position_embeddings).
fn own_defaults() -> [(&'static str, Value); 2] {
    [("r", json!(60)), ("max_length", Value::Null)]
}
const DEFAULT_MAX_LENGTH: usize = 256;

#[derive(Debug, Clone)]
pub struct DeptConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub prompt: PromptTuningConfig,
    pub r: usize,
    /// None until injection when the file leaves it null.
    pub max_length: Option<usize>,
}

impl DeptConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let obj =
            value.as_object().ok_or_else(|| Error::Json { path: source.into(), message: "the config is not a JSON object".into() })?;
        if obj.get("peft_type").and_then(Value::as_str) != Some("DEPT") {
            return Err(Error::InvalidConfig {
                file: source.into(),
                key: "peft_type".into(),
                expected: "\"DEPT\"".into(),
                found: obj.get("peft_type").map_or("nothing".into(), Value::to_string),
            });
        }
        // The prompt part is prompt tuning's config, read (and checked) by its own reader.
        let mut inner = obj.clone();
        own_defaults().iter().for_each(|(k, _)| drop(inner.remove(*k)));
        inner.insert("peft_type".into(), json!("PROMPT_TUNING"));
        let (prompt, warnings) = PromptTuningConfig::from_value(&Value::Object(inner), source)?;
        let mut fields = prompt.fields.clone();
        fields.set("peft_type", "DEPT");
        for (k, default) in own_defaults() {
            fields.set(k, obj.get(k).cloned().unwrap_or(default));
        }
        let r = fields.positive("r", "the rank of the embedding offsets")?;
        let max_length =
            fields.opt_positive("max_length", "the number of positions that get an offset, or null for the model's (at most 256)")?;
        let warnings = warnings.into_iter().map(|w| w.renaming_class("PromptTuningConfig", "DeptConfig")).collect();
        Ok((DeptConfig { fields, targets: TargetSpec::default(), prompt, r, max_length }, warnings))
    }
}

impl TunerConfig for DeptConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "DEPT"
    }

    fn can_merge(&self) -> bool {
        false
    }

    /// Prompt tuning's fields filled from the model; `max_length` bounded by its positions and
    /// `r` by its width before anything is allocated.
    fn check_model(&mut self, model: &CausalLm, targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        let limit = model.config.max_position_embeddings;
        match self.max_length {
            Some(n) if n > limit => return Err(self.fields.err("max_length", &format!("at most max_position_embeddings ({limit})"))),
            Some(_) => {}
            None => {
                self.max_length = Some(DEFAULT_MAX_LENGTH.min(limit));
                self.fields.set("max_length", DEFAULT_MAX_LENGTH.min(limit));
            }
        }
        let w = self.prompt.check_model(model, targets)?;
        for key in ["token_dim", "num_transformer_submodules", "num_attention_heads", "num_layers"] {
            self.fields.set(key, self.prompt.fields.get(key).clone());
        }
        Ok(w)
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        self.prompt.hook_sites(model)
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("DePT does not attach to linear layers (`{}`)", t.path)))
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let max_length = self.max_length.ok_or_else(|| Error::Unsupported("DePT: max_length unknown (check_model not run)".into()))?;
        let prompt = self.prompt.create_hook(site, bc)?;
        let embedding = prompt.params()[0];
        let device = bc.store.get(embedding).value().device().clone();
        let hidden = bc.store.get(embedding).value().dim(1)?;
        let a = kaiming_uniform(max_length, self.r, bc.rng, bc.dtype, &device)?;
        let a = bc.store.add(learning::param_name(bc.adapter, "dept_A.weight"), a, false)?;
        let b =
            bc.store.add(learning::param_name(bc.adapter, "dept_B.weight"), Tensor::zeros((self.r, hidden), bc.dtype, &device)?, false)?;
        Ok(Box::new(DeptLayer { adapter: bc.adapter.to_string(), embedding, a, b, max_length }))
    }

    /// The prompt as `prompt_embeddings` (prompt tuning's key); the factors without the adapter name.
    fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
        match param_name.strip_prefix(&learning::param_name(adapter, "dept_")) {
            Some(rest) => format!("prompt_encoder.dept_{rest}"),
            None => learning::checkpoint_key(param_name, adapter),
        }
    }
}

#[derive(Debug)]
pub struct DeptLayer {
    pub adapter: String,
    /// The soft prompt [m, d].
    pub embedding: ParamId,
    /// A [s, r], B [r, d].
    pub a: ParamId,
    pub b: ParamId,
    pub max_length: usize,
}

impl AdapterLayer for DeptLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.embedding, self.a, self.b]
    }

    fn virtual_tokens(&self, ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(Some(ctx.param(self.embedding)))
    }

    /// x + (A B)[past .. past + t] (zero rows past `max_length`), in the adapter dtype.
    fn input_embeddings(&self, x: Tensor, past: usize, ctx: &Ctx) -> Result<Tensor> {
        let t = x.dim(1)?;
        let n = self.max_length.saturating_sub(past).min(t);
        if n == 0 {
            return Ok(x);
        }
        let (a, b) = (ctx.param(self.a), ctx.param(self.b));
        let mut offset = a.narrow(0, past, n)?.matmul(&b)?; // [n, d]
        if n < t {
            offset = Tensor::cat(&[&offset, &Tensor::zeros((t - n, offset.dim(D::Minus1)?), offset.dtype(), offset.device())?], 0)?;
        }
        let dt = x.dtype();
        Ok(x.to_dtype(offset.dtype())?.broadcast_add(&offset)?.to_dtype(dt)?)
    }
}
