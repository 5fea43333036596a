//! `LoraConfig` as PEFT 0.21 reads and writes it (`tuners/lora/config.py`). Every PEFT
//! field is kept as read (or defaulted) and written back; the fields that drive numerics
//! are parsed and checked, with errors naming the key. Features this crate does not run
//! are refused when set, fields PEFT would ignore give warnings, unknown fields are kept
//! and reported as warnings (PEFT drops them with a warning).
use super::super::patterns::{ordered_patterns, Ordered};
use super::super::targeting::{OneOrMany, TargetSpec, Targets};
use super::super::PEFT_VERSION;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

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
    /// Every field as it will be written (PEFT's full set, defaults filled in, unknown ones kept).
    pub(crate) fields: Map<String, Value>,
    /// Where the config came from, for errors.
    pub source: PathBuf,
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

/// Fields whose features are not implemented: refused unless at their default.
const UNSUPPORTED: &[&str] = &[
    "alora_invocation_tokens", "arrow_config", "use_bdlora", "kasa_config", "velora_config", "monteclora_config",
    "layer_replication", "trainable_token_indices", "megatron_config", "use_qalora", "lora_bias", "modules_to_save",
];
const TASK_TYPES: &[&str] = &["SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"];

struct Reader<'a> {
    f: &'a Map<String, Value>,
    file: &'a Path,
}

impl Reader<'_> {
    fn err(&self, key: &str, expected: &str) -> Error {
        Error::InvalidConfig { file: self.file.into(), key: key.into(), expected: expected.into(), found: self.f[key].to_string() }
    }
    fn bool(&self, key: &str) -> Result<bool> {
        self.f[key].as_bool().ok_or_else(|| self.err(key, "true or false"))
    }
    fn num(&self, key: &str) -> Result<f64> {
        self.f[key].as_f64().ok_or_else(|| self.err(key, "a number"))
    }
    fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match &self.f[key] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(self.err(key, "a string or null")),
        }
    }
    fn strings(&self, key: &str, v: &Value) -> Result<Vec<String>> {
        let arr = v.as_array().ok_or_else(|| self.err(key, "a list of strings"))?;
        arr.iter().map(|x| x.as_str().map(String::from).ok_or_else(|| self.err(key, "a list of strings"))).collect()
    }
    fn targets(&self, key: &str) -> Result<Option<Targets>> {
        match &self.f[key] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(Targets::Regex(s.clone()))),
            v @ Value::Array(_) => Ok(Some(Targets::List(dedup(self.strings(key, v)?)))),
            _ => Err(self.err(key, "a list of module names, a regular expression string, or null")),
        }
    }
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    v.into_iter().for_each(|s| if !out.contains(&s) { out.push(s) });
    out
}

impl LoraConfig {
    /// From an `adapter_config.json` value (or a config object from the caller). `raw`, the
    /// JSON text when there is one, gives `rank_pattern`/`alpha_pattern` their file order.
    pub fn from_value(value: &Value, raw: Option<&str>, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let obj = value.as_object().ok_or_else(|| Error::Json { path: source.into(), message: "the config is not a JSON object".into() })?;
        let mut warnings = Vec::new();
        let mut f = peft_defaults();
        for (k, v) in obj {
            if k == "runtime_config" {
                warnings.push(crate::Warning::runtime_config());
                continue;
            }
            if !f.contains_key(k) {
                warnings.push(crate::Warning::unknown_field("LoraConfig", k));
            }
            f.insert(k.clone(), v.clone());
        }
        let rd = Reader { f: &f, file: source };
        let mut fixes: Vec<(&str, Value)> = Vec::new(); // PEFT rewrites these fields in __post_init__
        if f["peft_type"] != "LORA" {
            return Err(rd.err("peft_type", "\"LORA\""));
        }
        let task_type = rd.opt_str("task_type")?;
        if let Some(t) = &task_type {
            if !TASK_TYPES.contains(&t.as_str()) {
                return Err(rd.err("task_type", &format!("null or one of {}", TASK_TYPES.join(", "))));
            }
            if t != "CAUSAL_LM" {
                warnings.push(format!("task_type `{t}`: peft-node runs causal language models; the adapter is applied as for CAUSAL_LM").into());
            }
        }
        let r = f["r"].as_u64().filter(|&r| r > 0).ok_or_else(|| rd.err("r", "a positive integer (the LoRA rank)"))? as usize;
        let lora_alpha = rd.num("lora_alpha")?;
        let lora_dropout = rd.num("lora_dropout")?;
        if !(0.0..1.0).contains(&lora_dropout) {
            return Err(rd.err("lora_dropout", "a probability in [0, 1)"));
        }
        for key in UNSUPPORTED {
            if f[*key] != peft_defaults()[*key] {
                return Err(Error::InvalidConfig {
                    file: source.into(), key: key.to_string(), expected: format!("{} (this feature is not supported)", peft_defaults()[*key]),
                    found: f[*key].to_string(),
                });
            }
        }
        if !matches!(&f["target_parameters"], Value::Null) && f["target_parameters"] != json!([]) {
            return Err(rd.err("target_parameters", "null (targeting nn.Parameters is not supported)"));
        }
        let bias = rd.opt_str("bias")?.unwrap_or_default();
        if !["none", "all", "lora_only"].contains(&bias.as_str()) {
            return Err(rd.err("bias", "\"none\", \"all\" or \"lora_only\""));
        }
        let init = parse_init(&rd)?;
        for (key, init_name) in [("eva_config", "eva"), ("corda_config", "corda"), ("lora_ga_config", "lora_ga")] {
            if !f[key].is_null() && !matches!(&init, LoraInit::Other(s) if s == init_name) {
                warnings.push(crate::Warning::new(crate::WarningCode::IgnoredField, key, format!("`{key}` is ignored: init_lora_weights is not \"{init_name}\"")));
            }
        }
        if f["loftq_config"] != json!({}) && !matches!(&init, LoraInit::Other(s) if s == "loftq") {
            warnings.push("`loftq_config` is ignored: init_lora_weights is not \"loftq\"".into());
            fixes.push(("loftq_config", json!({})));
        }
        let targets = TargetSpec {
            target_modules: rd.targets("target_modules")?,
            exclude_modules: rd.targets("exclude_modules")?,
            layers_to_transform: match &f["layers_to_transform"] {
                Value::Null => None,
                Value::Number(n) => Some(OneOrMany::One(n.as_i64().ok_or_else(|| rd.err("layers_to_transform", "an integer or a list of integers"))?)),
                Value::Array(a) => Some(OneOrMany::Many(
                    a.iter().map(|x| x.as_i64().ok_or_else(|| rd.err("layers_to_transform", "a list of integers"))).collect::<Result<_>>()?,
                )),
                _ => return Err(rd.err("layers_to_transform", "an integer, a list of integers, or null")),
            },
            layers_pattern: match &f["layers_pattern"] {
                Value::Null => None,
                Value::String(s) => Some(OneOrMany::One(s.clone())),
                v @ Value::Array(_) => Some(OneOrMany::Many(rd.strings("layers_pattern", v)?)),
                _ => return Err(rd.err("layers_pattern", "a string, a list of strings, or null")),
            },
            modules_to_save: None,
        };
        if matches!(targets.target_modules, Some(Targets::Regex(_))) {
            for key in ["layers_to_transform", "layers_pattern"] {
                if !f[key].is_null() {
                    return Err(rd.err(key, "null: it cannot be used when `target_modules` is a string (regular expression)"));
                }
            }
        }
        if targets.layers_pattern.as_ref().is_some_and(|p| !p.to_vec().is_empty()) && targets.layers_to_transform.is_none() {
            return Err(rd.err("layers_to_transform", "a layer index or list (required when `layers_pattern` is given)"));
        }
        let ordered = raw.map(ordered_patterns).unwrap_or_default();
        let rank_pattern = patterns(&rd, "rank_pattern", ordered.0, |v| v.as_u64().filter(|&r| r > 0).map(|r| r as usize), "positive integer ranks")?;
        let alpha_pattern = patterns(&rd, "alpha_pattern", ordered.1, Value::as_f64, "numbers")?;
        if rd.bool("fan_in_fan_out")? {
            warnings.push("fan_in_fan_out is set to True but the target modules are `torch.nn.Linear`; setting it to False (as PEFT does)".into());
            fixes.push(("fan_in_fan_out", Value::Bool(false)));
        }
        let (use_rslora, use_dora, inference_mode) = (rd.bool("use_rslora")?, rd.bool("use_dora")?, rd.bool("inference_mode")?);
        rd.bool("ensure_weight_tying")?;
        rd.opt_str("base_model_name_or_path")?;
        rd.opt_str("revision")?;
        for (k, v) in fixes {
            f.insert(k.into(), v);
        }
        let config = LoraConfig {
            r, lora_alpha, lora_dropout, targets, use_rslora, use_dora, init, rank_pattern, alpha_pattern, bias,
            inference_mode, task_type, fields: f, source: source.into(),
        };
        Ok((config, warnings))
    }

    /// Rank and alpha of the module at `path`, after `rank_pattern`/`alpha_pattern`.
    pub fn rank_alpha(&self, path: &str) -> Result<(usize, f64)> {
        use super::super::patterns::pattern_value;
        let r = pattern_value(&self.rank_pattern, path, "rank_pattern", &self.source)?.copied().unwrap_or(self.r);
        let a = pattern_value(&self.alpha_pattern, path, "alpha_pattern", &self.source)?.copied().unwrap_or(self.lora_alpha);
        Ok((r, a))
    }

    /// PEFT's `scaling`: alpha / r, or alpha / sqrt(r) with rsLoRA (`LoraLayer.update_layer`).
    pub fn scaling(&self, r: usize, alpha: f64) -> f64 {
        if self.use_rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 }
    }
}

fn parse_init(rd: &Reader) -> Result<LoraInit> {
    const KNOWN: &str = "true, false, \"gaussian\", \"pissa\", \"pissa_niter_<n>\", \"eva\", \"olora\", \"corda\", \"loftq\", \"orthogonal\", \"lora_ga\" or \"mica\"";
    Ok(match &rd.f["init_lora_weights"] {
        Value::Bool(true) => LoraInit::Default,
        Value::Bool(false) => LoraInit::Random,
        Value::String(s) if s.to_lowercase() == "gaussian" => LoraInit::Gaussian,
        Value::String(s) if s == "pissa" => LoraInit::Pissa { niter: None },
        Value::String(s) if s.starts_with("pissa_niter_") => {
            let n = s["pissa_niter_".len()..].parse::<u32>().map_err(|_| rd.err("init_lora_weights", "\"pissa_niter_<n>\" with n a non-negative integer"))?;
            LoraInit::Pissa { niter: Some(n) }
        }
        Value::String(s) if ["eva", "corda", "loftq", "orthogonal", "lora_ga", "mica"].contains(&s.as_str()) || s.to_lowercase() == "olora" => {
            LoraInit::Other(s.to_lowercase())
        }
        _ => return Err(rd.err("init_lora_weights", KNOWN)),
    })
}

fn patterns<V>(rd: &Reader, key: &str, ordered: Ordered, conv: impl Fn(&Value) -> Option<V>, what: &str) -> Result<Vec<(String, V)>> {
    let entries: Vec<(String, Value)> = match (&rd.f[key], ordered) {
        (Value::Null, _) => Vec::new(),
        (Value::Object(_), Some(o)) => o,
        (Value::Object(m), None) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        _ => return Err(rd.err(key, &format!("an object of module-path patterns to {what}"))),
    };
    entries.into_iter().map(|(k, v)| conv(&v).map(|x| (k, x)).ok_or_else(|| rd.err(key, &format!("an object of module-path patterns to {what}")))).collect()
}
