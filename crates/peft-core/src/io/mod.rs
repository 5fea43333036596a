//! Reading and writing checkpoints: safetensors (single or sharded), GGUF, adapter files.
pub mod gguf;
pub mod safetensors;
