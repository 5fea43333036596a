//! MoSLoRA (Wu et al. 2024, "Mixture-of-Subspaces in Low-Rank Adaptation", eq. 4):
//! h = W₀x + s · B W A x, LoRA with a trainable r×r mixer W between the down- and
//! up-projections, which mixes every subspace of A with every one of B (plain LoRA is the
//! special case W = I). Scaling s = lora_alpha / r as LoRA's. The update is still a single
//! low-rank ΔW = s·B W A, so the adapter merges. Init after the paper's code (`lora_AB`, an
//! `nn.Linear(r, r)` with Kaiming-uniform init; A Kaiming-uniform, B zeros, so ΔW starts at 0).
//! Our own `peft_type` "MOSLORA"; tensors `<module>.lora_A|lora_AB|lora_B.weight`.
use crate::error::Result;
use crate::model::{Ctx, Linear};
use crate::model::{ParamId, ParamStore};
use crate::tuners::fields::{config_plumbing, object, Fields};
use crate::tuners::init::kaiming_uniform;
use crate::tuners::lora::layer::{delta_weight, low_rank_forward};
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{DType, Tensor};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The fields of a MoSLoRA config and their defaults (LoRA's, as PEFT's `LoraConfig`).
pub fn defaults() -> Map<String, Value> {
    object(json!({
        "r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": null, "exclude_modules": null,
        "layers_to_transform": null, "layers_pattern": null, "init_weights": true, "modules_to_save": null
    }))
}

#[derive(Debug, Clone)]
pub struct MosLoraConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// true: B = 0 (ΔW starts at zero); false: B Kaiming-uniform too (tests).
    pub init_weights: bool,
}

impl MosLoraConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<String>)> {
        let (f, warnings) = Fields::parse(value, "MOSLORA", "MoSLoraConfig", defaults(), source)?;
        f.no_modules_to_save()?;
        let c = MosLoraConfig {
            r: f.positive("r", "the rank")?,
            lora_alpha: f.num("lora_alpha")?,
            lora_dropout: f.prob("lora_dropout")?,
            init_weights: f.bool("init_weights")?,
            targets: f.target_spec()?,
            fields: f,
        };
        Ok((c, warnings))
    }
}

impl TunerConfig for MosLoraConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "MOSLORA"
    }

    /// LoRA's LLaMA default.
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
        let mixer = kaiming_uniform(r, r, bc.rng, dt, &dev)?;
        let b = if self.init_weights { Tensor::zeros((t.out_features, r), dt, &dev)? } else { kaiming_uniform(t.out_features, r, bc.rng, dt, &dev)? };
        let a = bc.store.add(param_name(&t.path, "lora_A", bc.adapter), a, false)?;
        let mixer = bc.store.add(param_name(&t.path, "lora_AB", bc.adapter), mixer, false)?;
        let b = bc.store.add(param_name(&t.path, "lora_B", bc.adapter), b, false)?;
        let scaling = self.lora_alpha / r as f64;
        Ok(Box::new(MosLoraLayer { adapter: bc.adapter.to_string(), a, mixer, b, scaling, dropout: self.lora_dropout }))
    }
}

#[derive(Debug)]
pub struct MosLoraLayer {
    pub adapter: String,
    /// A [r, in], the mixer W [r, r], B [out, r].
    pub a: ParamId,
    pub mixer: ParamId,
    pub b: ParamId,
    pub scaling: f64,
    pub dropout: f64,
}

impl MosLoraLayer {
    fn delta(&self, store: &ParamStore) -> Result<Tensor> {
        let v = |id| store.get(id).value().clone();
        delta_weight(&v(self.mixer).matmul(&v(self.a))?, &v(self.b), self.scaling)
    }
}

impl AdapterLayer for MosLoraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.a, self.mixer, self.b]
    }

    /// `result + s · B(W(A(dropout(x))))`: W A is formed first ([r, in], cheap), then LoRA's
    /// own forward runs with it as the down-projection.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mixed_a = ctx.param(self.mixer).matmul(&ctx.param(self.a))?;
        low_rank_forward(x, result, &mixed_a, &ctx.param(self.b), self.scaling, self.dropout, ctx)
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let d = self.delta(store)?.to_dtype(DType::F64)?;
        Ok((weight.to_dtype(DType::F64)? + d)?.to_dtype(weight.dtype())?)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        let d = self.delta(store)?.to_dtype(DType::F64)?;
        Ok((weight.to_dtype(DType::F64)? - d)?.to_dtype(weight.dtype())?)
    }
}
