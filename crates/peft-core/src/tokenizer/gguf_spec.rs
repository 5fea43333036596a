//! The tokenizer as a GGUF file's metadata describes it (`tokenizer.ggml.*`,
//! `tokenizer.chat_template`). `io::gguf` fills it; `Tokenizer::from_gguf` builds from it.
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizerSpec {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer flavour, e.g. "smollm", "llama-bpe", "default".
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub scores: Vec<f32>,
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece): false for Gemma, whose text gets no
    /// leading "▁"; unset means true, as llama.cpp reads it.
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}
