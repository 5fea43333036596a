//! `LoraConfig` as PEFT 0.21 reads and writes it (`tuners/lora/config.py`). Every PEFT
//! field is kept as read (or defaulted) and written back; the fields that drive numerics
//! are parsed and checked, with errors naming the key. Features this crate does not run
//! are refused when set, fields PEFT would ignore give warnings, unknown fields are kept
//! and reported as warnings (PEFT drops them with a warning). Read through `tuners::fields`,
//! the one PEFT config reader every method uses.
use super::super::fields::Fields;
use super::super::targeting::TargetSpec;
use super::super::PEFT_VERSION;
use crate::error::Result;
use serde_json::{json, Map, Value};
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub enum LoraInit {
    /// `true`: kaiming-uniform A, zero B.
    Default,
    /// `false`: nn.Linear's own init for both (kaiming-uniform A and B): not a no-op.
    Random,
    /// normal A with std 1/r, zero B.
    Gaussian,
    /// principal singular vectors of the base weight; the base keeps the residual.
    /// `pissa_niter_N`: a randomized SVD with N subspace iterations, as PEFT's.
    Pissa { niter: Option<u32> },
    /// Inits PEFT runs from data or other libraries: only loading trained weights works.
    Other(String),
}

#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub targets: TargetSpec,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub init: LoraInit,
    /// In the config's order: PEFT takes the first pattern that matches.
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
    pub bias: String,
    pub inference_mode: bool,
    pub task_type: Option<String>,
    /// Every field as it will be written (PEFT's full set, defaults filled in, unknown ones
    /// kept), and where the config came from, for errors.
    pub(crate) fields: Fields,
}

/// PEFT 0.21 `LoraConfig().to_dict()` (minus `runtime_config`, which PEFT never saves).
pub fn peft_defaults() -> Map<String, Value> {
    let v = json!({
        "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null, "auto_mapping": null,
        "base_model_name_or_path": null, "bias": "none", "corda_config": null, "ensure_weight_tying": false,
        "eva_config": null, "exclude_modules": null, "fan_in_fan_out": false, "inference_mode": false,
        "init_lora_weights": true, "kasa_config": null, "layer_replication": null, "layers_pattern": null,
        "layers_to_transform": null, "loftq_config": {}, "lora_alpha": 8, "lora_bias": false, "lora_dropout": 0.0,
        "lora_ga_config": null, "megatron_config": null, "megatron_core": "megatron.core", "modules_to_save": null,
        "monteclora_config": null, "peft_type": "LORA", "peft_version": PEFT_VERSION, "qalora_group_size": 16,
        "r": 8, "rank_pattern": {}, "revision": null, "target_modules": null, "target_parameters": null,
        "task_type": null, "trainable_token_indices": null, "use_bdlora": null, "use_dora": false,
        "use_qalora": false, "use_rslora": false, "velora_config": null
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// Fields whose features are not implemented: refused unless at their default (AdaLoRA's too).
pub(crate) const UNSUPPORTED: &[&str] = &[
    "alora_invocation_tokens",
    "arrow_config",
    "use_bdlora",
    "kasa_config",
    "velora_config",
    "monteclora_config",
    "layer_replication",
    "trainable_token_indices",
    "megatron_config",
    "use_qalora",
    "lora_bias",
    "modules_to_save",
];

impl LoraConfig {
    /// From an `adapter_config.json` value (or a config object from the caller). `raw`, the
    /// JSON text when there is one, gives `rank_pattern`/`alpha_pattern` their file order.
    pub fn from_value(value: &Value, raw: Option<&str>, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = peft_defaults();
        let (mut f, mut warnings) = Fields::parse(value, "LORA", "LoraConfig", Value::Object(defaults.clone()), source)?;
        let task_type = f.opt_str("task_type")?;
        let r = f.positive("r", "the LoRA rank")?;
        let lora_alpha = f.num("lora_alpha")?;
        let lora_dropout = f.prob("lora_dropout")?;
        f.refuse_unless_default(UNSUPPORTED, &defaults)?;
        if !f.get("target_parameters").is_null() && f.get("target_parameters") != &json!([]) {
            return Err(f.err("target_parameters", "null (targeting nn.Parameters is not supported)"));
        }
        let bias = f.opt_str("bias")?.unwrap_or_default();
        if !["none", "all", "lora_only"].contains(&bias.as_str()) {
            return Err(f.err("bias", "\"none\", \"all\" or \"lora_only\""));
        }
        let init = parse_init(&f)?;
        for (key, init_name) in [("eva_config", "eva"), ("corda_config", "corda"), ("lora_ga_config", "lora_ga")] {
            if !f.get(key).is_null() && !matches!(&init, LoraInit::Other(s) if s == init_name) {
                warnings.push(format!("`{key}` is ignored: init_lora_weights is not \"{init_name}\"").into());
            }
        }
        // PEFT rewrites these fields in __post_init__.
        if f.get("loftq_config") != &json!({}) && !matches!(&init, LoraInit::Other(s) if s == "loftq") {
            warnings.push("`loftq_config` is ignored: init_lora_weights is not \"loftq\"".into());
            f.set("loftq_config", json!({}));
        }
        let targets = f.target_spec()?;
        let rank_pattern =
            f.patterns("rank_pattern", raw, |v| v.as_u64().filter(|&r| r > 0).map(|r| r as usize), "positive integer ranks")?;
        let alpha_pattern = f.patterns("alpha_pattern", raw, Value::as_f64, "numbers")?;
        f.fix_fan_in_fan_out(&mut warnings)?;
        let (use_rslora, use_dora, inference_mode) = (f.bool("use_rslora")?, f.bool("use_dora")?, f.bool("inference_mode")?);
        f.bool("ensure_weight_tying")?;
        let config = LoraConfig {
            r,
            lora_alpha,
            lora_dropout,
            targets,
            use_rslora,
            use_dora,
            init,
            rank_pattern,
            alpha_pattern,
            bias,
            inference_mode,
            task_type,
            fields: f,
        };
        Ok((config, warnings))
    }

    /// Rank and alpha of the module at `path`, after `rank_pattern`/`alpha_pattern`.
    pub fn rank_alpha(&self, path: &str) -> Result<(usize, f64)> {
        use super::super::patterns::pattern_value;
        let r = pattern_value(&self.rank_pattern, path, "rank_pattern", &self.fields.source)?.copied().unwrap_or(self.r);
        let a = pattern_value(&self.alpha_pattern, path, "alpha_pattern", &self.fields.source)?.copied().unwrap_or(self.lora_alpha);
        Ok((r, a))
    }

    /// PEFT's `scaling`: alpha / r, or alpha / sqrt(r) with rsLoRA (`LoraLayer.update_layer`).
    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

fn parse_init(f: &Fields) -> Result<LoraInit> {
    const KNOWN: &str = "true, false, \"gaussian\", \"pissa\", \"pissa_niter_<n>\", \"eva\", \"olora\", \"corda\", \"loftq\", \"orthogonal\", \"lora_ga\" or \"mica\"";
    Ok(match &f.get("init_lora_weights") {
        Value::Bool(true) => LoraInit::Default,
        Value::Bool(false) => LoraInit::Random,
        Value::String(s) if s.to_lowercase() == "gaussian" => LoraInit::Gaussian,
        Value::String(s) if s == "pissa" => LoraInit::Pissa { niter: None },
        Value::String(s) if s.starts_with("pissa_niter_") => {
            let n = s["pissa_niter_".len()..]
                .parse::<u32>()
                .map_err(|_| f.err("init_lora_weights", "\"pissa_niter_<n>\" with n a non-negative integer"))?;
            LoraInit::Pissa { niter: Some(n) }
        }
        Value::String(s)
            if ["eva", "corda", "loftq", "orthogonal", "lora_ga", "mica"].contains(&s.as_str()) || s.to_lowercase() == "olora" =>
        {
            LoraInit::Other(s.to_lowercase())
        }
        _ => return Err(f.err("init_lora_weights", KNOWN)),
    })
}
