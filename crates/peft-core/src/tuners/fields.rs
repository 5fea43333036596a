//! A PEFT config as a JSON object of fields, read generically: PEFT's full field set with
//! its defaults, the given fields over them (unknown ones kept, written back and reported
//! as warnings, as PEFT drops them with one), typed readers whose errors name the key, and
//! the targeting fields every method shares. Used by the methods after LoRA (whose config
//! reader predates this helper); `Common` holds what each such config keeps for `TunerConfig`.
use super::patterns::{ordered_patterns, pattern_value};
use super::targeting::{OneOrMany, TargetSpec, Targets};
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

const TASK_TYPES: &[&str] = &["SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"];

/// A JSON object literal as a field map (for the `peft_defaults()` tables).
pub fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("defaults are JSON objects"),
    }
}

pub fn targets_json(t: &Targets) -> Value {
    match t {
        Targets::List(l) => Value::Array(l.iter().cloned().map(Value::String).collect()),
        Targets::Regex(s) => Value::String(s.clone()),
    }
}

#[derive(Debug, Clone)]
pub struct Fields {
    /// Every field as it will be written.
    pub map: Map<String, Value>,
    pub file: PathBuf,
}

impl Fields {
    /// `defaults` over which `value`'s fields are laid; `class` (e.g. `IA3Config`) names the
    /// config in warnings; `peft_type` must match. Checks `task_type`.
    pub fn parse(value: &Value, defaults: Map<String, Value>, class: &str, peft_type: &str, source: &Path) -> Result<(Self, Vec<String>)> {
        let obj = value.as_object().ok_or_else(|| Error::Json { path: source.into(), message: "the config is not a JSON object".into() })?;
        let mut warnings = Vec::new();
        let mut map = defaults;
        for (k, v) in obj {
            if k == "runtime_config" {
                warnings.push("`runtime_config` is ignored: runtime configurations are only valid at runtime".into());
                continue;
            }
            if !map.contains_key(k) {
                warnings.push(format!("unknown {class} field `{k}` (kept and written back, not used)"));
            }
            map.insert(k.clone(), v.clone());
        }
        let f = Fields { map, file: source.into() };
        if f.map["peft_type"] != peft_type {
            return Err(f.err("peft_type", &format!("\"{peft_type}\"")));
        }
        if let Some(t) = f.opt_str("task_type")? {
            if !TASK_TYPES.contains(&t.as_str()) {
                return Err(f.err("task_type", &format!("null or one of {}", TASK_TYPES.join(", "))));
            }
            if t != "CAUSAL_LM" {
                warnings.push(format!("task_type `{t}`: peft-node runs causal language models; the adapter is applied as for CAUSAL_LM"));
            }
        }
        f.opt_str("base_model_name_or_path")?;
        f.opt_str("revision")?;
        f.bool("inference_mode")?;
        Ok((f, warnings))
    }

    pub fn err(&self, key: &str, expected: &str) -> Error {
        let found = self.map.get(key).map_or_else(|| "nothing".into(), Value::to_string);
        Error::InvalidConfig { file: self.file.clone(), key: key.into(), expected: expected.into(), found }
    }

    pub fn bool(&self, key: &str) -> Result<bool> {
        self.map[key].as_bool().ok_or_else(|| self.err(key, "true or false"))
    }

    pub fn num(&self, key: &str) -> Result<f64> {
        self.map[key].as_f64().filter(|x| x.is_finite()).ok_or_else(|| self.err(key, "a number"))
    }

    /// A probability in [0, 1).
    pub fn prob(&self, key: &str) -> Result<f64> {
        self.num(key).ok().filter(|p| (0.0..1.0).contains(p)).ok_or_else(|| self.err(key, "a probability in [0, 1)"))
    }

    pub fn int(&self, key: &str, what: &str) -> Result<i64> {
        self.map[key].as_i64().ok_or_else(|| self.err(key, what))
    }

    /// An integer > 0; `what` says what it is, e.g. "a positive integer (the rank)".
    pub fn positive(&self, key: &str, what: &str) -> Result<usize> {
        self.map[key].as_u64().filter(|&r| r > 0).map(|r| r as usize).ok_or_else(|| self.err(key, what))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match &self.map[key] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(self.err(key, "a string or null")),
        }
    }

    fn strings(&self, key: &str, v: &Value) -> Result<Vec<String>> {
        let arr = v.as_array().ok_or_else(|| self.err(key, "a list of strings"))?;
        let mut out: Vec<String> = Vec::new();
        for x in arr {
            let s = x.as_str().ok_or_else(|| self.err(key, "a list of strings"))?;
            if !out.iter().any(|o| o == s) {
                out.push(s.to_string()); // PEFT turns the list into a set
            }
        }
        Ok(out)
    }

    /// `target_modules`-like: a list (exact name or suffix), a regex string, or null.
    pub fn targets(&self, key: &str) -> Result<Option<Targets>> {
        match self.map.get(key).unwrap_or(&Value::Null) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(Targets::Regex(s.clone()))),
            v @ Value::Array(_) => Ok(Some(Targets::List(self.strings(key, v)?))),
            _ => Err(self.err(key, "a list of module names, a regular expression string, or null")),
        }
    }

    /// The targeting fields this config has (`exclude_modules`, `layers_*` are optional per
    /// method), with PEFT's `__post_init__` checks.
    pub fn target_spec(&self) -> Result<TargetSpec> {
        let null = Value::Null;
        let layers_to_transform = match self.map.get("layers_to_transform").unwrap_or(&null) {
            Value::Null => None,
            Value::Number(n) => Some(OneOrMany::One(n.as_i64().ok_or_else(|| self.err("layers_to_transform", "an integer or a list of integers"))?)),
            Value::Array(a) => Some(OneOrMany::Many(
                a.iter().map(|x| x.as_i64().ok_or_else(|| self.err("layers_to_transform", "a list of integers"))).collect::<Result<_>>()?,
            )),
            _ => return Err(self.err("layers_to_transform", "an integer, a list of integers, or null")),
        };
        let layers_pattern = match self.map.get("layers_pattern").unwrap_or(&null) {
            Value::Null => None,
            Value::String(s) => Some(OneOrMany::One(s.clone())),
            v @ Value::Array(_) => Some(OneOrMany::Many(self.strings("layers_pattern", v)?)),
            _ => return Err(self.err("layers_pattern", "a string, a list of strings, or null")),
        };
        let spec = TargetSpec {
            target_modules: self.targets("target_modules")?,
            exclude_modules: self.targets("exclude_modules")?,
            layers_to_transform,
            layers_pattern,
            modules_to_save: None,
        };
        if matches!(spec.target_modules, Some(Targets::Regex(_))) && spec.layers_to_transform.is_some() {
            return Err(self.err("layers_to_transform", "null: it cannot be used when `target_modules` is a string (regular expression)"));
        }
        if spec.layers_pattern.as_ref().is_some_and(|p| !p.to_vec().is_empty()) && spec.layers_to_transform.is_none() {
            return Err(self.err("layers_to_transform", "a layer index or list (required when `layers_pattern` is given)"));
        }
        Ok(spec)
    }

    /// Fields whose features are not implemented: an error unless at their default.
    pub fn refuse_unless_default(&self, keys: &[&str], defaults: &Map<String, Value>) -> Result<()> {
        for key in keys {
            if self.map[*key] != defaults[*key] {
                return Err(self.err(key, &format!("{} (this feature is not supported)", defaults[*key])));
            }
        }
        Ok(())
    }

    /// `fan_in_fan_out` on `nn.Linear` targets: PEFT warns and sets it to false.
    pub fn fix_fan_in_fan_out(&mut self, warnings: &mut Vec<String>) -> Result<()> {
        if self.map.contains_key("fan_in_fan_out") && self.bool("fan_in_fan_out")? {
            warnings.push("fan_in_fan_out is set to True but the target modules are `torch.nn.Linear`; setting it to False (as PEFT does)".into());
            self.map.insert("fan_in_fan_out".into(), Value::Bool(false));
        }
        Ok(())
    }

    /// `rank_pattern`/`alpha_pattern`-like: module-path patterns to values, in the file's
    /// order when `raw` (the JSON text) is given. `conv` rejects bad values.
    pub fn patterns<V>(&self, key: &str, raw: Option<&str>, conv: impl Fn(&Value) -> Option<V>, what: &str) -> Result<Vec<(String, V)>> {
        let ordered = raw.map(ordered_patterns).and_then(|(r, a)| if key == "rank_pattern" { r } else { a });
        let entries: Vec<(String, Value)> = match (&self.map[key], ordered) {
            (Value::Null, _) => Vec::new(),
            (Value::Object(_), Some(o)) => o,
            (Value::Object(m), None) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => return Err(self.err(key, &format!("an object of module-path patterns to {what}"))),
        };
        entries.into_iter().map(|(k, v)| conv(&v).map(|x| (k, x)).ok_or_else(|| self.err(key, &format!("an object of module-path patterns to {what}")))).collect()
    }

    /// The first pattern of `patterns` matching `path` (PEFT's `get_pattern_key`), or `default`.
    pub fn pick<V: Clone>(&self, patterns: &[(String, V)], path: &str, key: &str, default: V) -> Result<V> {
        Ok(pattern_value(patterns, path, key, &self.file)?.cloned().unwrap_or(default))
    }
}

/// What every config built on `Fields` keeps for the `TunerConfig` plumbing.
#[derive(Debug, Clone)]
pub struct Common {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub inference_mode: bool,
}

impl Common {
    pub fn new(fields: Fields) -> Result<Self> {
        let targets = fields.target_spec()?;
        let inference_mode = fields.bool("inference_mode")?;
        Ok(Common { fields, targets, inference_mode })
    }

    pub fn set_target_modules(&mut self, targets: Targets) {
        self.fields.map.insert("target_modules".into(), targets_json(&targets));
        self.targets.target_modules = Some(targets);
    }

    pub fn set_inference_mode(&mut self, on: bool) {
        self.inference_mode = on;
        self.fields.map.insert("inference_mode".into(), Value::Bool(on));
    }

    pub fn set_base_model_name_or_path(&mut self, name: Option<String>) {
        self.fields.map.insert("base_model_name_or_path".into(), name.map_or(Value::Null, Value::String));
    }

    pub fn to_json(&self) -> Value {
        Value::Object(self.fields.map.clone())
    }
}

/// The `TunerConfig` methods every `Common`-based config delegates (`$c` names the field).
macro_rules! delegate_common {
    ($c:ident) => {
        fn targets(&self) -> &$crate::tuners::TargetSpec {
            &self.$c.targets
        }
        fn set_target_modules(&mut self, targets: $crate::tuners::Targets) {
            self.$c.set_target_modules(targets)
        }
        fn inference_mode(&self) -> bool {
            self.$c.inference_mode
        }
        fn set_inference_mode(&mut self, on: bool) {
            self.$c.set_inference_mode(on)
        }
        fn set_base_model_name_or_path(&mut self, name: Option<String>) {
            self.$c.set_base_model_name_or_path(name)
        }
        fn to_json(&self) -> serde_json::Value {
            self.$c.to_json()
        }
        fn source(&self) -> &std::path::Path {
            &self.$c.fields.file
        }
        fn clone_box(&self) -> Box<dyn $crate::tuners::TunerConfig> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}
pub(crate) use delegate_common;
