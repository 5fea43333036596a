//! A tensor handle. A loss tensor remembers its model so `backward` can store gradients.
use crate::error::{closed, to_js, Result};
use crate::job::{Float32Job, UnitJob};
use crate::model::SharedModel;
use candle_core::{DType, Tensor};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use std::sync::{Arc, Mutex};

#[napi]
pub struct NativeTensor {
    inner: Arc<Mutex<Option<Tensor>>>,
    owner: Option<SharedModel>,
}

impl NativeTensor {
    pub fn new(t: Tensor, owner: Option<SharedModel>) -> Self {
        NativeTensor { inner: Arc::new(Mutex::new(Some(t))), owner }
    }

    pub fn get(&self) -> Result<Tensor> {
        self.inner.lock().unwrap().clone().ok_or_else(|| closed("Tensor"))
    }

    /// Another handle on the same tensor (for work that outlives this call).
    pub fn share(&self) -> NativeTensor {
        NativeTensor { inner: self.inner.clone(), owner: self.owner.clone() }
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

pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::F64 => "float64",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I64 => "int64",
        DType::U32 => "uint32",
        DType::U8 => "uint8",
        _ => "other",
    }
}

#[napi]
impl NativeTensor {
    #[napi(getter)]
    pub fn shape(&self) -> Result<Vec<u32>> {
        Ok(self.get()?.dims().iter().map(|d| *d as u32).collect())
    }

    #[napi(getter)]
    pub fn dtype(&self) -> Result<String> {
        Ok(dtype_name(self.get()?.dtype()).into())
    }

    #[napi]
    pub fn to_float32_array(&self) -> Result<AsyncTask<Float32Job>> {
        let t = self.get()?;
        Ok(Float32Job::spawn(move || {
            let flat = t.to_dtype(DType::F32).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f32>());
            flat.map_err(|e| to_js(e.into()))
        }))
    }

    /// Backpropagates from this scalar into the `.grad` of every trainable parameter
    /// of the model that produced it, adding to what is there.
    #[napi]
    pub fn backward(&self) -> Result<AsyncTask<UnitJob>> {
        let t = self.get()?;
        let owner = self.owner.clone().ok_or_else(|| {
            to_js(peft_core::Error::arg("tensor", "a loss produced by a model's forward", "a tensor with no model"))
        })?;
        Ok(UnitJob::spawn(move || {
            if t.elem_count() != 1 {
                return Err(to_js(peft_core::Error::arg("tensor", "a scalar (one element) to backpropagate from", format!("shape {:?}", t.dims()))));
            }
            if !t.track_op() {
                return Err(to_js(peft_core::Error::arg(
                    "tensor",
                    "a loss that depends on a parameter with requiresGrad = true",
                    "a tensor that depends on no trainable parameter (base weights start frozen: set requiresGrad or attach an adapter)",
                )));
            }
            let grads = t.backward().map_err(|e| to_js(e.into()))?;
            crate::model::with_model_mut(&owner, |m| m.store_mut().accumulate_grads(&grads))
        }))
    }

    /// `self * factor`, keeping the graph (e.g. to weight a micro-batch's loss).
    #[napi]
    pub fn mul_scalar(&self, factor: f64) -> Result<NativeTensor> {
        let t = (self.get()? * factor).map_err(|e| to_js(e.into()))?;
        Ok(NativeTensor::new(t, self.owner.clone()))
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
