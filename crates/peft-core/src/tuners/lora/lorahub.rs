//! LoRAHub's composition (Huang et al., "LoraHub: Efficient Cross-Task Generalization via
//! Dynamic LoRA Composition", COLM 2024, arXiv 2307.13269, §3 eq. 2): for LoRA modules
//! with one shape, m̂ = (Σ wᵢAᵢ)(Σ wᵢBᵢ), i.e. A and B are each combined element-wise, as
//! the official code's `get_final_weights` sums the state dicts. Unlike ΔW = Σ wᵢBᵢAᵢ this
//! has cross terms wᵢwⱼBᵢAⱼ; the search over w (gradient-free) runs in TypeScript, calling
//! this once per candidate, so it only overwrites the composed adapter's A and B.
use super::config::LoraInit;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::Tuners;
use candle_core::Tensor;

impl Tuners {
    /// Sets adapter `name` to A = Σ wᵢAᵢ, B = Σ wᵢBᵢ over `adapters` (all LoRA, same modules
    /// and shapes). The first call adds `name` with the first adapter's config (so its
    /// scaling); later calls overwrite it. Returns warnings.
    pub fn compose_lorahub(&mut self, model: &mut CausalLm, adapters: &[&str], weights: &[f64], name: &str) -> Result<Vec<crate::Warning>> {
        let configs = self.check_sources(adapters, weights)?;
        let first = adapters[0];
        if let Some((i, c)) = configs.iter().enumerate().find(|(_, c)| c.use_dora) {
            return Err(Error::arg(
                "adapters",
                "LoRA adapters without DoRA (LoRAHub composes A and B only)",
                format!("`{}` with use_dora {}", adapters[i], c.use_dora),
            ));
        }
        let modules = self.modules(first)?.to_vec();
        for a in &adapters[1..] {
            if self.modules(a)? != modules.as_slice() {
                return Err(Error::arg(
                    "adapters",
                    format!("LoRA modules on the same layers as `{first}` (LoRAHub composes them element-wise)"),
                    format!("`{a}` on other modules"),
                ));
            }
        }
        self.check_lorahub_shapes(model, adapters, &modules)?;
        let mut warnings = Vec::new();
        if self.names().iter().any(|n| n == name) {
            if adapters.contains(&name) || self.modules(name)? != modules.as_slice() {
                return Err(Error::arg(
                    "name",
                    "a new name, or the name of an earlier composition of these adapters",
                    format!("\"{name}\""),
                ));
            }
            if self.merged.values().any(|m| m.iter().any(|n| n == name)) {
                // Unmerging later would subtract the new factors, not the merged ones.
                return Err(Error::Unsupported(format!("adapter `{name}` is merged: unmerge it before composing it again")));
            }
        } else {
            let mut config = configs[0].clone();
            // Overwritten below; the init must not touch the base, now or when the saved
            // adapter is loaded again (a PiSSA source would subtract its principal part).
            config.init = LoraInit::Default;
            config.fields.set("init_lora_weights", serde_json::json!(true));
            warnings = self.inject(model, name, Box::new(config), 0)?.warnings;
        }
        for path in &modules {
            let missing = |who: &str| Error::Unsupported(format!("adapter `{who}`: no LoRA factors on `{path}`"));
            let target = self.params_at(path, name);
            if target.len() < 2 {
                return Err(missing(name));
            }
            for k in 0..2 {
                let mut sum: Option<Tensor> = None;
                for (a, &w) in adapters.iter().zip(weights) {
                    let id = *self.params_at(path, a).get(k).ok_or_else(|| missing(a))?;
                    let term = (model.store.get(id).value() * w)?;
                    sum = Some(match sum {
                        None => term,
                        Some(s) => (s + term)?,
                    });
                }
                if let Some(s) = sum {
                    model.store.get(target[k]).set(&s)?;
                }
            }
        }
        Ok(warnings)
    }

    /// Every source has A and B at each module, shaped as the first source's: checked before
    /// anything is injected, so a refused composition leaves no adapter behind.
    fn check_lorahub_shapes(&self, model: &CausalLm, adapters: &[&str], modules: &[String]) -> Result<()> {
        for path in modules {
            let dims = |a: &str| -> Result<Vec<Vec<usize>>> {
                let ids = self.params_at(path, a);
                if ids.len() < 2 {
                    return Err(Error::Unsupported(format!("adapter `{a}`: no LoRA factors on `{path}`")));
                }
                Ok(ids[..2].iter().map(|id| model.store.get(*id).dims().to_vec()).collect())
            };
            let first = dims(adapters[0])?;
            for a in &adapters[1..] {
                let d = dims(a)?;
                if d != first {
                    return Err(Error::arg(
                        "adapters",
                        format!("LoRA factors of shapes {first:?} on `{path}` (as `{}`)", adapters[0]),
                        format!("`{a}` with {d:?}"),
                    ));
                }
            }
        }
        Ok(())
    }
}
