//! Tokenizers: `tokenizer.json` through the `tokenizers` crate, or built from GGUF metadata;
//! chat templates rendered with minijinja.
//!
//! Behaviour follows transformers 5 (`PreTrainedTokenizerFast`/`TokenizersBackend`): truncation and
//! padding stored in `tokenizer.json` are off unless asked for; `add_bos_token`/`add_eos_token` in
//! `tokenizer_config.json` replace the post-processor; named special tokens missing from the
//! vocabulary are added; no `clean_up_tokenization_spaces` (transformers 5 ignores it for BPE).
mod chat_template;
mod config;
mod from_gguf;
pub mod gguf_spec;
mod pyjson;
mod save;
mod stream;
mod to_gguf;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

use crate::error::{Error, Result};
use chat_template::{ChatTemplate, TemplateTokens};
use config::TokenizerConfig;
pub use gguf_spec::GgufTokenizerSpec;
pub use stream::StreamDecoder;

/// One chat message. `apply_chat_template` takes JSON values so that messages may carry more
/// fields (`tool_calls`, `name`, ...); `serde_json::to_value(msg)` turns this into one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "role": self.role, "content": self.content })
    }
}

/// A tokenizer with its special tokens and chat template. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    source: PathBuf,
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
    pad: Option<(String, u32)>,
    tokens: TemplateTokens,
    template: Option<Arc<ChatTemplate>>,
    vocab_size: usize,
    /// The metadata a GGUF-built tokenizer came from: written back unchanged on export.
    gguf: Option<Arc<GgufTokenizerSpec>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("chat_template", &self.chat_template().is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`, plus `tokenizer_config.json` and `chat_template.jinja` beside it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingFile { path: path.into(), what: "tokenizer.json".into() })
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        // The tokenizers crate unwraps inside some of its deserializers (a malformed decoder
        // panics in `decoders/mod.rs`, found by tests/fuzz.rs): a damaged file must be an error.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes)).map_err(|panic| {
            let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            Error::Tokenizer { file: path.into(), message: format!("not a valid tokenizer.json: {}", why.unwrap_or_default()) }
        })?;
        let inner = parsed.map_err(|e| {
            let message = e.to_string();
            match e.downcast_ref::<serde_json::Error>() {
                Some(j) if j.is_syntax() || j.is_eof() => Error::Json { path: path.into(), message },
                _ => Error::Tokenizer { file: path.into(), message: format!("not a valid tokenizer.json: {message}") },
            }
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let config = config::read_sidecars(dir)?;
        Self::assemble(inner, path.into(), config)
    }

    /// Loads the tokenizer of a Hugging Face checkpoint folder (`tokenizer.json` required).
    pub fn from_pretrained_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::MissingFile { path: dir.into(), what: "checkpoint folder".into() });
        }
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            let what = "tokenizer.json (only fast tokenizers are supported; a `tokenizer.model` alone \
                        can be converted with transformers' `save_pretrained`)";
            return Err(Error::MissingFile { path, what: what.into() });
        }
        Self::from_file(&path)
    }

    /// Builds the tokenizer a GGUF file's metadata describes; `file` is named in errors.
    pub fn from_gguf(spec: &GgufTokenizerSpec, file: &Path) -> Result<Self> {
        let (inner, config) = from_gguf::build(spec, file)?;
        let mut tokenizer = Self::assemble(inner, file.into(), config)?;
        tokenizer.gguf = Some(Arc::new(spec.clone()));
        Ok(tokenizer)
    }

    /// The common tail of every loader: special tokens, post-processor, template.
    fn assemble(mut inner: tokenizers::Tokenizer, source: PathBuf, config: TokenizerConfig) -> Result<Self> {
        let fail = |message: String| Error::Tokenizer { file: source.clone(), message };
        inner.with_truncation(None).map_err(|e| fail(e.to_string()))?;
        inner.with_padding(None);
        // transformers adds named special tokens that are not added tokens yet, as special.
        let named = [&config.bos_token, &config.eos_token, &config.pad_token, &config.unk_token];
        for token in named.into_iter().flatten() {
            if !inner.get_added_vocabulary().get_vocab().contains_key(token.as_str()) {
                inner.add_special_tokens(&[AddedToken::from(token.clone(), true)]);
            }
        }
        let lookup = |t: &Option<String>| t.as_ref().and_then(|t| inner.token_to_id(t).map(|id| (t.clone(), id)));
        let (bos, eos, pad) = (lookup(&config.bos_token), lookup(&config.eos_token), lookup(&config.pad_token));
        if config.add_bos_token.is_some() || config.add_eos_token.is_some() {
            let add_bos = if config.add_bos_token == Some(true) { bos.clone() } else { None };
            let add_eos = if config.add_eos_token == Some(true) { eos.clone() } else { None };
            let processor = template_processing(add_bos, add_eos).map_err(fail)?;
            inner.with_post_processor(Some(processor));
        }
        let vocab_size = inner.get_vocab(true).values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let template = config.chat_template.map(|t| {
            Arc::new(match t {
                Ok(source) => ChatTemplate::new(source, config.chat_template_origin.clone()),
                Err(reason) => ChatTemplate::unusable(reason),
            })
        });
        let tokens = TemplateTokens {
            bos_token: config.bos_token,
            eos_token: config.eos_token,
            pad_token: config.pad_token,
            unk_token: config.unk_token,
        };
        Ok(Tokenizer { inner: Arc::new(inner), source, bos, eos, pad, tokens, template, vocab_size, gguf: None })
    }

    /// Token ids of `text`; `add_special_tokens` applies the post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, add_special_tokens).map_err(|e| self.error(e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn encode_batch(&self, texts: &[String], add_special_tokens: bool) -> Result<Vec<Vec<u32>>> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encs = self.inner.encode_batch_fast(inputs, add_special_tokens).map_err(|e| self.error(e))?;
        Ok(encs.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of `ids`. Ids outside the vocabulary are skipped, as transformers does.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| self.error(e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// One more than the largest id, added tokens included (the embedding rows it needs).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_token(&self) -> Option<(String, u32)> {
        self.bos.clone()
    }

    pub fn eos_token(&self) -> Option<(String, u32)> {
        self.eos.clone()
    }

    pub fn pad_token(&self) -> Option<(String, u32)> {
        self.pad.clone()
    }

    /// The file this tokenizer was loaded from (`tokenizer.json` or the GGUF).
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.template.as_ref().and_then(|t| t.source())
    }

    /// Renders `messages` (objects with at least `role` and `content`) with the chat template.
    pub fn apply_chat_template(&self, messages: &[serde_json::Value], add_generation_prompt: bool) -> Result<String> {
        self.apply_chat_template_with(messages, add_generation_prompt, None)
    }

    /// As `apply_chat_template`, with extra template variables (`tools`, `enable_thinking`, ...).
    pub fn apply_chat_template_with(
        &self,
        messages: &[serde_json::Value],
        add_generation_prompt: bool,
        extra: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<String> {
        let template = self.template.as_ref().ok_or_else(|| Error::Template {
            message: format!(
                "{} has no chat template (none in tokenizer_config.json, chat_template.jinja or the GGUF metadata)",
                self.source.display()
            ),
        })?;
        template.render(messages, add_generation_prompt, &self.tokens, extra)
    }

    /// A `tokenizer.json`, a checkpoint folder holding one, or a `.gguf` file's embedded tokenizer.
    pub fn from_any(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_pretrained_dir(path)
        } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            let file = crate::io::gguf::GgufFile::open(path)?;
            Self::from_gguf(&crate::io::gguf::tokenizer_spec(&file)?, path)
        } else {
            Self::from_file(path)
        }
    }

    /// An incremental decoder for streaming; see [`StreamDecoder`].
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder::new(self.inner.clone(), self.source.clone(), skip_special_tokens)
    }

    fn error(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer { file: self.source.clone(), message: e.to_string() }
    }
}

/// transformers' `update_post_processor`: `bos $A eos`, pairs `bos $A eos bos $B eos`.
pub(crate) fn template_processing(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> std::result::Result<TemplateProcessing, String> {
    let b = |seq: u32| bos.as_ref().map(|(t, _)| format!("{t}:{seq} ")).unwrap_or_default();
    let e = |seq: u32| eos.as_ref().map(|(t, _)| format!(" {t}:{seq}")).unwrap_or_default();
    let single = format!("{}$A:0{}", b(0), e(0));
    let pair = format!("{single} {}$B:1{}", b(1), e(1));
    let specials: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
    TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| format!("cannot build the BOS/EOS post-processor: {e}"))?
        .special_tokens(specials)
        .build()
        .map_err(|e| format!("cannot build the BOS/EOS post-processor: {e}"))
}
