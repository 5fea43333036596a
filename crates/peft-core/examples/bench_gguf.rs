//! Writes a random-weight GGUF of a published shape with our own writer, streaming one
//! weight at a time (an 8B model never exists whole in memory), for the memory and speed
//! benchmarks of quantized bases (bench/quantized-train.ts). No download, no tokenizer.
//!
//!   cargo run --release -p peft-core --example bench_gguf -- <smollm2|1b|8b> <outtype> <out.gguf>
use candle_core::{Device, Tensor};
use peft_core::io::gguf::{write_gguf, OutType};
use peft_core::ModelConfig;
use std::path::Path;

/// (vocab, hidden, intermediate, layers, heads, kv heads, tied): SmolLM2-135M,
/// Llama-3.2-1B and Llama-3.1-8B as their config.json give them.
fn shape(name: &str) -> Option<(usize, usize, usize, usize, usize, usize, bool)> {
    Some(match name {
        "smollm2" => (49152, 576, 1536, 30, 9, 3, true),
        "1b" => (128256, 2048, 8192, 16, 32, 8, true),
        "8b" => (128256, 4096, 14336, 32, 32, 8, false),
        _ => return None,
    })
}

/// Values spread like an initialised layer (uniform, std 0.02) from a xorshift stream: fast
/// enough for billions of values, and the same file every run.
fn random(dims: &[usize], seed: u64) -> Tensor {
    let n: usize = dims.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.0693
        })
        .collect();
    Tensor::from_vec(v, dims, &Device::Cpu).expect("shape matches")
}

fn main() -> peft_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench_gguf <smollm2|1b|8b> <f32|f16|q8_0|q4_0|q4_k_m> <out.gguf>";
    let (Some(name), Some(out), Some(path)) = (args.get(1), args.get(2), args.get(3)) else { panic!("{usage}") };
    let (vocab, hidden, inter, layers, heads, kv, tied) = shape(name).unwrap_or_else(|| panic!("{usage}"));
    let mut config = ModelConfig::llama(vocab, hidden, inter, layers, heads, kv);
    config.tie_word_embeddings = tied;
    config.rope_theta = 500000.0;
    let mut seed = 0u64;
    write_gguf(
        Path::new(path),
        &config,
        |hf| {
            seed += 1;
            let dims = peft_core::model::shapes::expected_shape(&config, hf).expect("the writer asks for known names");
            if hf.ends_with("norm.weight") {
                return Ok(Tensor::ones(dims.as_slice(), candle_core::DType::F32, &Device::Cpu)?);
            }
            Ok(random(&dims, seed))
        },
        OutType::parse(out)?,
        None,
    )?;
    eprintln!("wrote {path}: {name} in {out}");
    Ok(())
}
