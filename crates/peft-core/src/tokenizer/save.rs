//! Writing a tokenizer as a Hugging Face checkpoint keeps it: `tokenizer.json` and
//! `tokenizer_config.json` (special tokens, chat template), so transformers and our
//! loader both read a merged checkpoint, even one whose tokenizer came from a GGUF.
use super::Tokenizer;
use crate::error::{Error, Result};
use crate::io::safetensors::write_atomic;
use serde_json::{Map, Value};
use std::path::Path;

impl Tokenizer {
    /// `tokenizer.json` and `tokenizer_config.json`, written as a unit (`io::folder::write_folder`).
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        crate::io::folder::write_folder(dir, |tmp| self.write_files(tmp))
    }

    pub(crate) fn write_files(&self, dir: &Path) -> Result<()> {
        let file = dir.join("tokenizer.json");
        let text = self.inner.to_string(true).map_err(|e| Error::Tokenizer { file: file.clone(), message: e.to_string() })?;
        write_atomic(&file, text.as_bytes())?;
        let mut config = Map::new();
        config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        config.insert("clean_up_tokenization_spaces".into(), false.into());
        for (key, tok) in [("bos_token", self.bos_token()), ("eos_token", self.eos_token()), ("pad_token", self.pad_token())] {
            config.insert(key.into(), tok.map_or(Value::Null, |(t, _)| t.into()));
        }
        if let Some(t) = self.chat_template() {
            config.insert("chat_template".into(), t.into());
        }
        let text = serde_json::to_string_pretty(&Value::Object(config)).map_err(|e| Error::Unsupported(e.to_string()))?;
        write_atomic(&dir.join("tokenizer_config.json"), text.as_bytes())
    }
}
