//! The files a Hugging Face checkpoint keeps beside `tokenizer.json`: `tokenizer_config.json`
//! (special tokens, `add_bos_token`, the chat template) and `chat_template.jinja` (where
//! transformers >= 4.43 saves the template; it wins over the config's `chat_template`).
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// What `tokenizer_config.json` (and `chat_template.jinja`) say, as far as this crate uses it.
#[derive(Debug, Default, Clone)]
pub(crate) struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
    /// `Some` only when the file sets it: transformers then rebuilds the post-processor.
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// `Ok(source)`, or `Err(why)` when a template is named but none can be chosen.
    pub chat_template: Option<std::result::Result<String, String>>,
    /// Where the chat template came from (a file, or a GGUF key), named in its render errors.
    pub chat_template_origin: String,
}

/// Reads a text file that may be absent: `Ok(None)` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads `tokenizer_config.json` and `chat_template.jinja` from `dir`; both are optional.
pub(crate) fn read_sidecars(dir: &Path) -> Result<TokenizerConfig> {
    let mut config = TokenizerConfig::default();
    let path = dir.join("tokenizer_config.json");
    if let Some(text) = read_optional(&path)? {
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
        config = parse_config(&json, &path)?;
        config.chat_template_origin = path.display().to_string();
    }
    let jinja = dir.join("chat_template.jinja");
    if let Some(text) = read_optional(&jinja)? {
        config.chat_template = Some(Ok(text));
        config.chat_template_origin = jinja.display().to_string();
    }
    Ok(config)
}

fn parse_config(json: &Value, file: &Path) -> Result<TokenizerConfig> {
    let Value::Object(map) = json else {
        return Err(invalid(file, "(root)", "a JSON object", json));
    };
    let token = |key: &str| -> Result<Option<String>> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(o)) => match o.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(invalid(file, key, "an object with a string `content`", &map[key])),
            },
            Some(other) => Err(invalid(file, key, "a string or {\"content\": ...}", other)),
        }
    };
    let flag = |key: &str| -> Result<Option<bool>> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(invalid(file, key, "a boolean", other)),
        }
    };
    Ok(TokenizerConfig {
        bos_token: token("bos_token")?,
        eos_token: token("eos_token")?,
        pad_token: token("pad_token")?,
        unk_token: token("unk_token")?,
        add_bos_token: flag("add_bos_token")?,
        add_eos_token: flag("add_eos_token")?,
        chat_template: match map.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(t) => Some(pick_template(t, file)?),
        },
        chat_template_origin: String::new(),
    })
}

/// A string, or a list of `{name, template}` where `default` is used (transformers raises when
/// there are several and none is called `default`; so do we, when the template is applied).
fn pick_template(value: &Value, file: &Path) -> Result<std::result::Result<String, String>> {
    let expected = "a string or a list of {\"name\", \"template\"}";
    match value {
        Value::String(s) => Ok(Ok(s.clone())),
        Value::Array(items) => {
            let mut named = Vec::new();
            for item in items {
                match (item.get("name").and_then(Value::as_str), item.get("template").and_then(Value::as_str)) {
                    (Some(n), Some(t)) => named.push((n, t)),
                    _ => return Err(invalid(file, "chat_template", expected, item)),
                }
            }
            if let Some((_, t)) = named.iter().find(|(n, _)| *n == "default") {
                return Ok(Ok(t.to_string()));
            }
            match named.as_slice() {
                [(_, t)] => Ok(Ok(t.to_string())),
                _ => {
                    let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
                    Ok(Err(format!(
                        "{}: `chat_template` lists several templates ({}) and none is named `default`",
                        file.display(),
                        names.join(", ")
                    )))
                }
            }
        }
        other => Err(invalid(file, "chat_template", expected, other)),
    }
}

fn invalid(file: &Path, key: &str, expected: &str, found: &Value) -> Error {
    let mut found = found.to_string();
    if found.len() > 80 {
        let cut = (0..=80).rev().find(|i| found.is_char_boundary(*i)).unwrap_or(0);
        found.truncate(cut);
        found.push('…');
    }
    Error::InvalidConfig { file: PathBuf::from(file), key: key.into(), expected: expected.into(), found }
}
