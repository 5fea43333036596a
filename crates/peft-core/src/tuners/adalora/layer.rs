//! One AdaLoRA layer (PEFT's `SVDLinear`) and AdaLoRA as a method of the tuner base
//! (`AdaLoraModel._create_and_replace`, `resize_modules_by_rank_pattern`,
//! `_get_adapter_state_dict` / `resize_state_dict_by_rank_pattern`).
use super::AdaLoraConfig;
use crate::error::Result;
use crate::model::linear::linear;
use crate::model::{CausalLm, ParamId, ParamStore};
use crate::model::{Ctx, Linear};
use crate::tuners::fields::config_plumbing;
use crate::tuners::init::{dropout_mask, normal};
use crate::tuners::lora::model::check_bias;
use crate::tuners::{param_dict_name, AdapterLayer, BuildCtx, LinearInfo, TunerConfig, PEFT_PREFIX};
use candle_core::{DType, Tensor};

#[derive(Debug)]
pub struct AdaLoraLayer {
    pub adapter: String,
    /// Module path of the base linear.
    pub path: String,
    /// `lora_A` = Q [r, in], `lora_E` = Λ [r, 1], `lora_B` = P [out, r].
    pub a: ParamId,
    pub e: ParamId,
    pub b: ParamId,
    pub r: usize,
    /// PEFT's `ranknum` (init_r; a frozen parameter it never saves).
    pub ranknum: f64,
    pub scaling: f64,
    pub dropout: f64,
}

impl AdaLoraLayer {
    /// `get_delta_weight`: B (A ⊙ E) · scaling / (ranknum + 1e-5).
    pub fn delta_weight(&self, store: &ParamStore) -> Result<Tensor> {
        let (a, e, b) = (store.get(self.a).value(), store.get(self.e).value(), store.get(self.b).value());
        Ok((b.matmul(&a.broadcast_mul(&e)?)? * (self.scaling / (self.ranknum + 1e-5)))?)
    }

    fn shifted(&self, weight: &Tensor, store: &ParamStore, sign: f64) -> Result<Tensor> {
        if self.r == 0 {
            return Ok(weight.clone());
        }
        let delta = self.delta_weight(store)?.to_dtype(DType::F64)?;
        Ok((weight.to_dtype(DType::F64)? + (delta * sign)?)?.to_dtype(weight.dtype())?)
    }
}

impl AdapterLayer for AdaLoraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.a, self.e, self.b]
    }

    /// `SVDLinear.forward`: result + (dropout(x) (A ⊙ E)ᵀ Bᵀ) · scaling / (ranknum + 1e-5).
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        if self.r == 0 {
            return Ok(result);
        }
        let (a, e, b) = (ctx.param(self.a), ctx.param(self.e), ctx.param(self.b));
        let dt = a.dtype();
        let mut x = x.to_dtype(dt)?;
        if ctx.training && self.dropout > 0.0 {
            let mut rng = ctx.rng.lock().unwrap_or_else(|err| err.into_inner());
            x = (x.clone() * dropout_mask(x.dims(), self.dropout, &mut rng, dt, x.device())?)?;
        }
        let h = linear(&linear(&x, &a.broadcast_mul(&e)?, None)?, &b, None)?;
        let out_dtype = result.dtype();
        Ok((result.to_dtype(dt)? + (h * (self.scaling / (self.ranknum + 1e-5)))?)?.to_dtype(out_dtype)?)
    }

    fn merge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.shifted(weight, store, 1.0)
    }

    fn unmerge(&mut self, weight: &Tensor, store: &ParamStore) -> Result<Tensor> {
        self.shifted(weight, store, -1.0)
    }
}

impl TunerConfig for AdaLoraConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "ADALORA"
    }

    /// `TRANSFORMERS_MODELS_TO_ADALORA_TARGET_MODULES_MAPPING["llama"]`.
    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn can_merge(&self) -> bool {
        true
    }

    fn check_model(&mut self, _model: &CausalLm, targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        check_bias("AdaLoraConfig", &self.bias, targets)
    }

    /// `update_layer` with r = init_r; when loading a file whose config holds a
    /// `rank_pattern`, the module is resized to the ranks kept (`resize_modules_by_rank_pattern`,
    /// which keeps `ranknum` at init_r).
    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let r = match self.module_pattern(&t.path, bc.adapter) {
            Some(flags) if bc.loading => {
                if flags.len() != self.init_r {
                    let msg = format!("{} flags for `{}` (one per initial rank, init_r = {})", flags.len(), t.path, self.init_r);
                    return Err(self.fields.err("rank_pattern", &msg));
                }
                flags.iter().filter(|&&k| k).count()
            }
            _ => self.init_r,
        };
        let dev = bc.store.get(t.weight).device();
        let (dt, std) = (bc.dtype, if self.random_init { 1.0 } else { 0.02 });
        let a = normal(r, t.in_features, std, bc.rng, dt, &dev)?;
        let b = normal(t.out_features, r, std, bc.rng, dt, &dev)?;
        let e = if self.random_init { normal(r, 1, 1.0, bc.rng, dt, &dev)? } else { Tensor::zeros((r, 1), dt, &dev)? };
        let mut ids = Vec::new();
        for (attr, v) in [("lora_A", a), ("lora_E", e), ("lora_B", b)] {
            ids.push(bc.store.add(param_dict_name(&t.path, attr, bc.adapter), v, false)?);
        }
        Ok(Box::new(AdaLoraLayer {
            adapter: bc.adapter.to_string(),
            path: t.path.clone(),
            a: ids[0],
            e: ids[1],
            b: ids[2],
            r,
            ranknum: self.init_r as f64,
            scaling: self.scaling(),
            dropout: self.lora_dropout,
        }))
    }

    /// `resize_state_dict_by_rank_pattern`: with an allocation made, only the kept ranks are
    /// saved (rows of A and E, columns of B), unless the tensor already has that many.
    fn checkpoint_tensor(&self, key: &str, value: &Tensor) -> Result<Tensor> {
        let Some((module, attr)) = key.strip_prefix(PEFT_PREFIX).and_then(|k| k.rsplit_once('.')) else {
            return Ok(value.clone());
        };
        let plain = format!("{module}.lora_E"); // or PEFT's in-memory `<plain>.<adapter>`
        let hit = |k: &String| *k == plain || k.strip_prefix(&plain).is_some_and(|rest| rest.starts_with('.') && !rest[1..].contains('.'));
        let Some(flags) = self.rank_pattern.as_ref().and_then(|rp| rp.iter().find(|(k, _)| hit(k))) else {
            return Ok(value.clone());
        };
        let kept: Vec<u32> = flags.1.iter().enumerate().filter(|(_, &k)| k).map(|(i, _)| i as u32).collect();
        let axis = match attr {
            "lora_A" | "lora_E" => 0,
            "lora_B" => 1,
            _ => return Ok(value.clone()),
        };
        if value.dim(axis)? == kept.len() {
            return Ok(value.clone());
        }
        let index = Tensor::new(kept.as_slice(), value.device())?;
        Ok(value.index_select(&index, axis)?.contiguous()?)
    }
}
