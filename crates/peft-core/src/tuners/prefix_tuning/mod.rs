//! Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
//! Generation"): trainable keys and values prepended in every attention layer. PEFT 0.21:
//! `PrefixTuningConfig`, `PrefixEncoder` (`tuners/prefix_tuning/`), `get_prompt` and
//! `PeftModelForCausalLM.forward` (`peft_model.py`): the prefix is passed as
//! `past_key_values` (so no RoPE on it), the attention mask gets n leading ones and the
//! real tokens' positions start at n.
pub mod config;

pub use config::PrefixTuningConfig;

use crate::error::Result;
use crate::model::linear::linear;
use crate::model::Ctx;
use crate::model::{ParamId, ParamStore};
use crate::tuners::prompt_tuning::learning;
use crate::tuners::AdapterLayer;
use candle_core::Tensor;

/// `prefix_projection`: embedding [n, token_dim] → Linear → tanh → Linear [n, L·2·token_dim].
#[derive(Debug, Clone)]
pub struct Projection {
    pub w1: ParamId,
    pub b1: ParamId,
    pub w2: ParamId,
    pub b2: ParamId,
}

#[derive(Debug)]
pub struct PrefixLayer {
    pub adapter: String,
    /// [n, L·2·token_dim] without projection, [n, token_dim] with it.
    pub embedding: ParamId,
    pub projection: Option<Projection>,
    pub num_layers: usize,
    /// Key/value heads and their size (`num_attention_heads`, `token_dim / num_attention_heads`).
    pub heads: usize,
    pub head_dim: usize,
}

impl PrefixLayer {
    /// `PrefixEncoder.forward` on all virtual tokens: [n, L·2·token_dim].
    fn encode(&self, param: &dyn Fn(ParamId) -> Tensor) -> Result<Tensor> {
        let e = param(self.embedding);
        Ok(match &self.projection {
            None => e,
            Some(p) => {
                let h = linear(&e, &param(p.w1), Some(&param(p.b1)))?.tanh()?;
                linear(&h, &param(p.w2), Some(&param(p.b2)))?
            }
        })
    }
}

impl AdapterLayer for PrefixLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        let mut v = vec![self.embedding];
        if let Some(p) = &self.projection {
            v.extend([p.w1, p.b1, p.w2, p.b2]);
        }
        v
    }

    /// `get_prompt`: view [n, L·2, heads, head_dim], permute to [L·2, heads, n, head_dim];
    /// layer l takes rows 2l (keys) and 2l + 1 (values).
    fn kv_prefix(&self, ctx: &Ctx) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        let e = self.encode(&|id| ctx.param(id))?;
        let n = e.dim(0)?;
        let kv = e.reshape((n, self.num_layers * 2, self.heads, self.head_dim))?.permute((1, 2, 0, 3))?.contiguous()?;
        let out = (0..self.num_layers).map(|l| Ok((kv.get(2 * l)?, kv.get(2 * l + 1)?))).collect::<Result<Vec<_>>>()?;
        Ok(Some(out))
    }

    /// With a projection, PEFT saves the encoder's output as `prompt_embeddings`
    /// (`get_prompt_embedding_to_save`), which loads back as a plain prefix.
    fn export(&self, store: &ParamStore) -> Result<Option<Vec<(String, Tensor)>>> {
        if self.projection.is_none() {
            return Ok(None);
        }
        let e = self.encode(&|id| store.get(id).value().clone())?;
        Ok(Some(vec![(learning::param_name(&self.adapter, "embedding.weight"), e)]))
    }
}
