//! A tensor handle. A loss tensor remembers its model so `backward` can store gradients, and
//! the graph of the forward that made it so `backward` can free that graph (graph.rs).
use crate::error::{closed, graph_freed, to_js, Result};
use crate::graph::{SharedGraph, Slot};
use crate::job::{Float32Job, Float64Job, UnitJob};
use crate::model::SharedModel;
use candle_core::{DType, Tensor};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use std::sync::{Arc, Mutex};

#[napi]
pub struct NativeTensor {
    inner: Slot,
    owner: Option<SharedModel>,
    graph: Option<SharedGraph>,
}

impl NativeTensor {
    pub fn new(t: Tensor, owner: Option<SharedModel>) -> Self {
        NativeTensor { inner: Arc::new(Mutex::new(Some(t))), owner, graph: None }
    }

    /// A handle on a tensor of `graph`, the forward that made it: backward frees it.
    pub fn in_graph(t: Tensor, owner: SharedModel, graph: &SharedGraph) -> Self {
        let h = NativeTensor::new(t, Some(owner));
        graph.join(&h.inner);
        NativeTensor { graph: Some(graph.clone()), ..h }
    }

    pub fn get(&self) -> Result<Tensor> {
        self.inner.lock().unwrap().clone().ok_or_else(|| closed("Tensor"))
    }

    /// Another handle on the same tensor (for work that outlives this call).
    pub fn share(&self) -> NativeTensor {
        NativeTensor { inner: self.inner.clone(), owner: self.owner.clone(), graph: self.graph.clone() }
    }

    pub fn replace(&self, t: Tensor) -> Result<()> {
        let mut g = self.inner.lock().unwrap();
        if g.is_none() {
            return Err(closed("Tensor"));
        }
        *g = Some(t);
        Ok(())
    }
}

/// One row of the core's dtype table (`peft_core::dtype`), for TS (`src/dtype.ts`).
#[napi(object)]
pub struct DTypeInfo {
    pub name: String,
    pub aliases: Vec<String>,
    /// safetensors' / ggml's type name: F32, F16, BF16, F64.
    pub storage: String,
    pub bytes: u32,
}

/// The floating-point dtypes, their aliases, storage names and byte sizes.
#[napi]
pub fn dtypes() -> Vec<DTypeInfo> {
    peft_core::dtype::DTYPES
        .iter()
        .map(|d| DTypeInfo {
            name: d.name.into(),
            aliases: d.aliases.iter().map(|a| a.to_string()).collect(),
            storage: d.storage.into(),
            bytes: d.bytes as u32,
        })
        .collect()
}

#[napi]
impl NativeTensor {
    #[napi(getter)]
    pub fn shape(&self) -> Result<Vec<u32>> {
        Ok(self.get()?.dims().iter().map(|d| *d as u32).collect())
    }

    #[napi(getter)]
    pub fn dtype(&self) -> Result<String> {
        Ok(peft_core::dtype::name(self.get()?.dtype()).into())
    }

    #[napi]
    pub fn to_float32_array(&self) -> Result<AsyncTask<Float32Job>> {
        let t = self.get()?;
        Ok(Float32Job::spawn(move || {
            let flat = t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>());
            flat.map_err(|e| to_js(e.into()))
        }))
    }

    /// Full precision (float64 models, finite-difference checks).
    #[napi]
    pub fn to_float64_array(&self) -> Result<AsyncTask<Float64Job>> {
        let t = self.get()?;
        Ok(Float64Job::spawn(move || {
            let flat = t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>());
            flat.map_err(|e| to_js(e.into()))
        }))
    }

    /// Backpropagates from this scalar into the `.grad` of every trainable parameter
    /// of the model that produced it, adding to what is there. Then frees the graph (every
    /// handle of that forward keeps only its data) unless `retain_graph`.
    #[napi]
    pub fn backward(&self, retain_graph: Option<bool>) -> Result<AsyncTask<UnitJob>> {
        let t = self.get()?;
        let owner = self
            .owner
            .clone()
            .ok_or_else(|| to_js(peft_core::Error::arg("tensor", "a loss produced by a model's forward", "a tensor with no model")))?;
        // Before the checks below: a freed loss is detached, and would read as "no trainable parameter".
        if self.graph.as_ref().is_some_and(|g| g.is_freed()) {
            return Err(graph_freed());
        }
        if t.elem_count() != 1 {
            return Err(to_js(peft_core::Error::arg(
                "tensor",
                "a scalar (one element) to backpropagate from",
                format!("shape {:?}", t.dims()),
            )));
        }
        if !t.track_op() {
            return Err(to_js(peft_core::Error::arg(
                "tensor",
                "a loss that depends on a parameter with requiresGrad = true",
                "a tensor that depends on no trainable parameter (base weights start frozen: set requiresGrad or attach an adapter)",
            )));
        }
        // Marked here, on the JS thread, so a second un-awaited backward is refused too.
        let to_free = self.graph.clone().filter(|_| !retain_graph.unwrap_or(false));
        if let Some(g) = &to_free {
            g.mark_freed();
        }
        let checkpoint = self.graph.as_ref().and_then(|g| g.checkpointing().cloned());
        Ok(UnitJob::spawn(move || {
            let result = peft_core::model::checkpoint::backward(&t, checkpoint.as_ref()).map_err(to_js);
            drop(t);
            let result = result.and_then(|grads| crate::model::with_model_mut(&owner, |m| m.store_mut().accumulate_grads(&grads)));
            if let Some(g) = to_free {
                match result {
                    Ok(()) => g.release(),
                    Err(_) => g.unmark_freed(),
                }
            }
            result
        }))
    }

    /// `self * factor`, keeping the graph (e.g. to weight a micro-batch's loss).
    #[napi]
    pub fn mul_scalar(&self, factor: f64) -> Result<NativeTensor> {
        let t = (self.get()? * factor).map_err(|e| to_js(e.into()))?;
        Ok(match (&self.owner, &self.graph) {
            (Some(owner), Some(graph)) => NativeTensor::in_graph(t, owner.clone(), graph),
            _ => NativeTensor::new(t, self.owner.clone()),
        })
    }

    /// Frees the native memory now (and the graph a loss keeps alive).
    #[napi]
    pub fn dispose(&self) {
        self.inner.lock().unwrap().take();
    }

    #[napi(getter)]
    pub fn disposed(&self) -> bool {
        self.inner.lock().unwrap().is_none()
    }
}
