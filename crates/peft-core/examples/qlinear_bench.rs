//! Time of one linear over a kept quantized weight (`ops::qlinear`, forward and input
//! gradient) against the same product over the dequantized f32 weight (`model::linear`'s
//! matmul, and `dy · W`), at the Llama-3.2-1B training shapes (256 tokens; the LM head in
//! chunks of 65 tokens, as the chunked loss runs it). Medians of alternating runs, so the
//! host's noise hits both sides alike. Run by hand:
//! `cargo run --release -p peft-core --example qlinear_bench [-- reps [q4_0|q8_0|q4k] [head]]`.
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};
use peft_core::model::linear::linear;
use peft_core::model::QWeight;
use peft_core::ops;

fn median(ms: &mut [f64]) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// CPU seconds this process has used (user + system, all threads; 10 ms resolution).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<f64>() / 100.0
}

/// Median wall milliseconds of `dense()` and `kept()` over `reps` alternating runs after a
/// warm-up, and the mean CPU milliseconds of each (all threads: the host's other load
/// changes the wall time more than it changes this).
fn time(reps: usize, dense: &dyn Fn() -> Result<Tensor>, kept: &dyn Fn() -> Result<Tensor>) -> Result<[f64; 4]> {
    dense()?;
    kept()?;
    let (mut d, mut q, mut cpu) = (Vec::new(), Vec::new(), [0f64; 2]);
    for _ in 0..reps {
        for (i, (f, ms)) in [(dense, &mut d), (kept, &mut q)].into_iter().enumerate() {
            let (start, c0) = (Instant::now(), cpu_seconds());
            drop(f()?);
            ms.push(start.elapsed().as_secs_f64() * 1e3);
            cpu[i] += (cpu_seconds() - c0) * 1e3 / reps as f64;
        }
    }
    Ok([median(&mut d), median(&mut q), cpu[0], cpu[1]])
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let reps = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let ty = match args.get(2).map(String::as_str) {
        Some("q8_0") => GgmlDType::Q8_0,
        Some("q4k") => GgmlDType::Q4K,
        _ => GgmlDType::Q4_0,
    };
    let mut shapes = vec![("q/o", 256, 2048, 2048), ("k/v", 256, 512, 2048), ("gate/up", 256, 8192, 2048), ("down", 256, 2048, 8192)];
    if args.iter().any(|a| a == "head") {
        shapes.push(("head chunk", 65, 128256, 2048));
    }
    println!("threads {}, {ty:?}, reps {reps} (median ms)", rayon::current_num_threads());
    println!("wall ms (median), then CPU ms (mean), f32 weight / kept weight / ratio");
    println!(
        "{:<11} {:>6} {:>6} {:>6} | {:^23} | {:^23} | {:^23} | {:^23}",
        "linear", "m", "out", "in", "forward wall", "forward CPU", "dx wall", "dx CPU"
    );
    for (name, m, out, k) in shapes {
        let w = Tensor::randn(0f32, 0.02, (out, k), &Device::Cpu)?;
        let q = QTensor::quantize(&w, ty)?;
        let qw = Arc::new(QWeight::from_bytes("w", ty, out, k, &q.data()?).expect("a quantized weight"));
        let dense = q.dequantize(&Device::Cpu)?;
        drop((w, q));
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let dy = Tensor::randn(0f32, 1.0, (m, out), &Device::Cpu)?;
        let fwd = time(reps, &|| linear(&x, &dense, None), &|| ops::qlinear(&x, &qw, None))?;
        let dx = time(reps, &|| dy.matmul(&dense), &|| ops::qlinear_input_grad(&dy, &qw))?;
        let cell = |a: f64, b: f64| format!("{a:>8.1} {b:>8.1} {:>5.2}", b / a);
        println!(
            "{name:<11} {m:>6} {out:>6} {k:>6} | {} | {} | {} | {}",
            cell(fwd[0], fwd[1]),
            cell(fwd[2], fwd[3]),
            cell(dx[0], dx[1]),
            cell(dx[2], dx[3])
        );
    }
    Ok(())
}
