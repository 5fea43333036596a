//! AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient
//! Fine-Tuning"): ΔW = P Λ Q in SVD form (eq. 3; PEFT's `lora_B` = P, `lora_E` = diag Λ,
//! `lora_A` = Q), scaled by alpha / ranknum, an orthogonality regulariser on P and Q (eq. 4),
//! and a `RankAllocator` that prunes the singular values of low importance to a shrinking
//! budget (eqs. 5–12). After PEFT 0.21 `tuners/adalora` (`AdaLoraConfig`, `AdaLoraLayer`,
//! `SVDLinear`, `RankAllocator`, `AdaLoraModel`).
pub mod allocator;
pub mod layer;
pub mod training;

pub use allocator::{orth_regularization, RankAllocator};
pub use layer::AdaLoraLayer;
pub use training::regularized_loss;

use crate::error::Result;
use crate::tuners::fields::{object, Fields};
use crate::tuners::lora::config::peft_defaults as lora_defaults;
use crate::tuners::TargetSpec;
use serde_json::{json, Map, Value};
use std::path::Path;

/// PEFT 0.21 `AdaLoraConfig().to_dict()`: every `LoraConfig` field, then AdaLoRA's own
/// (its `rank_pattern` defaults to None, holding the allocation once made).
pub fn peft_defaults() -> Map<String, Value> {
    let mut m = lora_defaults();
    m.extend(object(json!({
        "peft_type": "ADALORA", "target_r": 8, "init_r": 12, "tinit": 0, "tfinal": 0, "deltaT": 1, "beta1": 0.85,
        "beta2": 0.85, "orth_reg_weight": 0.5, "total_step": null, "rank_pattern": null
    })));
    m
}

/// LoRA features AdaLoRA here does not run: LoRA's (`lora::config::UNSUPPORTED`) and
/// `target_parameters`, refused unless at their default.
fn unsupported() -> Vec<&'static str> {
    [crate::tuners::lora::config::UNSUPPORTED, &["target_parameters"]].concat()
}

/// Which ranks of a module the allocation kept: `<module path>.lora_E` → one flag per rank.
pub type RankPattern = Vec<(String, Vec<bool>)>;

#[derive(Debug, Clone)]
pub struct AdaLoraConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub init_r: usize,
    pub target_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub tinit: u64,
    pub tfinal: u64,
    pub delta_t: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg_weight: f64,
    pub total_step: u64,
    /// Random init (`init_lora_weights` false: `torch.randn` for A, E, B) instead of PEFT's
    /// default (E = 0, A and B normal with std 0.02).
    pub random_init: bool,
    pub rank_pattern: Option<RankPattern>,
    pub bias: String,
}

impl AdaLoraConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = peft_defaults();
        let (mut f, mut warnings) = Fields::parse(value, "ADALORA", "AdaLoraConfig", defaults.clone(), source)?;
        f.refuse_unless_default(&unsupported(), &defaults)?;
        if f.bool("use_dora")? {
            return Err(f.err("use_dora", "false (ADALORA does not support DoRA)"));
        }
        if f.map["loftq_config"] != json!({}) && !f.map["loftq_config"].is_null() {
            return Err(f.err("loftq_config", "{} (ADALORA does not support LOFTQ)"));
        }
        f.fix_fan_in_fan_out(&mut warnings)?;
        let init_r = f.positive("init_r", "the initial rank of every module")?;
        let target_r =
            f.map["target_r"].as_u64().ok_or_else(|| f.err("target_r", "a non-negative integer (the average rank to keep)"))? as usize;
        if f.map["r"] != json!(8) {
            warnings.push("`r` is not used by AdaLoRA and is ignored; the initial rank is `init_r`".into());
        }
        let count = |key: &str| f.map[key].as_u64().ok_or_else(|| f.err(key, "a non-negative integer (a number of steps)"));
        let (tinit, tfinal) = (count("tinit")?, count("tfinal")?);
        let delta_t = f.positive("deltaT", "steps between two allocations")? as u64;
        let total_step = f.positive("total_step", "AdaLoRA needs the total number of training steps")? as u64;
        if tinit + tfinal >= total_step {
            return Err(f.err(
                "tinit",
                &format!("tinit < total_step - tfinal ({total_step} - {tfinal}): the schedule must leave a budgeting phase"),
            ));
        }
        let beta = |key: &str| {
            f.num(key).ok().filter(|b| *b > 0.0 && *b < 1.0).ok_or_else(|| f.err(key, "a number in (0, 1) (an EMA coefficient)"))
        };
        let (beta1, beta2) = (beta("beta1")?, beta("beta2")?);
        let orth_reg_weight = f.num("orth_reg_weight")?;
        if orth_reg_weight < 0.0 {
            return Err(f.err("orth_reg_weight", "a number >= 0"));
        }
        let lora_alpha = f.num("lora_alpha")?;
        let lora_dropout = f.prob("lora_dropout")?;
        let random_init = match &f.map["init_lora_weights"] {
            Value::Bool(b) => !b,
            _ => return Err(f.err("init_lora_weights", "true or false (AdaLoRA has no other init)")),
        };
        if f.bool("use_rslora")? {
            warnings.push("`use_rslora` is ignored by AdaLoRA (its scaling is lora_alpha / ranknum)".into());
        }
        let bias = f.opt_str("bias")?.unwrap_or_default();
        if !["none", "all", "lora_only"].contains(&bias.as_str()) {
            return Err(f.err("bias", "\"none\", \"all\" or \"lora_only\""));
        }
        let rank_pattern = parse_rank_pattern(&f)?;
        let c = AdaLoraConfig {
            targets: f.target_spec()?,
            fields: f,
            init_r,
            target_r,
            lora_alpha,
            lora_dropout,
            tinit,
            tfinal,
            delta_t,
            beta1,
            beta2,
            orth_reg_weight,
            total_step,
            random_init,
            rank_pattern,
            bias,
        };
        Ok((c, warnings))
    }

    /// `scaling = lora_alpha if lora_alpha > 0 else r` (`AdaLoraLayer.update_layer`, r = init_r).
    pub fn scaling(&self) -> f64 {
        if self.lora_alpha > 0.0 {
            self.lora_alpha
        } else {
            self.init_r as f64
        }
    }

    /// The kept-rank flags of the module at `path`, if the allocation covered it. Keys may
    /// carry the adapter name (PEFT's in-memory form) or not (its saved form).
    pub fn module_pattern(&self, path: &str, adapter: &str) -> Option<&[bool]> {
        let (plain, named) = (format!("{path}.lora_E"), format!("{path}.lora_E.{adapter}"));
        let rp = self.rank_pattern.as_ref()?;
        rp.iter().find(|(k, _)| *k == plain || *k == named).map(|(_, v)| v.as_slice())
    }

    /// Records an allocation (PEFT's `lora_config.rank_pattern = rank_pattern`), in the
    /// saved form (no adapter name, as `_get_adapter_state_dict` rewrites it).
    pub fn set_rank_pattern(&mut self, pattern: RankPattern) {
        let obj: Map<String, Value> = pattern.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        self.fields.map.insert("rank_pattern".into(), Value::Object(obj));
        self.rank_pattern = Some(pattern);
    }
}

fn parse_rank_pattern(f: &Fields) -> Result<Option<RankPattern>> {
    const WHAT: &str = "null or an object of `<module>.lora_E` keys to lists of true/false (the ranks kept)";
    let m = match &f.map["rank_pattern"] {
        Value::Null => return Ok(None),
        Value::Object(m) => m,
        _ => return Err(f.err("rank_pattern", WHAT)),
    };
    let mut out = Vec::new();
    for (k, v) in m {
        let flags = v.as_array().and_then(|a| a.iter().map(Value::as_bool).collect::<Option<Vec<bool>>>());
        out.push((k.clone(), flags.ok_or_else(|| f.err("rank_pattern", WHAT))?));
    }
    Ok(Some(out))
}
