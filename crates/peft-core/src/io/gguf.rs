//! GGUF checkpoints with the `llama` architecture.
