//! Building a `CausalLm` from a config and a map of checkpoint tensors, checking that every
//! weight is present with the shape the config implies.
use super::decoder::CausalLm;
use super::layers::{Attention, Block, GateUpProj, Linear, Mlp, Norm, QkvProj};
use super::params::{ParamId, ParamStore};
use super::qweight::QWeight;
use super::rope::Rope;
use super::shapes;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::io::gguf::load_gguf;
use crate::io::safetensors::{load_checkpoint_dir, WeightMap};
use crate::tokenizer::{GgufTokenizerSpec, Tokenizer};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
    /// Keep the frozen linear and embedding weights in their storage type (a GGUF's block
    /// quantizations, a safetensors checkpoint's f16/bf16) instead of converting them to
    /// `dtype` (CPU only). They cannot be trained then; adapters over them can.
    pub quantized: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { dtype: DType::F32, device: Device::Cpu, quantized: false }
    }
}

impl CausalLm {
    /// A Hugging Face checkpoint folder (config.json + safetensors), or a `.gguf` file.
    pub fn from_pretrained(path: &Path, opts: &LoadOptions) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile { path: path.into(), what: "a model folder or .gguf file".into() });
        }
        if path.is_file() {
            return Self::from_gguf(path, opts).map(|(m, _)| m);
        }
        let config = ModelConfig::from_file(&path.join("config.json"))?;
        // Kept half-precision weights are converted per weight in `Builder::param`.
        let keep = opts.quantized && opts.device.is_cpu();
        let weights = load_checkpoint_dir(path, if keep { None } else { Some(opts.dtype) }, &opts.device)?;
        Self::from_weights(config, weights, path, opts)
    }

    /// A `.gguf` file: the model, and the tokenizer its metadata describes.
    pub fn from_gguf(path: &Path, opts: &LoadOptions) -> Result<(Self, GgufTokenizerSpec)> {
        let ckpt = load_gguf(path, opts.dtype, &opts.device, opts.quantized)?;
        Ok((Self::from_weights(ckpt.config, ckpt.weights, path, opts)?, ckpt.tokenizer))
    }

    /// The model and its tokenizer (None when the checkpoint carries none).
    pub fn from_pretrained_with_tokenizer(path: &Path, opts: &LoadOptions) -> Result<(Self, Option<Tokenizer>)> {
        if path.is_file() {
            let (model, spec) = Self::from_gguf(path, opts)?;
            let tok = if spec.tokens.is_empty() { None } else { Some(Tokenizer::from_gguf(&spec, path)?) };
            return Ok((model, tok));
        }
        let model = Self::from_pretrained(path, opts)?;
        let tok = if path.join("tokenizer.json").exists() { Some(Tokenizer::from_pretrained_dir(path)?) } else { None };
        Ok((model, tok))
    }

    pub fn from_weights(config: ModelConfig, mut w: WeightMap, source: &Path, opts: &LoadOptions) -> Result<Self> {
        let cfg = config.clone();
        let keep = opts.quantized && opts.device.is_cpu();
        let mut b = Builder { config: &cfg, w: &mut w, source, store: ParamStore::default(), dtype: opts.dtype, keep };
        let (c, a) = (&config, &config.arch);
        let (h, hd, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        let norm = |b: &mut Builder, path: String, dim: usize| -> Result<Norm> {
            let weight = b.param(&format!("{path}.weight"), &[dim])?;
            Ok(Norm { path, weight, eps: c.rms_norm_eps, unit_offset: a.unit_offset_norms })
        };
        let embed_tokens = b.weight("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let (pa, pm) = (format!("{p}.self_attn"), format!("{p}.mlp"));
            let qkv = if a.fused_projections {
                QkvProj::Fused { qkv_proj: b.linear(&format!("{pa}.qkv_proj"), q + 2 * kv, h, a.qkv_bias)?, q_rows: q, kv_rows: kv }
            } else {
                QkvProj::Separate {
                    q_proj: b.linear(&format!("{pa}.q_proj"), q, h, a.qkv_bias)?,
                    k_proj: b.linear(&format!("{pa}.k_proj"), kv, h, a.qkv_bias)?,
                    v_proj: b.linear(&format!("{pa}.v_proj"), kv, h, a.qkv_bias)?,
                }
            };
            let o_proj = b.linear(&format!("{pa}.o_proj"), h, q, a.o_bias)?;
            let (q_norm, k_norm) = match a.qk_norm {
                true => (Some(norm(&mut b, format!("{pa}.q_norm"), hd)?), Some(norm(&mut b, format!("{pa}.k_norm"), hd)?)),
                false => (None, None),
            };
            let gate_up = if a.fused_projections {
                GateUpProj::Fused { gate_up_proj: b.linear(&format!("{pm}.gate_up_proj"), 2 * inter, h, c.mlp_bias)? }
            } else {
                GateUpProj::Separate {
                    gate_proj: b.linear(&format!("{pm}.gate_proj"), inter, h, c.mlp_bias)?,
                    up_proj: b.linear(&format!("{pm}.up_proj"), inter, h, c.mlp_bias)?,
                }
            };
            let down_proj = b.linear(&format!("{pm}.down_proj"), h, inter, c.mlp_bias)?;
            let (pre_ff, post_ff) = match a.sandwich_norms {
                true => (
                    Some(norm(&mut b, format!("{p}.pre_feedforward_layernorm"), h)?),
                    Some(norm(&mut b, format!("{p}.post_feedforward_layernorm"), h)?),
                ),
                false => (None, None),
            };
            layers.push(Block {
                input_layernorm: norm(&mut b, format!("{p}.input_layernorm"), h)?,
                self_attn: Attention { path: pa, qkv, o_proj, q_norm, k_norm },
                post_attention_layernorm: norm(&mut b, format!("{p}.post_attention_layernorm"), h)?,
                pre_feedforward_layernorm: pre_ff,
                post_feedforward_layernorm: post_ff,
                mlp: Mlp { path: pm, gate_up, down_proj, act: a.hidden_act },
                sliding: a.is_sliding(i),
            });
        }
        let final_norm = norm(&mut b, "model.norm".into(), h)?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(b.linear("lm_head", c.vocab_size, h, false)?) };
        b.refuse_unused_biases(c)?;
        let store = b.store;
        Ok(CausalLm {
            rope: Rope::new(&config),
            local_rope: a.local_rope_theta.map(|theta| Rope::plain(theta, a.rotary_dim)),
            config,
            store,
            embed_tokens,
            layers,
            norm: final_norm,
            lm_head,
            dtype: opts.dtype,
            device: opts.device.clone(),
        })
    }
}

struct Builder<'a> {
    config: &'a ModelConfig,
    w: &'a mut WeightMap,
    source: &'a Path,
    store: ParamStore,
    dtype: DType,
    /// `LoadOptions::quantized` on the CPU.
    keep: bool,
}

impl Builder<'_> {
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<ParamId> {
        let (t, file): (_, PathBuf) = self.w.take(name, self.source)?;
        if t.dims() != shape {
            let because = shapes::shape_keys(self.config, name);
            return Err(Error::WeightShape { file, name: name.into(), expected: shape.to_vec(), found: t.dims().to_vec(), because });
        }
        if !t.dtype().is_float() {
            return Err(Error::WeightDtype { file, name: name.into(), found: format!("{:?}", t.dtype()) });
        }
        self.store.add(name, t.to_dtype(self.dtype)?, false)
    }

    /// A linear or embedding weight: kept in its storage type when asked and possible.
    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<ParamId> {
        if let Some(q) = self.w.quantized.remove(name) {
            let file = self.w.files.remove(name).unwrap_or_else(|| self.source.into());
            let found = [q.dims().0, q.dims().1];
            if found != shape {
                let because = shapes::shape_keys(self.config, name);
                return Err(Error::WeightShape { file, name: name.into(), expected: shape.to_vec(), found: found.to_vec(), because });
            }
            return self.store.add_quantized(name, q);
        }
        let half = self.w.tensors.get(name).is_some_and(|t| matches!(t.dtype(), DType::F16 | DType::BF16));
        if !(self.keep && half) {
            return self.param(name, shape);
        }
        let (t, file) = self.w.take(name, self.source)?;
        if t.dims() != shape {
            let because = shapes::shape_keys(self.config, name);
            return Err(Error::WeightShape { file, name: name.into(), expected: shape.to_vec(), found: t.dims().to_vec(), because });
        }
        self.store.add_quantized(name, std::sync::Arc::new(QWeight::from_half(name, &t)?))
    }

    fn linear(&mut self, path: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let weight = self.weight(&format!("{path}.weight"), &[out, inp])?;
        let name = format!("{path}.bias");
        if bias && !self.w.tensors.contains_key(&name) {
            return Err(self.missing_bias(&name));
        }
        let bias = if bias { Some(self.param(&name, &[out])?) } else { None };
        Ok(Linear { path: path.into(), weight, bias })
    }

    /// The config file the weights are checked against (a GGUF is its own config).
    fn config_file(&self) -> PathBuf {
        if self.source.is_dir() {
            self.source.join("config.json")
        } else {
            self.source.into()
        }
    }

    /// A bias the config implies that the checkpoint lacks, named by the key that implies it.
    fn missing_bias(&self, name: &str) -> Error {
        let qwen2 = self.config.arch.model_type == "qwen2" && !name.contains("o_proj") && name.contains(".self_attn.");
        let (key, found) = match () {
            _ if qwen2 => ("model_type", "\"qwen2\" (Qwen2 has biases on q, k and v)".to_string()),
            _ if name.contains(".mlp.") => ("mlp_bias", "true".to_string()),
            _ => ("attention_bias", "true".to_string()),
        };
        Error::InvalidConfig {
            file: self.config_file(),
            key: key.into(),
            expected: format!("a value matching the weights: {} has no `{name}`", self.source.display()),
            found,
        }
    }

    /// A bias the checkpoint has but the config says the model has not: the config is wrong
    /// (transformers would silently drop the bias and compute something else).
    fn refuse_unused_biases(&self, c: &ModelConfig) -> Result<()> {
        let mut left: Vec<&String> = self.w.tensors.keys().filter(|n| n.ends_with("_proj.bias")).collect();
        left.sort();
        let Some(name) = left.first() else { return Ok(()) };
        let key = if name.contains(".mlp.") { "mlp_bias" } else { "attention_bias" };
        let file = self.w.files.get(*name).cloned().unwrap_or_else(|| self.source.into());
        Err(Error::InvalidConfig {
            file: self.config_file(),
            key: key.into(),
            expected: format!(
                "true: {} has the bias `{name}` that a {} model with this config does not use",
                file.display(),
                c.arch.model_type
            ),
            found: "false or missing".into(),
        })
    }
}
