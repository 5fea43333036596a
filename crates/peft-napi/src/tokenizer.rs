//! The tokenizer handle: encode/decode, chat templates, streaming decode.
use crate::error::{closed, invalid, to_js, Result};
use crate::job::{IdsJob, StringJob, TokenizerJob};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use peft_core::tokenizer::{StreamDecoder, Tokenizer};
use std::sync::Mutex;

#[napi(object)]
pub struct SpecialToken {
    pub token: String,
    pub id: u32,
}

#[napi]
pub struct NativeTokenizer {
    inner: Mutex<Option<Tokenizer>>,
}

impl NativeTokenizer {
    pub fn new(t: Tokenizer) -> Self {
        NativeTokenizer { inner: Mutex::new(Some(t)) }
    }

    fn get(&self) -> Result<Tokenizer> {
        self.inner.lock().unwrap().clone().ok_or_else(|| closed("Tokenizer"))
    }
}

fn special(t: Option<(String, u32)>) -> Option<SpecialToken> {
    t.map(|(token, id)| SpecialToken { token, id })
}

/// A `tokenizer.json`, a folder holding one, or a `.gguf` file.
#[napi]
pub fn load_tokenizer(path: String) -> AsyncTask<TokenizerJob> {
    TokenizerJob::spawn(move || Ok(NativeTokenizer::new(Tokenizer::from_any(std::path::Path::new(&path)).map_err(to_js)?)))
}

#[napi]
impl NativeTokenizer {
    #[napi]
    pub fn encode(&self, text: String, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.get()?.encode(&text, add_special_tokens).map_err(to_js)
    }

    #[napi]
    pub fn encode_batch(&self, texts: Vec<String>, add_special_tokens: bool) -> Result<AsyncTask<IdsJob>> {
        let t = self.get()?;
        Ok(IdsJob::spawn(move || t.encode_batch(&texts, add_special_tokens).map_err(to_js)))
    }

    #[napi]
    pub fn decode(&self, ids: Vec<u32>, skip_special_tokens: bool) -> Result<String> {
        self.get()?.decode(&ids, skip_special_tokens).map_err(to_js)
    }

    #[napi]
    pub fn token_to_id(&self, token: String) -> Result<Option<u32>> {
        Ok(self.get()?.token_to_id(&token))
    }

    #[napi]
    pub fn id_to_token(&self, id: u32) -> Result<Option<String>> {
        Ok(self.get()?.id_to_token(id))
    }

    #[napi(getter)]
    pub fn vocab_size(&self) -> Result<u32> {
        Ok(self.get()?.vocab_size() as u32)
    }

    #[napi(getter)]
    pub fn bos_token(&self) -> Result<Option<SpecialToken>> {
        Ok(special(self.get()?.bos_token()))
    }

    #[napi(getter)]
    pub fn eos_token(&self) -> Result<Option<SpecialToken>> {
        Ok(special(self.get()?.eos_token()))
    }

    #[napi(getter)]
    pub fn pad_token(&self) -> Result<Option<SpecialToken>> {
        Ok(special(self.get()?.pad_token()))
    }

    #[napi(getter)]
    pub fn chat_template(&self) -> Result<Option<String>> {
        Ok(self.get()?.chat_template().map(String::from))
    }

    /// `messages_json`: a JSON array of `{role, content, ...}`; `extra_json`: more template variables.
    /// Renders on the JS thread; the template's fuel and output bounds cap how long it can block.
    #[napi]
    pub fn apply_chat_template(&self, messages_json: String, add_generation_prompt: bool, extra_json: Option<String>) -> Result<String> {
        render_chat(&self.get()?, &messages_json, add_generation_prompt, extra_json.as_deref())
    }

    /// As `apply_chat_template`, rendered on the libuv pool (for long conversations or costly templates).
    #[napi(ts_return_type = "Promise<string>")]
    pub fn apply_chat_template_async(
        &self,
        messages_json: String,
        add_generation_prompt: bool,
        extra_json: Option<String>,
    ) -> Result<AsyncTask<StringJob>> {
        let t = self.get()?;
        Ok(StringJob::spawn(move || render_chat(&t, &messages_json, add_generation_prompt, extra_json.as_deref())))
    }

    #[napi]
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> Result<NativeStreamDecoder> {
        Ok(NativeStreamDecoder { inner: Mutex::new(self.get()?.stream_decoder(skip_special_tokens)) })
    }

    #[napi]
    pub fn dispose(&self) {
        self.inner.lock().unwrap().take();
    }
}

fn render_chat(t: &Tokenizer, messages_json: &str, add_generation_prompt: bool, extra_json: Option<&str>) -> Result<String> {
    let messages: Vec<serde_json::Value> =
        serde_json::from_str(messages_json).map_err(|e| invalid("messages", "an array of {role, content} objects", e))?;
    let extra: Option<serde_json::Map<String, serde_json::Value>> =
        extra_json.map(|s| serde_json::from_str(s).map_err(|e| invalid("options", "an object of template variables", e))).transpose()?;
    t.apply_chat_template_with(&messages, add_generation_prompt, extra.as_ref()).map_err(to_js)
}

/// Turns ids fed one at a time into text, holding back incomplete characters.
#[napi]
pub struct NativeStreamDecoder {
    inner: Mutex<StreamDecoder>,
}

#[napi]
impl NativeStreamDecoder {
    #[napi]
    pub fn step(&self, id: u32) -> Result<Option<String>> {
        self.inner.lock().unwrap().step(id).map_err(to_js)
    }

    #[napi]
    pub fn finish(&self) -> Result<Option<String>> {
        self.inner.lock().unwrap().finish().map_err(to_js)
    }
}
