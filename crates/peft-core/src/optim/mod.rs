//! Fused optimizer updates, one call per parameter. The loops (groups, schedules,
//! clipping, state dicts) live in TypeScript; the per-element math lives here.
pub mod adamw;
pub mod sgd;

use crate::error::{Error, Result};
use crate::model::Parameter;
use candle_core::{DType, Tensor};

pub use adamw::{adamw_step, AdamWHyper};
pub use sgd::{sgd_step, SgdHyper};

/// A parameter's value and gradient as f32 host vectors, checked for a gradient.
pub(crate) fn value_and_grad(p: &Parameter) -> Result<(Vec<f64>, Vec<f64>)> {
    let grad = p.grad.as_ref().ok_or_else(|| Error::arg(&p.name, "a parameter with a gradient (call backward first)", "no gradient"))?;
    Ok((flat(&p.value())?, flat(grad)?))
}

/// Host copy in f64: the update math runs in f64 whatever the storage dtype.
pub(crate) fn flat(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

/// Optimizer state is f32, or f64 for f64 parameters (used by gradient checks).
pub fn state_dtype(p: &Parameter) -> DType {
    if p.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

pub(crate) fn state_tensor(values: Vec<f64>, like: &Tensor, dtype: DType) -> Result<Tensor> {
    Ok(Tensor::from_vec(values, like.dims(), like.device())?.to_dtype(dtype)?)
}

/// Optimizer state starts as zeros shaped like the parameter.
pub fn zeros_state(p: &Parameter) -> Result<Tensor> {
    Ok(Tensor::zeros(p.dims(), state_dtype(p), &p.device())?)
}

/// Sum of squares of the gradient (for global-norm clipping); NaN/Inf propagate.
pub fn grad_sq_sum(p: &Parameter) -> Result<f64> {
    match &p.grad {
        None => Ok(0.0),
        Some(g) => Ok(g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?),
    }
}

pub fn scale_grad(p: &mut Parameter, factor: f64) -> Result<()> {
    if let Some(g) = p.grad.take() {
        p.grad = Some((g * factor)?);
    }
    Ok(())
}

pub(crate) fn write_back(p: &Parameter, values: Vec<f64>) -> Result<()> {
    let t = Tensor::from_vec(values, p.dims(), &p.device())?;
    p.set(&t)
}
