//! DoRA as a LoRA variant, after PEFT's `DoraLinearLayer` (`tuners/lora/dora.py`) and
//! `DoraLinearVariant` (`tuners/lora/variants.py`). The weight is split into a magnitude
//! vector m (one per output row) and a direction; the row norm ‖W + s·BA‖ is treated as a
//! constant (detached), as the DoRA paper (section 4.3) and PEFT do.
use crate::error::Result;
use crate::model::linear::linear;
use crate::model::ParamId;
use candle_core::{DType, Tensor};

#[derive(Debug)]
pub struct Dora {
    pub magnitude: ParamId,
    /// Row norms taken at merge time: unmerging must divide by the same factor
    /// (`module._cache_store(f"{adapter}-weight_norm")` in PEFT).
    merged_norm: Option<Tensor>,
}

impl Dora {
    pub fn new(magnitude: ParamId) -> Self {
        Dora { magnitude, merged_norm: None }
    }
}

/// ‖W + scaling · lora_weight‖ over each output row (`get_weight_norm`), detached.
pub fn weight_norm(w: &Tensor, lora_weight: &Tensor, scaling: f64) -> Result<Tensor> {
    let w = (w.detach() + (lora_weight.detach() * scaling)?)?;
    Ok(w.sqr()?.sum(1)?.sqrt()?.detach())
}

/// The magnitude's initial value (`DoraLinearLayer.update_layer`).
pub fn init_magnitude(w: &Tensor, a: &Tensor, b: &Tensor, scaling: f64, dtype: DType) -> Result<Tensor> {
    let lora_weight = b.to_dtype(DType::F64)?.matmul(&a.to_dtype(DType::F64)?)?;
    weight_norm(&w.to_dtype(DType::F64)?, &lora_weight, scaling)?.to_dtype(dtype).map_err(Into::into)
}

/// What a DoRA forward needs; tensors already in the adapter dtype.
pub struct DoraInputs<'a> {
    pub x: &'a Tensor,
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub magnitude: &'a Tensor,
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub scaling: f64,
    /// Dropout was applied to `x`: the base output must be recomputed from it.
    pub dropped: bool,
}

/// `DoraLinearVariant.forward` + `DoraLinearLayer.forward`: returns the new running result
/// `result + (m/‖W+sBA‖ − 1)·base + m/‖W+sBA‖ · s·(x AᵀBᵀ)`, where `base` is the running
/// result minus the base bias (PEFT passes the running result, so with several active
/// adapters it includes the earlier ones), or `x Wᵀ` of the dropped-out input.
pub fn forward(d: &DoraInputs, result: Tensor) -> Result<Tensor> {
    let lora_weight = d.b.detach().matmul(&d.a.detach())?;
    let norm = weight_norm(d.weight, &lora_weight, d.scaling)?;
    let scale = d.magnitude.broadcast_div(&norm)?; // [out], broadcast over the last axis
    let lora = (linear(&linear(d.x, d.a, None)?, d.b, None)? * d.scaling)?;
    let base = if d.dropped {
        linear(d.x, &d.weight.detach(), None)?
    } else {
        match d.bias {
            Some(bias) => result.broadcast_sub(bias)?,
            None => result.clone(),
        }
    };
    let dora = (base.broadcast_mul(&(&scale - 1.0)?)? + lora.broadcast_mul(&scale)?)?;
    Ok((result + dora)?)
}

impl Dora {
    /// `merge_unsafe`: W' = m/‖W + ΔW‖ · (W + ΔW), remembering the norm for `unmerge`.
    pub fn merge(&mut self, w: &Tensor, delta: &Tensor, magnitude: &Tensor) -> Result<Tensor> {
        let norm = weight_norm(w, delta, 1.0)?;
        let factor = magnitude.broadcast_div(&norm)?.unsqueeze(1)?;
        let merged = (w + delta)?.broadcast_mul(&factor)?;
        self.merged_norm = Some(norm);
        Ok(merged)
    }

    /// `unmerge`: W = W' / (m/‖W + ΔW‖) − ΔW with the norm cached at merge.
    pub fn unmerge(&mut self, w: &Tensor, delta: &Tensor, magnitude: &Tensor) -> Result<Tensor> {
        let norm = self.merged_norm.take().ok_or_else(|| crate::error::Error::Unsupported("DoRA unmerge without a prior merge".into()))?;
        let factor = magnitude.broadcast_div(&norm)?.unsqueeze(1)?;
        Ok((w.broadcast_div(&factor)? - delta)?)
    }
}
