//! LT-SFT, Lottery-Ticket Sparse Fine-Tuning (Ansell et al. 2022, "Composable Sparse
//! Fine-Tuning for Cross-Lingual Transfer", §3.1): (1) fine-tune fully, θ⁽⁰⁾ → θ⁽¹⁾; (2) keep the
//! K entries with the largest change |θ⁽¹⁾ − θ⁽⁰⁾| as the mask μ; (3) reset θ to θ⁽⁰⁾ and
//! fine-tune again with only the masked entries free; the sparse fine-tuning is
//! φ = θ⁽²⁾ − θ⁽⁰⁾, zero outside μ. Here the targeted weights train as masked deltas
//! (`masked_delta.rs`, whose ΔW is exactly θ − θ⁽⁰⁾): phase 1 runs with the mask all ones for
//! `full_steps` optimizer steps; then the Trainer runs `lottery_step`, which keeps the top
//! K = round(density · numel) entries of |ΔW| per weight (the paper chooses K over the whole
//! model; per weight every tensor's share is known from the config), resets ΔW to 0, and phase 2
//! trains the K entries. The optimizer's moments are not reset. Merges as W + ΔW ⊙ μ. Our own
//! `peft_type` "LT_SFT"; tensors `<linear>.masked_delta.weight` and the mask buffer
//! `<linear>.delta_mask.weight`.
use crate::error::Result;
use crate::model::CausalLm;
use crate::tuners::fields::{mergeable_plumbing, Fields};
use crate::tuners::masked_delta::{self, count, defaults, density, k_of, top_k_mask, zero};
use crate::tuners::sparse_mask::config::DEFAULT_TARGETS;
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig, Tuners};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct LtSftConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// K / numel: the share of each weight kept for phase 2.
    pub density: f64,
    /// Optimizer steps of phase 1 (full fine-tuning) before the ticket is drawn.
    pub full_steps: usize,
}

impl LtSftConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) = Fields::parse(value, "LT_SFT", "LtSftConfig", defaults(json!({"density": 0.05, "full_steps": 20})), source)?;
        f.no_modules_to_save()?;
        let full_steps = f.positive("full_steps", "the optimizer steps of full fine-tuning (phase 1)")?;
        Ok((LtSftConfig { density: density(&f)?, full_steps, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for LtSftConfig {
    mergeable_plumbing!("LT_SFT", DEFAULT_TARGETS);

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        masked_delta::create(t, bc, false)
    }
}

/// After `steps_done` optimizer steps: for every active LT-SFT adapter whose phase 1 ends now,
/// keeps the top-K changed entries of each weight as its mask and resets ΔW to 0.
/// Returns, per adapter changed now, (entries kept, entries in all).
pub fn lottery_step(model: &CausalLm, tuners: &Tuners, steps_done: usize) -> Result<Vec<(String, usize, usize)>> {
    let store = &model.store;
    let mut out = Vec::new();
    for a in masked_delta::layers::<LtSftConfig>(tuners, "LT-SFT's lottery step")? {
        if steps_done != a.config.full_steps {
            continue;
        }
        let (mut kept, mut total) = (0, 0);
        for (_, l) in &a.layers {
            let d = store.get(l.delta).value();
            store.get(l.mask).set(&top_k_mask(&d.abs()?, k_of(a.config.density, d.elem_count()), &d)?)?;
            zero(store, l.delta)?;
            let (k, n) = count(store, l)?;
            (kept, total) = (kept + k, total + n);
        }
        out.push((a.name.to_string(), kept, total));
    }
    Ok(out)
}
