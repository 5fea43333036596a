//! A method config as PEFT writes it: every field of the PEFT config class kept in file
//! form (`PeftConfig`'s base fields and the class's defaults filled in, unknown fields kept,
//! written back and reported as warnings, as PEFT drops them with one), typed reads whose
//! errors name the key, the targeting fields every method shares, and the `TunerConfig`
//! plumbing (`config_plumbing!`, for a struct with `fields: Fields` and `targets: TargetSpec`).
//! Every method's config, LoRA's included, is read through it: one set of checks and messages.
use super::patterns::{ordered_patterns, pattern_value};
use super::targeting::{OneOrMany, TargetSpec, Targets};
use super::PEFT_VERSION;
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

const TASK_TYPES: &[&str] = &["SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"];

#[derive(Debug, Clone)]
pub struct Fields {
    /// Every field as it will be written.
    pub map: Map<String, Value>,
    pub source: PathBuf,
}

/// `PeftConfig`'s own fields, shared by every method.
pub fn base_defaults(peft_type: &str) -> Map<String, Value> {
    let mut m = Map::new();
    for k in ["auto_mapping", "base_model_name_or_path", "revision", "task_type"] {
        m.insert(k.into(), Value::Null);
    }
    m.insert("inference_mode".into(), Value::Bool(false));
    m.insert("peft_type".into(), Value::String(peft_type.into()));
    m.insert("peft_version".into(), Value::String(PEFT_VERSION.into()));
    m
}

/// A JSON object literal as a field map (for the `peft_defaults()` tables).
pub fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("defaults are JSON objects"),
    }
}

/// JSON form of `Targets`.
pub fn targets_json(t: &Targets) -> Value {
    match t {
        Targets::List(l) => Value::Array(l.iter().cloned().map(Value::String).collect()),
        Targets::Regex(s) => Value::String(s.clone()),
    }
}

impl Fields {
    /// `defaults` (the class's fields; the base ones may be repeated) over the base fields,
    /// overlaid with `value`'s fields. `class` (e.g. `IA3Config`) names the config in
    /// warnings; `peft_type` must match. Returns the fields and warnings (unknown fields,
    /// non-causal task types, `runtime_config`).
    pub fn parse(
        value: &Value,
        peft_type: &str,
        class: &str,
        defaults: impl Into<Value>,
        source: &Path,
    ) -> Result<(Self, Vec<crate::Warning>)> {
        let obj =
            value.as_object().ok_or_else(|| Error::Json { path: source.into(), message: "the config is not a JSON object".into() })?;
        let mut map = base_defaults(peft_type);
        if let Value::Object(d) = defaults.into() {
            map.extend(d);
        }
        let mut warnings = Vec::new();
        for (k, v) in obj {
            if k == "runtime_config" {
                warnings.push(crate::Warning::runtime_config());
                continue;
            }
            if !map.contains_key(k) {
                warnings.push(crate::Warning::unknown_field(class, k));
            }
            map.insert(k.clone(), v.clone());
        }
        let f = Fields { map, source: source.into() };
        if f.map["peft_type"] != peft_type {
            return Err(f.err("peft_type", &format!("\"{peft_type}\"")));
        }
        if let Some(t) = f.opt_str("task_type")? {
            if !TASK_TYPES.contains(&t.as_str()) {
                return Err(f.err("task_type", &format!("null or one of {}", TASK_TYPES.join(", "))));
            }
            if t != "CAUSAL_LM" {
                warnings.push(
                    format!("task_type `{t}`: peft-node runs causal language models; the adapter is applied as for CAUSAL_LM").into(),
                );
            }
        }
        f.bool("inference_mode")?;
        f.opt_str("base_model_name_or_path")?;
        f.opt_str("revision")?;
        Ok((f, warnings))
    }

    /// The field, or null when absent.
    pub fn get(&self, key: &str) -> &Value {
        self.map.get(key).unwrap_or(&Value::Null)
    }

    pub fn set(&mut self, key: &str, v: impl Into<Value>) {
        self.map.insert(key.into(), v.into());
    }

    pub fn err(&self, key: &str, expected: &str) -> Error {
        let found = self.map.get(key).map_or_else(|| "nothing".into(), Value::to_string);
        Error::InvalidConfig { file: self.source.clone(), key: key.into(), expected: expected.into(), found }
    }

    pub fn bool(&self, key: &str) -> Result<bool> {
        self.get(key).as_bool().ok_or_else(|| self.err(key, "true or false"))
    }

    pub fn num(&self, key: &str) -> Result<f64> {
        self.get(key).as_f64().filter(|x| x.is_finite()).ok_or_else(|| self.err(key, "a number"))
    }

    /// A number in the range `ok` describes as `what`.
    pub fn num_in(&self, key: &str, ok: impl Fn(f64) -> bool, what: &str) -> Result<f64> {
        self.get(key).as_f64().filter(|x| ok(*x)).ok_or_else(|| self.err(key, what))
    }

    /// A probability in [0, 1).
    pub fn prob(&self, key: &str) -> Result<f64> {
        self.num_in(key, |p| (0.0..1.0).contains(&p), "a probability in [0, 1)")
    }

    /// Any integer; `what` is the whole expectation, e.g. "an integer seed".
    pub fn int(&self, key: &str, what: &str) -> Result<i64> {
        self.get(key).as_i64().ok_or_else(|| self.err(key, what))
    }

    /// A positive integer; `what` says what it is: "a positive integer ({what})".
    pub fn positive(&self, key: &str, what: &str) -> Result<usize> {
        self.get(key).as_u64().filter(|&n| n > 0).map(|n| n as usize).ok_or_else(|| self.err(key, &format!("a positive integer ({what})")))
    }

    /// A positive integer or null.
    pub fn opt_positive(&self, key: &str, what: &str) -> Result<Option<usize>> {
        match self.get(key) {
            Value::Null => Ok(None),
            _ => self.positive(key, what).map(Some),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(self.err(key, "a string or null")),
        }
    }

    /// One of `allowed` (exact spelling).
    pub fn choice(&self, key: &str, allowed: &[&str]) -> Result<String> {
        match self.get(key).as_str() {
            Some(s) if allowed.contains(&s) => Ok(s.to_string()),
            _ => Err(self.err(key, &format!("one of {}", allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")))),
        }
    }

    /// `modules_to_save` must stay null: training whole extra modules is not supported.
    pub fn no_modules_to_save(&self) -> Result<()> {
        match self.get("modules_to_save") {
            Value::Null => Ok(()),
            Value::Array(a) if a.is_empty() => Ok(()),
            _ => Err(self.err("modules_to_save", "null (training whole extra modules is not supported)")),
        }
    }

    /// Fields whose features are not implemented: an error unless at their default.
    pub fn refuse_unless_default(&self, keys: &[&str], defaults: &Map<String, Value>) -> Result<()> {
        for key in keys {
            if self.get(key) != &defaults[*key] {
                return Err(self.err(key, &format!("{} (this feature is not supported)", defaults[*key])));
            }
        }
        Ok(())
    }

    /// `fan_in_fan_out` on `nn.Linear` targets: PEFT warns and sets it to false.
    pub fn fix_fan_in_fan_out(&mut self, warnings: &mut Vec<crate::Warning>) -> Result<()> {
        if self.map.contains_key("fan_in_fan_out") && self.bool("fan_in_fan_out")? {
            warnings.push(
                "fan_in_fan_out is set to True but the target modules are `torch.nn.Linear`; setting it to False (as PEFT does)".into(),
            );
            self.set("fan_in_fan_out", false);
        }
        Ok(())
    }

    /// A list of strings, in order.
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        let arr = self.get(key).as_array().ok_or_else(|| self.err(key, "a list of strings"))?;
        arr.iter().map(|x| x.as_str().map(String::from).ok_or_else(|| self.err(key, "a list of strings"))).collect()
    }

    /// A list of strings without repeats (PEFT turns such lists into sets).
    fn string_set(&self, key: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for s in self.strings(key)? {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// `target_modules`-like: a list (exact name or suffix), a regex string, or null.
    pub fn targets(&self, key: &str) -> Result<Option<Targets>> {
        match self.get(key) {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(Targets::Regex(s.clone()))),
            Value::Array(_) => Ok(Some(Targets::List(self.string_set(key)?))),
            _ => Err(self.err(key, "a list of module names, a regular expression string, or null")),
        }
    }

    /// `target_modules`, `exclude_modules`, and the layer filters when the class has them,
    /// with PEFT's `__post_init__` checks.
    pub fn target_spec(&self) -> Result<TargetSpec> {
        let layers_to_transform = match self.get("layers_to_transform") {
            Value::Null => None,
            Value::Number(n) => {
                Some(OneOrMany::One(n.as_i64().ok_or_else(|| self.err("layers_to_transform", "an integer or a list of integers"))?))
            }
            Value::Array(a) => Some(OneOrMany::Many(
                a.iter().map(|x| x.as_i64().ok_or_else(|| self.err("layers_to_transform", "a list of integers"))).collect::<Result<_>>()?,
            )),
            _ => return Err(self.err("layers_to_transform", "an integer, a list of integers, or null")),
        };
        let layers_pattern = match self.get("layers_pattern") {
            Value::Null => None,
            Value::String(s) => Some(OneOrMany::One(s.clone())),
            Value::Array(_) => Some(OneOrMany::Many(self.string_set("layers_pattern")?)),
            _ => return Err(self.err("layers_pattern", "a string, a list of strings, or null")),
        };
        let spec = TargetSpec {
            target_modules: self.targets("target_modules")?,
            exclude_modules: self.targets("exclude_modules")?,
            layers_to_transform,
            layers_pattern,
            modules_to_save: None,
        };
        // PEFT's __post_init__ refuses both layer filters beside a regex `target_modules`.
        if matches!(spec.target_modules, Some(Targets::Regex(_))) {
            for key in ["layers_to_transform", "layers_pattern"] {
                if !self.get(key).is_null() {
                    return Err(self.err(key, "null: it cannot be used when `target_modules` is a string (regular expression)"));
                }
            }
        }
        if spec.layers_pattern.as_ref().is_some_and(|p| !p.to_vec().is_empty()) && spec.layers_to_transform.is_none() {
            return Err(self.err("layers_to_transform", "a layer index or list (required when `layers_pattern` is given)"));
        }
        Ok(spec)
    }

    /// Decoder layer indices from `layers_to_transform` (None: every layer), checked against the model.
    pub fn layer_indices(&self, num_layers: usize) -> Result<Option<Vec<usize>>> {
        let v: Vec<i64> = match self.get("layers_to_transform") {
            Value::Null => return Ok(None),
            Value::Number(n) => vec![n.as_i64().unwrap_or(-1)],
            Value::Array(a) => a.iter().map(|x| x.as_i64().unwrap_or(-1)).collect(),
            _ => vec![-1],
        };
        v.iter()
            .map(|&i| {
                if i >= 0 && (i as usize) < num_layers {
                    Ok(i as usize)
                } else {
                    Err(self.err("layers_to_transform", &format!("layer indices in 0..{num_layers}")))
                }
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// `rank_pattern`/`alpha_pattern`-like: module-path patterns to values, in the file's
    /// order when `raw` (the JSON text) is given. `conv` rejects bad values.
    pub fn patterns<V>(&self, key: &str, raw: Option<&str>, conv: impl Fn(&Value) -> Option<V>, what: &str) -> Result<Vec<(String, V)>> {
        let ordered = raw.map(ordered_patterns).and_then(|(r, a)| if key == "rank_pattern" { r } else { a });
        let entries: Vec<(String, Value)> = match (self.get(key), ordered) {
            (Value::Null, _) => Vec::new(),
            (Value::Object(_), Some(o)) => o,
            (Value::Object(m), None) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            _ => return Err(self.err(key, &format!("an object of module-path patterns to {what}"))),
        };
        entries
            .into_iter()
            .map(|(k, v)| conv(&v).map(|x| (k, x)).ok_or_else(|| self.err(key, &format!("an object of module-path patterns to {what}"))))
            .collect()
    }

    /// The first pattern of `patterns` matching `path` (PEFT's `get_pattern_key`), or `default`.
    pub fn pick<V: Clone>(&self, patterns: &[(String, V)], path: &str, key: &str, default: V) -> Result<V> {
        Ok(pattern_value(patterns, path, key, &self.source)?.cloned().unwrap_or(default))
    }
}

/// The `TunerConfig` methods every method implements alike, for a struct with
/// `fields: Fields` and `targets: TargetSpec`.
macro_rules! config_plumbing {
    () => {
        fn targets(&self) -> &$crate::tuners::TargetSpec {
            &self.targets
        }
        fn set_target_modules(&mut self, t: $crate::tuners::Targets) {
            self.fields.set("target_modules", $crate::tuners::fields::targets_json(&t));
            self.targets.target_modules = Some(t);
        }
        fn inference_mode(&self) -> bool {
            self.fields.get("inference_mode").as_bool().unwrap_or(false)
        }
        fn set_inference_mode(&mut self, on: bool) {
            self.fields.set("inference_mode", on);
        }
        fn set_base_model_name_or_path(&mut self, name: Option<String>) {
            self.fields.set("base_model_name_or_path", name.map_or(serde_json::Value::Null, serde_json::Value::String));
        }
        fn to_json(&self) -> serde_json::Value {
            serde_json::Value::Object(self.fields.map.clone())
        }
        fn source(&self) -> &std::path::Path {
            &self.fields.source
        }
        fn clone_box(&self) -> Box<dyn $crate::tuners::TunerConfig> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}
pub(crate) use config_plumbing;

/// `config_plumbing!` plus the `peft_type`, the default targets, and `can_merge` = true: the
/// `TunerConfig` methods of a mergeable method that builds only linear layers.
macro_rules! mergeable_plumbing {
    ($peft_type:literal, $targets:expr) => {
        $crate::tuners::fields::config_plumbing!();
        fn peft_type(&self) -> &'static str {
            $peft_type
        }
        fn default_targets(&self) -> &'static [&'static str] {
            $targets
        }
        fn can_merge(&self) -> bool {
            true
        }
    };
}
pub(crate) use mergeable_plumbing;
