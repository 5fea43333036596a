//! `ops::gelu_mul` beyond `ops.rs`'s comparison with the composite and its finite
//! differences: the f32 kernels (scalar always, AVX2 where present) against an f64
//! reference and against each other, forward and backward; the same bits with or without a
//! tracked gradient and however the input is split; the far tails and NaN.
//! `cargo test -p peft-core --test suite gelu_mul -- --nocapture` prints the errors.
use candle_core::{DType, Device, Tensor, Var};
use peft_core::ops::qdot::Kernel;
use peft_core::ops::{self, gelu_mul_backward_slices, gelu_mul_slices};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `(gelu, gelu', s(1 + |2x·u'·(1 − s)|))` in f64 from the sigmoid form; the last is the size
/// of gelu''s two terms, the scale its rounding is measured against (gelu' crosses zero).
/// The tanh form agrees where it does not cancel.
fn reference(x: f64) -> (f64, f64, f64) {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let (u, du) = (c * (x + 0.044715 * x * x * x), c * (1.0 + 3.0 * 0.044715 * x * x));
    let s = 1.0 / (1.0 + (-2.0 * u).exp());
    let term = if s == 0.0 || s == 1.0 { 0.0 } else { 2.0 * x * du * (1.0 - s) };
    let (gelu, dgelu) = (x * s, s * (1.0 + term));
    if (-5.0..50.0).contains(&x) {
        let t = u.tanh();
        let dtanh = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du;
        assert!((dtanh - dgelu).abs() <= 1e-12 * (1.0 + x.abs()), "the two forms of gelu'({x}) differ: {dtanh} vs {dgelu}");
    }
    (gelu, dgelu, s * (1.0 + term.abs()))
}

/// Random values in ±12 with the edges appended; 1045 in all, not a multiple of 8.
fn inputs(seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let edges =
        [0.0f32, -0.0, 1e-30, -1e-30, -0.7524614, 3.0, -3.0, 9.0, -9.0, 10.5, -10.5, 20.0, -20.0, 88.0, -88.0, 1e4, -1e4, 1e20, -1e20];
    let mut gate: Vec<f32> = (0..1026).map(|_| rng.random_range(-12.0f32..12.0)).collect();
    gate.extend(edges);
    let mut other = || (0..gate.len()).map(|i| if i % 5 == 0 { 1.0 } else { rng.random_range(-3.0f32..3.0) }).collect::<Vec<f32>>();
    let (up, grad) = (other(), other());
    (gate, up, grad)
}

fn run(kernel: Kernel, gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = gate.len();
    let (mut out, mut dgate, mut dup) = (vec![f32::NAN; n], vec![f32::NAN; n], vec![f32::NAN; n]);
    gelu_mul_slices(kernel, gate, up, &mut out);
    gelu_mul_backward_slices(kernel, gate, up, grad, &mut dgate, &mut dup);
    (out, dgate, dup)
}

#[test]
fn every_kernel_matches_f64_and_the_kernels_agree_within_ulps() {
    let (gate, up, grad) = inputs(7);
    let results: Vec<_> = Kernel::available().into_iter().map(|k| (k, run(k, &gate, &up, &grad))).collect();
    for (kernel, (out, dgate, dup)) in &results {
        let mut worst = [0f64; 3];
        for i in 0..gate.len() {
            let (x, u, g) = (gate[i] as f64, up[i] as f64, grad[i] as f64);
            let (gelu, dgelu, size) = reference(x);
            // Each f32 rounding of u is amplified by e^(−2u)'s slope, 2|u|; past x = −10 the
            // f32 exp saturates (results below 1e−37 of the inputs' size) and x is raised to −20.
            let amp = 3e-7 * (4.0 + 2.0 * (0.7979 * x * (1.0 + 0.044715 * x * x)).abs().min(100.0));
            let checks = [
                (out[i], gelu * u, gelu.abs() * u.abs(), 1e-37 * u.abs()),
                (dgate[i], dgelu * g * u, size * (g * u).abs(), 1e-34 * (g * u).abs()),
                (dup[i], gelu * g, gelu.abs() * g.abs(), 1e-37 * g.abs()),
            ];
            for (k, (got, want, scale, floor)) in checks.into_iter().enumerate() {
                let err = (got as f64 - want).abs();
                assert!(err <= amp * scale + floor + 1e-40, "{kernel:?} output {k} at gate {x}, up {u}, grad {g}: {got} vs {want}");
                worst[k] = worst[k].max(err / (scale + 1e-30));
            }
        }
        println!(
            "gelu_mul {kernel:?} vs f64 (relative to each value's size): out {:.1e}, dgate {:.1e}, dup {:.1e}",
            worst[0], worst[1], worst[2]
        );
    }
    // AVX2 against scalar: the same arithmetic in the same order but the exp (Cephes' 2 ulp
    // against the standard library's), so a few ulp of each value's size.
    if let [(_, a), (_, b)] = &results[..] {
        let mut worst = 0f64;
        for (i, &x) in gate.iter().enumerate() {
            let (gelu, _, size) = reference(x as f64);
            let scales = [gelu.abs() * up[i].abs() as f64, size * (grad[i] * up[i]).abs() as f64, gelu.abs() * grad[i].abs() as f64];
            for (k, ((va, vb), scale)) in [(&a.0, &b.0), (&a.1, &b.1), (&a.2, &b.2)].into_iter().zip(scales).enumerate() {
                let ulps = (va[i] as f64 - vb[i] as f64).abs() / (scale * f32::EPSILON as f64 + 1e-37);
                assert!(ulps <= 6.0, "output {k} at gate {x}: AVX2 {} vs scalar {} ({ulps:.1} ulp)", va[i], vb[i]);
                worst = worst.max(ulps);
            }
        }
        println!("gelu_mul AVX2 vs scalar: at most {worst:.2} ulp of each value's size");
    }
}

#[test]
fn the_forward_is_the_same_bits_tracked_or_not_and_however_split() {
    let mut rng = StdRng::seed_from_u64(3);
    // Two rayon blocks of 16K and a tail of 13 (not a whole vector).
    let n = 2 * 16384 + 13;
    let gate: Vec<f32> = (0..n).map(|_| rng.random_range(-12.0f32..12.0)).collect();
    let up: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
    let (g, u) = (Tensor::new(gate.as_slice(), &Device::Cpu).unwrap(), Tensor::new(up.as_slice(), &Device::Cpu).unwrap());
    let bits = |t: &Tensor| t.to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let plain = bits(&ops::gelu_mul(&g, &u).unwrap());
    let (gv, uv) = (Var::from_tensor(&g).unwrap(), Var::from_tensor(&u).unwrap());
    let tracked = ops::gelu_mul(gv.as_tensor(), uv.as_tensor()).unwrap();
    assert!(tracked.track_op(), "the tracked forward must record the op");
    assert_eq!(bits(&tracked), plain, "a tracked forward rounds differently");
    assert_eq!(bits(&ops::gelu_mul(gv.as_tensor(), &u).unwrap()), plain);
    // Pieces starting and ending anywhere in a vector, and across a block boundary.
    for (start, len) in [(0, 1), (1, 7), (3, 9), (5, 16), (8, 8), (13, 40), (16380, 9), (16379, 16390), (n - 5, 5)] {
        let piece = ops::gelu_mul(&g.narrow(0, start, len).unwrap(), &u.narrow(0, start, len).unwrap()).unwrap();
        assert_eq!(bits(&piece), plain[start..start + len], "piece {start}+{len}");
    }
    // Each kernel's backward likewise, on slices.
    let grad: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    for kernel in Kernel::available() {
        let whole = run(kernel, &gate, &up, &grad);
        for (start, len) in [(0, 3), (3, 8), (7, 21), (n - 11, 11)] {
            let r = start..start + len;
            let piece = run(kernel, &gate[r.clone()], &up[r.clone()], &grad[r.clone()]);
            for (k, (p, w)) in [(&piece.0, &whole.0), (&piece.1, &whole.1), (&piece.2, &whole.2)].into_iter().enumerate() {
                assert!(p.iter().zip(&w[r.clone()]).all(|(a, b)| a.to_bits() == b.to_bits()), "{kernel:?} output {k}, piece {start}+{len}");
            }
        }
    }
}

#[test]
fn f32_is_close_to_candles_gelu_forward_and_backward() {
    let (gate, up, grad) = inputs(11);
    let n = gate.len() - 19; // the random values; the edges include candle's NaN gradient at 1e20
    let t = |v: &[f32]| Tensor::new(&v[..n], &Device::Cpu).unwrap();
    let (gv, uv, r) = (Var::from_tensor(&t(&gate)).unwrap(), Var::from_tensor(&t(&up)).unwrap(), t(&grad));
    let mut results = vec![];
    for fused in [true, false] {
        let (g, u) = (gv.as_tensor(), uv.as_tensor());
        let out = if fused { ops::gelu_mul(g, u) } else { ops::composite::gelu_mul(g, u) }.unwrap();
        let store = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let v = |t: &Tensor| t.to_vec1::<f32>().unwrap();
        results.push([v(&out), v(store.get(g).unwrap()), v(store.get(u).unwrap())]);
    }
    // Absolute, relative to |gate·up| (resp. |grad·up|, |grad·gate|): candle's 1 + tanh(u)
    // cancels below x ≈ −5, so relative agreement is not expected there.
    let scales = |i: usize| [(gate[i] * up[i]).abs(), (grad[i] * up[i]).abs(), (grad[i] * gate[i]).abs()];
    let mut worst = [0f32; 3];
    for i in 0..n {
        for k in 0..3 {
            let err = (results[0][k][i] - results[1][k][i]).abs() / scales(i)[k].max(1e-30);
            assert!(err <= 2e-6, "output {k} at gate {}: fused {} vs candle {}", gate[i], results[0][k][i], results[1][k][i]);
            worst[k] = worst[k].max(err);
        }
    }
    println!(
        "gelu_mul f32 fused vs candle (relative to |gate·up|, |grad·up|, |grad·gate|): out {:.1e}, dgate {:.1e}, dup {:.1e}",
        worst[0], worst[1], worst[2]
    );
}

#[test]
fn tails_zero_and_nan_through_the_tensor_op_in_f32_and_f64() {
    let big = f32::MAX as f64;
    let gate = [0.0, -0.0, 1e-30, -1e-30, 20.0, 1e4, 1e20, big, -20.0, -25.0, -1e4, -1e20, -big, f64::NAN];
    for dtype in [DType::F32, DType::F64] {
        let g = Var::from_tensor(&Tensor::new(&gate, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let u = Var::from_tensor(&Tensor::full(0.5, gate.len(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let out = ops::gelu_mul(g.as_tensor(), u.as_tensor()).unwrap();
        let store = out.sum_all().unwrap().backward().unwrap();
        let v = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        let (out, dgate, dup) = (v(&out), v(store.get(g.as_tensor()).unwrap()), v(store.get(u.as_tensor()).unwrap()));
        for (i, &x) in gate.iter().enumerate() {
            let x = if dtype == DType::F32 { x as f32 as f64 } else { x };
            let what = format!("{dtype:?} gelu_mul({x}, 0.5): out {}, dgate {}, dup {}", out[i], dgate[i], dup[i]);
            if x.is_nan() {
                assert!(out[i].is_nan() && dgate[i].is_nan() && dup[i].is_nan(), "{what}");
            } else if x.abs() <= 1e-20 {
                // gelu(x) = x/2 and gelu' = ½ to within x²: exact in floats.
                assert!(out[i] == x / 4.0 && dgate[i] == 0.25 && dup[i] == x / 2.0, "{what}");
            } else if x > 0.0 {
                // gelu(x) = x, gelu' = 1 exactly in floats (e^(−2u) < 1e−100).
                assert!(out[i] == x / 2.0 && dgate[i] == 0.5 && dup[i] == x, "{what}");
            } else {
                // Below 1e−261 exactly; the f32 exp saturates at e^88.3, leaving under 1e−37.
                let (tiny, tiny_grad) = if dtype == DType::F32 { (1e-37, 1e-34) } else { (1e-255, 1e-252) };
                assert!(out[i].abs() <= tiny && dup[i].abs() <= tiny && dgate[i].abs() <= tiny_grad, "{what}");
            }
        }
    }
}
