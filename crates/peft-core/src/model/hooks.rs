//! The points where something attached to the model may change a forward pass. The model
//! calls them and knows nothing of what implements them (the adapters, `tuners/`, do), so the
//! dependency runs one way: tuners -> model. Every method's default is "unchanged", the
//! behaviour of the base model, which is also what runs when `Ctx::hooks` is None.
use super::decoder::Ctx;
use super::layers::{Linear, Norm};
use crate::error::Result;
use candle_core::Tensor;

/// Module path of the prompt site (PEFT's `PeftModel.prompt_encoder`).
pub const PROMPT_ENCODER: &str = "prompt_encoder";

/// What the prompt site adds to one forward pass.
#[derive(Default)]
pub struct Prompt {
    /// [b, n, hidden], prepended to the input embeddings.
    pub virtual_tokens: Option<Tensor>,
    /// Per decoder layer, keys and values [b, kv_heads, n, head_dim] attended before the tokens.
    pub kv_prefix: Option<Vec<(Tensor, Tensor)>>,
    /// Which adapter owns which key/value prefix columns, in order: (owner, n). Gated
    /// prefixes find their columns by it.
    pub prefix_spans: Vec<(String, usize)>,
}

/// What the prompt site sees of the input at prefill, for prompts that depend on the instance
/// (SMoP's router, IDPG's generator): the input tokens' embeddings [b, t, hidden] (after
/// `input_embeddings`) and which of them it may read.
pub struct PromptInputs<'a> {
    pub embeddings: &'a Tensor,
    /// 1 = may be read: the attended positions, and in a pass with labels only those before the
    /// first loss target (`batch::prompt_context_mask`); None = all.
    pub mask: Option<&'a [Vec<u8>]>,
}

pub trait ModelHooks: Send + Sync {
    /// Called once at the start of every forward pass with the batch size, before any
    /// other hook; an error stops the pass (a per-row assignment of the wrong length).
    fn begin_forward(&self, _batch: usize, _ctx: &Ctx) -> Result<()> {
        Ok(())
    }

    /// A linear layer's output for input `x` (`linear.base(x, ctx)` when unchanged).
    fn linear(&self, linear: &Linear, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        linear.base(x, ctx)
    }

    /// Whether `linear` at `path` may give something other than `linear.base` in this pass.
    /// The chunked loss (`loss.rs`) reads the LM head's weight directly only when it does
    /// not; an implementation that does not say is assumed to change every linear.
    fn changes_linear(&self, _path: &str, _ctx: &Ctx) -> bool {
        true
    }

    /// A norm's output for input `x` (`norm.apply(x, weight)` with its own weight when unchanged).
    fn norm(&self, norm: &Norm, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        norm.apply(x, &ctx.param(norm.weight))
    }

    /// The output of a decoder layer's attention or MLP sublayer at `path`
    /// (`model.layers.{i}.self_attn` / `.mlp`), before the residual add, from its input
    /// (the normed hidden state) and its own output.
    fn sublayer(&self, _path: &str, _input: &Tensor, output: Tensor, _ctx: &Ctx) -> Result<Tensor> {
        Ok(output)
    }

    /// The input tokens' embeddings x [b, t, hidden] (after any embedding scale, before virtual
    /// tokens are prepended); `past` is the number of real tokens before them (the cache's).
    fn input_embeddings(&self, x: Tensor, _past: usize, _ctx: &Ctx) -> Result<Tensor> {
        Ok(x)
    }

    /// What to prepend to the sequence at prefill (nothing cached yet), for the batch of `inputs`.
    fn prompt(&self, _ctx: &Ctx, _inputs: &PromptInputs) -> Result<Prompt> {
        Ok(Prompt::default())
    }

    /// How many decoder layers, from the first, run the virtual positions as placeholders the
    /// real tokens do not attend (LPT's late prompt is generated at the layer after them).
    fn virtual_hidden_below(&self, _ctx: &Ctx) -> usize {
        0
    }

    /// At prefill, the hidden states [b, nv, hidden] that replace the nv virtual positions'
    /// entering decoder layer `layer`, from the real positions' (`inputs.embeddings`, the
    /// hidden states there); None leaves them.
    fn late_virtual_tokens(&self, _layer: usize, _inputs: &PromptInputs, _ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The per-query multiplier [b, 1, t, n] of the key/value prefix columns (n = the spans'
    /// total) at the attention `path`, from the attention input `x` [b, t, hidden]. None: ungated.
    fn prefix_gates(&self, _path: &str, _spans: &[(String, usize)], _x: &Tensor, _ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(None)
    }
}
