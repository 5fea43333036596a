//! Whether one decode step's largest product is bound by memory or by compute: GB/s of a
//! one-token `QWeight::matmul_rows` over Gemma 3 270M's tied head (262144 × 640 in Q8_0,
//! 178 MB) against a plain streaming read (a sum) of the same number of bytes, on 1 and 2
//! threads. When the dot reaches the sum's rate, fewer instructions per block gain nothing.
//! Run by hand:
//! `cargo run --release -p peft-core --example decode_bandwidth [-- reps [q8_0|q5_0|q4_0] [rows cols]]`.
use candle_core::quantized::GgmlDType;
use half::f16;
use peft_core::model::QWeight;
use peft_core::ops::qdot::Kernel;
use rayon::prelude::*;
use std::time::Instant;

/// Random blocks with sane f16 scales at the front of each block (Q4_0, Q5_0, Q8_0 keep `d` first).
fn weight(ty: GgmlDType, rows: usize, cols: usize) -> QWeight {
    let ts = ty.type_size();
    let mut bytes = vec![0u8; rows * cols / ty.block_size() * ts];
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for (i, b) in bytes.iter_mut().enumerate() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = if i % ts < 2 { f16::from_f32(0.01).to_bits().to_le_bytes()[i % ts] } else { s as u8 };
    }
    QWeight::from_bytes("head", ty, rows, cols, &bytes).expect("a weight")
}

/// Σ of the bytes as u64 lanes: what streaming the weight's bytes once costs.
fn stream_sum(bytes: &[u64]) -> u64 {
    bytes.par_chunks(1 << 17).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).reduce(|| 0, u64::wrapping_add)
}

/// Best and median milliseconds of `reps` runs of `f` after one warm-up.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[0], ms[ms.len() / 2])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let reps = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let ty = match args.get(2).map(String::as_str) {
        Some("q5_0") => GgmlDType::Q5_0,
        Some("q4_0") => GgmlDType::Q4_0,
        _ => GgmlDType::Q8_0,
    };
    let rows = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(262144);
    let cols = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(640);
    let w = weight(ty, rows, cols);
    let bytes = w.storage_bytes();
    let plain: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
    println!("{ty:?} {rows}×{cols}: {:.1} MB; best / median ms and GB/s over {reps} runs", bytes as f64 / 1e6);
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool");
        pool.install(|| {
            let mut sink = 0f32;
            let rows_of = |(best, median): (f64, f64)| {
                format!("{best:7.2} / {median:7.2} ms  {:5.1} / {:5.1} GB/s", bytes as f64 / best / 1e6, bytes as f64 / median / 1e6)
            };
            let sum = time(reps, || sink += stream_sum(&plain) as f32);
            println!("{threads} thread(s)  streaming sum       {}", rows_of(sum));
            let f32_dot = time(reps, || sink += w.matmul_rows_with(Kernel::detect(), &x, 1)[7]);
            println!("{threads} thread(s)  dot_rows, f32 x     {}", rows_of(f32_dot));
            let default = time(reps, || sink += w.matmul_rows(&x, 1)[7]);
            println!("{threads} thread(s)  matmul_rows default {}", rows_of(default));
            std::hint::black_box(sink);
        });
    }
}
