//! Incremental decoding for streaming generation. Byte-level tokens can end in the middle of a
//! UTF-8 character, and SentencePiece decoders treat the first token specially, so text is only
//! released once it is complete and stable (the algorithm of `tokenizers`' `DecodeStream`, owned
//! here so that it can outlive a borrow, e.g. in a napi handle).
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Feed ids one at a time with [`StreamDecoder::step`]; the concatenation of everything it
/// returns plus [`StreamDecoder::finish`] equals `Tokenizer::decode` of the whole sequence.
#[derive(Clone)]
pub struct StreamDecoder {
    inner: Arc<tokenizers::Tokenizer>,
    source: PathBuf,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder").field("skip_special_tokens", &self.skip_special_tokens).field("pending_ids", &self.ids).finish()
    }
}

impl StreamDecoder {
    pub(crate) fn new(inner: Arc<tokenizers::Tokenizer>, source: PathBuf, skip_special_tokens: bool) -> Self {
        StreamDecoder { inner, source, skip_special_tokens, ids: Vec::new(), prefix: String::new(), prefix_index: 0 }
    }

    /// Adds one token; returns the text that became complete, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        tokenizers::tokenizer::step_decode_stream(
            &self.inner,
            vec![id],
            self.skip_special_tokens,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| self.error(e.to_string()))
    }

    /// Adds several tokens; returns the text that became complete (possibly empty).
    pub fn step_many(&mut self, ids: &[u32]) -> Result<String> {
        let mut out = String::new();
        for &id in ids {
            if let Some(text) = self.step(id)? {
                out.push_str(&text);
            }
        }
        Ok(out)
    }

    /// Ends the stream: returns what is still held back (e.g. an incomplete UTF-8 sequence,
    /// shown as U+FFFD exactly as `decode` shows it) and resets the decoder.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.inner.decode(&self.ids, self.skip_special_tokens).map_err(|e| self.error(e.to_string()))?;
        let rest = match text.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => return Err(self.error(format!("stream decoder: {text:?} does not extend {:?}", self.prefix))),
        };
        self.reset();
        Ok(if rest.is_empty() { None } else { Some(rest) })
    }

    /// Forgets all tokens fed so far.
    pub fn reset(&mut self) {
        self.ids.clear();
        self.prefix.clear();
        self.prefix_index = 0;
    }

    fn error(&self, message: String) -> Error {
        Error::Tokenizer { file: self.source.clone(), message }
    }
}
