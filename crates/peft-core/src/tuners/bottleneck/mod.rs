//! Bottleneck adapters, our own `peft_type`s (no PEFT implementation), files in PEFT's
//! layout (`base_model.model.<sublayer path>.adapter_down.weight`, ...):
//!
//! - `BOTTLENECK_ADAPTER`, serial (Houlsby et al. 2019, "Parameter-Efficient Transfer
//!   Learning for NLP", §2.1 and Fig. 2): after the attention block and after the FFN,
//!   before the residual add, `h ← h + f(h W_down + b_down) W_up + b_up`; W_up and b_up
//!   start at zero so that the adapter starts as the identity.
//! - `PARALLEL_ADAPTER` (He et al. 2022, "Towards a Unified View of Parameter-Efficient
//!   Transfer Learning", §3 and eq. 9 (scaled parallel adapter)): beside the FFN,
//!   `h ← h + s · f(x W_down + b_down) W_up + b_up` with x the FFN's input, s = 4 by default.
pub mod config;

pub use config::{BottleneckConfig, Placement};

use crate::error::Result;
use crate::model::linear::linear;
use crate::model::Ctx;
use crate::model::ParamId;
use crate::tuners::AdapterLayer;
use candle_core::Tensor;

/// The nonlinearity f.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// torch's default (exact, erf) GELU.
    Gelu,
    Silu,
    Tanh,
}

impl Activation {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            _ => return None,
        })
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => x.relu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::Silu => x.silu()?,
            Activation::Tanh => x.tanh()?,
        })
    }
}

/// One bottleneck at one sublayer: down [r, h] (+ bias), up [h, r] (+ bias).
#[derive(Debug)]
pub struct BottleneckLayer {
    pub adapter: String,
    pub down: (ParamId, ParamId),
    pub up: (ParamId, ParamId),
    pub activation: Activation,
    pub scaling: f64,
    /// Parallel: fed the sublayer's input; serial: its output.
    pub parallel: bool,
}

impl BottleneckLayer {
    /// `s · (f(x W_downᵀ + b_down) W_upᵀ + b_up)` in the adapter dtype.
    pub fn delta(&self, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (dw, db, uw, ub) = (ctx.param(self.down.0), ctx.param(self.down.1), ctx.param(self.up.0), ctx.param(self.up.1));
        let x = x.to_dtype(dw.dtype())?;
        let h = self.activation.apply(&linear(&x, &dw, Some(&db))?)?;
        Ok((linear(&h, &uw, Some(&ub))? * self.scaling)?)
    }
}

impl AdapterLayer for BottleneckLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.down.0, self.down.1, self.up.0, self.up.1]
    }

    fn sublayer(&self, input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let delta = self.delta(if self.parallel { input } else { &output }, ctx)?;
        Ok((output.to_dtype(delta.dtype())? + delta)?.to_dtype(output.dtype())?)
    }
}
