//! The LLaMA decoder, built only from ops that record a backward. Weight names are the
//! checkpoint paths of transformers' `LlamaForCausalLM`.
use super::batch::{attention_bias, Batch};
use super::kv_cache::KvCache;
use super::linear::linear;
use super::params::{ParamId, ParamStore};
use super::rope::Rope;
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::ops;
use crate::tuners::routing::RowAdapters;
use crate::tuners::Tuners;
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::Mutex;

/// What a forward pass reads besides the weights.
pub struct Ctx<'a> {
    pub store: &'a ParamStore,
    /// Inference: every weight enters detached and no graph is kept.
    pub no_grad: bool,
    /// Training mode (PyTorch's `model.train()`): adapter dropout is applied only then.
    pub training: bool,
    /// The adapters attached to the model; None runs the base model alone.
    pub tuners: Option<&'a Tuners>,
    /// Randomness of training-time ops (dropout), seeded so that a step is reproducible.
    pub rng: Mutex<StdRng>,
    /// Values drawn from `rng` once per forward pass and read by every layer that asks
    /// (`draw_once`): DyLoRA samples one rank per step for the whole model.
    pub shared_draws: Mutex<HashMap<String, u64>>,
    /// Mixed batches (PEFT's `adapter_names=`): the adapter of each row, routed at every
    /// hook site by `tuners/routing.rs`. None: the active adapters on every row.
    pub rows: Option<RowAdapters>,
}

impl<'a> Ctx<'a> {
    /// Base model, evaluation mode; `no_grad` as above.
    pub fn new(store: &'a ParamStore, no_grad: bool) -> Self {
        Ctx { store, no_grad, training: false, tuners: None, rng: Mutex::new(StdRng::seed_from_u64(0)), shared_draws: Mutex::default(), rows: None }
    }

    /// Inference: no graph, no dropout.
    pub fn inference(store: &'a ParamStore) -> Self {
        Self::new(store, true)
    }

    pub fn with_tuners(mut self, tuners: &'a Tuners) -> Self {
        self.tuners = Some(tuners);
        self
    }

    /// Runs row i with adapter `rows.names()[i]` (from `Tuners::route_rows`).
    pub fn with_rows(mut self, rows: RowAdapters) -> Self {
        self.rows = Some(rows);
        self
    }

    /// Training mode with dropout drawn from a generator seeded by `seed`.
    pub fn training(mut self, seed: u64) -> Self {
        self.training = true;
        self.rng = Mutex::new(StdRng::seed_from_u64(seed));
        self
    }

    /// The value drawn under `key` in this forward pass: the first caller draws it from
    /// `rng` (so it follows the seed), later callers get the same value.
    pub fn draw_once(&self, key: &str, draw: impl FnOnce(&mut StdRng) -> u64) -> u64 {
        let mut drawn = self.shared_draws.lock().unwrap_or_else(|e| e.into_inner());
        *drawn.entry(key.to_string()).or_insert_with(|| draw(&mut self.rng.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// A parameter as it enters the graph (detached when frozen or under `no_grad`).
    pub fn param(&self, id: ParamId) -> Tensor {
        self.store.get(id).tensor(self.no_grad)
    }
}

pub struct Linear {
    /// Module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    pub weight: ParamId,
    pub bias: Option<ParamId>,
}

impl Linear {
    /// `x Wᵀ + b`, with the adapters attached at this module path (if any) applied as
    /// their method defines: an input transform before the base matmul, then the output hook.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let bias = self.bias.map(|b| ctx.param(b));
        let Some(tuners) = ctx.tuners else {
            return Ok(linear(x, &ctx.param(self.weight), bias.as_ref())?);
        };
        let input = tuners.linear_input(self, x, ctx)?;
        let base = linear(input.as_ref().unwrap_or(x), &ctx.param(self.weight), bias.as_ref())?;
        tuners.linear_output(self, x, base, ctx)
    }
}

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

pub struct Block {
    pub input_layernorm: ParamId,
    pub self_attn: Attention,
    pub post_attention_layernorm: ParamId,
    pub mlp: Mlp,
}

pub struct Llama {
    pub config: LlamaConfig,
    pub store: ParamStore,
    pub embed_tokens: ParamId,
    pub layers: Vec<Block>,
    pub norm: ParamId,
    /// None when the embeddings are tied.
    pub lm_head: Option<Linear>,
    pub rope: Rope,
    pub dtype: DType,
    pub device: Device,
}

/// Per-call state that flows through the layers.
struct Step<'a> {
    ctx: &'a Ctx<'a>,
    cos: Tensor,
    sin: Tensor,
    bias: Tensor,
    /// Per-layer key/value prefixes [b, kv_heads, n, head_dim] (prefix tuning), at prefill.
    prefix: Option<Vec<(Tensor, Tensor)>>,
    /// The prefix columns' owners (from the prompt at prefill, from the cache after).
    prefix_spans: Vec<(String, usize)>,
}

impl Llama {
    /// Logits [b, t, vocab] (or [b, 1, vocab] with `last_only`). With a cache, keys and
    /// values of earlier calls are attended to and this call's are appended.
    ///
    /// Adapters with prompt hooks act at prefill (nothing cached yet), as PEFT's
    /// `PeftModelForCausalLM.forward` / `prepare_inputs_for_generation`: virtual tokens are
    /// prepended to the input embeddings (the logits then start with their n positions),
    /// key/value prefixes are attended to as if cached. The caller's attention mask and
    /// position ids never count these positions: the mask is widened by ones and real
    /// positions start after them (`cache_position` / `position_ids + num_virtual_tokens`).
    pub fn forward(&self, batch: &Batch, ctx: &Ctx, mut cache: Option<&mut KvCache>, last_only: bool) -> Result<Tensor> {
        let past = cache.as_ref().map_or(0, |c| c.len());
        let virt_past = cache.as_ref().map_or(0, |c| c.virtual_len());
        batch.validate(self.config.vocab_size, past - virt_past)?;
        if let Some(rows) = &ctx.rows {
            rows.check_batch(batch.dims().0)?;
            if ctx.training {
                return Err(crate::error::Error::Unsupported("adapterNames: per-row adapters are for inference; the model is in training mode (call eval() first)".into()));
            }
        }
        let ids = batch.ids_tensor(&self.device)?;
        let (b, t) = batch.dims();
        let mut x = ctx.param(self.embed_tokens).index_select(&ids.flatten_all()?, 0)?.reshape((b, t, ()))?;
        let prompt = match ctx.tuners {
            Some(tuners) if past == 0 => tuners.prompt(ctx, b)?,
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
            Some(p) => Some(p.into_iter().map(|(k, v)| Ok((k.to_dtype(self.dtype)?, v.to_dtype(self.dtype)?))).collect::<Result<Vec<_>>>()?),
            None => None,
        };
        let np = prefix.as_ref().map_or(Ok(0), |p| p[0].0.dim(2))?;
        let (tq, past_keys, virt) = (nv + t, past + np, virt_past + np + nv);
        let positions: Vec<Vec<i64>> = match &batch.position_ids {
            None => vec![(past_keys as i64..(past_keys + tq) as i64).collect(); b],
            Some(p) => p.iter().map(|row| (past_keys..past_keys + nv).map(|i| i as i64).chain(row.iter().map(|x| x + virt as i64)).collect()).collect(),
        };
        let (cos, sin) = self.rope.cos_sin(&positions, self.dtype, &self.device)?;
        let bias = if virt == 0 {
            batch.attention_bias(past, self.dtype, &self.device)?
        } else {
            let mask = batch.attention_mask.as_ref().map(|m| m.iter().map(|r| [vec![1u8; virt], r.clone()].concat()).collect::<Vec<_>>());
            let segments = batch.key_segments(virt);
            attention_bias(mask.as_deref(), segments.as_deref(), b, tq, past_keys, self.dtype, &self.device)?
        };
        let prefix_spans = match (&cache, past) {
            (Some(c), p) if p > 0 => c.prefix_spans().to_vec(),
            _ => prompt.prefix_spans,
        };
        if let Some(c) = cache.as_deref_mut().filter(|_| past == 0) {
            c.set_prefix_spans(prefix_spans.clone());
        }
        let step = Step { ctx, cos, sin, bias, prefix, prefix_spans };
        for (i, layer) in self.layers.iter().enumerate() {
            let kv = cache.as_deref_mut().map(|c| c.layer_mut(i));
            x = self.block(i, layer, &x, &step, kv)?;
        }
        if let Some(c) = cache {
            c.advance(np + tq, np + nv);
        }
        if last_only {
            x = x.narrow(1, tq - 1, 1)?;
        }
        let x = self.norm(|| "model.norm".into(), &x, self.norm, ctx)?;
        Ok(match &self.lm_head {
            Some(head) => head.forward(&x, ctx)?,
            None => linear(&x, &ctx.param(self.embed_tokens), None)?,
        })
    }

    /// RMSNorm with the norm hooks of the adapters at `path` (LN tuning swaps the weight).
    fn norm(&self, path: impl FnOnce() -> String, x: &Tensor, weight: ParamId, ctx: &Ctx) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        match ctx.tuners {
            Some(tuners) => tuners.norm(&path(), x, ctx.param(weight), eps, ctx),
            None => Ok(ops::rms_norm(x, &ctx.param(weight), eps)?),
        }
    }

    /// A sublayer's output passed through the adapters at `path` (bottleneck adapters).
    fn sublayer(&self, path: impl FnOnce() -> String, input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        match ctx.tuners {
            Some(tuners) => tuners.sublayer(&path(), input, output, ctx),
            None => Ok(output),
        }
    }

    fn block(&self, i: usize, layer: &Block, x: &Tensor, step: &Step, kv: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let ctx = step.ctx;
        let h = self.norm(|| format!("model.layers.{i}.input_layernorm"), x, layer.input_layernorm, ctx)?;
        let a = self.attention(i, &layer.self_attn, &h, step, kv)?;
        let a = self.sublayer(|| format!("model.layers.{i}.self_attn"), &h, a, ctx)?;
        let x = (x + a)?;
        let h = self.norm(|| format!("model.layers.{i}.post_attention_layernorm"), &x, layer.post_attention_layernorm, ctx)?;
        let mlp = &layer.mlp;
        let gated = ops::silu_mul(&mlp.gate_proj.forward(&h, ctx)?, &mlp.up_proj.forward(&h, ctx)?)?;
        let m = self.sublayer(|| format!("model.layers.{i}.mlp"), &h, mlp.down_proj.forward(&gated, ctx)?, ctx)?;
        Ok((x + m)?)
    }

    fn attention(&self, i: usize, attn: &Attention, x: &Tensor, step: &Step, kv: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        // [b, t, heads * hd] -> [b, heads, t, hd]
        let heads = |y: Tensor, n: usize| y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous();
        let q = heads(attn.q_proj.forward(x, step.ctx)?, nh)?;
        let k = heads(attn.k_proj.forward(x, step.ctx)?, nkv)?;
        let v = heads(attn.v_proj.forward(x, step.ctx)?, nkv)?;
        let q = ops::rope(&q, &step.cos, &step.sin)?;
        let mut k = ops::rope(&k, &step.cos, &step.sin)?;
        let mut v = v;
        // A key/value prefix enters as PEFT's `past_key_values` does: as given, no RoPE.
        if let Some((pk, pv)) = step.prefix.as_ref().map(|p| &p[i]) {
            k = Tensor::cat(&[pk, &k], 2)?;
            v = Tensor::cat(&[pv, &v], 2)?;
        }
        if let Some(slot) = kv {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.detach(), v.detach()));
        }
        let kv_len = k.dim(2)?;
        // Grouped-query attention without copying K/V: fold each group's query heads
        // into the sequence axis, [b, nkv, rep * t, hd].
        let rep = nh / nkv;
        let qg = q.reshape((b, nkv, rep * t, hd))?;
        let mut scores = qg.matmul(&k.t()?)?.reshape((b, nh, t, kv_len))?;
        // Gated prefixes (UniPELT's G_P · P_K, G_P · P_V with a per-query gate g_t): query t
        // sees g_t·(q_t·p_k) and weighs p_v by g_t, i.e. both the scores and the
        // probabilities of the prefix columns are multiplied by g_t.
        let gate = self.prefix_gate_columns(i, x, kv_len, step)?;
        if let Some(m) = &gate {
            scores = scores.broadcast_mul(m)?;
        }
        let mut probs = ops::scaled_masked_softmax(&scores, &step.bias, 1.0 / (hd as f64).sqrt())?;
        if let Some(m) = &gate {
            probs = probs.broadcast_mul(m)?;
        }
        let out = probs.reshape((b, nkv, rep * t, kv_len))?.matmul(&v)?;
        // [b, nkv, rep * t, hd] -> [b, nh, t, hd] -> [b, t, nh * hd]
        let out = out.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        attn.o_proj.forward(&out, step.ctx)
    }

    /// The multiplier [b, 1, t, kv_len] of the attention columns of layer `i` when an
    /// adapter gates its key/value prefix (ones outside the prefix), else None.
    fn prefix_gate_columns(&self, i: usize, x: &Tensor, kv_len: usize, step: &Step) -> Result<Option<Tensor>> {
        let Some(tuners) = step.ctx.tuners.filter(|_| !step.prefix_spans.is_empty()) else { return Ok(None) };
        let Some(g) = tuners.prefix_gates(&format!("model.layers.{i}.self_attn"), &step.prefix_spans, x, step.ctx)? else { return Ok(None) };
        let (b, _, t, n) = g.dims4()?;
        let rest = Tensor::ones((b, 1, t, kv_len - n), g.dtype(), g.device())?;
        Ok(Some(Tensor::cat(&[&g, &rest], 3)?))
    }

    /// The weight of the module at `path`: a linear's or a norm's (what merging rewrites).
    pub fn module_weight(&self, path: &str) -> Option<ParamId> {
        if let Some(l) = self.linears().into_iter().find(|l| l.path == path) {
            return Some(l.weight);
        }
        self.norms().into_iter().find(|(p, _)| p == path).map(|(_, id)| id)
    }

    /// Every RMSNorm with its module path and weight, in `named_modules()` order.
    pub fn norms(&self) -> Vec<(String, ParamId)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            out.push((format!("model.layers.{i}.input_layernorm"), l.input_layernorm));
            out.push((format!("model.layers.{i}.post_attention_layernorm"), l.post_attention_layernorm));
        }
        out.push(("model.norm".into(), self.norm));
        out
    }

    /// The linear at `path`, to give it a bias when a merge needs one.
    pub fn linear_mut(&mut self, path: &str) -> Option<&mut Linear> {
        if self.lm_head.as_ref().is_some_and(|h| h.path == path) {
            return self.lm_head.as_mut();
        }
        self.layers.iter_mut().find_map(|l| {
            let (a, m) = (&mut l.self_attn, &mut l.mlp);
            [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj, &mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]
                .into_iter()
                .find(|x| x.path == path)
        })
    }

    /// Every linear layer of the decoder with its module path, in checkpoint order.
    pub fn linears(&self) -> Vec<&Linear> {
        let mut out = Vec::new();
        for l in &self.layers {
            let a = &l.self_attn;
            out.extend([&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]);
            out.extend([&l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj]);
        }
        out.extend(self.lm_head.as_ref());
        out
    }
}
