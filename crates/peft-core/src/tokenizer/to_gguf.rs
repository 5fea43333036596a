//! The tokenizer as GGUF metadata, for exporting a model to llama.cpp. A tokenizer that came
//! from a GGUF gives back the metadata it was built from. A `tokenizer.json` byte-level BPE is
//! described the way `convert_hf_to_gguf.py` does (`get_vocab_base`, `_set_vocab_gpt2`): the
//! tokens by id padded to the config's vocabulary with `[PADi]` (type 5, unused), added tokens
//! that are special or look special (`<|…|>`) as control (3), other added ones as
//! user-defined (4), the merges as "a b", and `tokenizer.ggml.pre` named after the
//! pre-tokenizer (llama.cpp names it by a hash of test encodings; we recognise the shapes of
//! the tokenizers we build from GGUF: SmolLM's digit split, llama-3's regex, Qwen2's regex).
use super::{from_gguf::LLAMA3_SPLIT, GgufTokenizerSpec, Tokenizer};
use crate::error::{Error, Result};
use serde_json::Value;

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// Qwen2's split regex (`tokenizer.ggml.pre = "qwen2"` in llama.cpp).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `convert_hf_to_gguf.py`'s `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// llama.cpp's pre-tokenizer name for a `tokenizer.json` pre_tokenizer, "default" when unknown.
fn pre_name(pre: &Value) -> &'static str {
    let text = pre.to_string();
    let digits = text.contains("\"Digits\"") && text.contains("\"individual_digits\":true");
    if digits && text.contains("\"ByteLevel\"") && !text.contains("\"Split\"") {
        return "smollm";
    }
    let regex = |r: &str| text.contains(&serde_json::to_string(r).unwrap_or_default());
    if regex(LLAMA3_SPLIT) {
        "llama-bpe"
    } else if regex(QWEN2_SPLIT) {
        "qwen2"
    } else {
        "default"
    }
}

impl Tokenizer {
    /// The GGUF `tokenizer.*` metadata of this tokenizer for a model of `vocab_size` rows.
    pub fn gguf_spec(&self, vocab_size: usize) -> Result<GgufTokenizerSpec> {
        let mut spec = match &self.gguf {
            Some(spec) => (**spec).clone(),
            None => self.spec_from_json(vocab_size)?,
        };
        spec.bos_token_id = self.bos.as_ref().map(|(_, id)| *id).or(spec.bos_token_id);
        spec.eos_token_id = self.eos.as_ref().map(|(_, id)| *id).or(spec.eos_token_id);
        spec.pad_token_id = self.pad.as_ref().map(|(_, id)| *id).or(spec.pad_token_id);
        spec.chat_template = self.chat_template().map(String::from).or(spec.chat_template);
        Ok(spec)
    }

    fn spec_from_json(&self, vocab_size: usize) -> Result<GgufTokenizerSpec> {
        let fail = |message: String| Error::Tokenizer { file: self.source.clone(), message };
        let json: Value =
            serde_json::from_str(&self.inner.to_string(false).map_err(|e| fail(e.to_string()))?).map_err(|e| fail(e.to_string()))?;
        let model = &json["model"];
        if model["type"] != "BPE" || model["byte_fallback"] == true || !json["pre_tokenizer"].to_string().contains("\"ByteLevel\"") {
            return Err(Error::Unsupported(format!(
                "{}: writing this tokenizer into a GGUF (only byte-level BPE tokenizers so far; a SentencePiece one can be converted with llama.cpp's convert_hf_to_gguf.py from the savePretrained folder)",
                self.source.display())));
        }
        let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
        let mut types = vec![UNUSED; vocab_size];
        let mut put = |token: &str, id: u64, ty: i32| -> Result<()> {
            let slot = usize::try_from(id)
                .ok()
                .filter(|&i| i < vocab_size)
                .ok_or_else(|| fail(format!("token `{token}` has id {id}, past the model's vocabulary of {vocab_size}")))?;
            tokens[slot] = Some(token.to_string());
            types[slot] = ty;
            Ok(())
        };
        for (token, id) in model["vocab"].as_object().into_iter().flatten() {
            put(token, id.as_u64().ok_or_else(|| fail(format!("token `{token}`: id is not a number")))?, NORMAL)?;
        }
        for added in json["added_tokens"].as_array().into_iter().flatten() {
            let (Some(token), Some(id)) = (added["content"].as_str(), added["id"].as_u64()) else { continue };
            let ty = if added["special"] == true || looks_special(token) { CONTROL } else { USER_DEFINED };
            put(token, id, ty)?;
        }
        let tokens = tokens.into_iter().enumerate().map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]"))).collect();
        let merges = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| match m {
                Value::String(s) => Ok(s.clone()),
                Value::Array(pair) => Ok(pair.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")),
                other => Err(fail(format!("a merge is {other}, expected \"a b\" or [\"a\", \"b\"]"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GgufTokenizerSpec {
            model: "gpt2".into(),
            pre: Some(pre_name(&json["pre_tokenizer"]).into()),
            tokens,
            token_types: types,
            merges,
            ..Default::default()
        })
    }
}
