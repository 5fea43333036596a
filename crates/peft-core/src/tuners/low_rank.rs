//! What the LoRA variants of ours share (MoSLoRA, LoRA Dropout, SoRA; MoLoRA's fields): LoRA's
//! fields with LoRA's defaults, the factors A (Kaiming-uniform) and B (zero, so the update
//! starts at 0), and merging a delta weight into the base weight in f64.
use super::fields::{object, Fields};
use super::init::kaiming_uniform;
use super::{param_name, BuildCtx, LinearInfo};
use crate::error::Result;
use crate::model::ParamId;
use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};

/// LoRA's fields and the shared targeting fields, with LoRA's defaults, plus `extra`.
pub fn defaults(extra: Value) -> Map<String, Value> {
    let mut m = object(json!({
        "r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": null, "exclude_modules": null,
        "layers_to_transform": null, "layers_pattern": null, "init_weights": true, "modules_to_save": null
    }));
    m.extend(object(extra));
    m
}

/// r, lora_alpha, lora_dropout and init_weights, read with errors naming the key.
#[derive(Debug, Clone, Copy)]
pub struct LowRank {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// true: B = 0 (the adapter starts as the base model); false: B Kaiming-uniform too (tests).
    pub init_weights: bool,
}

impl LowRank {
    pub fn parse(f: &Fields, r_what: &str) -> Result<Self> {
        f.no_modules_to_save()?;
        Ok(LowRank {
            r: f.positive("r", r_what)?,
            lora_alpha: f.num("lora_alpha")?,
            lora_dropout: f.prob("lora_dropout")?,
            init_weights: f.bool("init_weights")?,
        })
    }

    /// lora_alpha / r, LoRA's scaling.
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// `lora_A` [r, in] and `lora_B` [out, r] of the linear `t`, added to the store.
    pub fn add_factors(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<(ParamId, ParamId)> {
        let dev = bc.store.get(t.weight).value().device().clone();
        let (dt, r) = (bc.dtype, self.r);
        let a = kaiming_uniform(r, t.in_features, bc.rng, dt, &dev)?;
        let b = if self.init_weights {
            Tensor::zeros((t.out_features, r), dt, &dev)?
        } else {
            kaiming_uniform(t.out_features, r, bc.rng, dt, &dev)?
        };
        let a = bc.store.add(param_name(&t.path, "lora_A", bc.adapter), a, false)?;
        Ok((a, bc.store.add(param_name(&t.path, "lora_B", bc.adapter), b, false)?))
    }
}

/// weight + sign · delta, computed in f64 and cast back to the weight's dtype (merge: +1, unmerge: −1).
pub fn add_delta(weight: &Tensor, delta: &Tensor, sign: f64) -> Result<Tensor> {
    Ok((weight.to_dtype(DType::F64)? + (delta.to_dtype(DType::F64)? * sign)?)?.to_dtype(weight.dtype())?)
}

/// A LoRA variant's fields read by `Fields::parse` with LoRA's defaults plus `extra`, and its
/// low-rank part (`r_what` says what r is, for errors).
pub fn parse_fields(
    value: &Value,
    peft_type: &str,
    class: &str,
    extra: Value,
    r_what: &str,
    source: &std::path::Path,
) -> Result<(Fields, LowRank, Vec<crate::Warning>)> {
    let (f, warnings) = Fields::parse(value, peft_type, class, defaults(extra), source)?;
    let low_rank = LowRank::parse(&f, r_what)?;
    Ok((f, low_rank, warnings))
}

/// The `TunerConfig` methods every LoRA variant shares: the config plumbing, its `peft_type`,
/// LoRA's LLaMA default targets, and merging.
macro_rules! low_rank_plumbing {
    ($peft_type:literal) => {
        $crate::tuners::fields::mergeable_plumbing!($peft_type, &["q_proj", "v_proj"]);
    };
}
pub(crate) use low_rank_plumbing;

/// `AdapterLayer::merge` and `unmerge` of a layer whose update is `self.delta(store)` (ΔW [out, in]).
macro_rules! merges_delta {
    () => {
        fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
            $crate::tuners::low_rank::add_delta(weight, &self.delta(store)?, 1.0)
        }
        fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
            $crate::tuners::low_rank::add_delta(weight, &self.delta(store)?, -1.0)
        }
    };
}
pub(crate) use merges_delta;
