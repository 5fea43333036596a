//! Forward + backward time of the fused ops against `ops::composite`, at SmolLM2-135M
//! training shapes (batch 4, seq 256, hidden 576, 9 heads of 64, intermediate 1536,
//! vocab 49152), f32 on the CPU. Run by hand:
//! `cargo run --release --example ops_bench [-- reps]`.
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var};
use peft_core::ops::{self, composite};

const B: usize = 4;
const T: usize = 256;
const HIDDEN: usize = 576;
const HEADS: usize = 9;
const HEAD_DIM: usize = 64;
const INTER: usize = 1536;
const VOCAB: usize = 49152;

fn var(dims: &[usize]) -> Result<Var> {
    Var::from_tensor(&Tensor::randn(0f32, 1.0, dims, &Device::Cpu)?)
}

/// Median milliseconds of `f(false)` (composite) and `f(true)` (fused) over `reps`
/// alternating runs, after one warm-up run of each: the machine's noise (page faults
/// on fresh buffers, other processes) then hits both alike.
fn time(reps: usize, f: &dyn Fn(bool) -> Result<()>) -> Result<(f64, f64)> {
    f(false)?;
    f(true)?;
    let (mut composite, mut fused) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for _ in 0..reps {
        for (fuse, ms) in [(false, &mut composite), (true, &mut fused)] {
            let start = Instant::now();
            f(fuse)?;
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |ms: &mut Vec<f64>| {
        ms.sort_by(f64::total_cmp);
        ms[ms.len() / 2]
    };
    Ok((median(&mut composite), median(&mut fused)))
}

/// Runs `op` forward and backward (seeded with ones) and drops the gradients.
fn fwd_bwd(out: Result<Tensor>) -> Result<()> {
    out?.backward().map(drop)
}

fn main() -> Result<()> {
    let reps = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(9);
    println!("threads: {}, reps: {reps} (median)", rayon::current_num_threads());

    let x = var(&[B, T, HIDDEN])?;
    let w = var(&[HIDDEN])?;
    let q = var(&[B, HEADS, T, HEAD_DIM])?;
    let angles = Tensor::randn(0f32, 3.0, (B, T, HEAD_DIM / 2), &Device::Cpu)?;
    let (cos, sin) = (angles.cos()?, angles.sin()?);
    let scores = var(&[B, HEADS, T, T])?;
    let gate = var(&[B, T, INTER])?;
    let up = var(&[B, T, INTER])?;
    let logits = var(&[B * T, VOCAB])?;
    let targets = Tensor::rand(0f32, VOCAB as f32, B * T, &Device::Cpu)?.to_dtype(DType::U32)?;
    let weights = Tensor::ones(B * T, DType::F32, &Device::Cpu)?;

    type Bench<'a> = (&'a str, String, Box<dyn Fn(bool) -> Result<()> + 'a>);
    let benches: Vec<Bench> = vec![
        (
            "rms_norm",
            format!("{B}x{T}x{HIDDEN}"),
            Box::new(|f| {
                let (x, w) = (x.as_tensor(), w.as_tensor());
                fwd_bwd(if f { ops::rms_norm(x, w, 1e-5) } else { composite::rms_norm(x, w, 1e-5) })
            }),
        ),
        (
            "rope",
            format!("{B}x{HEADS}x{T}x{HEAD_DIM}"),
            Box::new(|f| {
                let q = q.as_tensor();
                fwd_bwd(if f { ops::rope(q, &cos, &sin) } else { composite::rope(q, &cos, &sin) })
            }),
        ),
        (
            "softmax",
            format!("{B}x{HEADS}x{T}x{T}"),
            Box::new(|f| {
                let s = scores.as_tensor();
                fwd_bwd(if f { ops::softmax_last_dim(s) } else { composite::softmax_last_dim(s) })
            }),
        ),
        (
            "silu_mul",
            format!("{B}x{T}x{INTER}"),
            Box::new(|f| {
                let (g, u) = (gate.as_tensor(), up.as_tensor());
                fwd_bwd(if f { ops::silu_mul(g, u) } else { composite::silu_mul(g, u) })
            }),
        ),
        (
            "gelu_mul",
            format!("{B}x{T}x{INTER}"),
            Box::new(|f| {
                let (g, u) = (gate.as_tensor(), up.as_tensor());
                fwd_bwd(if f { ops::gelu_mul(g, u) } else { composite::gelu_mul(g, u) })
            }),
        ),
        (
            "cross_entropy",
            format!("{}x{VOCAB}", B * T),
            Box::new(|f| {
                let l = logits.as_tensor();
                fwd_bwd(if f { ops::cross_entropy_sum(l, &targets, &weights) } else { composite::cross_entropy_sum(l, &targets, &weights) })
            }),
        ),
    ];

    println!("{:<14} {:<16} {:>14} {:>10} {:>8}", "op", "shape", "composite ms", "fused ms", "speedup");
    for (name, shape, run) in &benches {
        let (composite_ms, fused_ms) = time(reps, run.as_ref())?;
        println!("{name:<14} {shape:<16} {composite_ms:>14.2} {fused_ms:>10.2} {:>7.1}x", composite_ms / fused_ms);
    }
    Ok(())
}
