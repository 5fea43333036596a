//! `DyLoraConfig` as it sits in `adapter_config.json` (peft_type `DYLORA`, ours: PEFT has no
//! DyLoRA). LoRA's field names where LoRA has the field (`r`, `lora_alpha`, `lora_dropout`,
//! `init_lora_weights`, the targeting fields), plus DyLoRA's own: `r_min` (the smallest rank
//! trained), `eval_rank` (the rank used outside training, null: `r`) and `update_mode`.
use super::layer::DyLoraLayer;
use crate::error::Result;
use crate::tuners::fields::{config_plumbing, object, Fields};
use crate::tuners::init::kaiming_uniform;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Map, Value};
use std::path::Path;

/// Which factors a training step updates (the paper's §3 and Algorithm 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// The paper's "frozen" mode (Algorithm 1: "only update the unique parameters of the
    /// selected rank"): row b of A and column b of B; rows and columns below b enter the
    /// forward detached. At b = r_min every rank ≤ r_min is updated (nothing smaller is
    /// trained apart from it; with the paper's r_min = 1 this is exactly row 1).
    Frozen,
    /// The non-frozen variant: every row and column ≤ b is updated.
    All,
}

/// Every field written, with its default.
pub fn dylora_defaults() -> Map<String, Value> {
    object(json!({
        "r": 8, "r_min": 1, "eval_rank": null, "update_mode": "frozen", "lora_alpha": 8, "lora_dropout": 0.0,
        "init_lora_weights": true, "target_modules": null, "exclude_modules": null, "layers_to_transform": null,
        "layers_pattern": null, "bias": "none", "fan_in_fan_out": false, "modules_to_save": null
    }))
}

#[derive(Debug, Clone)]
pub struct DyLoraConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// The largest rank (r_max in the paper): the size of `lora_A` [r, in] and `lora_B` [out, r].
    pub r: usize,
    pub r_min: usize,
    /// The rank of evaluation, generation and merging.
    pub eval_rank: usize,
    pub update_mode: UpdateMode,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// `init_lora_weights` true: kaiming-uniform A, zero B (LoRA's); false: both kaiming-uniform.
    pub zero_init_b: bool,
}

impl DyLoraConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = dylora_defaults();
        let (mut f, mut warnings) = Fields::parse(value, "DYLORA", "DyLoraConfig", defaults, source)?;
        f.no_modules_to_save()?;
        f.fix_fan_in_fan_out(&mut warnings)?;
        let r = f.positive("r", "the largest DyLoRA rank")?;
        let r_min = f.positive("r_min", "the smallest DyLoRA rank")?;
        if r_min > r {
            return Err(f.err("r_min", &format!("a positive integer at most r = {r}")));
        }
        let eval_rank = match f.get("eval_rank") {
            Value::Null => r,
            v => v
                .as_u64()
                .map(|e| e as usize)
                .filter(|e| (r_min..=r).contains(e))
                .ok_or_else(|| f.err("eval_rank", &format!("null (r) or an integer in [r_min, r] = [{r_min}, {r}]")))?,
        };
        let update_mode = match f.choice("update_mode", &["frozen", "all"])?.as_str() {
            "frozen" => UpdateMode::Frozen,
            _ => UpdateMode::All,
        };
        let lora_alpha = f.num("lora_alpha")?;
        let lora_dropout = f.prob("lora_dropout")?;
        let zero_init_b = f.bool("init_lora_weights")?;
        if f.opt_str("bias")?.as_deref() != Some("none") {
            return Err(f.err("bias", "\"none\" (DyLoRA trains no biases)"));
        }
        let c =
            DyLoraConfig { targets: f.target_spec()?, fields: f, r, r_min, eval_rank, update_mode, lora_alpha, lora_dropout, zero_init_b };
        Ok((c, warnings))
    }
}

impl TunerConfig for DyLoraConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "DYLORA"
    }

    /// LoRA's table (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["llama"]`).
    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn can_merge(&self) -> bool {
        true
    }

    /// LoRA's parameters under LoRA's names (`lora_A` [r, in], `lora_B` [out, r]), so the
    /// file has PEFT's LoRA key layout; init as LoRA's `reset_lora_parameters`.
    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dev = bc.store.get(t.weight).device();
        let a = kaiming_uniform(self.r, t.in_features, bc.rng, bc.dtype, &dev)?;
        let b = if self.zero_init_b {
            Tensor::zeros((t.out_features, self.r), bc.dtype, &dev)?
        } else {
            kaiming_uniform(t.out_features, self.r, bc.rng, bc.dtype, &dev)?
        };
        let a = bc.store.add(param_name(&t.path, "lora_A", bc.adapter), a, false)?;
        let b = bc.store.add(param_name(&t.path, "lora_B", bc.adapter), b, false)?;
        Ok(Box::new(DyLoraLayer::new(self, bc.adapter, a, b)))
    }
}
