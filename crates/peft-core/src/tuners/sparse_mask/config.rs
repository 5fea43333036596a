//! The `SPARSE_MASK` config (our own `peft_type`; PEFT's file conventions and linear
//! targeting). Fields on disk: `density` (required, the fraction of each targeted weight
//! that trains, in (0, 1]), `mask_type` ("magnitude", the default, "smallest_magnitude" (PaFi), "fisher" or "random"),
//! `mask_seed` (random masks; the config alone then reproduces the mask), and the shared
//! targeting fields.
use super::select::{choose_indices, MaskType};
use super::{FisherScores, SparseMaskLayer};
use crate::error::{Error, Result};
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::{param_dict_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

/// FishMask trains a sparse subset of every weight: here every linear but the head.
pub const DEFAULT_TARGETS: &[&str] = &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

#[derive(Debug, Clone)]
pub struct SparseMaskConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub density: f64,
    pub mask_type: MaskType,
    pub mask_seed: u64,
    /// Fisher scores by module path (`estimate_fisher`), needed to build a "fisher" mask;
    /// never written to the file (the chosen indices are).
    pub fisher: Option<Arc<FisherScores>>,
}

impl SparseMaskConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = json!({"target_modules": null, "exclude_modules": null, "layers_to_transform": null, "layers_pattern": null,
                              "density": null, "mask_type": "magnitude", "mask_seed": 0, "modules_to_save": null});
        let (fields, warnings) = Fields::parse(value, "SPARSE_MASK", "SparseMaskConfig", defaults, source)?;
        fields.no_modules_to_save()?;
        let targets = fields.target_spec()?;
        // NaN and ±inf cannot be written in JSON: they arrive as null (or not at all) and fail here too.
        let density =
            fields.num_in("density", |d| d > 0.0 && d <= 1.0, "a number in (0, 1]: the fraction of each targeted weight to train")?;
        let mask_type = match fields.choice("mask_type", &["magnitude", "smallest_magnitude", "fisher", "random"])?.as_str() {
            "magnitude" => MaskType::Magnitude,
            "smallest_magnitude" => MaskType::SmallestMagnitude,
            "fisher" => MaskType::Fisher,
            _ => MaskType::Random,
        };
        let mask_seed = fields.get("mask_seed").as_u64().ok_or_else(|| fields.err("mask_seed", "a non-negative integer seed"))?;
        Ok((SparseMaskConfig { fields, targets, density, mask_type, mask_seed, fisher: None }, warnings))
    }

    /// The config with Fisher scores to choose "fisher" masks from.
    pub fn with_fisher(mut self, scores: Arc<FisherScores>) -> Self {
        self.fisher = Some(scores);
        self
    }

    /// Entries trained per weight of `numel` entries: round(density · numel), at least one.
    pub fn k_of(&self, numel: usize) -> usize {
        ((self.density * numel as f64).round() as usize).clamp(1, numel)
    }

    /// The scores the mask is chosen from (None: random), as f64 [numel].
    fn scores(&self, t: &LinearInfo, bc: &BuildCtx) -> Result<Option<Vec<f64>>> {
        let flat = |x: &Tensor| -> Result<Vec<f64>> { Ok(x.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?) };
        match self.mask_type {
            MaskType::Random => Ok(None),
            MaskType::Magnitude => Ok(Some(flat(&bc.store.get(t.weight).value().abs()?)?)),
            MaskType::SmallestMagnitude => Ok(Some(flat(&bc.store.get(t.weight).value().abs()?.neg()?)?)),
            MaskType::Fisher => {
                let fisher = self.fisher.as_ref().ok_or_else(|| {
                    self.fields
                        .err("mask_type", "\"magnitude\" or \"random\", or Fisher scores estimated first (estimateFisher) for \"fisher\"")
                })?;
                let s = fisher.get(&t.path).ok_or_else(|| {
                    self.fields.err("mask_type", &format!("Fisher scores for `{}` (estimate them with the same target modules)", t.path))
                })?;
                if s.dims() != [t.out_features, t.in_features] {
                    return Err(self.fields.err(
                        "mask_type",
                        &format!("Fisher scores for `{}` of shape [{}, {}], found {:?}", t.path, t.out_features, t.in_features, s.dims()),
                    ));
                }
                Ok(Some(flat(s)?))
            }
        }
    }
}

impl TunerConfig for SparseMaskConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "SPARSE_MASK"
    }

    fn default_targets(&self) -> &'static [&'static str] {
        DEFAULT_TARGETS
    }

    fn can_merge(&self) -> bool {
        true
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let numel = t.out_features * t.in_features;
        if numel > i64::MAX as usize {
            return Err(Error::Unsupported(format!("SPARSE_MASK: `{}` has too many entries to index", t.path)));
        }
        let k = self.k_of(numel);
        let dev = bc.store.get(t.weight).device();
        // Loading: the saved indices overwrite these, so none are chosen (a "fisher" mask
        // loads without scores).
        let idx: Vec<i64> = if bc.loading {
            (0..k as i64).collect()
        } else {
            let scores = self.scores(t, bc)?;
            // One generator per layer, so a layer's random mask does not depend on which others are targeted.
            let seed = || StdRng::seed_from_u64(self.mask_seed ^ fnv1a(&t.path));
            choose_indices(scores.as_deref(), numel, k, seed).into_iter().map(|i| i as i64).collect()
        };
        let indices = bc.store.add(param_dict_name(&t.path, "sparse_indices", bc.adapter), Tensor::from_vec(idx, k, &dev)?, false)?;
        let delta = bc.store.add(param_dict_name(&t.path, "sparse_delta", bc.adapter), Tensor::zeros(k, bc.dtype, &dev)?, false)?;
        Ok(Box::new(SparseMaskLayer {
            adapter: bc.adapter.to_string(),
            path: t.path.clone(),
            indices,
            delta,
            out_features: t.out_features,
            in_features: t.in_features,
        }))
    }
}

/// A stable hash of a module path (FNV-1a), unlike std's, fixed across Rust versions.
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}
