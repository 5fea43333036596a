//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay, bias-corrected
//! moments, eps added after the bias-corrected square root), with f32 state.
use super::{flat, state_dtype, state_tensor, value_and_grad, write_back};
use crate::error::Result;
use crate::model::Parameter;
use candle_core::Tensor;

#[derive(Debug, Clone, Copy)]
pub struct AdamWHyper {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One step for `p`; `step` counts from 1. `m` and `v` are replaced by their new values.
pub fn adamw_step(p: &Parameter, m: &mut Tensor, v: &mut Tensor, step: u64, h: &AdamWHyper) -> Result<()> {
    if !p.device().is_cpu() {
        return adamw_step_on_device(p, m, v, step, h);
    }
    let (mut w, g) = value_and_grad(p)?;
    let mut mv = flat(m)?;
    let mut vv = flat(v)?;
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2_sqrt = (1.0 - h.beta2.powi(step as i32)).sqrt();
    let step_size = h.lr / bc1;
    let decay = 1.0 - h.lr * h.weight_decay;
    let (b1, b2, eps) = (h.beta1, h.beta2, h.eps);
    for i in 0..w.len() {
        let gi = g[i];
        mv[i] = b1 * mv[i] + (1.0 - b1) * gi;
        vv[i] = b2 * vv[i] + (1.0 - b2) * gi * gi;
        let denom = vv[i].sqrt() / bc2_sqrt + eps;
        w[i] = w[i] * decay - step_size * mv[i] / denom;
    }
    let dt = state_dtype(p);
    *m = state_tensor(mv, &p.value(), dt)?;
    *v = state_tensor(vv, &p.value(), dt)?;
    write_back(p, w)
}

/// The same update as tensor ops on the parameter's device (CUDA), so that a step needs no
/// host round trip; math and state in f32 (f64 for f64 parameters) instead of f64.
fn adamw_step_on_device(p: &Parameter, m: &mut Tensor, v: &mut Tensor, step: u64, h: &AdamWHyper) -> Result<()> {
    let grad = p
        .grad
        .as_ref()
        .ok_or_else(|| crate::error::Error::arg(&p.name, "a parameter with a gradient (call backward first)", "no gradient"))?;
    let dt = state_dtype(p);
    let g = grad.to_dtype(dt)?;
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2_sqrt = (1.0 - h.beta2.powi(step as i32)).sqrt();
    let step_size = h.lr / bc1;
    let decay = 1.0 - h.lr * h.weight_decay;
    let new_m = ((m.to_dtype(dt)? * h.beta1)? + (&g * (1.0 - h.beta1))?)?;
    let new_v = ((v.to_dtype(dt)? * h.beta2)? + (g.sqr()? * (1.0 - h.beta2))?)?;
    let denom = ((new_v.sqrt()? / bc2_sqrt)? + h.eps)?;
    let w = ((p.value().to_dtype(dt)? * decay)? - ((&new_m / &denom)? * step_size)?)?;
    *m = new_m;
    *v = new_v;
    p.set(&w)
}
