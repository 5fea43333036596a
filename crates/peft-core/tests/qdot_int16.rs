//! The integer decode dots of `ops::qdot::int16` and `int16_k`: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//! Q4_K and Q6_K weight rows against activations rounded to 16 bits per 32-value block. On random and edge blocks
//! (saturated quants, extreme f16 scales and offsets, 7 blocks and 1 block per row, 1–8
//! activation rows) each kernel this CPU runs (scalar always, AVX2 where present) gives the
//! product with the rounded activations, computed in f64, to f32 precision; the rounding
//! itself stays within half a step (`amax / 65534` per block) of each activation, so the
//! result is within `Σ |w| · amax / 65534` of the f32 activations' product.
use candle_core::quantized::GgmlDType;
use half::f16;
use peft_core::model::QWeight;
use peft_core::ops::qdot::{Kernel, Q16Rows};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: [GgmlDType; 5] = [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q5_1, GgmlDType::Q8_0];

/// Whether `ty` has an f16 offset after its scale (ggml's `_1` layouts: d, m, ...).
fn has_offset(ty: GgmlDType) -> bool {
    matches!(ty, GgmlDType::Q4_1 | GgmlDType::Q5_1)
}

/// Block bytes of `rows × cols` values of `ty`: random quants, every third block saturated
/// (0x7F / 0x80 / 0xFF bytes), scales random or extreme (f16::MAX, its negative, the smallest
/// subnormal, zero), offsets random or extreme; and each block's offset (0 without one).
fn blocks(ty: GgmlDType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f64>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ts = ty.type_size();
    let mut bytes = vec![0u8; rows * cols / 32 * ts];
    let mut offsets = Vec::new();
    for (b, block) in bytes.chunks_mut(ts).enumerate() {
        match b % 3 {
            0 => block.fill([0x7F, 0x80, 0xFF][(b / 3) % 3]),
            _ => rng.fill(block),
        }
        let d = [f16::MAX, f16::MIN, f16::from_bits(1), f16::ZERO].get(b % 13).copied();
        let d = d.unwrap_or_else(|| f16::from_f32(rng.random_range(-0.1..0.1)));
        block[..2].copy_from_slice(&d.to_bits().to_le_bytes());
        let m = match (has_offset(ty), b % 7) {
            (false, _) => f16::ZERO,
            (true, 0) => f16::MAX,
            (true, 1) => f16::MIN,
            (true, 2) => f16::ZERO,
            _ => f16::from_f32(rng.random_range(-1.0..1.0)),
        };
        if has_offset(ty) {
            block[2..4].copy_from_slice(&m.to_bits().to_le_bytes());
        }
        offsets.push(m.to_f64());
    }
    (bytes, offsets)
}

/// `m` rows of `cols` activations: random, with edge blocks (all zero; one large value among
/// tiny ones; equal magnitudes, so every value rounds to ±32767).
fn activations(m: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x: Vec<f32> = (0..m * cols).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    for (b, block) in x.chunks_mut(32).enumerate() {
        match b % 5 {
            1 => block.fill(0.0),
            2 => {
                block.iter_mut().for_each(|v| *v *= 1e-4);
                block[b % 32] = 300.0;
            }
            3 => block.iter_mut().enumerate().for_each(|(j, v)| *v = if j % 3 == 0 { -0.75 } else { 0.75 }),
            _ => {}
        }
    }
    x
}

const K_TYPES: [GgmlDType; 2] = [GgmlDType::Q4K, GgmlDType::Q6K];

/// Where a k-quant super-block keeps its f16 scale `d` and (Q4_K) `dmin`: ggml's layouts.
fn k_scale_offsets(ty: GgmlDType) -> (usize, Option<usize>) {
    match ty {
        GgmlDType::Q4K => (0, Some(2)),
        _ => (208, None),
    }
}

/// Super-block bytes of `rows × cols` values of `ty`: random, every third one saturated
/// (0xFF / 0x00 / 0x80 bytes: the largest 6-bit scales and mins, i8 scales −1, 0, −128),
/// every fifth with scale bytes 0x7F (Q6_K's largest positive scale); f16 scales random or
/// extreme (f16::MAX, its negative, the smallest subnormal, zero).
fn k_blocks(ty: GgmlDType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let ts = ty.type_size();
    let (d_at, dmin_at) = k_scale_offsets(ty);
    let mut bytes = vec![0u8; rows * cols / 256 * ts];
    for (b, block) in bytes.chunks_mut(ts).enumerate() {
        match b % 3 {
            0 => block.fill([0xFF, 0x00, 0x80][(b / 3) % 3]),
            _ => rng.fill(block),
        }
        if b % 5 == 4 && ty == GgmlDType::Q6K {
            block[192..208].fill(0x7F);
        }
        for (at, e) in [(Some(d_at), b), (dmin_at, b / 2)] {
            let Some(at) = at else { continue };
            let d = [f16::MAX, f16::MIN, f16::from_bits(1), f16::ZERO].get(e % 11).copied();
            let d = d.unwrap_or_else(|| f16::from_f32(rng.random_range(-0.1..0.1)));
            block[at..at + 2].copy_from_slice(&d.to_bits().to_le_bytes());
        }
    }
    bytes
}

/// Each weight of `bytes` as its two exact parts, `s · q` and `−o` (zero for Q6_K), by
/// candle's dequantizer: the blocks with `dmin` zeroed give `s · q`, with `d` zeroed `−o`.
fn k_parts(ty: GgmlDType, rows: usize, cols: usize, bytes: &[u8]) -> (Vec<f32>, Vec<f32>) {
    let (d_at, dmin_at) = k_scale_offsets(ty);
    let part = |zero: Option<usize>| {
        let mut b = bytes.to_vec();
        if let Some(at) = zero {
            b.chunks_mut(ty.type_size()).for_each(|blk| blk[at..at + 2].fill(0));
        }
        let mut out = vec![0f32; rows * cols];
        QWeight::from_bytes("w", ty, rows, cols, &b).unwrap().dequantize_rows_with(Kernel::Scalar, 0, &mut out);
        out
    };
    let scaled = part(dmin_at);
    let offsets = if dmin_at.is_some() { part(Some(d_at)) } else { vec![0f32; rows * cols] };
    (scaled, offsets)
}

#[test]
fn int16_kquant_decode_dots_equal_the_rounded_product_for_every_kernel() {
    for ty in K_TYPES {
        // 3 super-blocks per row (odd) and 1.
        for cols in [768, 256] {
            let rows = 23;
            let bytes = k_blocks(ty, rows, cols, 17 + cols as u64);
            let w = QWeight::from_bytes("w", ty, rows, cols, &bytes).unwrap();
            let (scaled, offsets) = k_parts(ty, rows, cols, &bytes);
            for m in 1..=6 {
                let x = activations(m, cols, 40 + m as u64);
                let xr = Q16Rows::quantize(&x, m).values();
                for kernel in Kernel::available() {
                    let y = w.matmul_rows_int(kernel, &x, m).expect("an integer path for Q4_K and Q6_K");
                    assert_eq!(y.len(), m * rows);
                    for i in 0..m {
                        let xri = &xr[i * cols..(i + 1) * cols];
                        for r in 0..rows {
                            let terms = scaled[r * cols..(r + 1) * cols].iter().zip(&offsets[r * cols..]).zip(xri);
                            let (mut rounded, mut size) = (0f64, 0f64);
                            for ((&s, &o), &v) in terms {
                                rounded += (s as f64 + o as f64) * v;
                                size += (s as f64).abs() * v.abs() + (o as f64).abs() * v.abs();
                            }
                            let got = y[i * rows + r] as f64;
                            let at = format!("{ty:?} {kernel:?} cols={cols} m={m} row {r} of x {i}");
                            assert!((got - rounded).abs() <= 1e-6 * size + 1e-30, "{at}: {got} vs {rounded} (size {size})");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn int16_activations_round_to_within_half_a_step() {
    let x = activations(3, 224, 1);
    let r = Q16Rows::quantize(&x, 3);
    assert_eq!(r.rows(), 3);
    for (xs, rs) in x.chunks(32).zip(r.values().chunks(32)) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
        for (&v, &q) in xs.iter().zip(rs) {
            assert!((v as f64 - q).abs() <= amax / 65534.0 * (1.0 + 1e-6), "{v} rounded to {q} (block max {amax})");
        }
        // The largest magnitude takes the whole range.
        let top = rs.iter().fold(0f64, |a, v| a.max(v.abs()));
        assert!((top - amax).abs() <= amax * 1e-6, "block max {amax} became {top}");
    }
}

#[test]
fn int16_decode_dots_equal_the_rounded_product_for_every_kernel() {
    for ty in TYPES {
        // 7 blocks (odd: the last block goes to the even accumulator alone) and 1 block.
        for cols in [224, 32] {
            let rows = 53;
            let (bytes, offsets) = blocks(ty, rows, cols, 11 + cols as u64);
            let w = QWeight::from_bytes("w", ty, rows, cols, &bytes).unwrap();
            let mut dense = vec![0f32; rows * cols];
            w.dequantize_rows_with(Kernel::Scalar, 0, &mut dense);
            // d · q alone (exact in f32): the same blocks with their offsets zeroed.
            let mut scaled = bytes.clone();
            if has_offset(ty) {
                scaled.chunks_mut(ty.type_size()).for_each(|b| b[2..4].fill(0));
            }
            let mut dq = vec![0f32; rows * cols];
            QWeight::from_bytes("w", ty, rows, cols, &scaled).unwrap().dequantize_rows_with(Kernel::Scalar, 0, &mut dq);
            for m in 1..=8 {
                let x = activations(m, cols, m as u64);
                let xr = Q16Rows::quantize(&x, m).values();
                for kernel in Kernel::available() {
                    let y = w.matmul_rows_int(kernel, &x, m).expect("an integer path for the 32-value block types");
                    assert_eq!(y.len(), m * rows);
                    for i in 0..m {
                        for r in 0..rows {
                            let (xi, xri) = (&x[i * cols..(i + 1) * cols], &xr[i * cols..(i + 1) * cols]);
                            let (wr, dqr) = (&dense[r * cols..(r + 1) * cols], &dq[r * cols..(r + 1) * cols]);
                            let offs = &offsets[r * cols / 32..(r + 1) * cols / 32];
                            // Σ d·q·x̂ + Σ_blocks m · Σ x̂, and the size of its terms.
                            let mut rounded: f64 = dqr.iter().zip(xri).map(|(a, b)| *a as f64 * b).sum();
                            let mut size: f64 = dqr.iter().zip(xri).map(|(a, b)| (*a as f64 * b).abs()).sum();
                            for (off, xb) in offs.iter().zip(xri.chunks(32)) {
                                rounded += off * xb.iter().sum::<f64>();
                                size += off.abs() * xb.iter().map(|v| v.abs()).sum::<f64>();
                            }
                            let got = y[i * rows + r] as f64;
                            let at = format!("{ty:?} {kernel:?} cols={cols} m={m} row {r} of x {i}");
                            assert!((got - rounded).abs() <= 1e-6 * size + 1e-30, "{at}: {got} vs {rounded} (size {size})");
                            // Against the f32 activations: half a step per value, at most.
                            let exact: f64 = wr.iter().zip(xi).map(|(a, b)| *a as f64 * *b as f64).sum();
                            let bound: f64 = wr
                                .chunks(32)
                                .zip(xi.chunks(32))
                                .map(|(wb, xb)| {
                                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                                    wb.iter().map(|v| (*v as f64).abs()).sum::<f64>() * amax / 65534.0
                                })
                                .sum();
                            let slack = 1e-6 * (size + wr.iter().zip(xi).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>());
                            assert!((rounded - exact).abs() <= bound + slack, "{at}: rounded {rounded} vs {exact}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_default_decode_path_of_32_value_blocks_is_the_integer_one() {
    for ty in TYPES {
        let (bytes, _) = blocks(ty, 40, 96, 3);
        let w = QWeight::from_bytes("w", ty, 40, 96, &bytes).unwrap();
        let x = activations(2, 96, 4);
        assert_eq!(w.matmul_rows(&x, 2), w.matmul_rows_int(Kernel::detect(), &x, 2).unwrap(), "{ty:?}");
    }
    for ty in K_TYPES {
        let w = QWeight::from_bytes("w", ty, 40, 512, &k_blocks(ty, 40, 512, 5)).unwrap();
        let x = activations(2, 512, 4);
        assert_eq!(w.matmul_rows(&x, 2), w.matmul_rows_int(Kernel::detect(), &x, 2).unwrap(), "{ty:?}");
    }
    // The other k-quants keep f32 activations.
    let w = QWeight::from_bytes("w", GgmlDType::Q5K, 2, 256, &vec![0u8; 2 * 176]).unwrap();
    assert!(w.matmul_rows_int(Kernel::detect(), &activations(1, 256, 6), 1).is_none());
}

#[test]
fn a_nan_activation_makes_its_dots_nan() {
    let (bytes, _) = blocks(GgmlDType::Q8_0, 6, 64, 7);
    let w = QWeight::from_bytes("w", GgmlDType::Q8_0, 6, 64, &bytes).unwrap();
    let mut x = activations(1, 64, 8);
    x[40] = f32::NAN;
    for kernel in Kernel::available() {
        let y = w.matmul_rows_int(kernel, &x, 1).unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "{kernel:?}: {y:?}");
    }
}
