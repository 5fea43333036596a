//! Adapters built from other, already-trained adapters kept frozen inside them (AdapterFusion's
//! fused bottleneck adapters, MoLE's LoRA experts): the new adapter is injected from its config,
//! then its layers' buffers are filled from the sources' parameters at the same modules. The
//! sources stay attached (and may be deleted: the new adapter holds copies).
use super::{AdapterLayer, Tuners};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use candle_core::Tensor;

impl Tuners {
    /// Adds adapter `name` built from `config` (inactive, as any added adapter). At each of its
    /// modules, `fill` gets every source's layer there with its parameter values (in `params()`
    /// order), sources in order, and returns the values of the new layer's buffers, in order. Any error removes the new adapter again. Returns the injection's warnings.
    pub(crate) fn add_from_trained(
        &mut self,
        model: &mut CausalLm,
        sources: &[&str],
        name: &str,
        config: Box<dyn super::TunerConfig>,
        fill: impl Fn(&str, Vec<(&dyn AdapterLayer, Vec<Tensor>)>) -> Result<Vec<Tensor>>,
    ) -> Result<Vec<crate::Warning>> {
        for s in sources {
            self.adapter(s)?;
            if self.merged.values().any(|m| m.iter().any(|n| n == s)) {
                return Err(Error::Unsupported(format!("adapter `{s}` is merged into the base weights: unmerge it before composing it")));
            }
        }
        let report = self.inject(model, name, config, 0)?;
        let copy = |t: &Tuners| -> Result<()> {
            for path in &report.targeted {
                let mut values = Vec::with_capacity(sources.len());
                for s in sources {
                    let layer = t.layer(path, s).ok_or_else(|| {
                        Error::arg(
                            "adapters",
                            format!("adapters on the modules of `{name}` (`{path}` among them)"),
                            format!("adapter `{s}` with no layer at `{path}`"),
                        )
                    })?;
                    values.push((layer, layer.params().into_iter().map(|id| model.store.get(id).value().clone()).collect()));
                }
                let buffers = t.layer(path, name).map(|l| l.buffers()).unwrap_or_default();
                let new = fill(path, values)?;
                if new.len() != buffers.len() {
                    return Err(Error::Unsupported(format!(
                        "adapter `{name}` at `{path}`: {} tensors to fill, {} given",
                        buffers.len(),
                        new.len()
                    )));
                }
                for (id, v) in buffers.into_iter().zip(new) {
                    let p = model.store.get(id);
                    let want = p.value().dims().to_vec();
                    if v.dims() != want.as_slice() {
                        return Err(Error::arg("adapters", format!("{} of shape {want:?}", p.name), format!("shape {:?}", v.dims())));
                    }
                    p.set(&v.to_dtype(p.value().dtype())?)?;
                }
            }
            Ok(())
        };
        if let Err(e) = copy(self) {
            self.delete_adapter(model, name)?;
            return Err(e);
        }
        Ok(report.warnings)
    }
}
