//! Optimizer updates, one native call per parameter; the state tensors are handles the
//! TypeScript optimizer owns (and serialises in its state dict).
use crate::error::{to_js, Result};
use crate::job::{NumberJob, OptionalTensorJob, UnitJob};
use crate::model::{with_model, with_model_mut, NativeModel};
use crate::tensor::NativeTensor;
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use peft_core::optim::{self, AdamWHyper, SgdHyper};

#[napi(object)]
pub struct AdamWArgs {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u32,
}

#[napi(object)]
pub struct SgdArgs {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

#[napi]
impl NativeModel {
    /// Fresh optimizer state (zeros, f32) shaped like the named parameter.
    #[napi]
    pub fn zeros_state(&self, name: String) -> Result<NativeTensor> {
        with_model(&self.inner, |m| Ok(NativeTensor::new(optim::zeros_state(m.llama.store.by_name(&name)?)?, None)))
    }

    #[napi]
    pub fn adamw_step(
        &self,
        name: String,
        exp_avg: &NativeTensor,
        exp_avg_sq: &NativeTensor,
        args: AdamWArgs,
    ) -> Result<AsyncTask<UnitJob>> {
        let (m_handle, v_handle) = (exp_avg.share(), exp_avg_sq.share());
        let (mut m, mut v) = (exp_avg.get()?, exp_avg_sq.get()?);
        let shared = self.inner.clone();
        let h = AdamWHyper { lr: args.lr, beta1: args.beta1, beta2: args.beta2, eps: args.eps, weight_decay: args.weight_decay };
        Ok(UnitJob::spawn(move || {
            with_model(&shared, |s| optim::adamw_step(s.llama.store.by_name(&name)?, &mut m, &mut v, args.step as u64, &h))?;
            m_handle.replace(m)?;
            v_handle.replace(v)
        }))
    }

    /// `momentum_buffer` is replaced in place; pass the handle returned the first time.
    #[napi]
    pub fn sgd_step(&self, name: String, momentum_buffer: Option<&NativeTensor>, args: SgdArgs) -> Result<AsyncTask<OptionalTensorJob>> {
        let handle = momentum_buffer.map(NativeTensor::share);
        let mut buf = momentum_buffer.map(NativeTensor::get).transpose()?;
        let shared = self.inner.clone();
        let h = SgdHyper {
            lr: args.lr,
            momentum: args.momentum,
            dampening: args.dampening,
            weight_decay: args.weight_decay,
            nesterov: args.nesterov,
        };
        Ok(OptionalTensorJob::spawn(move || {
            with_model(&shared, |s| optim::sgd_step(s.llama.store.by_name(&name)?, &mut buf, &h))?;
            match (handle, buf) {
                (Some(handle), Some(b)) => {
                    handle.replace(b)?;
                    Ok(None)
                }
                (None, Some(b)) => Ok(Some(NativeTensor::new(b, None))),
                _ => Ok(None),
            }
        }))
    }

    /// Sum of squared gradients over the named parameters (NaN/Inf propagate).
    #[napi]
    pub fn grad_sq_sum(&self, names: Vec<String>) -> Result<AsyncTask<NumberJob>> {
        let shared = self.inner.clone();
        Ok(NumberJob::spawn(move || with_model(&shared, |s| names.iter().map(|n| optim::grad_sq_sum(s.llama.store.by_name(n)?)).sum())))
    }

    #[napi]
    pub fn scale_grads(&self, names: Vec<String>, factor: f64) -> Result<()> {
        with_model_mut(&self.inner, |s| {
            for n in &names {
                optim::scale_grad(s.llama.store.by_name_mut(n)?, factor)?;
            }
            Ok(())
        })
    }

    /// Overwrites a parameter's value (used to load optimizer and checkpoint state).
    #[napi]
    pub fn set_param_data(&self, name: String, values: napi::bindgen_prelude::Float64Array) -> Result<()> {
        with_model(&self.inner, |s| {
            let p = s.llama.store.by_name(&name)?;
            let t = candle_core::Tensor::from_slice(&values, p.dims(), &p.device()).map_err(peft_core::Error::from)?;
            p.set(&t)
        })
    }
}

#[napi]
pub fn tensor_from_f32(values: napi::bindgen_prelude::Float32Array, shape: Vec<u32>) -> Result<NativeTensor> {
    let dims: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
    let t = candle_core::Tensor::from_slice(&values, dims.as_slice(), &candle_core::Device::Cpu).map_err(|e| to_js(e.into()))?;
    Ok(NativeTensor::new(t, None))
}
