//! What the sparse methods whose mask changes during training share (FAR, LT-SFT, Fish-Dip):
//! each targeted weight trains as W + A + ΔW ⊙ M, with ΔW [out, in] the trained delta (init 0,
//! so the adapter starts as the base model), M [out, in] a 0/1 mask buffer that a training
//! procedure rewrites (all ones until it first does), and A an optional frozen buffer that
//! keeps what earlier masks learned (Fish-Dip). The value is masked, not only the gradient, so
//! the entries outside M neither train nor drift with an optimizer's momentum. Merges as
//! W + A + ΔW ⊙ M. The procedures read and rewrite the layers through `layers`.
use super::fields::{object, Fields};
use super::low_rank::add_delta;
use super::sparse_mask::select::choose_indices;
use super::{param_name, AdapterLayer, BuildCtx, LinearInfo, Tuners};
use crate::error::{Error, Result};
use crate::model::{Ctx, Linear, ParamId, ParamStore};
use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The shared targeting fields plus `extra`.
pub fn defaults(extra: Value) -> Map<String, Value> {
    let mut m = object(json!({
        "target_modules": null, "exclude_modules": null, "layers_to_transform": null, "layers_pattern": null, "modules_to_save": null
    }));
    m.extend(object(extra));
    m
}

/// `density` in (0, 1], read with an error naming the key.
pub fn density(f: &Fields) -> Result<f64> {
    f.num_in("density", |d| d > 0.0 && d <= 1.0, "a number in (0, 1]: the fraction of each targeted weight that trains")
}

/// Entries kept of `n`: round(share · n), at least one.
pub fn k_of(share: f64, n: usize) -> usize {
    ((share * n as f64).round() as usize).clamp(1, n.max(1))
}

/// Builds the layer of one targeted linear: ΔW = 0, M = 1, and A = 0 when `frozen_acc`.
pub fn create(t: &LinearInfo, bc: &mut BuildCtx, frozen_acc: bool) -> Result<Box<dyn AdapterLayer>> {
    let dev = bc.store.get(t.weight).value().device().clone();
    let shape = (t.out_features, t.in_features);
    let delta = bc.store.add(param_name(&t.path, "masked_delta", bc.adapter), Tensor::zeros(shape, bc.dtype, &dev)?, false)?;
    let mask = bc.store.add(param_name(&t.path, "delta_mask", bc.adapter), Tensor::ones(shape, bc.dtype, &dev)?, false)?;
    let acc = match frozen_acc {
        true => Some(bc.store.add(param_name(&t.path, "delta_frozen", bc.adapter), Tensor::zeros(shape, bc.dtype, &dev)?, false)?),
        false => None,
    };
    Ok(Box::new(MaskedDeltaLayer { adapter: bc.adapter.to_string(), path: t.path.clone(), delta, mask, acc }))
}

#[derive(Debug)]
pub struct MaskedDeltaLayer {
    pub adapter: String,
    pub path: String,
    /// ΔW [out, in], trained.
    pub delta: ParamId,
    /// M [out, in], 0/1, a buffer.
    pub mask: ParamId,
    /// A [out, in], a buffer: the frozen sum of earlier masks' updates.
    pub acc: Option<ParamId>,
}

impl MaskedDeltaLayer {
    /// A + ΔW ⊙ M from the store.
    pub fn value(&self, store: &ParamStore) -> Result<Tensor> {
        let masked = (store.get(self.delta).value() * store.get(self.mask).value())?;
        Ok(match self.acc {
            Some(a) => (masked + store.get(a).value())?,
            None => masked,
        })
    }

    /// Folds ΔW ⊙ M into A (the entries learned so far stay) and zeroes ΔW.
    pub fn fold(&self, store: &ParamStore) -> Result<()> {
        let acc = self.acc.ok_or_else(|| Error::Unsupported(format!("`{}`: this layer keeps no frozen updates", self.path)))?;
        store.get(acc).set(&self.value(store)?)?;
        zero(store, self.delta)
    }
}

pub fn zero(store: &ParamStore, id: ParamId) -> Result<()> {
    store.get(id).set(&store.get(id).value().zeros_like()?)
}

impl AdapterLayer for MaskedDeltaLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.delta]
    }

    fn buffers(&self) -> Vec<ParamId> {
        self.acc.into_iter().chain([self.mask]).collect()
    }

    /// `result + x (A + ΔW ⊙ M)ᵀ`: ∂L/∂ΔW = M ⊙ ∂L/∂W_eff, zero outside the mask.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mut w = (ctx.param(self.delta) * ctx.param(self.mask))?;
        if let Some(a) = self.acc {
            w = (w + ctx.param(a))?;
        }
        let (dt, out_dtype) = (w.dtype(), result.dtype());
        let y = crate::model::linear::linear(&x.to_dtype(dt)?, &w, None)?;
        Ok((result.to_dtype(dt)? + y)?.to_dtype(out_dtype)?)
    }

    /// A saved mask must be 0/1.
    fn check_loaded(&self, store: &ParamStore, file: &Path) -> Result<()> {
        let m = store.get(self.mask).value().to_dtype(DType::F64)?;
        let bad = m.ne(0.0)?.mul(&m.ne(1.0)?)?.to_dtype(DType::F64)?.sum_all()?.to_vec0::<f64>()?;
        if bad > 0.0 {
            return Err(Error::Adapter {
                file: file.into(),
                message: format!("`{}`: delta_mask must hold only 0 and 1; found {bad} other values", self.path),
            });
        }
        Ok(())
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        add_delta(weight, &self.value(store)?, 1.0)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        add_delta(weight, &self.value(store)?, -1.0)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// One active adapter of a masked-delta method: its name, config and layers by module path.
pub struct Adapter<'t, C> {
    pub name: &'t str,
    pub config: &'t C,
    pub layers: Vec<(&'t str, &'t MaskedDeltaLayer)>,
}

/// The masked-delta layers (module path, layer) of every active adapter whose config is a
/// `C`, with that config; refused while merged (the procedures rewrite ΔW and M).
pub fn layers<'t, C: 'static>(tuners: &'t Tuners, what: &str) -> Result<Vec<Adapter<'t, C>>> {
    if tuners.is_merged() {
        return Err(Error::Unsupported(format!("{what}: the adapters are merged; unmerge them before training")));
    }
    let mut out = Vec::new();
    for name in tuners.active() {
        let Some(c) = tuners.config(name)?.as_any().downcast_ref::<C>() else { continue };
        let ls =
            tuners.layers_of(name)?.into_iter().filter_map(|(p, l)| Some((p, l.as_any()?.downcast_ref::<MaskedDeltaLayer>()?))).collect();
        out.push(Adapter { name: name.as_str(), config: c, layers: ls });
    }
    Ok(out)
}

/// A 0/1 mask of `shape` (dtype `dt`) with ones at the k largest `scores` (ties to the lower index).
pub fn top_k_mask(scores: &Tensor, k: usize, like: &Tensor) -> Result<Tensor> {
    let s = scores.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    let mut m = vec![0f64; s.len()];
    for i in choose_indices(Some(&s), s.len(), k, || unreachable!("scores are given")) {
        m[i] = 1.0;
    }
    Ok(Tensor::from_vec(m, like.shape(), like.device())?.to_dtype(like.dtype())?)
}

/// Ones in the mask of `layer`, and its size.
pub fn count(store: &ParamStore, layer: &MaskedDeltaLayer) -> Result<(usize, usize)> {
    let m = store.get(layer.mask).value();
    Ok((m.to_dtype(DType::F64)?.sum_all()?.to_vec0::<f64>()? as usize, m.elem_count()))
}
