//! The decode fast paths added for Gemma 3: the per-block-scaled dot products of Q4_0, Q5_0
//! and Q8_0 (`d · Σ q·x`, one product by the scale per block) and the vectorized
//! `gelu_tanh(gate) · up`. Each kernel this CPU runs (scalar always, AVX2 where present) is
//! compared with an f64 reference on random and edge inputs: odd block counts (the even/odd
//! block accumulators), every activation row count 1–8, extreme f16 scales, saturated
//! quants; for gelu, arguments from the subnormal to the exp clamp and tails shorter than a
//! vector.
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use half::f16;
use peft_core::model::QWeight;
use peft_core::ops::gelu_mul_slices;
use peft_core::ops::qdot::Kernel;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `rows` rows of `cols` values of `ty` (all three keep their f16 scale in the block's first
/// two bytes): random quants, every third block saturated (0x7F / 0x80 / 0xFF bytes), and
/// scales random or extreme (f16::MAX, its negative, the smallest subnormal, zero).
fn scaled_weight(ty: GgmlDType, rows: usize, cols: usize, seed: u64) -> QWeight {
    let mut rng = StdRng::seed_from_u64(seed);
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let mut bytes = vec![0u8; rows * cols / bs * ts];
    for (b, block) in bytes.chunks_mut(ts).enumerate() {
        match b % 3 {
            0 => block.fill([0x7F, 0x80, 0xFF][(b / 3) % 3]),
            _ => rng.fill(block),
        }
        let d = match b % 13 {
            0 => f16::MAX,
            1 => f16::MIN,
            2 => f16::from_bits(1),
            3 => f16::ZERO,
            _ => f16::from_f32(rng.random_range(-0.1..0.1)),
        };
        block[..2].copy_from_slice(&d.to_bits().to_le_bytes());
    }
    QWeight::from_bytes("w", ty, rows, cols, &bytes).unwrap()
}

#[test]
fn scaled_block_dots_match_f64_for_every_row_count() {
    for ty in [GgmlDType::Q4_0, GgmlDType::Q5_0, GgmlDType::Q8_0] {
        // 7 blocks (odd: the last block goes to the even accumulator alone) and 1 block.
        for cols in [224, 32] {
            let rows = 53;
            let w = scaled_weight(ty, rows, cols, cols as u64);
            let mut dense = vec![0f32; rows * cols];
            w.dequantize_rows_with(Kernel::Scalar, 0, &mut dense);
            for m in 1..=8 {
                let mut rng = StdRng::seed_from_u64(m as u64);
                let x: Vec<f32> = (0..m * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                for kernel in Kernel::available() {
                    let y = w.matmul_rows_with(kernel, &x, m);
                    for i in 0..m {
                        for r in 0..rows {
                            let (wr, xr) = (&dense[r * cols..(r + 1) * cols], &x[i * cols..(i + 1) * cols]);
                            let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let size: f64 = wr.iter().zip(xr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                            let got = y[i * rows + r] as f64;
                            assert!(
                                (got - exact).abs() <= 1e-5 * size + 1e-30,
                                "{ty:?} {kernel:?} cols={cols} m={m} row {r} of x {i}: {got} vs {exact} (Σ|w·x| {size})"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// transformers' `gelu_pytorch_tanh` in f64, `0.5·x·(1 + tanh u)`, written `x / (1 + e^(−2u))`
/// (the same function) so the far negative tail is not lost to `1 + tanh u` rounding to 0.
fn gelu_f64(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    let tanh_form = 0.5 * x * (1.0 + u.tanh());
    let sigmoid_form = x / (1.0 + (-2.0 * u).exp());
    assert!((tanh_form - sigmoid_form).abs() <= 1e-12 * x.abs(), "the two forms of gelu({x}) differ");
    sigmoid_form
}

#[test]
fn gelu_mul_matches_f64_and_candle_for_every_kernel() {
    let mut rng = StdRng::seed_from_u64(7);
    let edges = [0.0f32, -0.0, 1e-30, -1e-30, 1e-40, 3.0, -3.0, 9.0, -9.0, 20.0, -20.0, 88.0, -88.0, 1e4, -1e4, 1e20, -1e20];
    // 1029 values: not a multiple of 8, so the scalar tail runs too.
    let mut gate: Vec<f32> = (0..1012).map(|_| rng.random_range(-12.0f32..12.0)).collect();
    gate.extend(edges);
    let up: Vec<f32> = (0..gate.len()).map(|i| if i % 5 == 0 { 1.0 } else { rng.random_range(-3.0f32..3.0) }).collect();
    let candle = {
        let (g, u) = (Tensor::new(gate.as_slice(), &Device::Cpu).unwrap(), Tensor::new(up.as_slice(), &Device::Cpu).unwrap());
        (g.gelu().unwrap() * u).unwrap().to_vec1::<f32>().unwrap()
    };
    for kernel in Kernel::available() {
        let mut out = vec![f32::NAN; gate.len()];
        gelu_mul_slices(kernel, &gate, &up, &mut out);
        for i in 0..gate.len() {
            let want = gelu_f64(gate[i] as f64) * up[i] as f64;
            let got = out[i] as f64;
            // Relative to the result (the sigmoid form keeps the tiny negative tail's
            // precision), a few f32 roundings of u amplified by e^(−2u)'s slope: 2|u|. AVX2's
            // exp saturates at e^88.3, so a result below |x·up| / e^88.3 may read as that.
            let u = 0.7978845608 * (gate[i] as f64) * (1.0 + 0.044715 * (gate[i] as f64).powi(2));
            assert!(
                (got - want).abs() <= 3e-7 * (2.0 + 2.0 * u.abs()) * want.abs() + 5e-39 * (gate[i] * up[i]).abs() as f64 + 1e-40,
                "{kernel:?} gelu({}) · {}: {got} vs {want}",
                gate[i],
                up[i]
            );
            // candle rounds 1 + tanh(u) to zero below about −9: absolute agreement only.
            let scale = (gate[i] as f64 * up[i] as f64).abs();
            assert!(
                (got - candle[i] as f64).abs() <= 1e-6 * scale + 1e-30,
                "{kernel:?} gelu({}): {got} vs candle's {}",
                gate[i],
                candle[i]
            );
        }
    }
}
