//! Building a `Llama` from a config and a map of checkpoint tensors, checking that every
//! weight is present with the shape the config implies.
use super::llama::{Attention, Block, Linear, Llama, Mlp};
use super::params::{ParamId, ParamStore};
use super::rope::Rope;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::io::gguf::load_gguf;
use crate::io::safetensors::{load_checkpoint_dir, WeightMap};
use crate::tokenizer::{GgufTokenizerSpec, Tokenizer};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

pub struct LoadOptions {
    pub dtype: DType,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { dtype: DType::F32, device: Device::Cpu }
    }
}

impl Llama {
    /// A Hugging Face checkpoint folder (config.json + safetensors), or a `.gguf` file.
    pub fn from_pretrained(path: &Path, opts: &LoadOptions) -> Result<Self> {
        if !path.exists() {
            return Err(Error::MissingFile { path: path.into(), what: "a model folder or .gguf file".into() });
        }
        if path.is_file() {
            return Self::from_gguf(path, opts).map(|(m, _)| m);
        }
        let config = LlamaConfig::from_file(&path.join("config.json"))?;
        let weights = load_checkpoint_dir(path, Some(opts.dtype), &opts.device)?;
        Self::from_weights(config, weights, path, opts)
    }

    /// A `.gguf` file: the model, and the tokenizer its metadata describes.
    pub fn from_gguf(path: &Path, opts: &LoadOptions) -> Result<(Self, GgufTokenizerSpec)> {
        let ckpt = load_gguf(path, opts.dtype, &opts.device)?;
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

    pub fn from_weights(config: LlamaConfig, mut w: WeightMap, source: &Path, opts: &LoadOptions) -> Result<Self> {
        let mut b = Builder { w: &mut w, source, store: ParamStore::default(), dtype: opts.dtype };
        let c = &config;
        let (h, kv, q) = (c.hidden_size, c.num_key_value_heads * c.head_dim, c.num_attention_heads * c.head_dim);
        let embed_tokens = b.param("model.embed_tokens.weight", &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let attn_bias = c.attention_bias;
            let mlp_bias = c.mlp_bias;
            layers.push(Block {
                input_layernorm: b.param(&format!("{p}.input_layernorm.weight"), &[h])?,
                self_attn: Attention {
                    q_proj: b.linear(&format!("{p}.self_attn.q_proj"), q, h, attn_bias)?,
                    k_proj: b.linear(&format!("{p}.self_attn.k_proj"), kv, h, attn_bias)?,
                    v_proj: b.linear(&format!("{p}.self_attn.v_proj"), kv, h, attn_bias)?,
                    o_proj: b.linear(&format!("{p}.self_attn.o_proj"), h, q, attn_bias)?,
                },
                post_attention_layernorm: b.param(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                mlp: Mlp {
                    gate_proj: b.linear(&format!("{p}.mlp.gate_proj"), c.intermediate_size, h, mlp_bias)?,
                    up_proj: b.linear(&format!("{p}.mlp.up_proj"), c.intermediate_size, h, mlp_bias)?,
                    down_proj: b.linear(&format!("{p}.mlp.down_proj"), h, c.intermediate_size, mlp_bias)?,
                },
            });
        }
        let norm = b.param("model.norm.weight", &[h])?;
        let lm_head = if c.tie_word_embeddings { None } else { Some(b.linear("lm_head", c.vocab_size, h, false)?) };
        let store = b.store;
        Ok(Llama {
            rope: Rope::new(&config),
            config,
            store,
            embed_tokens,
            layers,
            norm,
            lm_head,
            dtype: opts.dtype,
            device: opts.device.clone(),
        })
    }
}

struct Builder<'a> {
    w: &'a mut WeightMap,
    source: &'a Path,
    store: ParamStore,
    dtype: DType,
}

impl Builder<'_> {
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<ParamId> {
        let (t, file): (_, PathBuf) = self.w.take(name, self.source)?;
        if t.dims() != shape {
            return Err(Error::WeightShape { file, name: name.into(), expected: shape.to_vec(), found: t.dims().to_vec() });
        }
        if !t.dtype().is_float() {
            return Err(Error::WeightDtype { file, name: name.into(), found: format!("{:?}", t.dtype()) });
        }
        self.store.add(name, t.to_dtype(self.dtype)?, false)
    }

    fn linear(&mut self, path: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let weight = self.param(&format!("{path}.weight"), &[out, inp])?;
        let bias = if bias { Some(self.param(&format!("{path}.bias"), &[out])?) } else { None };
        Ok(Linear { path: path.into(), weight, bias })
    }
}
