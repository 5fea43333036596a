//! `config.json` as Hugging Face writes it, in both spellings (transformers 4's
//! `rope_theta`/`rope_scaling`/`torch_dtype` and transformers 5's `rope_parameters`/`dtype`),
//! resolved once into a plain struct. Keys are read one by one so that an error names
//! the file and the key.
mod arch;
mod hf_json;

pub use arch::{Activation, ArchConfig, LayerType, SUPPORTED_MODEL_TYPES};

use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The most decoder layers a config may declare (Llama 3.1 405B has 126).
pub const MAX_LAYERS: usize = 1024;

/// RoPE frequency scaling (transformers' `ROPE_INIT_FUNCTIONS`), by `rope_type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// `_compute_llama3_parameters`.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: usize },
    /// `_compute_linear_scaling_rope_parameters`: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// `_compute_longrope_parameters` (Phi-3.5, Phi-4-mini): per-frequency factors, short ones up
    /// to `original_max_position_embeddings`, long ones past it; cos/sin scaled by `attention_factor`.
    Longrope { short_factor: Vec<f64>, long_factor: Vec<f64>, original_max_position_embeddings: usize, attention_factor: f64 },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The dtype the checkpoint declares (`torch_dtype` or `dtype`), if any.
    pub torch_dtype: Option<String>,
    /// What sets this architecture apart from LLaMA.
    pub arch: ArchConfig,
    /// The `config.json` it was read from (None for GGUF): merged checkpoints write it back.
    #[serde(skip)]
    pub source_json: Option<Value>,
}

impl ModelConfig {
    /// A LLaMA config with the given sizes (tests, GGUF metadata), the rest at transformers' defaults.
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
    ) -> Self {
        let head_dim = hidden_size / num_attention_heads.max(1);
        ModelConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            mlp_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
            torch_dtype: None,
            arch: ArchConfig::llama(head_dim, num_hidden_layers),
            source_json: None,
        }
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile { path: path.into(), what: "a Hugging Face config.json".into() });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: path.into(), message: e.to_string() })?;
        Self::from_json(&value, path)
    }

    pub fn from_json(value: &Value, file: &Path) -> Result<Self> {
        let obj = value.as_object().ok_or_else(|| Error::InvalidConfig {
            file: file.into(),
            key: "(root)".into(),
            expected: "a JSON object".into(),
            found: kind(value),
        })?;
        let r = Reader { obj, file: file.into() };
        let model_type = r.string("model_type")?;
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(Error::UnsupportedModelType { file: file.into(), found: model_type, supported: SUPPORTED_MODEL_TYPES.join(", ") });
        }
        let hidden_size = r.usize("hidden_size")?;
        let num_attention_heads = r.usize("num_attention_heads")?;
        let num_key_value_heads = r.opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(r.invalid(
                "num_key_value_heads",
                &format!("a divisor of num_attention_heads ({num_attention_heads})"),
                num_key_value_heads.to_string(),
            ));
        }
        let head_dim = match r.opt_usize("head_dim")? {
            Some(d) => d,
            None if num_attention_heads > 0 && hidden_size % num_attention_heads != 0 => {
                return Err(r.invalid(
                    "num_attention_heads",
                    &format!("a divisor of hidden_size ({hidden_size}), or an explicit head_dim"),
                    num_attention_heads.to_string(),
                ))
            }
            None => hidden_size / num_attention_heads.max(1),
        };
        // Per-layer tables (layer types, windows) are allocated from this count before any
        // weight is read: bound it first (found by tests/fuzz.rs: 2^32 layers aborted the
        // process). The deepest published models have ~130 layers.
        let num_hidden_layers = r.usize("num_hidden_layers")?;
        if num_hidden_layers > MAX_LAYERS {
            return Err(r.invalid("num_hidden_layers", &format!("at most {MAX_LAYERS}"), num_hidden_layers.to_string()));
        }
        let max_position_embeddings = r.opt_usize("max_position_embeddings")?.unwrap_or(4096);
        let (rope_theta, rope_scaling) = rope(&r)?;
        let eos_token_ids = match obj.get("eos_token_id") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|x| x as u32).ok_or_else(|| r.invalid("eos_token_id", "token ids", kind(v))))
                .collect::<Result<_>>()?,
            Some(v) => vec![v.as_u64().ok_or_else(|| r.invalid("eos_token_id", "a token id", kind(v)))? as u32],
        };
        let cfg = ModelConfig {
            vocab_size: r.usize("vocab_size")?,
            hidden_size,
            intermediate_size: r.usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: r.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: r.opt_bool("tie_word_embeddings")?.unwrap_or(model_type == "gemma3_text"),
            mlp_bias: r.opt_bool("mlp_bias")?.unwrap_or(false),
            bos_token_id: r.opt_usize("bos_token_id")?.map(|x| x as u32),
            eos_token_ids,
            pad_token_id: r.opt_usize("pad_token_id")?.map(|x| x as u32),
            torch_dtype: match r.opt_string("dtype")? {
                Some(d) => Some(d),
                None => r.opt_string("torch_dtype")?,
            },
            arch: arch::resolve(&r, &model_type, head_dim, hidden_size, num_hidden_layers)?,
            source_json: Some(value.clone()),
        };
        for (key, v) in [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
            ("num_hidden_layers", cfg.num_hidden_layers),
            ("num_attention_heads", cfg.num_attention_heads),
            ("head_dim", cfg.head_dim),
        ] {
            if v == 0 {
                return Err(r.invalid(key, "a positive integer", "0".to_string()));
            }
        }
        if !(cfg.rms_norm_eps > 0.0 && cfg.rms_norm_eps.is_finite()) {
            return Err(r.invalid("rms_norm_eps", "a small positive number", cfg.rms_norm_eps.to_string()));
        }
        if cfg.max_position_embeddings == 0 {
            return Err(r.invalid("max_position_embeddings", "a positive integer", "0".into()));
        }
        if let Some(RopeScaling::Longrope { short_factor, long_factor, .. }) = &cfg.rope_scaling {
            let half = cfg.arch.rotary_dim / 2;
            for (k, f) in [("short_factor", short_factor), ("long_factor", long_factor)] {
                if f.len() != half {
                    return Err(r.invalid(
                        &format!("rope_scaling.{k}"),
                        &format!("{half} factors (half the {} rotated dims)", cfg.arch.rotary_dim),
                        format!("{} factors", f.len()),
                    ));
                }
            }
        }
        if !cfg.head_dim.is_multiple_of(2) {
            return Err(r.invalid("head_dim", "an even number (RoPE rotates pairs)", cfg.head_dim.to_string()));
        }
        Ok(cfg)
    }

    /// The config.json of a merged checkpoint: the one it was loaded from with the dtype
    /// updated, or (GGUF sources) one written from the resolved fields (`hf_json.rs`).
    /// The resolved config in transformers' spelling (every key set, whatever the source).
    pub fn resolved_json(&self) -> Value {
        hf_json::written(self, self.torch_dtype.as_deref().unwrap_or("float32"))
    }

    pub fn to_hf_json(&self) -> Value {
        let dtype = self.torch_dtype.clone().unwrap_or_else(|| "float32".into());
        match &self.source_json {
            Some(Value::Object(src)) => {
                let mut m = src.clone();
                let key = if m.contains_key("dtype") { "dtype" } else { "torch_dtype" };
                m.insert(key.into(), dtype.into());
                Value::Object(m)
            }
            _ => hf_json::written(self, &dtype),
        }
    }
}

/// RoPE from either `rope_parameters` (transformers 5; Gemma 3 nests it per layer type and
/// the full-attention layers' entry is the main one) or `rope_theta` + `rope_scaling`.
fn rope(r: &Reader) -> Result<(f64, Option<RopeScaling>)> {
    let (theta, scaling, key) = match r.obj.get("rope_parameters") {
        Some(Value::Object(p)) => {
            let (p, key) = match p.get("full_attention") {
                Some(Value::Object(full)) => (full, "rope_parameters.full_attention"),
                _ => (p, "rope_parameters"),
            };
            let theta = match p.get("rope_theta") {
                None | Some(Value::Null) => 10000.0,
                Some(v) => v.as_f64().ok_or_else(|| r.invalid(&format!("{key}.rope_theta"), "a number", kind(v)))?,
            };
            (theta, Some(p), key)
        }
        _ => {
            let theta = r.opt_f64("rope_theta")?.unwrap_or(10000.0);
            (theta, r.obj.get("rope_scaling").and_then(Value::as_object), "rope_scaling")
        }
    };
    if !(theta > 0.0 && theta.is_finite()) {
        let k = if key == "rope_scaling" { "rope_theta".to_string() } else { format!("{key}.rope_theta") };
        return Err(r.invalid(&k, "a positive number", theta.to_string()));
    }
    let Some(s) = scaling else { return Ok((theta, None)) };
    let rope_type = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| {
        s.get(k)
            .and_then(Value::as_f64)
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| r.invalid(&format!("{key}.{k}"), "a positive number", s.get(k).map_or("nothing".into(), kind)))
    };
    match rope_type {
        "default" => Ok((theta, None)),
        "llama3" => Ok((
            theta,
            Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            }),
        )),
        "linear" => Ok((theta, Some(RopeScaling::Linear { factor: num("factor")? }))),
        "longrope" | "su" => Ok((theta, Some(longrope(r, s, key)?))),
        other => Err(r.invalid(&format!("{key}.rope_type"), "\"default\", \"linear\", \"llama3\" or \"longrope\"", format!("{other:?}"))),
    }
}

/// LongRoPE's parameters; the attention factor as transformers derives it when absent:
/// sqrt(1 + ln(f) / ln(original_max)) with f = max_position_embeddings / original_max.
fn longrope(r: &Reader, s: &Map<String, Value>, key: &str) -> Result<RopeScaling> {
    let original_max = match s.get("original_max_position_embeddings").and_then(Value::as_u64) {
        Some(v) => v as usize,
        None => r.opt_usize("original_max_position_embeddings")?.or(r.opt_usize("max_position_embeddings")?).unwrap_or(4096),
    };
    let factors = |k: &str| -> Result<Vec<f64>> {
        let v = s
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| r.invalid(&format!("{key}.{k}"), "an array of numbers", s.get(k).map_or("nothing".into(), kind)))?;
        v.iter()
            .map(|x| {
                x.as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| r.invalid(&format!("{key}.{k}"), "positive numbers", kind(x)))
            })
            .collect()
    };
    let max_pos = r.opt_usize("max_position_embeddings")?.unwrap_or(original_max) as f64;
    let factor = if original_max > 0 { max_pos / original_max as f64 } else { 1.0 };
    let derived = if factor <= 1.0 || original_max <= 1 { 1.0 } else { (1.0 + factor.ln() / (original_max as f64).ln()).sqrt() };
    let attention_factor = s.get("attention_factor").and_then(Value::as_f64).unwrap_or(derived);
    Ok(RopeScaling::Longrope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original_max,
        attention_factor,
    })
}

pub(crate) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) obj: &'a Map<String, Value>,
    pub(crate) file: PathBuf,
}

impl Reader<'_> {
    pub(crate) fn invalid(&self, key: &str, expected: &str, found: String) -> Error {
        Error::InvalidConfig { file: self.file.clone(), key: key.into(), expected: expected.into(), found }
    }
    pub(crate) fn present(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.invalid(key, "a non-negative integer", "nothing (key missing)".into()))
    }
    pub(crate) fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.present(key)
            .map(|v| v.as_u64().map(|x| x as usize).ok_or_else(|| self.invalid(key, "a non-negative integer", kind(v))))
            .transpose()
    }
    pub(crate) fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.present(key).map(|v| v.as_f64().ok_or_else(|| self.invalid(key, "a number", kind(v)))).transpose()
    }
    pub(crate) fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.present(key).map(|v| v.as_bool().ok_or_else(|| self.invalid(key, "true or false", kind(v)))).transpose()
    }
    pub(crate) fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?.ok_or_else(|| self.invalid(key, "a string", "nothing (key missing)".into()))
    }
    pub(crate) fn opt_string(&self, key: &str) -> Result<Option<String>> {
        self.present(key).map(|v| v.as_str().map(String::from).ok_or_else(|| self.invalid(key, "a string", kind(v)))).transpose()
    }
}
