//! P-tuning (Liu et al. 2021, "GPT Understands, Too", §3: virtual token embeddings
//! produced by a prompt encoder) with PEFT 0.21's MLP encoder (`PromptEncoder` in
//! `tuners/p_tuning/model.py`, `encoder_reparameterization_type: "MLP"`):
//! embedding → Linear → ReLU → Linear → ReLU → Linear, prepended like prompt tuning.
//! PEFT saves only the encoder's output (`prompt_embeddings`, via
//! `get_prompt_embedding_to_save`); a loaded adapter is that output as plain virtual
//! tokens (PEFT's inference-mode encoder), built as `PromptEmbedding`.
pub mod config;

pub use config::PTuningConfig;

use crate::error::Result;
use crate::model::linear::linear;
use crate::model::Ctx;
use crate::model::{ParamId, ParamStore};
use crate::tuners::prompt_tuning::learning;
use crate::tuners::AdapterLayer;
use candle_core::Tensor;

#[derive(Debug)]
pub struct PromptEncoder {
    pub adapter: String,
    /// `embedding.weight` [n, token_dim].
    pub embedding: ParamId,
    /// `mlp_head.{0,2,4}.{weight,bias}`.
    pub mlp: [(ParamId, ParamId); 3],
}

impl PromptEncoder {
    /// `PromptEncoder.forward` on all virtual tokens.
    fn encode(&self, param: &dyn Fn(ParamId) -> Tensor) -> Result<Tensor> {
        let mut h = param(self.embedding);
        for (i, (w, b)) in self.mlp.iter().enumerate() {
            h = linear(&h, &param(*w), Some(&param(*b)))?;
            if i < 2 {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

impl AdapterLayer for PromptEncoder {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        let mut v = vec![self.embedding];
        v.extend(self.mlp.iter().flat_map(|(w, b)| [*w, *b]));
        v
    }

    fn virtual_tokens(&self, ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(Some(self.encode(&|id| ctx.param(id))?))
    }

    fn export(&self, store: &ParamStore) -> Result<Option<Vec<(String, Tensor)>>> {
        let e = self.encode(&|id| store.get(id).value().clone())?;
        Ok(Some(vec![(learning::param_name(&self.adapter, "embedding.weight"), e)]))
    }
}
