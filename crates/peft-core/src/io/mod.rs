//! Reading and writing checkpoints: safetensors (single or sharded), GGUF, adapter files
//! (PEFT's, and mlx-lm's converted to and from them).
pub mod adapter;
pub mod gguf;
pub mod mlx;
pub mod safetensors;

/// torch's name for a dtype, as `config.json` writes it.
pub fn dtype_name(d: candle_core::DType) -> &'static str {
    match d {
        candle_core::DType::F16 => "float16",
        candle_core::DType::BF16 => "bfloat16",
        candle_core::DType::F64 => "float64",
        _ => "float32",
    }
}
