//! LoRA Dropout (Lin et al. 2024, "LoRA Dropout as a Sparsity Regularizer for Overfitting
//! Control", §3.1, eq. 5): in training, random masks drop whole input columns of A and output
//! rows of B, ΔW = s · (diag(m_B) B)(A diag(m_A)), m_A ∈ {0,1}ⁱⁿ, m_B ∈ {0,1}ᵒᵘᵗ ~ Bernoulli(1 − p),
//! a fresh draw each forward, so that each step tunes a sparse sub-update (the paper's sparsity
//! regulariser). We scale the kept entries by 1/(1 − p) each (inverted dropout), so that
//! E[ΔW_masked] = ΔW and evaluation runs the plain, unmasked LoRA; the paper's test-time
//! ensemble (averaging several masked forwards) is not implemented. Outside training it is
//! LoRA and merges as LoRA. Our own `peft_type` "LORA_DROPOUT"; tensors as LoRA's
//! (`<module>.lora_A.weight` [r, in], `lora_B.weight` [out, r]).
use crate::error::Result;
use crate::model::{Ctx, Linear, ParamId, ParamStore};
use crate::tuners::fields::{config_plumbing, object, Fields};
use crate::tuners::init::{dropout_mask, kaiming_uniform};
use crate::tuners::lora::layer::{delta_weight, low_rank_forward};
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};
use std::path::Path;

pub fn defaults() -> Map<String, Value> {
    object(json!({
        "r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "param_dropout": 0.1, "target_modules": null, "exclude_modules": null,
        "layers_to_transform": null, "layers_pattern": null, "init_weights": true, "modules_to_save": null
    }))
}

#[derive(Debug, Clone)]
pub struct LoraDropoutConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub r: usize,
    pub lora_alpha: f64,
    /// LoRA's own dropout on the layer input.
    pub lora_dropout: f64,
    /// p, the rate at which columns of A and rows of B are dropped in training.
    pub param_dropout: f64,
    pub init_weights: bool,
}

impl LoraDropoutConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<String>)> {
        let (f, warnings) = Fields::parse(value, "LORA_DROPOUT", "LoraDropoutConfig", defaults(), source)?;
        f.no_modules_to_save()?;
        let c = LoraDropoutConfig {
            r: f.positive("r", "the rank")?,
            lora_alpha: f.num("lora_alpha")?,
            lora_dropout: f.prob("lora_dropout")?,
            param_dropout: f.prob("param_dropout")?,
            init_weights: f.bool("init_weights")?,
            targets: f.target_spec()?,
            fields: f,
        };
        Ok((c, warnings))
    }
}

impl TunerConfig for LoraDropoutConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "LORA_DROPOUT"
    }

    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn can_merge(&self) -> bool {
        true
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dev = bc.store.get(t.weight).value().device().clone();
        let (dt, r) = (bc.dtype, self.r);
        let a = kaiming_uniform(r, t.in_features, bc.rng, dt, &dev)?;
        let b = if self.init_weights { Tensor::zeros((t.out_features, r), dt, &dev)? } else { kaiming_uniform(t.out_features, r, bc.rng, dt, &dev)? };
        let a = bc.store.add(param_name(&t.path, "lora_A", bc.adapter), a, false)?;
        let b = bc.store.add(param_name(&t.path, "lora_B", bc.adapter), b, false)?;
        let scaling = self.lora_alpha / r as f64;
        Ok(Box::new(LoraDropoutLayer { adapter: bc.adapter.to_string(), a, b, scaling, dropout: self.lora_dropout, param_dropout: self.param_dropout }))
    }
}

#[derive(Debug)]
pub struct LoraDropoutLayer {
    pub adapter: String,
    pub a: ParamId,
    pub b: ParamId,
    pub scaling: f64,
    pub dropout: f64,
    pub param_dropout: f64,
}

impl LoraDropoutLayer {
    fn merged(&self, weight: &Tensor, store: &ParamStore, sign: f64) -> Result<Tensor> {
        let d = delta_weight(store.get(self.a).value(), store.get(self.b).value(), self.scaling)?.to_dtype(DType::F64)?;
        Ok((weight.to_dtype(DType::F64)? + (d * sign)?)?.to_dtype(weight.dtype())?)
    }
}

impl AdapterLayer for LoraDropoutLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.a, self.b]
    }

    /// Training: A's columns and B's rows masked (inverted dropout), then LoRA's forward.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (mut a, mut b) = (ctx.param(self.a), ctx.param(self.b));
        if ctx.training && self.param_dropout > 0.0 {
            let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
            let (dt, dev) = (a.dtype(), a.device().clone());
            let m_a = dropout_mask(&[1, a.dim(1)?], self.param_dropout, &mut rng, dt, &dev)?;
            let m_b = dropout_mask(&[b.dim(0)?, 1], self.param_dropout, &mut rng, dt, &dev)?;
            a = a.broadcast_mul(&m_a)?;
            b = b.broadcast_mul(&m_b)?;
        }
        low_rank_forward(x, result, &a, &b, self.scaling, self.dropout, ctx)
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.merged(weight, store, 1.0)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.merged(weight, store, -1.0)
    }
}
