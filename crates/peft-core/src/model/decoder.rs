//! The decoder of the LLaMA family, built only from ops that record a backward. Weight
//! names are the checkpoint paths of transformers' `*ForCausalLM`; what differs between
//! architectures is read from `ArchConfig` fields, never from the model type. Adapters act
//! through `Ctx::hooks` (`hooks.rs`): this module knows nothing of them.
use super::batch::{attention_bias, Batch};
use super::checkpoint::Checkpointing;
use super::hooks::ModelHooks;
use super::kv_cache::{KvCache, LayerCache};
use super::layers::{Block, Linear, Norm};
use super::linear::linear;
use super::params::{ParamId, ParamStore};
use super::rope::Rope;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::ops;
use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::any::Any;
use std::collections::HashMap;
use std::sync::Mutex;

/// What a forward pass reads besides the weights.
pub struct Ctx<'a> {
    pub store: &'a ParamStore,
    /// Inference: every weight enters detached and no graph is kept.
    pub no_grad: bool,
    /// Training mode (PyTorch's `model.train()`): adapter dropout is applied only then.
    pub training: bool,
    /// Whatever is attached to the model (the adapters); None runs the base model alone.
    pub hooks: Option<&'a dyn ModelHooks>,
    /// State of this pass that only the hooks read (a mixed batch's row assignment). Owned
    /// and `'static`, so a `Ctx` borrows nothing but the store and the hooks.
    pub hook_state: Option<Box<dyn Any + Send + Sync>>,
    /// Randomness of training-time ops (dropout), seeded so that a step is reproducible.
    pub rng: Mutex<StdRng>,
    /// Values drawn from `rng` once per forward pass and read by every layer that asks
    /// (`draw_once`): DyLoRA samples one rank per step for the whole model.
    pub shared_draws: Mutex<HashMap<String, u64>>,
    /// Gradient checkpointing (`checkpoint.rs`): when set and a graph is built, each decoder
    /// layer keeps only its input and is recomputed in the backward.
    pub checkpoint: Option<Checkpointing>,
    /// Auxiliary training losses the layers add in this pass (MixLoRA's load balancing), by
    /// name; `tuners::aux_loss` adds them to the training loss.
    pub aux_losses: Mutex<Vec<(String, Tensor)>>,
    /// The loss labels of this pass, when it has them: instance-dependent prompts then read
    /// only the positions before the first target (`batch::prompt_context_mask`).
    pub labels: Option<Vec<Vec<i64>>>,
}

/// The shared-draws key of `Ctx::virtual_positions`.
const VIRTUAL_POSITIONS: &str = "model/virtual_positions";

impl<'a> Ctx<'a> {
    /// Base model, evaluation mode; `no_grad` as above.
    pub fn new(store: &'a ParamStore, no_grad: bool) -> Self {
        Ctx {
            store,
            no_grad,
            training: false,
            hooks: None,
            hook_state: None,
            rng: Mutex::new(StdRng::seed_from_u64(0)),
            shared_draws: Mutex::default(),
            checkpoint: None,
            aux_losses: Mutex::default(),
            labels: None,
        }
    }

    /// Inference: no graph, no dropout.
    pub fn inference(store: &'a ParamStore) -> Self {
        Self::new(store, true)
    }

    pub fn with_hooks(mut self, hooks: &'a dyn ModelHooks, state: Option<Box<dyn Any + Send + Sync>>) -> Self {
        self.hooks = Some(hooks);
        self.hook_state = state;
        self
    }

    /// Training mode with dropout drawn from a generator seeded by `seed`.
    pub fn training(mut self, seed: u64) -> Self {
        self.training = true;
        self.rng = Mutex::new(StdRng::seed_from_u64(seed));
        self
    }

    /// A pass scored on `labels`: instance-dependent prompts read only the positions before the
    /// first loss target (`batch::prompt_context_mask`), as generation reads only its prompt.
    pub fn with_labels(mut self, labels: &[Vec<i64>]) -> Self {
        self.labels = Some(labels.to_vec());
        self
    }

    /// Checkpoint the decoder layers of the passes run with this context (see `checkpoint.rs`).
    pub fn with_checkpointing(mut self, checkpoint: Checkpointing) -> Self {
        self.checkpoint = Some(checkpoint);
        self
    }

    /// The value drawn under `key` in this forward pass: the first caller draws it from
    /// `rng` (so it follows the seed), later callers get the same value.
    pub fn draw_once(&self, key: &str, draw: impl FnOnce(&mut StdRng) -> u64) -> u64 {
        let mut drawn = self.shared_draws.lock().unwrap_or_else(|e| e.into_inner());
        *drawn.entry(key.to_string()).or_insert_with(|| draw(&mut self.rng.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// How many virtual positions (prepended prompt tokens) lead this pass's hidden states:
    /// set by the forward at prefill, 0 when decoding from a cache. Kept with the shared draws,
    /// so a checkpointed layer's recompute sees the same value.
    pub fn virtual_positions(&self) -> usize {
        self.shared_draws.lock().unwrap_or_else(|e| e.into_inner()).get(VIRTUAL_POSITIONS).copied().unwrap_or(0) as usize
    }

    fn set_virtual_positions(&self, n: usize) {
        self.shared_draws.lock().unwrap_or_else(|e| e.into_inner()).insert(VIRTUAL_POSITIONS.into(), n as u64);
    }

    /// Records an auxiliary loss term of this pass (summed into the training loss by name).
    pub fn add_aux_loss(&self, name: &str, term: Tensor) {
        self.aux_losses.lock().unwrap_or_else(|e| e.into_inner()).push((name.to_string(), term));
    }

    /// A parameter as it enters the graph (detached when frozen or under `no_grad`).
    pub fn param(&self, id: ParamId) -> Tensor {
        self.store.get(id).tensor(self.no_grad)
    }
}

pub struct CausalLm {
    pub config: ModelConfig,
    pub store: ParamStore,
    pub embed_tokens: ParamId,
    pub layers: Vec<Block>,
    pub norm: Norm,
    /// None when the embeddings are tied.
    pub lm_head: Option<Linear>,
    pub rope: Rope,
    /// The sliding layers' RoPE when its base differs (Gemma 3's local base).
    pub local_rope: Option<Rope>,
    pub dtype: DType,
    pub device: Device,
}

/// Per-call state that flows through the layers.
pub(super) struct Step<'a> {
    pub(super) ctx: &'a Ctx<'a>,
    /// cos/sin of the full-attention layers, and of the sliding ones when their RoPE differs.
    pub(super) rope: (Tensor, Tensor),
    pub(super) local_rope: Option<(Tensor, Tensor)>,
    pub(super) bias: Tensor,
    /// The additive mask of the sliding layers (None when no layer slides).
    pub(super) sliding_bias: Option<Tensor>,
    /// Per-layer key/value prefixes [b, kv_heads, n, head_dim] (prefix tuning), at prefill.
    pub(super) prefix: Option<Vec<(Tensor, Tensor)>>,
    /// The prefix columns' owners (from the prompt at prefill, from the cache after).
    pub(super) prefix_spans: Vec<(String, usize)>,
}

impl CausalLm {
    /// Logits [b, t, vocab] (or [b, 1, vocab] with `last_only`). With a cache, keys and
    /// values of earlier calls are attended to and this call's are appended.
    ///
    /// Hooks with a prompt act at prefill (nothing cached yet), as PEFT's
    /// `PeftModelForCausalLM.forward` / `prepare_inputs_for_generation`: virtual tokens are
    /// prepended to the input embeddings (the logits then start with their n positions),
    /// key/value prefixes are attended to as if cached. The caller's attention mask and
    /// position ids never count these positions: the mask is widened by ones and real
    /// positions start after them (`cache_position` / `position_ids + num_virtual_tokens`).
    pub fn forward(&self, batch: &Batch, ctx: &Ctx, cache: Option<&mut KvCache>, last_only: bool) -> Result<Tensor> {
        let x = self.hidden_states(batch, ctx, cache, last_only)?;
        self.head(&x, ctx)
    }

    /// `forward` up to the final norm: hidden states [b, t, hidden] (or [b, 1, hidden]).
    pub fn hidden_states(&self, batch: &Batch, ctx: &Ctx, mut cache: Option<&mut KvCache>, last_only: bool) -> Result<Tensor> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        let virt_past = cache.as_ref().map_or(0, |c| c.virtual_len());
        batch.validate(self.config.vocab_size, past - virt_past)?;
        let (b, t) = batch.dims();
        if let Some(h) = &ctx.hooks {
            h.begin_forward(b, ctx)?;
        }
        let ids = batch.ids_tensor(&self.device)?;
        let mut x = self.embed(&ids.flatten_all()?, ctx)?.reshape((b, t, ()))?;
        if let Some(scale) = self.config.arch.embed_scale {
            x = x.affine(scale, 0.0)?;
        }
        if let Some(h) = &ctx.hooks {
            x = h.input_embeddings(x, past - virt_past, ctx)?;
        }
        let context = match &ctx.labels {
            Some(l) if past == 0 && ctx.hooks.is_some() => {
                Some(super::batch::prompt_context_mask(batch.attention_mask.as_deref(), l, b, t)?)
            }
            _ => None,
        };
        let context = context.as_deref().or(batch.attention_mask.as_deref());
        let prompt = match &ctx.hooks {
            Some(h) if past == 0 => h.prompt(ctx, &super::hooks::PromptInputs { embeddings: &x, mask: context })?,
            _ => Default::default(),
        };
        let nv = match &prompt.virtual_tokens {
            Some(v) => {
                x = Tensor::cat(&[&v.to_dtype(x.dtype())?, &x], 1)?;
                v.dim(1)?
            }
            None => 0,
        };
        let prefix = match prompt.kv_prefix {
            Some(p) => {
                Some(p.into_iter().map(|(k, v)| Ok((k.to_dtype(self.dtype)?, v.to_dtype(self.dtype)?))).collect::<Result<Vec<_>>>()?)
            }
            None => None,
        };
        let np = prefix.as_ref().map_or(Ok(0), |p| p[0].0.dim(2))?;
        ctx.set_virtual_positions(nv);
        let (tq, past_keys, virt) = (nv + t, past + np, virt_past + np + nv);
        let positions: Vec<Vec<i64>> = match &batch.position_ids {
            None => vec![(past_keys as i64..(past_keys + tq) as i64).collect(); b],
            Some(p) => p
                .iter()
                .map(|row| (past_keys..past_keys + nv).map(|i| i as i64).chain(row.iter().map(|x| x + virt as i64)).collect())
                .collect(),
        };
        let rope = self.rope.cos_sin(&positions, self.dtype, &self.device)?;
        let local_rope = self.local_rope.as_ref().map(|r| r.cos_sin(&positions, self.dtype, &self.device)).transpose()?;
        let mask = batch.attention_mask.as_ref().map(|m| m.iter().map(|r| [vec![1u8; virt], r.clone()].concat()).collect::<Vec<_>>());
        let segments = batch.key_segments(if virt == 0 { past } else { virt });
        let bias_with = |window| attention_bias(mask.as_deref(), segments.as_deref(), b, tq, past_keys, window, self.dtype, &self.device);
        let bias = bias_with(None)?;
        let sliding_bias = match self.config.arch.sliding_window {
            Some(w) if self.layers.iter().any(|l| l.sliding) => Some(bias_with(Some(w))?),
            _ => None,
        };
        let prefix_spans = match (&cache, past) {
            (Some(c), p) if p > 0 => c.prefix_spans().to_vec(),
            _ => prompt.prefix_spans,
        };
        if let Some(c) = cache.as_deref_mut().filter(|_| past == 0) {
            c.set_prefix_spans(prefix_spans.clone());
        }
        // Late virtual positions (LPT): below the hooks' layer the real tokens do not see them.
        let hide_below = ctx.hooks.map_or(0, |h| h.virtual_hidden_below(ctx));
        let hidden_step = match hide_below {
            0 => None,
            _ => {
                // Keys: the prefixes' columns, then the virtual positions', then the tokens'.
                let prefixes = prefix_spans.iter().map(|(_, n)| n).sum::<usize>();
                let hide = |bias: &Tensor| hide_virtual_keys(bias, nv, prefixes..virt);
                let sliding = sliding_bias.as_ref().map(&hide).transpose()?;
                Some(Step {
                    ctx,
                    rope: rope.clone(),
                    local_rope: local_rope.clone(),
                    bias: hide(&bias)?,
                    sliding_bias: sliding,
                    prefix: None,
                    prefix_spans: prefix_spans.clone(),
                })
            }
        };
        let step = Step { ctx, rope, local_rope, bias, sliding_bias, prefix, prefix_spans };
        // Checkpointing only pays where a graph is kept; the KV-cache (generation) path and
        // per-row adapters (inference only) run the layers as they are.
        let checkpoint = ctx.checkpoint.as_ref().filter(|_| !ctx.no_grad && cache.is_none() && ctx.hook_state.is_none());
        for (i, layer) in self.layers.iter().enumerate() {
            if let (Some(h), true) = (ctx.hooks, nv > 0) {
                x = self.late_virtual_tokens(h, i, x, nv, context, ctx)?;
            }
            let prefix = step.prefix.as_ref().map(|p| &p[i]);
            let step = hidden_step.as_ref().filter(|_| i < hide_below).unwrap_or(&step);
            x = match checkpoint {
                Some(cp) => self.checkpointed_block(i, &x, step, prefix, cp)?,
                None => self.block(layer, &x, step, prefix, cache.as_deref_mut().map(|c| c.layer_mut(i)))?,
            };
        }
        if let Some(c) = cache {
            c.advance(np + tq, np + nv);
        }
        if last_only {
            x = x.narrow(1, tq - 1, 1)?;
        }
        self.norm.forward(&x, ctx)
    }

    /// `x` [b, nv + t, hidden] entering decoder layer `i` at prefill, with its `nv` leading
    /// virtual positions replaced when a hook generates them there (LPT), from the real
    /// positions' hidden states and the positions it may read (`context`).
    fn late_virtual_tokens(
        &self,
        hooks: &dyn ModelHooks,
        i: usize,
        x: Tensor,
        nv: usize,
        context: Option<&[Vec<u8>]>,
        ctx: &Ctx,
    ) -> Result<Tensor> {
        let real = x.narrow(1, nv, x.dim(1)? - nv)?;
        let Some(v) = hooks.late_virtual_tokens(i, &super::hooks::PromptInputs { embeddings: &real, mask: context }, ctx)? else {
            return Ok(x);
        };
        if v.dim(1)? != nv {
            let found = format!("{} other virtual positions", nv - v.dim(1)?.min(nv));
            return Err(crate::error::Error::arg("adapters", "a late prompt (LPT) as the only adapter adding virtual tokens", found));
        }
        Ok(Tensor::cat(&[&v.to_dtype(x.dtype())?, &real], 1)?)
    }

    /// The embeddings of token ids [n]: [n, hidden]. A quantized table dequantizes only
    /// the rows asked for (it is frozen, so no gradient flows to it).
    fn embed(&self, ids: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let Some(q) = ctx.store.get(self.embed_tokens).quantized() else {
            return Ok(ctx.param(self.embed_tokens).index_select(ids, 0)?);
        };
        let ids = ids.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let hidden = q.dims().1;
        let mut out = vec![0f32; ids.len() * hidden];
        q.gather_rows(&ids, &mut out);
        Ok(Tensor::from_vec(out, (ids.len(), hidden), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Logits from final hidden states: the LM head (the embeddings when tied), then Gemma's
    /// final soft-capping.
    pub fn head(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(x, ctx)?,
            None => match ctx.store.get(self.embed_tokens).quantized() {
                Some(q) => ops::qlinear(x, &q, None)?,
                None => linear(x, &ctx.param(self.embed_tokens), None)?,
            },
        };
        Ok(match self.config.arch.final_logit_softcapping {
            Some(cap) => (logits.affine(1.0 / cap, 0.0)?.tanh()? * cap)?,
            None => logits,
        })
    }

    /// A sublayer's output passed through the hooks at `path` (bottleneck adapters).
    fn sublayer(&self, path: &str, input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        match &ctx.hooks {
            Some(h) => h.sublayer(path, input, output, ctx),
            None => Ok(output),
        }
    }

    /// One decoder layer; `prefix` is its key/value prefix (prefix tuning), if any.
    pub(super) fn block(
        &self,
        layer: &Block,
        x: &Tensor,
        step: &Step,
        prefix: Option<&(Tensor, Tensor)>,
        kv: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let ctx = step.ctx;
        let h = layer.input_layernorm.forward(x, ctx)?;
        let a = self.attention(layer, &h, step, prefix, kv)?;
        let a = self.sublayer(&layer.self_attn.path, &h, a, ctx)?;
        let mlp = &layer.mlp;
        match (&layer.pre_feedforward_layernorm, &layer.post_feedforward_layernorm) {
            // Gemma: each sublayer's output is normed before its residual add.
            (Some(pre), Some(post)) => {
                let x = (x + layer.post_attention_layernorm.forward(&a, ctx)?)?;
                let h = pre.forward(&x, ctx)?;
                let m = self.sublayer(&mlp.path, &h, mlp.forward(&h, ctx)?, ctx)?;
                Ok((x + post.forward(&m, ctx)?)?)
            }
            _ => {
                let x = (x + a)?;
                let h = layer.post_attention_layernorm.forward(&x, ctx)?;
                let m = self.sublayer(&mlp.path, &h, mlp.forward(&h, ctx)?, ctx)?;
                Ok((x + m)?)
            }
        }
    }

    /// RoPE on the first `rotary_dim` dims of each head (all of them but for Phi-3's
    /// `partial_rotary_factor`), the rest passed through, as transformers' `apply_rotary_pos_emb`.
    fn rotate(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (hd, rd) = (self.config.head_dim, self.config.arch.rotary_dim);
        if rd == hd {
            return Ok(ops::rope(x, cos, sin)?);
        }
        let rot = ops::rope(&x.narrow(D::Minus1, 0, rd)?.contiguous()?, cos, sin)?;
        Ok(Tensor::cat(&[&rot, &x.narrow(D::Minus1, rd, hd - rd)?], D::Minus1)?.contiguous()?)
    }

    fn attention(
        &self,
        layer: &Block,
        x: &Tensor,
        step: &Step,
        prefix: Option<&(Tensor, Tensor)>,
        kv: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (attn, cfg) = (&layer.self_attn, &self.config);
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let (q, k, v) = attn.qkv(x, step.ctx)?;
        // [b, t, heads * hd] -> [b, t, heads, hd], per-head norms there, then [b, heads, t, hd]
        let heads = |y: Tensor, n: usize, norm: Option<&Norm>| -> Result<Tensor> {
            let y = y.reshape((b, t, n, hd))?;
            let y = match norm {
                Some(norm) => norm.forward(&y.contiguous()?, step.ctx)?,
                None => y,
            };
            Ok(y.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(q, nh, attn.q_norm.as_ref())?;
        let k = heads(k, nkv, attn.k_norm.as_ref())?;
        let v = heads(v, nkv, None)?;
        let (cos, sin) = match (&step.local_rope, layer.sliding) {
            (Some(local), true) => (&local.0, &local.1),
            _ => (&step.rope.0, &step.rope.1),
        };
        let q = self.rotate(&q, cos, sin)?;
        let mut k = self.rotate(&k, cos, sin)?;
        let mut v = v;
        // A key/value prefix enters as PEFT's `past_key_values` does: as given, no RoPE.
        if let Some((pk, pv)) = prefix {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        if let Some(layer_cache) = kv {
            (k, v) = layer_cache.append(&k, &v)?;
        }
        let kv_len = k.dim(2)?;
        // Grouped-query attention without copying K/V: fold each group's query heads
        // into the sequence axis, [b, nkv, rep * t, hd].
        let rep = nh / nkv;
        let qg = q.reshape((b, nkv, rep * t, hd))?;
        let bias = match (&step.sliding_bias, layer.sliding) {
            (Some(sb), true) => sb,
            _ => &step.bias,
        };
        let scale = cfg.arch.attn_scale;
        // Gated prefixes (UniPELT's G_P · P_K, G_P · P_V with a per-query gate g_t): query t
        // sees g_t·(q_t·p_k) and weighs p_v by g_t, i.e. both the scores and the
        // probabilities of the prefix columns are multiplied by g_t.
        let probs = match self.prefix_gate_columns(&attn.path, x, kv_len, step)? {
            None => ops::attention_probs(&qg, &k, bias, scale, nh)?,
            Some(gate) => {
                let scores = qg.matmul(&k.t()?)?.reshape((b, nh, t, kv_len))?.broadcast_mul(&gate)?;
                let probs = ops::scaled_masked_softmax(&scores, bias, scale)?.broadcast_mul(&gate)?;
                probs.reshape((b, nkv, rep * t, kv_len))?
            }
        };
        let out = probs.matmul(&v)?;
        // [b, nkv, rep * t, hd] -> [b, nh, t, hd] -> [b, t, nh * hd]
        let out = out.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        attn.o_proj.forward(&out, step.ctx)
    }

    /// The multiplier [b, 1, t, kv_len] of the attention columns at `path` when a hook
    /// gates its key/value prefix (ones outside the prefix), else None.
    fn prefix_gate_columns(&self, path: &str, x: &Tensor, kv_len: usize, step: &Step) -> Result<Option<Tensor>> {
        let Some(hooks) = step.ctx.hooks.as_ref().filter(|_| !step.prefix_spans.is_empty()) else { return Ok(None) };
        let Some(g) = hooks.prefix_gates(path, &step.prefix_spans, x, step.ctx)? else { return Ok(None) };
        let (b, _, t, n) = g.dims4()?;
        let rest = Tensor::ones((b, 1, t, kv_len - n), g.dtype(), g.device())?;
        Ok(Some(Tensor::cat(&[&g, &rest], 3)?))
    }
}

/// `bias` [b, 1, tq, kv] with the key columns `virtual_keys` hidden (the dtype's most negative
/// value) from the real queries (rows from `first_real`): late virtual positions below their layer.
/// Those entries are 0 in `bias` (virtual keys are never padding, future or another example's).
fn hide_virtual_keys(bias: &Tensor, first_real: usize, virtual_keys: std::ops::Range<usize>) -> Result<Tensor> {
    let (b, _, tq, kv) = bias.dims4()?;
    let min = super::batch::masked_value(bias.dtype());
    let hide: Vec<f64> = (0..tq * kv).map(|e| if e / kv >= first_real && virtual_keys.contains(&(e % kv)) { min } else { 0.0 }).collect();
    let hide = Tensor::from_vec(hide, (1, 1, tq, kv), bias.device())?.to_dtype(bias.dtype())?;
    Ok(bias.broadcast_add(&hide)?.reshape((b, 1, tq, kv))?)
}
