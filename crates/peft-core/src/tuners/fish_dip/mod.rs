//! Fish-Dip (Das et al. 2023, "Unified Low-Resource Sequence Labeling by Sample-Aware Dynamic
//! Sparse Finetuning", §3, eqs. 1-2): sparse fine-tuning whose mask is recomputed every N steps
//! from the empirical Fisher information of the training loss, F̂_θ = 1/|B| Σ_{x∈B} (∂L(x)/∂θ)²,
//! keeping the top share of entries; the paper scores on the training samples with the largest
//! loss, we score on the batches the Trainer is about to train on (the Trainer passes them).
//! Here the targeted weights train as masked deltas with a frozen accumulator
//! (`masked_delta.rs`: W + A + ΔW ⊙ M): at an update, what the old mask learned is folded into A
//! (it stays, as the paper's masked-gradient updates leave it), ΔW is zeroed, the Fisher
//! scores of every entry are taken with the mask open (∂L/∂ΔW = ∂L/∂W there), and the new
//! mask keeps the top round(density · numel) of each weight. Merges as W + A + ΔW ⊙ M. Our own
//! `peft_type` "FISH_DIP"; tensors `<linear>.masked_delta.weight`, and the buffers
//! `<linear>.delta_mask.weight` and `<linear>.delta_frozen.weight`.
use crate::error::{Error, Result};
use crate::model::{CausalLm, ParamId};
use crate::tuners::fields::{mergeable_plumbing, Fields};
use crate::tuners::masked_delta::{self, count, defaults, density, k_of, top_k_mask};
use crate::tuners::sparse_mask::config::DEFAULT_TARGETS;
use crate::tuners::sparse_mask::fisher::accumulate;
use crate::tuners::sparse_mask::FisherBatch;
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig, Tuners};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct FishDipConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// The share of each weight in the mask.
    pub density: f64,
    /// N: the mask is recomputed before steps 0, N, 2N, …
    pub update_every: usize,
}

impl FishDipConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) =
            Fields::parse(value, "FISH_DIP", "FishDipConfig", defaults(json!({"density": 0.05, "update_every": 10})), source)?;
        f.no_modules_to_save()?;
        let update_every = f.positive("update_every", "the optimizer steps between mask updates")?;
        Ok((FishDipConfig { density: density(&f)?, update_every, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for FishDipConfig {
    mergeable_plumbing!("FISH_DIP", DEFAULT_TARGETS);

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        masked_delta::create(t, bc, true)
    }
}

/// Whether an active Fish-Dip adapter updates its mask before step `step` (0-based).
pub fn due(tuners: &Tuners, step: usize) -> Result<bool> {
    Ok(masked_delta::layers::<FishDipConfig>(tuners, "Fish-Dip")?.iter().any(|a| step.is_multiple_of(a.config.update_every)))
}

/// Before step `step`: recomputes the mask of every active Fish-Dip adapter due now from the
/// Fisher scores on `batches`. Returns, per adapter updated, (entries in the mask, entries in all).
pub fn update_masks(model: &CausalLm, tuners: &Tuners, step: usize, batches: &[FisherBatch]) -> Result<Vec<(String, usize, usize)>> {
    if batches.is_empty() {
        return Err(Error::arg("batches", "at least one batch of inputIds and labels", "none"));
    }
    let store = &model.store;
    let due: Vec<_> = masked_delta::layers::<FishDipConfig>(tuners, "Fish-Dip's mask update")?
        .into_iter()
        .filter(|a| step.is_multiple_of(a.config.update_every))
        .collect();
    let mut deltas: Vec<(String, ParamId)> = Vec::new();
    for a in &due {
        for (path, l) in &a.layers {
            l.fold(store)?;
            store.get(l.mask).set(&store.get(l.mask).value().ones_like()?)?;
            deltas.push((format!("{}/{path}", a.name), l.delta));
        }
    }
    let fisher = accumulate(model, Some(tuners), &deltas, batches, &|| false)?;
    let mut out = Vec::new();
    for a in &due {
        let (mut kept, mut total) = (0, 0);
        for (path, l) in &a.layers {
            let f = &fisher[&format!("{}/{path}", a.name)];
            let d = store.get(l.delta).value();
            store.get(l.mask).set(&top_k_mask(f, k_of(a.config.density, d.elem_count()), &d)?)?;
            let (k, n) = count(store, l)?;
            (kept, total) = (kept + k, total + n);
        }
        out.push((a.name.to_string(), kept, total));
    }
    Ok(out)
}
