//! `config.json` as Hugging Face writes it, in both spellings (transformers 4's
//! `rope_theta`/`rope_scaling`/`torch_dtype` and transformers 5's `rope_parameters`/`dtype`),
//! resolved once into a plain struct. Keys are read one by one so that an error names
//! the file and the key.
use crate::error::{Error, Result};
use serde::Serialize;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The dtype the checkpoint declares (`torch_dtype` or `dtype`), if any.
    pub torch_dtype: Option<String>,
}

pub const SUPPORTED_MODEL_TYPES: &[&str] = &["llama"];

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile { path: path.into(), what: "a Hugging Face config.json".into() });
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Json { path: path.into(), message: e.to_string() })?;
        Self::from_json(&value, path)
    }

    pub fn from_json(value: &Value, file: &Path) -> Result<Self> {
        let obj = value.as_object().ok_or_else(|| Error::InvalidConfig {
            file: file.into(), key: "(root)".into(), expected: "a JSON object".into(), found: kind(value),
        })?;
        let r = Reader { obj, file: file.into() };
        let model_type = r.string("model_type")?;
        if !SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) {
            return Err(Error::UnsupportedModelType {
                file: file.into(), found: model_type, supported: SUPPORTED_MODEL_TYPES.join(", "),
            });
        }
        if let Some(act) = r.opt_string("hidden_act")? {
            if act != "silu" {
                return Err(r.invalid("hidden_act", "\"silu\"", format!("{act:?}")));
            }
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
        let head_dim = r.opt_usize("head_dim")?.unwrap_or(hidden_size / num_attention_heads.max(1));
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
        let cfg = LlamaConfig {
            vocab_size: r.usize("vocab_size")?,
            hidden_size,
            intermediate_size: r.usize("intermediate_size")?,
            num_hidden_layers: r.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: r.opt_f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: r.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: r.opt_bool("attention_bias")?.unwrap_or(false),
            mlp_bias: r.opt_bool("mlp_bias")?.unwrap_or(false),
            bos_token_id: r.opt_usize("bos_token_id")?.map(|x| x as u32),
            eos_token_ids,
            pad_token_id: r.opt_usize("pad_token_id")?.map(|x| x as u32),
            torch_dtype: match r.opt_string("dtype")? {
                Some(d) => Some(d),
                None => r.opt_string("torch_dtype")?,
            },
        };
        for (key, v) in [("vocab_size", cfg.vocab_size), ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size), ("num_hidden_layers", cfg.num_hidden_layers),
            ("num_attention_heads", cfg.num_attention_heads), ("head_dim", cfg.head_dim)] {
            if v == 0 {
                return Err(r.invalid(key, "a positive integer", "0".to_string()));
            }
        }
        if cfg.head_dim % 2 != 0 {
            return Err(r.invalid("head_dim", "an even number (RoPE rotates pairs)", cfg.head_dim.to_string()));
        }
        Ok(cfg)
    }

    /// The config as transformers 4 writes it, for merged checkpoints.
    pub fn to_hf_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("architectures".into(), serde_json::json!(["LlamaForCausalLM"]));
        m.insert("model_type".into(), "llama".into());
        m.insert("hidden_act".into(), "silu".into());
        for (k, v) in [("vocab_size", self.vocab_size), ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size), ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads), ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim), ("max_position_embeddings", self.max_position_embeddings)] {
            m.insert(k.into(), v.into());
        }
        m.insert("rms_norm_eps".into(), self.rms_norm_eps.into());
        m.insert("rope_theta".into(), self.rope_theta.into());
        m.insert("rope_scaling".into(), match &self.rope_scaling {
            None => Value::Null,
            Some(s) => serde_json::json!({
                "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            }),
        });
        m.insert("tie_word_embeddings".into(), self.tie_word_embeddings.into());
        m.insert("attention_bias".into(), self.attention_bias.into());
        m.insert("mlp_bias".into(), self.mlp_bias.into());
        m.insert("bos_token_id".into(), self.bos_token_id.map(Value::from).unwrap_or(Value::Null));
        m.insert("eos_token_id".into(), match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => (*one).into(),
            many => many.to_vec().into(),
        });
        m.insert("pad_token_id".into(), self.pad_token_id.map(Value::from).unwrap_or(Value::Null));
        m.insert("torch_dtype".into(), self.torch_dtype.clone().unwrap_or_else(|| "float32".into()).into());
        Value::Object(m)
    }
}

/// RoPE from either `rope_parameters` (transformers 5) or `rope_theta` + `rope_scaling`.
fn rope(r: &Reader) -> Result<(f64, Option<Llama3RopeScaling>)> {
    let (theta, scaling, key) = match r.obj.get("rope_parameters") {
        Some(Value::Object(p)) => {
            let theta = p.get("rope_theta").and_then(Value::as_f64).unwrap_or(10000.0);
            (theta, Some(p), "rope_parameters")
        }
        _ => {
            let theta = r.opt_f64("rope_theta")?.unwrap_or(10000.0);
            (theta, r.obj.get("rope_scaling").and_then(Value::as_object), "rope_scaling")
        }
    };
    let Some(s) = scaling else { return Ok((theta, None)) };
    let rope_type = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
    match rope_type {
        "default" => Ok((theta, None)),
        "llama3" => {
            let num = |k: &str| {
                s.get(k).and_then(Value::as_f64).ok_or_else(|| r.invalid(&format!("{key}.{k}"), "a number", "nothing".into()))
            };
            Ok((theta, Some(Llama3RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            })))
        }
        other => Err(r.invalid(&format!("{key}.rope_type"), "\"default\" or \"llama3\"", format!("{other:?}"))),
    }
}

fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

struct Reader<'a> {
    obj: &'a Map<String, Value>,
    file: PathBuf,
}

impl Reader<'_> {
    fn invalid(&self, key: &str, expected: &str, found: String) -> Error {
        Error::InvalidConfig { file: self.file.clone(), key: key.into(), expected: expected.into(), found }
    }
    fn present(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.invalid(key, "a non-negative integer", "nothing (key missing)".into()))
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.present(key)
            .map(|v| v.as_u64().map(|x| x as usize).ok_or_else(|| self.invalid(key, "a non-negative integer", kind(v))))
            .transpose()
    }
    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.present(key).map(|v| v.as_f64().ok_or_else(|| self.invalid(key, "a number", kind(v)))).transpose()
    }
    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.present(key).map(|v| v.as_bool().ok_or_else(|| self.invalid(key, "true or false", kind(v)))).transpose()
    }
    fn string(&self, key: &str) -> Result<String> {
        self.opt_string(key)?.ok_or_else(|| self.invalid(key, "a string", "nothing (key missing)".into()))
    }
    fn opt_string(&self, key: &str) -> Result<Option<String>> {
        self.present(key)
            .map(|v| v.as_str().map(String::from).ok_or_else(|| self.invalid(key, "a string", kind(v))))
            .transpose()
    }
}
