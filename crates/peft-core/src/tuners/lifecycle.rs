//! The tuner base: named adapters on one model, after PEFT's `BaseTuner` and
//! `BaseTunerLayer` (`tuners/tuners_utils.py`): inject, active set, enable/disable,
//! merge/unmerge, delete, unload, merge-and-unload. Adapter parameters live in the
//! model's `ParamStore` under PEFT's names; base weights stay frozen.
use super::targeting::{self, Targets};
use super::{AdapterLayer, BuildCtx, HookSite, LinearInfo, TunerConfig};
use crate::error::{Error, Result};
use crate::model::{CausalLm, ParamId};
use crate::model::{Ctx, Linear};
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;

pub(super) struct Adapter {
    pub(super) name: String,
    pub(super) config: Box<dyn TunerConfig>,
    pub(super) modules: Vec<String>,
}

/// What an injection did: the modules it targeted and anything worth telling the user.
#[derive(Debug, Default)]
pub struct InjectReport {
    pub targeted: Vec<String>,
    pub warnings: Vec<crate::Warning>,
}

pub struct Tuners {
    pub(super) adapters: Vec<Adapter>,
    /// Layers by module path, in injection order.
    pub(super) layers: HashMap<String, Vec<Box<dyn AdapterLayer>>>,
    pub(super) active: Vec<String>,
    pub(super) enabled: bool,
    /// Adapters merged into each module's base weight, in merge order.
    pub(super) merged: HashMap<String, Vec<String>>,
    /// Biases that merging created on linears that had none (removed again by unmerging).
    pub(super) added_bias: HashMap<String, ParamId>,
}

impl Default for Tuners {
    fn default() -> Self {
        Self::new()
    }
}

impl Tuners {
    pub fn new() -> Self {
        Tuners {
            adapters: Vec::new(),
            layers: HashMap::new(),
            active: Vec::new(),
            enabled: true,
            merged: HashMap::new(),
            added_bias: HashMap::new(),
        }
    }

    /// Attaches adapter `name` built from `config` to the modules it targets. The first
    /// adapter becomes active; later ones are added inactive (and frozen), as PEFT's
    /// `add_adapter`. `seed` drives the random inits.
    pub fn inject(&mut self, model: &mut CausalLm, name: &str, config: Box<dyn TunerConfig>, seed: u64) -> Result<InjectReport> {
        self.inject_with(model, name, config, seed, false)
    }

    pub(crate) fn inject_with(
        &mut self,
        model: &mut CausalLm,
        name: &str,
        mut config: Box<dyn TunerConfig>,
        seed: u64,
        loading: bool,
    ) -> Result<InjectReport> {
        // A name becomes a folder under the save directory: an identifier, never a path.
        let identifier = name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-');
        if name.is_empty() || name.chars().count() > 128 || !identifier || name == super::routing::BASE_ROWS {
            return Err(Error::arg(
                "adapter name",
                "1 to 128 letters, digits, `_` or `-` (no dots, slashes or `__base__`)",
                format!("\"{name}\""),
            ));
        }
        if self.adapters.iter().any(|a| a.name == name) {
            return Err(Error::arg(
                "adapter name",
                format!("a name not in use (in use: {})", self.names().join(", ")),
                format!("\"{name}\""),
            ));
        }
        if self.is_merged() {
            return Err(Error::Unsupported(format!("cannot add adapter `{name}` while adapters are merged: unmerge first")));
        }
        let source = config.source().to_path_buf();
        super::bounds::check_sizes(&config.to_json(), &model.config, &source)?;
        if config.targets().target_modules.is_none() {
            if let Some(defaults) = super::defaults::default_targets(config.as_ref(), &model.config.arch.model_type)? {
                config.set_target_modules(Targets::List(defaults));
            }
        }
        if let Some(t) = targeting::resolve_targets(config.targets(), model) {
            config.set_target_modules(t);
        }
        let sites: Vec<HookSite> = match config.hook_sites(model)? {
            Some(sites) => sites,
            None => {
                let paths = targeting::select(config.targets(), model, &source)?;
                let by_path: HashMap<&str, &Linear> = model.linears().into_iter().map(|l| (l.path.as_str(), l)).collect();
                paths.iter().map(|p| LinearInfo::of(by_path[p.as_str()], &model.store).map(HookSite::Linear)).collect::<Result<Vec<_>>>()?
            }
        };
        let paths: Vec<String> = sites.iter().map(|s| s.path().to_string()).collect();
        let infos: Vec<LinearInfo> =
            sites.iter().filter_map(|s| if let HookSite::Linear(l) = s { Some(l.clone()) } else { None }).collect();
        let warnings = config.check_model(model, &infos)?;
        let dtype = match model.dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let mut built: Vec<(String, Box<dyn AdapterLayer>)> = Vec::new();
        for site in &sites {
            let mut bc = BuildCtx { store: &mut model.store, adapter: name, dtype, rng: &mut rng, loading };
            match config.create_hook(site, &mut bc) {
                Ok(layer) => built.push((site.path().to_string(), layer)),
                Err(e) => {
                    for (_, layer) in built.iter().rev() {
                        let _ = layer.restore_base(&model.store);
                        layer.params().into_iter().chain(layer.buffers()).for_each(|id| drop(model.store.remove(id)));
                    }
                    return Err(e);
                }
            }
        }
        for (path, layer) in built {
            self.layers.entry(path).or_default().push(layer);
        }
        self.adapters.push(Adapter { name: name.to_string(), config, modules: paths.clone() });
        if self.active.is_empty() && self.adapters.len() == 1 {
            self.active = vec![name.to_string()];
        }
        self.update_requires_grad(model);
        Ok(InjectReport { targeted: paths, warnings })
    }

    /// Runs every layer's `check_loaded` for adapter `name` after its tensors were loaded from `file`.
    pub fn check_loaded(&self, model: &CausalLm, name: &str, file: &std::path::Path) -> Result<()> {
        self.layers.values().flatten().filter(|l| l.adapter_name() == name).try_for_each(|l| l.check_loaded(&model.store, file))
    }

    pub fn names(&self) -> Vec<String> {
        self.adapters.iter().map(|a| a.name.clone()).collect()
    }

    pub fn config(&self, name: &str) -> Result<&dyn TunerConfig> {
        Ok(self.adapter(name)?.config.as_ref())
    }

    pub fn config_mut(&mut self, name: &str) -> Result<&mut Box<dyn TunerConfig>> {
        let i = self.index(name)?;
        Ok(&mut self.adapters[i].config)
    }

    /// Module paths the adapter is attached to.
    pub fn modules(&self, name: &str) -> Result<&[String]> {
        Ok(&self.adapter(name)?.modules)
    }

    pub fn active(&self) -> &[String] {
        &self.active
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn is_merged(&self) -> bool {
        self.merged.values().any(|v| !v.is_empty())
    }

    /// The parameters of adapter `name`, in module order.
    pub fn params(&self, name: &str) -> Result<Vec<ParamId>> {
        let a = self.adapter(name)?;
        Ok(a.modules.iter().flat_map(|p| self.layer(p, name)).flat_map(|l| l.params()).collect())
    }

    /// (file key, parameter) pairs of adapter `name`, as PEFT's `get_peft_model_state_dict` keys them.
    /// Saved buffers (`AdapterLayer::buffers`) follow the parameters, each once.
    pub fn checkpoint_keys(&self, model: &CausalLm, name: &str) -> Result<Vec<(String, ParamId)>> {
        let a = self.adapter(name)?;
        let layers: Vec<&dyn AdapterLayer> = a.modules.iter().flat_map(|p| self.layer(p, name)).collect();
        let ids = saved_ids(&layers, a.config.saves_buffers());
        Ok(ids.into_iter().map(|id| (a.config.checkpoint_key(&model.store.get(id).name, name), id)).collect())
    }

    /// (file key, tensor) pairs that saving adapter `name` writes: `checkpoint_keys` with
    /// their values as the config saves them (`TunerConfig::checkpoint_tensor`), except for
    /// layers that export something else (`AdapterLayer::export`), whose pairs follow.
    pub fn checkpoint_tensors(&self, model: &CausalLm, name: &str) -> Result<Vec<(String, Tensor)>> {
        let a = self.adapter(name)?;
        let (mut plain, mut exported) = (Vec::new(), Vec::new());
        for layer in a.modules.iter().flat_map(|p| self.layer(p, name)) {
            match layer.export(&model.store)? {
                Some(pairs) => exported.extend(pairs.into_iter().map(|(n, t)| (a.config.checkpoint_key(&n, name), t))),
                None => plain.push(layer),
            }
        }
        let values = saved_ids(&plain, a.config.saves_buffers()).into_iter().map(|id| {
            let p = model.store.get(id);
            (a.config.checkpoint_key(&p.name, name), p.value().clone())
        });
        values.chain(exported).map(|(k, t)| a.config.checkpoint_tensor(&k, &t).map(|t| (k, t))).collect()
    }

    /// PEFT's `named_parameters()` name of each model parameter in `names`. Adapter and
    /// prompt-encoder parameters are already named as PEFT names them; a base parameter gets
    /// `base_model.model.` before it, and `.base_layer` before its last part when an adapter
    /// wraps its module (PEFT's `BaseTunerLayer` keeps the original layer as `base_layer`).
    pub fn peft_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let wrapped: std::collections::HashSet<&str> = self.adapters.iter().flat_map(|a| a.modules.iter().map(String::as_str)).collect();
        let peft_name = |name: &str| {
            if name.starts_with("base_model.") || name.starts_with("prompt_encoder.") {
                return name.to_string();
            }
            match name.rsplit_once('.') {
                Some((module, leaf)) if wrapped.contains(module) => format!("base_model.model.{module}.base_layer.{leaf}"),
                _ => format!("base_model.model.{name}"),
            }
        };
        names.into_iter().map(peft_name).collect()
    }

    /// Activates `names` in this order (their outputs are added in it). Unmerges first, as
    /// PEFT does; the active adapters become trainable unless in inference mode.
    pub fn set_active(&mut self, model: &mut CausalLm, names: &[&str]) -> Result<()> {
        for n in names {
            self.adapter(n)?;
        }
        self.unmerge(model)?;
        self.active = names.iter().map(|s| s.to_string()).collect();
        self.update_requires_grad(model);
        Ok(())
    }

    /// Disabling runs the base model alone (merged weights are unmerged first) and freezes
    /// every adapter; enabling restores the active set.
    pub fn set_enabled(&mut self, model: &mut CausalLm, on: bool) -> Result<()> {
        if !on {
            self.unmerge(model)?;
        }
        self.enabled = on;
        self.update_requires_grad(model);
        Ok(())
    }

    /// Removes adapter `name` and its parameters; its changes to base weights are undone.
    /// If it was active, the remaining active ones stay, or else the first adapter by name
    /// becomes active (PEFT's rule). Returns warnings.
    pub fn delete_adapter(&mut self, model: &mut CausalLm, name: &str) -> Result<Vec<String>> {
        let i = self.index(name)?;
        if self.merged.values().any(|m| m.iter().any(|n| n == name)) {
            return Err(Error::Unsupported(format!("adapter `{name}` is merged: unmerge before deleting it")));
        }
        self.remove(model, i, true)?;
        let mut warnings = Vec::new();
        if self.active.iter().any(|a| a == name) {
            self.active.retain(|a| a != name);
            if self.active.is_empty() {
                let mut rest = self.names();
                rest.sort();
                if let Some(first) = rest.first() {
                    warnings.push(format!("adapter `{name}` was active and is now deleted; setting the active adapter to `{first}`"));
                    self.active = vec![first.clone()];
                }
            }
        }
        self.update_requires_grad(model);
        Ok(warnings)
    }

    /// Removes every adapter, leaving the base model as it was.
    pub fn unload(&mut self, model: &mut CausalLm) -> Result<()> {
        self.unmerge(model)?;
        while !self.adapters.is_empty() {
            self.remove(model, 0, true)?;
        }
        self.active.clear();
        Ok(())
    }

    pub(super) fn remove(&mut self, model: &mut CausalLm, index: usize, restore: bool) -> Result<()> {
        let a = self.adapters.remove(index);
        for path in &a.modules {
            let Some(layers) = self.layers.get_mut(path) else { continue };
            if let Some(pos) = layers.iter().position(|l| l.adapter_name() == a.name) {
                let layer = layers.remove(pos);
                if restore {
                    layer.restore_base(&model.store)?;
                }
                layer.params().into_iter().chain(layer.buffers()).for_each(|id| drop(model.store.remove(id)));
            }
            if layers.is_empty() {
                self.layers.remove(path);
            }
        }
        Ok(())
    }

    /// PEFT's `set_adapter`/`enable_adapters` rule: an adapter trains when the adapters
    /// are enabled, it is active, and its config is not in inference mode.
    fn update_requires_grad(&self, model: &mut CausalLm) {
        for a in &self.adapters {
            let on = self.enabled && self.active.contains(&a.name) && !a.config.inference_mode();
            for id in a.modules.iter().flat_map(|p| self.layer(p, &a.name)).flat_map(|l| l.params()) {
                // Adapter parameters are dense, so this cannot fail (only a quantized base weight refuses).
                let _ = model.store.get_mut(id).set_requires_grad(on);
            }
        }
    }

    fn index(&self, name: &str) -> Result<usize> {
        self.adapters.iter().position(|a| a.name == name).ok_or_else(|| {
            Error::arg("adapter name", format!("one of the attached adapters ({})", self.names().join(", ")), format!("\"{name}\""))
        })
    }

    pub(super) fn adapter(&self, name: &str) -> Result<&Adapter> {
        Ok(&self.adapters[self.index(name)?])
    }

    /// The layers of adapter `name`, with their module paths, in the order it targets them.
    pub fn layers_of(&self, name: &str) -> Result<Vec<(&str, &dyn AdapterLayer)>> {
        Ok(self.modules(name)?.iter().filter_map(|p| self.layer(p, name).map(|l| (p.as_str(), l))).collect())
    }

    pub(super) fn layer(&self, path: &str, name: &str) -> Option<&dyn AdapterLayer> {
        self.layers.get(path)?.iter().find(|l| l.adapter_name() == name).map(|l| l.as_ref())
    }

    pub(super) fn layer_mut(&mut self, path: &str, name: &str) -> Option<&mut Box<dyn AdapterLayer>> {
        self.layers.get_mut(path)?.iter_mut().find(|l| l.adapter_name() == name)
    }

    /// The input transforms of the running adapters at a linear, before the base matmul.
    pub(crate) fn linear_input(&self, linear: &Linear, x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        let mut out: Option<Tensor> = None;
        for layer in self.running(&linear.path) {
            if let Some(y) = layer.transform_input(out.as_ref().unwrap_or(x), ctx)? {
                out = Some(y);
            }
        }
        Ok(out)
    }

    /// The running adapters' outputs at a linear, from the base output.
    pub(crate) fn linear_output(&self, linear: &Linear, x: &Tensor, base: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut result = base;
        for layer in self.running(&linear.path) {
            result = layer.forward(linear, x, result, ctx)?;
        }
        Ok(result)
    }

    /// The layers that run at `path`: none when disabled or merged there, else the active ones in order.
    pub(super) fn running<'s>(&'s self, path: &str) -> Vec<&'s dyn AdapterLayer> {
        if !self.enabled || self.merged.get(path).is_some_and(|m| !m.is_empty()) {
            return Vec::new();
        }
        self.active.iter().filter_map(|n| self.layer(path, n)).collect()
    }
}

/// The parameters of `layers`, then (when `buffers`) their buffers, each once.
fn saved_ids(layers: &[&dyn AdapterLayer], buffers: bool) -> Vec<ParamId> {
    let mut ids: Vec<ParamId> = layers.iter().flat_map(|l| l.params()).collect();
    for id in layers.iter().flat_map(|l| l.buffers()).filter(|_| buffers) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}
