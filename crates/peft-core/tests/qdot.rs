//! The decode kernels of `ops::qdot`, for every storage type kept quantized: on random blocks
//! and on edge blocks (largest and smallest f16 scales and offsets, zero and negative ones,
//! every nibble and byte pattern), each kernel this CPU runs (the scalar path always, AVX2
//! where present) dequantizes bit-identically to candle's `to_float`, and its dot products
//! with f32 activations equal dequantize-then-dot (computed in f64) to 1e-5 of Σ|w·x| (the
//! size of the terms: a sum that cancels to near zero has no relative precision to test).
use crate::common::QUANT_TYPES;
use candle_core::quantized::GgmlDType;
use half::{bf16, f16};
use peft_core::model::QWeight;
use peft_core::ops::qdot::Kernel;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Byte offsets of the f16 scale/offset fields in one block (ggml's layouts): every other
/// byte of a block is a packed quant or an integer scale, valid whatever its value.
fn half_fields(ty: GgmlDType) -> &'static [usize] {
    use GgmlDType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 => &[0],
        Q4_1 | Q5_1 | Q4K | Q5K => &[0, 2],
        Q2K => &[80, 82],
        Q3K => &[108],
        Q6K => &[208],
        _ => &[],
    }
}

/// f16 scales: ordinary ones, and the extremes.
fn scale(rng: &mut StdRng, edge: usize) -> f16 {
    match edge {
        0 => f16::MAX,
        1 => f16::MIN,
        2 => f16::from_bits(1), // the smallest subnormal
        3 => f16::ZERO,
        4 => f16::MIN_POSITIVE,
        _ => f16::from_f32(rng.random_range(-2.0..2.0)),
    }
}

/// `rows` rows of `ty` blocks: random bytes, then one block in every four filled with a
/// pattern byte (0x00, 0xFF, 0x0F, 0xF0, 0x80, 0x7F: every nibble at its extremes), and
/// the f16 fields set to random or extreme scales.
fn random_weight(ty: GgmlDType, rows: usize, cols: usize, seed: u64) -> QWeight {
    let mut rng = StdRng::seed_from_u64(seed);
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let n_blocks = rows * cols / bs;
    let mut bytes = vec![0u8; n_blocks * ts];
    if matches!(ty, GgmlDType::F16 | GgmlDType::BF16) {
        for (i, v) in bytes.chunks_mut(2).enumerate() {
            let x: f32 = if i % 97 == 0 { [65504.0, -65504.0, 6.0e-8, 0.0, -1.0e-3][i % 5] } else { rng.random_range(-3.0..3.0) };
            let b = if ty == GgmlDType::F16 { f16::from_f32(x).to_bits() } else { bf16::from_f32(x * 1e30).to_bits() };
            v.copy_from_slice(&b.to_le_bytes());
        }
        return QWeight::from_bytes("w", ty, rows, cols, &bytes).unwrap();
    }
    const PATTERNS: [u8; 6] = [0x00, 0xFF, 0x0F, 0xF0, 0x80, 0x7F];
    for (b, block) in bytes.chunks_mut(ts).enumerate() {
        if b % 4 == 1 {
            block.fill(PATTERNS[(b / 4) % PATTERNS.len()]);
        } else {
            rng.fill(block);
        }
        for (f, &at) in half_fields(ty).iter().enumerate() {
            let s = scale(&mut rng, (b * 3 + f) % 11);
            block[at..at + 2].copy_from_slice(&s.to_bits().to_le_bytes());
        }
    }
    QWeight::from_bytes("w", ty, rows, cols, &bytes).unwrap()
}

fn activations(m: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..m * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[test]
fn every_kernel_dequantizes_as_candle_does() {
    let kernels = Kernel::available();
    if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx2") {
        assert!(kernels.contains(&Kernel::Avx2), "AVX2 is present but not used");
    }
    for ty in QUANT_TYPES {
        // Half precision: rows that are not a whole number of 32-value chunks.
        let (rows, cols) = if ty.block_size() == 1 { (40, 72) } else { (40, 512) };
        let w = random_weight(ty, rows, cols, 1);
        let reference = w.to_tensor(candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let mut want = vec![0f32; rows * cols];
        w.dequantize_rows_with(Kernel::Scalar, 0, &mut want); // candle's to_float, chunk by chunk
        assert_eq!(want, reference.flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{ty:?}: scalar vs to_tensor");
        for &kernel in &kernels {
            let mut got = vec![0f32; (rows - 3) * cols];
            w.dequantize_rows_with(kernel, 3, &mut got);
            let same = got.iter().zip(&want[3 * cols..]).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ty:?} {kernel:?}: dequantized values differ from candle's");
            assert!(got.iter().all(|v| v.is_finite()), "{ty:?}: the test's scales gave a non-finite value");
        }
    }
}

#[test]
fn every_kernel_dots_as_dequantize_then_dot() {
    for ty in QUANT_TYPES {
        let (rows, cols) = if ty.block_size() == 1 { (300, 72) } else { (300, 512) };
        let w = random_weight(ty, rows, cols, 2);
        let mut dense = vec![0f32; rows * cols];
        w.dequantize_rows_with(Kernel::Scalar, 0, &mut dense);
        for m in [1, 2, 3, 5, 8] {
            let x = activations(m, cols, 3 + m as u64);
            for kernel in Kernel::available() {
                let y = w.matmul_rows_with(kernel, &x, m);
                assert_eq!(y.len(), m * rows);
                for i in 0..m {
                    for r in 0..rows {
                        let (wr, xr) = (&dense[r * cols..(r + 1) * cols], &x[i * cols..(i + 1) * cols]);
                        let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let size: f64 = wr.iter().zip(xr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                        let err = (y[i * rows + r] as f64 - exact).abs();
                        assert!(
                            err <= 1e-5 * size + 1e-30,
                            "{ty:?} {kernel:?} m={m} row {r} of x {i}: {} vs {exact} (Σ|w·x| {size})",
                            y[i * rows + r]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_default_decode_path_is_the_detected_kernel() {
    // Q5_K: the 32-value block types, Q4_K and Q6_K dot in integers instead (tests/qdot_int16.rs).
    let w = random_weight(GgmlDType::Q5K, 64, 256, 4);
    let x = activations(2, 256, 5);
    assert_eq!(w.matmul_rows(&x, 2), w.matmul_rows_with(Kernel::detect(), &x, 2));
}
