//! Reading and writing checkpoints: safetensors (single or sharded), GGUF, adapter files.
pub mod adapter;
pub mod gguf;
pub mod safetensors;
