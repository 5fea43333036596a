//! Generation with a KV cache over a batch of prompts of different lengths, left-padded,
//! with positions taken from the attention mask as transformers' `generate` does.
use super::batch::Batch;
use super::decoder::{CausalLm, Ctx};
use super::kv_cache::KvCache;
use super::sampling::{choose, SamplingOptions};
use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingOptions,
    pub seed: u64,
    /// Generation stops for a row at any of these (the token is kept).
    pub stop_token_ids: Vec<u32>,
}

/// What the caller wants after each step.
pub enum Flow {
    Continue,
    Stop,
}

/// Generates for every prompt; returns each prompt followed by its new tokens.
/// `on_step` sees each step's new token per row (None for rows already finished).
pub fn generate(
    model: &CausalLm,
    ctx: &Ctx,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    on_step: &mut dyn FnMut(&[Option<u32>]) -> Flow,
) -> Result<Vec<Vec<u32>>> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::arg("prompts", "one or more non-empty token id arrays", "an empty prompt"));
    }
    let pad = model.config.pad_token_id.or(model.config.eos_token_ids.first().copied()).unwrap_or(0);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    // Positions past max_position_embeddings were never trained (and LongRoPE/YaRN tables end
    // there): a longer prompt is refused, and new tokens stop at the context's end (the
    // bindings warn when they cap a request, as transformers does).
    let context = model.config.max_position_embeddings;
    if longest > context {
        return Err(Error::arg(
            "prompts",
            format!("prompts of at most {context} tokens (the model's context length, max_position_embeddings)"),
            format!("a prompt of {longest} tokens"),
        ));
    }
    let max_new_tokens = opts.max_new_tokens.min(context - longest);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut positions = Vec::new();
    for p in prompts {
        let padding = longest - p.len();
        ids.push([vec![pad; padding], p.clone()].concat());
        mask.push([vec![0u8; padding], vec![1u8; p.len()]].concat());
        positions.push((0..longest).map(|i| if i < padding { 1 } else { (i - padding) as i64 }).collect::<Vec<_>>());
    }
    let mut outputs: Vec<Vec<u32>> = prompts.to_vec();
    let mut done = vec![false; prompts.len()];
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cache = KvCache::new(model.config.num_hidden_layers);
    // Everything fed so far, to recompute the cache from (LongRoPE below).
    let (mut fed_ids, mut fed_pos) = (ids.clone(), positions.clone());
    let mut batch = Batch { ids, attention_mask: Some(mask), position_ids: Some(positions), segment_ids: None };
    for _ in 0..max_new_tokens {
        // LongRoPE switches to its long factors once the sequence passes original_max; keys
        // cached with the short ones are then recomputed, as transformers' Phi-3
        // `prepare_inputs_for_generation` drops the cache at that point.
        let past = cache.len();
        if model.rope.long_from().is_some_and(|m| past > 0 && past <= m && past + 1 > m) {
            cache = KvCache::new(model.config.num_hidden_layers);
            let mask = batch.attention_mask.take();
            batch = Batch { ids: fed_ids.clone(), attention_mask: mask, position_ids: Some(fed_pos.clone()), segment_ids: None };
        }
        let logits = model.forward(&batch, ctx, Some(&mut cache), true)?;
        let rows = logits.squeeze(1)?.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        let mut step = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            if done[r] {
                step.push(None);
                continue;
            }
            let tok = choose(row, &opts.sampling, &mut rng);
            outputs[r].push(tok);
            done[r] = opts.stop_token_ids.contains(&tok);
            step.push(Some(tok));
        }
        let stop = matches!(on_step(&step), Flow::Stop);
        if stop || done.iter().all(|d| *d) {
            break;
        }
        let next_pos: Vec<Vec<i64>> =
            batch.position_ids.as_ref().unwrap().iter().map(|p| vec![p.last().copied().unwrap_or(0) + 1]).collect();
        let mut mask = batch.attention_mask.take().unwrap();
        mask.iter_mut().for_each(|m| m.push(1));
        let ids: Vec<Vec<u32>> = step.iter().map(|t| vec![t.unwrap_or(pad)]).collect();
        for r in 0..ids.len() {
            fed_ids[r].push(ids[r][0]);
            fed_pos[r].push(next_pos[r][0]);
        }
        batch = Batch { ids, attention_mask: Some(mask), position_ids: Some(next_pos), segment_ids: None };
    }
    Ok(outputs)
}
