//! `PromptTuningConfig` as PEFT 0.21 reads and writes it, and its build at the prompt site.
use super::learning::{self, Dims};
use super::PromptEmbedding;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::init::normal;
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{DType, Tensor};
use rand::Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// `PromptTuningInit`.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInit {
    /// `nn.Embedding`'s own init, N(0, 1).
    Random,
    /// Rows of the word embeddings of random token ids.
    SampleVocab,
    /// Rows of the word embeddings of `prompt_tuning_init_text`'s token ids, repeated or
    /// cut to `num_virtual_tokens`. The core has no tokenizer at injection: the caller
    /// tokenizes the text and passes the ids as `prompt_tuning_init_token_ids` (an
    /// extension key, consumed and not written back).
    Text { token_ids: Option<Vec<u32>> },
}

/// Extension key carrying the token ids of `prompt_tuning_init_text`.
pub const INIT_TOKEN_IDS: &str = "prompt_tuning_init_token_ids";

#[derive(Debug, Clone)]
pub struct PromptTuningConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub num_virtual_tokens: usize,
    pub init: PromptInit,
    /// SPoT: the source prompt's adapter folder (`init_from.rs`); overrides `init`.
    pub init_from: Option<PathBuf>,
    pub dims: Dims,
}

impl PromptTuningConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let mut v = value.clone();
        let ids = v.as_object_mut().and_then(|o| o.remove(INIT_TOKEN_IDS));
        let init_from = match v.as_object_mut().and_then(|o| o.remove(super::init_from::INIT_FROM)) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() => Some(PathBuf::from(s)),
            Some(other) => {
                return Err(Error::InvalidConfig {
                    file: source.into(),
                    key: super::init_from::INIT_FROM.into(),
                    expected: "the folder of a saved prompt-tuning adapter (a string)".into(),
                    found: other.to_string(),
                })
            }
        };
        let mut defaults = learning::defaults();
        defaults.as_object_mut().expect("object").extend(
            json!({"prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": null, "tokenizer_name_or_path": null, "tokenizer_kwargs": null})
                .as_object()
                .expect("object")
                .clone(),
        );
        let (fields, warnings) = Fields::parse(&v, "PROMPT_TUNING", "PromptTuningConfig", defaults, source)?;
        let num_virtual_tokens = learning::check(&fields)?;
        let init = match fields.choice("prompt_tuning_init", &["RANDOM", "SAMPLE_VOCAB", "TEXT"])?.as_str() {
            "RANDOM" => PromptInit::Random,
            "SAMPLE_VOCAB" => PromptInit::SampleVocab,
            _ => {
                // PromptTuningConfig.__post_init__'s checks.
                if fields.opt_str("tokenizer_name_or_path")?.is_none_or(|s| s.is_empty()) {
                    return Err(fields.err("tokenizer_name_or_path", "the tokenizer's name or path when prompt_tuning_init is \"TEXT\""));
                }
                if fields.opt_str("prompt_tuning_init_text")?.is_none() {
                    return Err(fields.err("prompt_tuning_init_text", "the init text when prompt_tuning_init is \"TEXT\""));
                }
                let token_ids = match ids {
                    None | Some(Value::Null) => None,
                    Some(Value::Array(a)) if !a.is_empty() && a.iter().all(|x| x.as_u64().is_some()) => {
                        Some(a.iter().map(|x| x.as_u64().unwrap_or(0) as u32).collect())
                    }
                    Some(other) => {
                        return Err(Error::InvalidConfig {
                            file: source.into(),
                            key: INIT_TOKEN_IDS.into(),
                            expected: "a non-empty list of token ids (prompt_tuning_init_text tokenized)".into(),
                            found: other.to_string(),
                        })
                    }
                };
                PromptInit::Text { token_ids }
            }
        };
        if !fields.get("tokenizer_kwargs").is_null() && !matches!(init, PromptInit::Text { .. }) {
            return Err(fields.err("tokenizer_kwargs", "null unless prompt_tuning_init is \"TEXT\""));
        }
        let config =
            PromptTuningConfig { fields, targets: TargetSpec::default(), num_virtual_tokens, init, init_from, dims: Dims::default() };
        Ok((config, warnings))
    }

    /// The initial virtual tokens [n, hidden] in `dtype` (`PromptEmbedding.__init__`).
    fn init_weight(&self, embed: &Tensor, bc: &mut BuildCtx) -> Result<Tensor> {
        let (n, h) = (self.num_virtual_tokens, self.dims.token_dim);
        let vocab = embed.dim(0)?;
        let ids: Vec<u32> = match &self.init {
            _ if bc.loading => return Ok(Tensor::zeros((n, h), bc.dtype, embed.device())?),
            _ if self.init_from.is_some() => {
                return super::init_from::source_prompt(self.init_from.as_deref().unwrap_or(Path::new("")), n, h, bc.dtype, embed.device())
            }
            PromptInit::Random => return normal(n, h, 1.0, bc.rng, bc.dtype, embed.device()),
            PromptInit::SampleVocab => (0..n).map(|_| bc.rng.random_range(0..vocab as u32)).collect(),
            PromptInit::Text { token_ids: None } => {
                return Err(Error::InvalidConfig {
                    file: self.fields.source.clone(),
                    key: super::config::INIT_TOKEN_IDS.into(),
                    expected:
                        "the token ids of prompt_tuning_init_text (the core has no tokenizer at injection: tokenize the text and pass them)"
                            .into(),
                    found: "nothing".into(),
                })
            }
            PromptInit::Text { token_ids: Some(t) } => t.iter().cycle().take(n).copied().collect(),
        };
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(Error::arg(INIT_TOKEN_IDS, format!("token ids below the vocab size {vocab}"), bad));
        }
        let ids = Tensor::from_vec(ids, n, embed.device())?;
        Ok(embed.index_select(&ids, 0)?.to_dtype(DType::F32)?.to_dtype(bc.dtype)?)
    }
}

impl TunerConfig for PromptTuningConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "PROMPT_TUNING"
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn check_model(&mut self, model: &CausalLm, _targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        let (dims, warnings) = learning::fill(&mut self.fields, model, false)?;
        self.dims = dims;
        Ok(warnings)
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        Ok(Some(vec![HookSite::prompt(model)]))
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("prompt tuning does not attach to linear layers (`{}`)", t.path)))
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Prompt { embed_tokens, .. } = site else {
            return Err(Error::Unsupported(format!("prompt tuning attaches to the prompt, not `{}`", site.path())));
        };
        let embed = bc.store.get(*embed_tokens).value().clone();
        let w = self.init_weight(&embed, bc)?;
        let embedding = bc.store.add(learning::param_name(bc.adapter, "embedding.weight"), w, false)?;
        Ok(Box::new(PromptEmbedding { adapter: bc.adapter.to_string(), embedding }))
    }

    fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
        learning::checkpoint_key(param_name, adapter)
    }
}
