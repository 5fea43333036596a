//! LoRAHub's composition (Huang et al., "LoraHub: Efficient Cross-Task Generalization via
//! Dynamic LoRA Composition", COLM 2024, arXiv 2307.13269, §3 eq. 2): for LoRA modules
//! with one shape, m̂ = (Σ wᵢAᵢ)(Σ wᵢBᵢ), i.e. A and B are each combined element-wise, as
//! the official code's `get_final_weights` sums the state dicts. Unlike ΔW = Σ wᵢBᵢAᵢ this
//! has cross terms wᵢwⱼBᵢAⱼ; the search over w (gradient-free) runs in TypeScript, calling
//! this once per candidate, so it only overwrites the composed adapter's A and B.
use super::config::LoraInit;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::tuners::Tuners;
use candle_core::Tensor;

impl Tuners {
    /// Sets adapter `name` to A = Σ wᵢAᵢ, B = Σ wᵢBᵢ over `adapters` (all LoRA, same modules
    /// and shapes). The first call adds `name` with the first adapter's config (so its
    /// scaling); later calls overwrite it. Returns warnings.
    pub fn compose_lorahub(&mut self, model: &mut Llama, adapters: &[&str], weights: &[f64], name: &str) -> Result<Vec<String>> {
        let configs = self.check_sources(adapters, weights)?;
        let first = adapters[0];
        if let Some((i, c)) = configs.iter().enumerate().find(|(_, c)| c.use_dora) {
            return Err(Error::arg("adapters", "LoRA adapters without DoRA (LoRAHub composes A and B only)", format!("`{}` with use_dora {}", adapters[i], c.use_dora)));
        }
        let modules = self.modules(first)?.to_vec();
        for a in &adapters[1..] {
            if self.modules(a)? != modules.as_slice() {
                return Err(Error::arg("adapters", format!("LoRA modules on the same layers as `{first}` (LoRAHub composes them element-wise)"), format!("`{a}` on other modules")));
            }
        }
        let mut warnings = Vec::new();
        if self.names().iter().any(|n| n == name) {
            if adapters.contains(&name) || self.modules(name)? != modules.as_slice() {
                return Err(Error::arg("name", "a new name, or the name of an earlier composition of these adapters", format!("\"{name}\"")));
            }
        } else {
            let mut config = configs[0].clone();
            config.init = LoraInit::Default; // overwritten below; must not touch the base
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
                    let v = model.store.get(id).value();
                    let target_dims = model.store.get(target[k]).value().dims().to_vec();
                    if v.dims() != target_dims.as_slice() {
                        return Err(Error::arg("adapters", format!("LoRA factors of shape {target_dims:?} on `{path}`"), format!("`{a}` with {:?}", v.dims())));
                    }
                    let term = (v * w)?;
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
}
