//! Merging adapters into the base weights and back (PEFT's `merge_adapter`,
//! `unmerge_adapter`, `merge_and_unload`). Each layer computes its merged weight; the
//! base keeps, per module, the adapters merged there so that unmerging undoes them in
//! reverse order and the forward pass skips them.
use super::Tuners;
use crate::error::{Error, Result};
use crate::model::{CausalLm, ParamId};
use candle_core::Tensor;
use std::collections::HashMap;

impl Tuners {
    /// Merges the given adapters (default: the active ones) into the base weights of
    /// their modules; the forward pass then runs the base layer alone there.
    pub fn merge(&mut self, model: &mut CausalLm, names: Option<&[&str]>) -> Result<()> {
        let names: Vec<String> = names.map_or_else(|| self.active.clone(), |n| n.iter().map(|s| s.to_string()).collect());
        for n in &names {
            let config = &self.adapter(n)?.config;
            if !config.can_merge() {
                let what = format!(
                    "adapter `{n}`: its method ({}) cannot be merged into the base weights; save the adapter instead",
                    config.peft_type()
                );
                return Err(Error::Unsupported(what));
            }
        }
        for n in &names {
            let modules = self.adapter(n)?.modules.clone();
            for path in modules {
                if self.merged.get(&path).is_some_and(|m| m.contains(n)) {
                    continue;
                }
                let weight = base_weight(model, &path)?;
                let layer = self.layer_mut(&path, n).ok_or_else(|| Error::arg("adapter", "an attached adapter", n))?;
                let w = model.store.get(weight).value().clone();
                model.store.get(weight).set(&layer.merge(&w, &model.store)?)?;
                let bias = model.linears().into_iter().find(|l| l.path == path).map(|l| (l.bias, w.dim(0)));
                if let Some((bias, out)) = bias {
                    let b = bias.map(|id| model.store.get(id).value().clone());
                    if let Some(nb) = layer.merge_bias(b.as_ref(), out?, &model.store)? {
                        set_bias(model, &mut self.added_bias, &path, &nb)?;
                    }
                }
                self.merged.entry(path).or_default().push(n.clone());
            }
        }
        Ok(())
    }

    /// Undoes every merge, last merged first.
    pub fn unmerge(&mut self, model: &mut CausalLm) -> Result<()> {
        let paths: Vec<String> = self.merged.keys().cloned().collect();
        for path in paths {
            let weight = base_weight(model, &path)?;
            while let Some(n) = self.merged.get_mut(&path).and_then(Vec::pop) {
                let layer = self.layer_mut(&path, &n).ok_or_else(|| Error::arg("adapter", "an attached adapter", &n))?;
                if let Some(id) = model.linears().into_iter().find(|l| l.path == path).and_then(|l| l.bias) {
                    let b = model.store.get(id).value().clone();
                    if let Some(nb) = layer.unmerge_bias(&b, &model.store)? {
                        model.store.get(id).set(&nb)?;
                    }
                }
                let w = model.store.get(weight).value().clone();
                model.store.get(weight).set(&layer.unmerge(&w, &model.store)?)?;
            }
            if let Some(id) = self.added_bias.remove(&path) {
                model.store.remove(id);
                if let Some(l) = model.linear_mut(&path) {
                    l.bias = None;
                }
            }
        }
        self.merged.clear();
        Ok(())
    }

    /// Merges the given adapters (default: the active ones) and removes every adapter: the
    /// base model then carries the merged weights.
    pub fn merge_and_unload(&mut self, model: &mut CausalLm, names: Option<&[&str]>) -> Result<()> {
        self.merge(model, names)?;
        let merged: Vec<String> = self.merged.values().flatten().cloned().collect();
        while let Some(a) = self.adapters.first() {
            let keep_base = merged.contains(&a.name);
            self.remove(model, 0, !keep_base)?;
        }
        self.merged.clear();
        self.added_bias.clear();
        self.active.clear();
        Ok(())
    }
}

fn base_weight(model: &CausalLm, path: &str) -> Result<ParamId> {
    model.module_weight(path).ok_or_else(|| Error::arg("module path", "a linear or norm module of the model", path))
}

/// Sets the bias of the linear at `path`, creating a frozen `<path>.bias` when it has none
/// (LLaMA's linears have no bias; SSF and bias tuning merge into one).
fn set_bias(model: &mut CausalLm, added: &mut HashMap<String, ParamId>, path: &str, value: &Tensor) -> Result<()> {
    let current = model.linears().into_iter().find(|l| l.path == path).and_then(|l| l.bias);
    match current {
        Some(id) => model.store.get(id).set(value),
        None => {
            let id = model.store.add(format!("{path}.bias"), value.to_dtype(model.dtype)?, false)?;
            if let Some(l) = model.linear_mut(path) {
                l.bias = Some(id);
            }
            added.insert(path.to_string(), id);
            Ok(())
        }
    }
}
