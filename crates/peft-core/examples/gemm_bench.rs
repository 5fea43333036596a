//! GFLOP/s of the matrix products a LoRA training step runs, at SmolLM2-135M (batch 4 × 256)
//! and Llama-3.2-1B (batch 1 × 512) shapes, f32 on the CPU, through `model::linear::linear`
//! (the frozen linears' forward, candle → gemm) and plain `matmul` (their backward's
//! `grad · W`). `bench/gemm.mjs` runs this beside PyTorch's `F.linear` / `@` on the same
//! shapes; by hand only:
//! `cargo run --release --example gemm_bench -- [reps]` (prints one JSON line per shape).
use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use peft_core::model::linear::linear;

/// (name, m, k, n): `y[m, n] = x[m, k] · W[n, k]ᵀ` forward, `g[m, n] · W[n, k]` backward.
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("smollm2 q/o", 1024, 576, 576),
    ("smollm2 k/v", 1024, 576, 192),
    ("smollm2 gate/up", 1024, 576, 1536),
    ("smollm2 down", 1024, 1536, 576),
    ("smollm2 head", 1024, 576, 49152),
    ("llama-1b q/o", 512, 2048, 2048),
    ("llama-1b gate/up", 512, 2048, 8192),
    ("llama-1b down", 512, 8192, 2048),
];

/// Best milliseconds of `f` over `reps` runs after one warm-up.
fn best_ms(reps: usize, f: &dyn Fn() -> Result<Tensor>) -> Result<f64> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let start = Instant::now();
        drop(f()?);
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn main() -> Result<()> {
    let reps = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let threads = rayon::current_num_threads();
    for &(name, m, k, n) in SHAPES {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let g = Tensor::randn(0f32, 1.0, (m, n), &Device::Cpu)?;
        let flop = 2.0 * (m * k * n) as f64;
        let fwd = best_ms(reps, &|| linear(&x, &w, None))?;
        let bwd = best_ms(reps, &|| g.matmul(&w))?;
        println!(
            "{{\"shape\":\"{name}\",\"m\":{m},\"k\":{k},\"n\":{n},\"threads\":{threads},\"fwd_gflops\":{:.1},\"bwd_gflops\":{:.1}}}",
            flop / fwd / 1e6,
            flop / bwd / 1e6
        );
    }
    Ok(())
}
