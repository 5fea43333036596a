//! DyLoRA (Valipour et al., EACL 2023, "DyLoRA: Parameter-Efficient Tuning of Pre-trained
//! Models using Dynamic Search-Free Low-Rank Adaptation"): LoRA trained at nested ranks,
//! one rank b ∈ {r_min, …, r} sampled per step, so that after training any rank in that
//! range can be used without retraining (`Tuners::set_dylora_rank`). peft_type `DYLORA`
//! (ours), files in PEFT's LoRA layout (`lora_A`/`lora_B` keys).
pub mod config;
pub mod layer;

pub use config::{dylora_defaults, DyLoraConfig, UpdateMode};
pub use layer::DyLoraLayer;

use crate::error::{Error, Result};
use crate::tuners::{TunerConfig, Tuners};
use serde_json::Value;

impl Tuners {
    /// Sets the rank adapter `name` runs at outside training (evaluation, generation,
    /// merging) and records it as the config's `eval_rank`, so a save keeps it.
    pub fn set_dylora_rank(&mut self, name: &str, rank: usize) -> Result<()> {
        if self.merged.values().any(|m| m.iter().any(|n| n == name)) {
            return Err(Error::Unsupported(format!("adapter `{name}` is merged at its current rank: unmerge before changing it")));
        }
        let a = self.adapter(name)?;
        let c =
            a.config.as_any().downcast_ref::<DyLoraConfig>().ok_or_else(|| {
                Error::arg("adapter name", "a DyLoRA adapter", format!("\"{name}\" (a {} adapter)", a.config.peft_type()))
            })?;
        if !(c.r_min..=c.r).contains(&rank) {
            return Err(Error::arg("rank", format!("an integer in [r_min, r] = [{}, {}] for adapter `{name}`", c.r_min, c.r), rank));
        }
        let mut value = c.to_json();
        value["eval_rank"] = Value::from(rank);
        let (config, _) = DyLoraConfig::from_value(&value, c.source())?;
        for path in a.modules.clone() {
            if let Some(layer) = self.layer_mut(&path, name) {
                let ids = layer.params();
                *layer = Box::new(DyLoraLayer::new(&config, name, ids[0], ids[1]));
            }
        }
        *self.config_mut(name)? = Box::new(config);
        Ok(())
    }
}
