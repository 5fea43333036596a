//! Tokenizers: `tokenizer.json` through the `tokenizers` crate, or built from GGUF metadata;
//! chat templates rendered with minijinja.
pub mod gguf_spec;

pub use gguf_spec::GgufTokenizerSpec;
