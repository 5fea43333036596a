//! PeriodicLoRA (Meng et al. 2024, "PeriodicLoRA: Breaking the Low-Rank Bottleneck in LoRA
//! Optimization", §3, Algorithm 1): training runs in stages of N steps; at the end of each stage
//! the LoRA update is unloaded into the weights, W ← W + s·B A, and LoRA restarts from its
//! init (A Kaiming-uniform, B = 0) with fresh optimizer state, so that the sum of the stages'
//! updates, Σₖ s·Bₖ Aₖ, can exceed rank r. Here each stage is unloaded into a frozen buffer of
//! the adapter, M [out, in] (`lora_merged`), rather than into the base weight itself: the layer
//! computes W x + M x + s·B A x, which is the merged weight's output, while the base stays
//! untouched, so the saved adapter carries every stage (M and the last stage's A, B), `disable`
//! still gives the base model, and a base kept quantized (GGUF Q4_0), which cannot be written,
//! needs no dequantizing. The Trainer runs `restart` after every optimizer step and resets the
//! restarted factors' optimizer state. Merges as W + M + s·B A. Our own `peft_type`
//! "PERIODIC_LORA"; tensors `<module>.lora_A.weight` [r, in], `lora_B.weight` [out, r] and the
//! buffer `lora_merged.weight` [out, in].
use crate::error::{Error, Result};
use crate::model::{CausalLm, Ctx, Linear, ParamId, ParamStore};
use crate::tuners::fields::Fields;
use crate::tuners::init::kaiming_uniform;
use crate::tuners::lora::layer::{delta_weight, low_rank_forward};
use crate::tuners::low_rank::{low_rank_plumbing, merges_delta, parse_fields, LowRank};
use crate::tuners::sparse_mask::config::fnv1a;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig, Tuners};
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct PeriodicLoraConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub low_rank: LowRank,
    /// N: optimizer steps per stage.
    pub merge_every: usize,
}

impl PeriodicLoraConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, low_rank, warnings) =
            parse_fields(value, "PERIODIC_LORA", "PeriodicLoraConfig", json!({"merge_every": 100}), "the rank", source)?;
        let merge_every = f.positive("merge_every", "the optimizer steps per stage (between merges)")?;
        Ok((PeriodicLoraConfig { low_rank, merge_every, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for PeriodicLoraConfig {
    low_rank_plumbing!("PERIODIC_LORA");

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let (a, b) = self.low_rank.add_factors(t, bc)?;
        let dev = bc.store.get(t.weight).value().device().clone();
        let merged = bc.store.add(
            param_name(&t.path, "lora_merged", bc.adapter),
            Tensor::zeros((t.out_features, t.in_features), bc.dtype, &dev)?,
            false,
        )?;
        let (scaling, dropout) = (self.low_rank.scaling(), self.low_rank.lora_dropout);
        Ok(Box::new(PeriodicLoraLayer { adapter: bc.adapter.to_string(), path: t.path.clone(), a, b, merged, scaling, dropout }))
    }
}

#[derive(Debug)]
pub struct PeriodicLoraLayer {
    pub adapter: String,
    pub path: String,
    pub a: ParamId,
    pub b: ParamId,
    /// M, the stages unloaded so far (a buffer).
    pub merged: ParamId,
    pub scaling: f64,
    pub dropout: f64,
}

impl PeriodicLoraLayer {
    /// M + s·B A.
    fn delta(&self, store: &ParamStore) -> Result<Tensor> {
        let v = |id| store.get(id).value().clone();
        Ok((v(self.merged) + delta_weight(&v(self.a), &v(self.b), self.scaling)?)?)
    }
}

impl AdapterLayer for PeriodicLoraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.a, self.b]
    }

    fn buffers(&self) -> Vec<ParamId> {
        vec![self.merged]
    }

    /// `result + x Mᵀ + s·B A dropout(x)`.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let m = ctx.param(self.merged);
        let out_dtype = result.dtype();
        let result =
            (result.to_dtype(m.dtype())? + crate::model::linear::linear(&x.to_dtype(m.dtype())?, &m, None)?)?.to_dtype(out_dtype)?;
        low_rank_forward(x, result, &ctx.param(self.a), &ctx.param(self.b), self.scaling, self.dropout, ctx)
    }

    merges_delta!();

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// One adapter's restart: its name, the stage just ended (1-based), and the parameters reset.
pub type Restart = (String, usize, Vec<String>);

/// After `steps_done` optimizer steps: every active PeriodicLoRA adapter whose stage ends now
/// (steps_done a multiple of merge_every) unloads s·B A into M and restarts A (Kaiming-uniform,
/// drawn from `seed`, the stage and the module path) and B (zero).
pub fn restart(model: &CausalLm, tuners: &Tuners, steps_done: usize, seed: u64) -> Result<Vec<Restart>> {
    if tuners.is_merged() {
        return Err(Error::Unsupported("PeriodicLoRA's restart: the adapters are merged; unmerge them before training".into()));
    }
    let store = &model.store;
    let mut out = Vec::new();
    for name in tuners.active() {
        let Some(c) = tuners.config(name)?.as_any().downcast_ref::<PeriodicLoraConfig>() else { continue };
        if steps_done == 0 || !steps_done.is_multiple_of(c.merge_every) {
            continue;
        }
        let mut reset = Vec::new();
        for (path, l) in tuners.layers_of(name)? {
            let Some(l) = l.as_any().and_then(|l| l.downcast_ref::<PeriodicLoraLayer>()) else { continue };
            store.get(l.merged).set(&l.delta(store)?)?;
            let a = store.get(l.a).value();
            let (r, inp) = a.dims2()?;
            let mut rng = StdRng::seed_from_u64(seed ^ (steps_done as u64).wrapping_mul(0x9e3779b97f4a7c15) ^ fnv1a(path));
            store.get(l.a).set(&kaiming_uniform(r, inp, &mut rng, a.dtype(), a.device())?)?;
            store.get(l.b).set(&store.get(l.b).value().zeros_like()?)?;
            reset.extend([store.get(l.a).name.clone(), store.get(l.b).name.clone()]);
        }
        out.push((name.clone(), steps_done / c.merge_every, reset));
    }
    Ok(out)
}
