//! Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
//! Tuning"): `num_virtual_tokens` trainable embeddings prepended to the input embeddings.
//! PEFT 0.21: `PromptTuningConfig` (`tuners/prompt_tuning/config.py`), `PromptEmbedding`
//! (`model.py`), `PeftModelForCausalLM.forward` / `get_prompt` (`peft_model.py`).
pub mod config;
pub mod init_from;
pub mod learning;

pub use config::{PromptInit, PromptTuningConfig};

use crate::error::Result;
use crate::model::Ctx;
use crate::model::ParamId;
use crate::tuners::AdapterLayer;
use candle_core::Tensor;

/// The prompt site's layer of prompt tuning (and of a loaded p-tuning or projected prefix
/// whose encoder output was saved): the virtual tokens are the embedding itself.
#[derive(Debug)]
pub struct PromptEmbedding {
    pub adapter: String,
    /// `prompt_encoder.<adapter>.embedding.weight` [num_virtual_tokens, hidden].
    pub embedding: ParamId,
}

impl AdapterLayer for PromptEmbedding {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.embedding]
    }

    /// `get_prompt`: `prompt_encoder(prompt_tokens[:1]).repeat(batch_size, 1, 1)`.
    fn virtual_tokens(&self, ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(Some(ctx.param(self.embedding)))
    }
}
