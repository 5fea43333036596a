//! Child-tuning (Xu et al. 2021, "Raise a Child in Large Language Model: Towards Effective
//! and Generalizable Fine-tuning", §3, eqs. 5-7), task-free variant Child-tuning_D: each step
//! updates only a random child network, w ← w − η·(∂L/∂w ⊙ M/p_D), M ~ Bernoulli(p_D) drawn
//! afresh every step, the kept gradients scaled by 1/p_D. Here the update goes into a dense
//! delta ΔW [out, in] of each targeted weight (init 0, so the adapter starts as the base model
//! and merges as W + ΔW), and the mask acts on ΔW's gradient only: in a training forward the
//! layer uses ΔW_eff = ΔW ⊙ M/p_D + stopgrad(ΔW − ΔW ⊙ M/p_D), whose value is ΔW and whose
//! gradient is M/p_D ⊙ ∂L/∂ΔW, so any optimizer then steps the child network alone.
//! The task-driven Child-tuning_F (a fixed mask from Fisher information) is
//! `SPARSE_MASK` with `mask_type: "fisher"`.
//!
//! Our own `peft_type` "CHILD_TUNING"; tensors `<module>.child_delta.weight` [out, in].
use crate::error::Result;
use crate::model::{Ctx, Linear, ParamId, ParamStore};
use crate::tuners::fields::{mergeable_plumbing, object, Fields};
use crate::tuners::init::dropout_mask;
use crate::tuners::low_rank::add_delta;
use crate::tuners::sparse_mask::config::DEFAULT_TARGETS;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Map, Value};
use std::path::Path;

pub fn defaults() -> Map<String, Value> {
    object(json!({
        "child_ratio": 0.3, "target_modules": null, "exclude_modules": null, "layers_to_transform": null,
        "layers_pattern": null, "modules_to_save": null
    }))
}

#[derive(Debug, Clone)]
pub struct ChildTuningConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// p_D, the share of each weight's entries updated per step (the paper uses 0.1-0.3).
    pub child_ratio: f64,
}

impl ChildTuningConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) = Fields::parse(value, "CHILD_TUNING", "ChildTuningConfig", defaults(), source)?;
        f.no_modules_to_save()?;
        let child_ratio = f.num_in("child_ratio", |p| p > 0.0 && p <= 1.0, "a number in (0, 1]: the share of entries updated per step")?;
        Ok((ChildTuningConfig { child_ratio, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for ChildTuningConfig {
    // Child-tuning updates the whole network; here every linear but the head.
    mergeable_plumbing!("CHILD_TUNING", DEFAULT_TARGETS);

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dev = bc.store.get(t.weight).value().device().clone();
        let delta = Tensor::zeros((t.out_features, t.in_features), bc.dtype, &dev)?;
        let delta = bc.store.add(param_name(&t.path, "child_delta", bc.adapter), delta, false)?;
        Ok(Box::new(ChildTuningLayer { adapter: bc.adapter.to_string(), delta, child_ratio: self.child_ratio }))
    }
}

#[derive(Debug)]
pub struct ChildTuningLayer {
    pub adapter: String,
    pub delta: ParamId,
    pub child_ratio: f64,
}

impl ChildTuningLayer {
    fn merged(&self, weight: &Tensor, store: &ParamStore, sign: f64) -> Result<Tensor> {
        add_delta(weight, &store.get(self.delta).value(), sign)
    }
}

impl AdapterLayer for ChildTuningLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.delta]
    }

    /// `result + x ΔW_effᵀ`; in training ΔW_eff routes the gradient through the step's child mask.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut delta = ctx.param(self.delta);
        let dt = delta.dtype();
        if ctx.training && self.child_ratio < 1.0 {
            let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
            // dropout_mask(1 − p_D): 0 with probability 1 − p_D, else 1/p_D.
            let mask = dropout_mask(delta.dims(), 1.0 - self.child_ratio, &mut rng, dt, delta.device())?;
            let child = (&delta * mask)?;
            delta = (&child + (&delta - &child)?.detach())?;
        }
        let out_dtype = result.dtype();
        let y = crate::model::linear::linear(&x.to_dtype(dt)?, &delta, None)?;
        Ok((result.to_dtype(dt)? + y)?.to_dtype(out_dtype)?)
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.merged(weight, store, 1.0)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.merged(weight, store, -1.0)
    }
}
