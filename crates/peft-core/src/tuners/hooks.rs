//! The hook sites besides the linear layers, called by `model/llama.rs` through `Ctx::tuners`:
//! the prompt (virtual tokens prepended to the input embeddings, per-layer key/value
//! prefixes), the norms, and the outputs of the attention and MLP sublayers. A method
//! implements the `AdapterLayer` methods of the sites it uses and registers its layers at
//! those sites' module paths through `TunerConfig::hook_sites` / `create_hook`.
use super::{LinearInfo, Tuners};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::{CausalLm, Ctx, Norm, ParamId, ParamStore, Prompt, PromptInputs, PROMPT_ENCODER};
use candle_core::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sublayer {
    /// `model.layers.{i}.self_attn`: input = the normed hidden state, output = o_proj's.
    Attention,
    /// `model.layers.{i}.mlp`: input = the normed hidden state, output = down_proj's.
    Mlp,
}

/// Where a site-based method attaches, as `TunerConfig::create_hook` sees it.
#[derive(Debug, Clone)]
pub enum HookSite {
    /// The whole model's prompt; `embed_tokens` for inits from token ids.
    Prompt { config: ModelConfig, embed_tokens: ParamId },
    /// An RMSNorm (`model.layers.{i}.input_layernorm`, `...post_attention_layernorm`, `model.norm`).
    Norm { path: String, weight: ParamId, dim: usize },
    /// The output of a decoder layer's attention or MLP, before the residual add.
    Sublayer { path: String, layer: usize, kind: Sublayer, hidden: usize },
    /// A linear layer (hybrids that put, e.g., LoRA next to prefixes).
    Linear(LinearInfo),
}

impl HookSite {
    pub fn path(&self) -> &str {
        match self {
            HookSite::Prompt { .. } => PROMPT_ENCODER,
            HookSite::Norm { path, .. } | HookSite::Sublayer { path, .. } => path,
            HookSite::Linear(l) => &l.path,
        }
    }

    /// A norm's site; `dim` is its width (head_dim for Qwen3's and Gemma's q/k norms).
    pub fn norm(norm: &Norm, store: &ParamStore) -> Self {
        let dim = store.get(norm.weight).value().dim(0).unwrap_or(0);
        HookSite::Norm { path: norm.path.clone(), weight: norm.weight, dim }
    }

    pub fn prompt(model: &CausalLm) -> Self {
        HookSite::Prompt { config: model.config.clone(), embed_tokens: model.embed_tokens }
    }

    /// The sublayer sites of `kind` in the given decoder layers (None: all).
    pub fn sublayers(model: &CausalLm, kind: Sublayer, layers: Option<&[usize]>) -> Vec<Self> {
        (model.sublayers().into_iter())
            .filter(|(i, _, _)| layers.is_none_or(|l| l.contains(i)))
            .map(|(i, attn, mlp)| {
                let path = match kind {
                    Sublayer::Attention => attn,
                    Sublayer::Mlp => mlp,
                };
                HookSite::Sublayer { path: path.to_string(), layer: i, kind, hidden: model.config.hidden_size }
            })
            .collect()
    }
}

impl Tuners {
    /// The running adapters' prompt contributions for the batch of `inputs`, concatenated in the
    /// active order (PEFT runs one prompt-learning adapter at a time; several simply stack).
    /// Shared virtual tokens are broadcast over the batch; per-instance ones come per row.
    pub(crate) fn prompt_running(&self, ctx: &Ctx, inputs: &PromptInputs) -> Result<Prompt> {
        let b = inputs.embeddings.dim(0)?;
        let mut virt: Vec<Tensor> = Vec::new();
        let mut prefix: Vec<Vec<(Tensor, Tensor)>> = Vec::new();
        let mut prefix_spans = Vec::new();
        for layer in self.running(PROMPT_ENCODER) {
            if let Some(v) = layer.virtual_tokens(ctx)? {
                let (n, h) = v.dims2()?;
                virt.push(v.unsqueeze(0)?.broadcast_as((b, n, h))?.contiguous()?);
            }
            // A late prompt's instance tokens enter at its layer (`late_tokens_running`).
            if let Some(v) = layer.late_layer().map_or_else(|| layer.instance_tokens(inputs, ctx), |_| Ok(None))? {
                virt.push(v);
            }
            if let Some(p) = layer.kv_prefix(ctx)? {
                prefix_spans.push((layer.adapter_name().to_string(), p.first().map_or(Ok(0), |(k, _)| k.dim(1))?));
                let expand = |t: Tensor| -> Result<Tensor> {
                    let (h, n, d) = t.dims3()?;
                    Ok(t.unsqueeze(0)?.broadcast_as((b, h, n, d))?.contiguous()?)
                };
                prefix.push(p.into_iter().map(|(k, v)| Ok((expand(k)?, expand(v)?))).collect::<Result<_>>()?);
            }
        }
        let virtual_tokens = match virt.len() {
            0 => None,
            1 => virt.pop(),
            _ => Some(Tensor::cat(&virt, 1)?),
        };
        let kv_prefix = match prefix.len() {
            0 => None,
            1 => prefix.pop(),
            _ => {
                let layers = prefix[0].len();
                Some(
                    (0..layers)
                        .map(|i| {
                            let ks: Vec<&Tensor> = prefix.iter().map(|p| &p[i].0).collect();
                            let vs: Vec<&Tensor> = prefix.iter().map(|p| &p[i].1).collect();
                            Ok((Tensor::cat(&ks, 2)?, Tensor::cat(&vs, 2)?))
                        })
                        .collect::<Result<_>>()?,
                )
            }
        };
        Ok(Prompt { virtual_tokens, kv_prefix, prefix_spans })
    }

    /// The decoder layers below the running late prompt's (LPT), where its placeholders are hidden.
    pub(crate) fn late_layer_running(&self) -> usize {
        self.running(PROMPT_ENCODER).iter().filter_map(|l| l.late_layer()).max().unwrap_or(0)
    }

    /// The running late prompt generated entering decoder `layer` from the hidden states there.
    pub(crate) fn late_tokens_running(&self, layer: usize, inputs: &PromptInputs, ctx: &Ctx) -> Result<Option<Tensor>> {
        match self.running(PROMPT_ENCODER).into_iter().find(|l| l.late_layer() == Some(layer)) {
            Some(l) => l.instance_tokens(inputs, ctx),
            None => Ok(None),
        }
    }

    /// The norm `norm`: a running adapter may replace the weight (LN tuning), then each
    /// may transform the output (SSF after a norm).
    pub(crate) fn norm_running(&self, norm: &Norm, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let layers = self.running(&norm.path);
        let mut w = ctx.param(norm.weight);
        for l in &layers {
            if let Some(nw) = l.norm_weight(&w, ctx)? {
                w = nw.to_dtype(w.dtype())?;
            }
        }
        let mut y = norm.apply(x, &w)?;
        for l in &layers {
            y = l.norm_output(y, ctx)?;
        }
        Ok(y)
    }

    /// The per-query multiplier of the key/value prefix columns at the attention `path`
    /// [b, 1, t, n] (n = the spans' total), from the attention input `x` [b, t, hidden]:
    /// each span's owner may gate its columns (`AdapterLayer::prefix_gate`), others get 1.
    /// None when no running adapter gates its prefix (the attention is then unchanged).
    pub(crate) fn prefix_gates_running(&self, path: &str, spans: &[(String, usize)], x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        let layers = self.running(path);
        let gates = spans
            .iter()
            .map(|(adapter, _)| match layers.iter().find(|l| l.adapter_name() == adapter) {
                Some(l) => l.prefix_gate(x, ctx),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        if gates.iter().all(Option::is_none) {
            return Ok(None);
        }
        let (b, t, _) = x.dims3()?;
        let parts = gates
            .into_iter()
            .zip(spans)
            .map(|(gate, (_, n))| match gate {
                Some(g) => Ok(g.to_dtype(x.dtype())?.reshape((b, 1, t, 1))?.broadcast_as((b, 1, t, *n))?.contiguous()?),
                None => Ok(Tensor::ones((b, 1, t, *n), x.dtype(), x.device())?),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Tensor::cat(&parts, 3)?))
    }

    /// A sublayer's output through the running adapters at `path`, in the active order.
    pub(crate) fn sublayer_running(&self, path: &str, input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut out = output;
        for l in self.running(path) {
            out = l.sublayer(input, out, ctx)?;
        }
        Ok(out)
    }
}
