//! The fused ops against `ops::composite`: forward values, gradients through
//! `backward()`, finite differences in f64, and checks that gradients are never cut.
//! Errors are normwise: max |fused - reference| / max |reference|.
//! `cargo test -p peft-core --test ops -- --nocapture` prints the largest errors.
use candle_core::{DType, Device, Result, Tensor, Var, D};
use peft_core::ops::{self, composite};

/// splitmix64: deterministic inputs without a seeded-RNG dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-scale, scale).
    fn tensor(&mut self, dims: &[usize], scale: f64, dtype: DType) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f64> = (0..n).map(|_| ((self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0) * scale).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn rel_err(got: &Tensor, want: &Tensor) -> f64 {
    rel_err_floor(got, want, f64::MIN_POSITIVE)
}

/// Normwise error, with at least `floor` as the reference's scale.
fn rel_err_floor(got: &Tensor, want: &Tensor, floor: f64) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let (a, b) = (values(got), values(want));
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(floor);
    a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-12
    } else {
        1e-5
    }
}

/// `run(fused, inputs)`.
type RunFn = dyn Fn(bool, &[Tensor]) -> Result<Tensor>;

/// One input configuration of one op: `run(fused, inputs)` builds the op's inputs from
/// `bases` (views: transposes, narrows) and applies the fused or the composite version.
struct Case {
    name: String,
    bases: Vec<Tensor>,
    run: Box<RunFn>,
    /// The f64 gradients' tolerance against the composite's, when not [`tol`]'s.
    grad_tol_f64: Option<f64>,
}

#[derive(Default)]
struct MaxErr {
    fwd: f64,
    grad: f64,
    fd: f64,
}

/// How the loss reads the op's output, so the backward sees several gradient layouts.
#[derive(Clone, Copy)]
enum Loss<'a> {
    /// `sum(out * r)`: a contiguous output gradient `r`.
    Weighted(&'a Tensor),
    /// `sum(out^T * r^T)`: a transposed (strided) output gradient.
    Transposed(&'a Tensor),
    /// `sum(out)`: sum_all's broadcast gradient, stride 0 everywhere.
    Sum,
}

fn grads(case: &Case, fused: bool, loss: Loss) -> Vec<Tensor> {
    let vars: Vec<Var> = case.bases.iter().map(|b| Var::from_tensor(b).unwrap()).collect();
    let xs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = (case.run)(fused, &xs).unwrap();
    let loss = match loss {
        Loss::Weighted(r) => (&out * r).unwrap(),
        Loss::Transposed(r) => (out.t().unwrap() * r.t().unwrap()).unwrap(),
        Loss::Sum => out,
    };
    let store = loss.sum_all().unwrap().backward().unwrap();
    vars.iter().map(|v| store.get(v.as_tensor()).expect("no gradient reached an input").clone()).collect()
}

/// Forward and gradients against the composite, and (in f64) central differences.
fn check(case: &Case, rng: &mut Rng, max: &mut MaxErr) {
    let dtype = case.bases[0].dtype();
    let want = (case.run)(false, &case.bases).unwrap();
    let got = (case.run)(true, &case.bases).unwrap();
    assert_eq!(got.dtype(), want.dtype(), "{}", case.name);
    let e = rel_err(&got, &want);
    assert!(e < tol(dtype), "{}: forward error {e:e}", case.name);
    max.fwd = max.fwd.max(e);

    let r = rng.tensor(got.dims(), 1.0, got.dtype());
    let mut losses = vec![Loss::Weighted(&r), Loss::Sum];
    if got.rank() >= 2 {
        losses.push(Loss::Transposed(&r));
    }
    for loss in losses {
        let (gf, gc) = (grads(case, true, loss), grads(case, false, loss));
        // sum(softmax) is constant: its true gradient is 0, so compare absolutely there.
        let floor = if matches!(loss, Loss::Sum) { 1.0 } else { f64::MIN_POSITIVE };
        let grad_tol = case.grad_tol_f64.filter(|_| dtype == DType::F64).unwrap_or(tol(dtype));
        for (i, (f, c)) in gf.iter().zip(&gc).enumerate() {
            let e = rel_err_floor(f, c, floor);
            assert!(e < grad_tol, "{}: gradient {i} error {e:e}", case.name);
            max.grad = max.grad.max(e);
        }
    }

    if dtype != DType::F64 {
        return;
    }
    // d/dx_k of sum(op(x) * r): (op(x + h e_k) - op(x - h e_k)) * r summed, over 2h.
    // Error relative to |analytic|, but at least a tenth of the gradient's largest entry
    // (the loss's rounding, ~1e-16 |loss| / h, swamps much smaller entries).
    let analytic = grads(case, true, Loss::Weighted(&r));
    let h = 1e-6;
    for (i, base) in case.bases.iter().enumerate() {
        let flat = values(base);
        let an_all = values(&analytic[i]);
        let scale = an_all.iter().fold(f64::MIN_POSITIVE, |m, v| m.max(0.1 * v.abs()));
        for _ in 0..4 {
            let k = rng.below(flat.len());
            let shifted = |d: f64| {
                let mut v = flat.clone();
                v[k] += d;
                let mut xs = case.bases.clone();
                xs[i] = Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap();
                (case.run)(true, &xs).unwrap()
            };
            let diff = (shifted(h) - shifted(-h)).unwrap();
            let fd = values(&(diff * &r).unwrap().sum_all().unwrap())[0] / (2.0 * h);
            let an = an_all[k];
            let e = (fd - an).abs() / an.abs().max(scale);
            assert!(e < 1e-6, "{}: input {i}[{k}] finite difference {fd} vs {an}", case.name);
            max.fd = max.fd.max(e);
        }
    }
}

fn check_all(op: &str, cases: impl Fn(&mut Rng, DType) -> Vec<Case>) {
    let mut rng = Rng(0x5eed);
    for dtype in [DType::F32, DType::F64] {
        let mut max = MaxErr::default();
        for case in cases(&mut rng, dtype) {
            check(&case, &mut rng, &mut max);
        }
        println!("{op} {dtype:?}: forward {:.1e}, grads {:.1e}, finite differences {:.1e}", max.fwd, max.grad, max.fd);
    }
}

fn case(name: &str, bases: Vec<Tensor>, run: impl Fn(bool, &[Tensor]) -> Result<Tensor> + 'static) -> Case {
    Case { name: name.into(), bases, run: Box::new(run), grad_tol_f64: None }
}

#[test]
fn rms_norm_matches_composite() {
    check_all("rms_norm", |rng, dt| {
        let op = |fused: bool, x: &Tensor, w: &Tensor| {
            if fused {
                ops::rms_norm(x, w, 1e-5)
            } else {
                composite::rms_norm(x, w, 1e-5)
            }
        };
        vec![
            case("rms 2d", vec![rng.tensor(&[5, 16], 2.0, dt), rng.tensor(&[16], 1.0, dt)], move |f, xs| op(f, &xs[0], &xs[1])),
            case("rms 3d", vec![rng.tensor(&[2, 7, 64], 3.0, dt), rng.tensor(&[64], 1.0, dt)], move |f, xs| op(f, &xs[0], &xs[1])),
            case("rms transposed", vec![rng.tensor(&[2, 24, 5], 1.0, dt), rng.tensor(&[24], 1.0, dt)], move |f, xs| {
                op(f, &xs[0].transpose(1, 2)?, &xs[1])
            }),
            case("rms narrowed", vec![rng.tensor(&[3, 4, 40], 1.0, dt), rng.tensor(&[48], 1.0, dt)], move |f, xs| {
                op(f, &xs[0].narrow(2, 3, 32)?, &xs[1].narrow(0, 8, 32)?)
            }),
            // 600 rows of 40: several rayon tasks, so several dweight partial sums.
            case("rms many rows", vec![rng.tensor(&[600, 40], 1.0, dt), rng.tensor(&[40], 1.0, dt)], move |f, xs| op(f, &xs[0], &xs[1])),
        ]
    });
}

/// cos/sin of real RoPE angles, [b, t, d/2].
fn cos_sin(b: usize, t: usize, d: usize, dt: DType) -> (Tensor, Tensor) {
    let half = d / 2;
    let angles: Vec<f64> =
        (0..b * t * half).map(|i| ((i / half) % t + i / (t * half)) as f64 / 10000f64.powf((i % half) as f64 / half as f64)).collect();
    let a = Tensor::from_vec(angles, (b, t, half), &Device::Cpu).unwrap();
    (a.cos().unwrap().to_dtype(dt).unwrap(), a.sin().unwrap().to_dtype(dt).unwrap())
}

#[test]
fn rope_matches_composite() {
    check_all("rope", |rng, dt| {
        let op = |fused: bool, x: &Tensor, c: &Tensor, s: &Tensor| {
            if fused {
                ops::rope(x, c, s)
            } else {
                composite::rope(x, c, s)
            }
        };
        let (c1, s1) = cos_sin(1, 5, 8, dt);
        let (c2, s2) = cos_sin(2, 6, 16, dt);
        let (c3, s3) = (c2.clone(), s2.clone());
        let (c4, s4) = cos_sin(1, 6, 16, dt);
        vec![
            case("rope 1 head", vec![rng.tensor(&[1, 1, 5, 8], 1.0, dt)], move |f, xs| op(f, &xs[0], &c1, &s1)),
            case("rope heads", vec![rng.tensor(&[2, 3, 6, 16], 1.0, dt)], move |f, xs| op(f, &xs[0], &c2, &s2)),
            // [b, t, h, d] -> [b, h, t, d], as attention produces q and k.
            case("rope transposed", vec![rng.tensor(&[2, 6, 3, 16], 1.0, dt)], move |f, xs| op(f, &xs[0].transpose(1, 2)?, &c3, &s3)),
            case("rope broadcast cos", vec![rng.tensor(&[2, 3, 6, 16], 1.0, dt)], move |f, xs| op(f, &xs[0], &c4, &s4)),
        ]
    });
}

#[test]
fn softmax_matches_composite() {
    check_all("softmax", |rng, dt| {
        let op = |fused: bool, x: &Tensor| {
            if fused {
                ops::softmax_last_dim(x)
            } else {
                composite::softmax_last_dim(x)
            }
        };
        vec![
            case("softmax 2d", vec![rng.tensor(&[5, 9], 2.0, dt)], move |f, xs| op(f, &xs[0])),
            case("softmax 4d", vec![rng.tensor(&[2, 3, 4, 7], 2.0, dt)], move |f, xs| op(f, &xs[0])),
            case("softmax large logits", vec![rng.tensor(&[3, 33], 30.0, dt)], move |f, xs| op(f, &xs[0])),
            case("softmax transposed", vec![rng.tensor(&[2, 7, 3], 1.0, dt)], move |f, xs| op(f, &xs[0].transpose(1, 2)?)),
            case("softmax many rows", vec![rng.tensor(&[300, 70], 1.0, dt)], move |f, xs| op(f, &xs[0])),
        ]
    });
}

#[test]
fn silu_mul_matches_composite() {
    check_all("silu_mul", |rng, dt| {
        let op = |fused: bool, g: &Tensor, u: &Tensor| {
            if fused {
                ops::silu_mul(g, u)
            } else {
                composite::silu_mul(g, u)
            }
        };
        vec![
            case("silu 2d", vec![rng.tensor(&[4, 33], 4.0, dt), rng.tensor(&[4, 33], 1.0, dt)], move |f, xs| op(f, &xs[0], &xs[1])),
            case("silu strided", vec![rng.tensor(&[2, 17, 5], 4.0, dt), rng.tensor(&[2, 5, 20], 1.0, dt)], move |f, xs| {
                op(f, &xs[0].transpose(1, 2)?, &xs[1].narrow(2, 1, 17)?)
            }),
            // Several rayon blocks of 16K elements.
            case("silu large", vec![rng.tensor(&[40, 1000], 6.0, dt), rng.tensor(&[40, 1000], 1.0, dt)], move |f, xs| {
                op(f, &xs[0], &xs[1])
            }),
        ]
    });
}

#[test]
fn gelu_mul_matches_composite() {
    check_all("gelu_mul", |rng, dt| {
        let op = |fused: bool, g: &Tensor, u: &Tensor| {
            if fused {
                ops::gelu_mul(g, u)
            } else {
                composite::gelu_mul(g, u)
            }
        };
        // The zero of gelu' (−0.7525), both tails (gelu' 0 and 1), and 0 (gelu' exactly ½).
        let edges = [0.0, -0.0, 1e-30, -0.7524614, 0.5, -3.0, 3.0, -9.0, 9.0, -20.0, 20.0, -30.0, 12.5, -1e-3, 1e-3, 2.0];
        let edges = Tensor::new(&edges, &Device::Cpu).unwrap().reshape((2, 8)).unwrap().to_dtype(dt).unwrap();
        let cases = vec![
            case("gelu 2d", vec![rng.tensor(&[4, 33], 6.0, dt), rng.tensor(&[4, 33], 1.0, dt)], move |f, xs| op(f, &xs[0], &xs[1])),
            case("gelu strided", vec![rng.tensor(&[2, 17, 5], 6.0, dt), rng.tensor(&[2, 5, 20], 1.0, dt)], move |f, xs| {
                op(f, &xs[0].transpose(1, 2)?, &xs[1].narrow(2, 1, 17)?)
            }),
            // Several rayon blocks of 16K elements, and a tail that is not a whole vector.
            case("gelu large", vec![rng.tensor(&[40, 1001], 8.0, dt), rng.tensor(&[40, 1001], 1.0, dt)], move |f, xs| {
                op(f, &xs[0], &xs[1])
            }),
            case("gelu edges", vec![edges, rng.tensor(&[2, 8], 1.0, dt)], move |f, xs| op(f, &xs[0], &xs[1])),
        ];
        // candle's gelu backward writes its constants to six digits (0.797885 for √(2/π),
        // 0.398942, 0.0535161): its f64 gradient is itself off by about 2e-7. The fused
        // gradients are checked exactly by the finite differences (1e-6, in `check`).
        cases.into_iter().map(|c| Case { grad_tol_f64: Some(1e-6), ..c }).collect()
    });
}

fn targets(rng: &mut Rng, n: usize, vocab: usize) -> Tensor {
    let t: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    Tensor::new(t, &Device::Cpu).unwrap()
}

/// Weights in [0.5, 1.5) with every third row ignored (0).
fn ce_weights(rng: &mut Rng, n: usize, dt: DType) -> Tensor {
    let w = (rng.tensor(&[n], 0.5, DType::F64) + 1.0).unwrap();
    let mask: Vec<f64> = (0..n).map(|i| if i % 3 == 1 { 0.0 } else { 1.0 }).collect();
    (w * Tensor::new(mask, &Device::Cpu).unwrap()).unwrap().to_dtype(dt).unwrap()
}

#[test]
fn cross_entropy_matches_composite() {
    check_all("cross_entropy", |rng, dt| {
        let op = |fused: bool, l: &Tensor, t: &Tensor, w: &Tensor| {
            if fused {
                ops::cross_entropy_sum(l, t, w)
            } else {
                composite::cross_entropy_sum(l, t, w)
            }
        };
        let (t1, w1) = (targets(rng, 6, 50), ce_weights(rng, 6, dt));
        let (t2, w2) = (t1.clone(), w1.clone());
        let (t3, w3) = (t1.clone(), w1.clone());
        let (t4, w4) = (targets(rng, 40, 3000), ce_weights(rng, 40, dt));
        vec![
            case("ce", vec![rng.tensor(&[6, 50], 3.0, dt)], move |f, xs| op(f, &xs[0], &t1, &w1)),
            case("ce column-major", vec![rng.tensor(&[50, 6], 3.0, dt)], move |f, xs| op(f, &xs[0].t()?, &t2, &w2)),
            case("ce narrowed", vec![rng.tensor(&[6, 60], 3.0, dt)], move |f, xs| op(f, &xs[0].narrow(1, 5, 50)?, &t3, &w3)),
            case("ce large vocab", vec![rng.tensor(&[40, 3000], 8.0, dt)], move |f, xs| op(f, &xs[0], &t4, &w4)),
        ]
    });
}

#[test]
fn cross_entropy_weights_get_gradients_too() {
    let mut rng = Rng(7);
    for dt in [DType::F32, DType::F64] {
        let (logits, t) = (rng.tensor(&[5, 20], 2.0, dt), targets(&mut rng, 5, 20));
        let w = ce_weights(&mut rng, 5, dt);
        let c = case("ce weights", vec![logits, w], move |f, xs| {
            if f {
                ops::cross_entropy_sum(&xs[0], &t, &xs[1])
            } else {
                composite::cross_entropy_sum(&xs[0], &t, &xs[1])
            }
        });
        check(&c, &mut rng, &mut MaxErr::default());
    }
}

#[test]
fn cross_entropy_ignored_rows_get_zero_gradient() {
    let mut rng = Rng(11);
    for dt in [DType::F32, DType::F64] {
        let (n, vocab) = (9, 40);
        let logits = Var::from_tensor(&rng.tensor(&[n, vocab], 3.0, dt)).unwrap();
        let w = ce_weights(&mut rng, n, dt);
        let loss = ops::cross_entropy_sum(logits.as_tensor(), &targets(&mut rng, n, vocab), &w).unwrap();
        let grad = loss.backward().unwrap().get(logits.as_tensor()).unwrap().clone();
        let row_abs = values(&grad.abs().unwrap().sum(D::Minus1).unwrap());
        for (i, (&g, &w)) in row_abs.iter().zip(&values(&w)).enumerate() {
            if w == 0.0 {
                assert_eq!(g, 0.0, "ignored row {i} has a gradient");
            } else {
                assert!(g > 0.0, "row {i} has no gradient");
            }
        }
        // Each kept row's gradient sums to 0 (softmax minus one-hot).
        let row_sum = values(&grad.sum(D::Minus1).unwrap());
        assert!(row_sum.iter().all(|s| s.abs() < 1e-6), "{row_sum:?}");
    }
}

/// A fused op is one node of the autograd graph (the composite is many), so these
/// tests exercise the fused kernels and not a silent fallback.
#[test]
fn fused_ops_are_single_graph_nodes() {
    let mut rng = Rng(3);
    let var = |dims: &[usize], rng: &mut Rng| Var::from_tensor(&rng.tensor(dims, 1.0, DType::F32)).unwrap();
    let (x, w) = (var(&[2, 3, 4, 8], &mut rng), var(&[8], &mut rng));
    let (c, s) = cos_sin(2, 4, 8, DType::F32);
    let l = var(&[4, 10], &mut rng);
    let (t, cw) = (targets(&mut rng, 4, 10), ce_weights(&mut rng, 4, DType::F32));
    let (x, w, l) = (x.as_tensor(), w.as_tensor(), l.as_tensor());
    let nodes = |t: Tensor| t.sorted_nodes().len();
    assert_eq!(nodes(ops::rms_norm(x, w, 1e-5).unwrap()), 3);
    assert_eq!(nodes(ops::rope(x, &c, &s).unwrap()), 2);
    assert_eq!(nodes(ops::softmax_last_dim(x).unwrap()), 2);
    assert_eq!(nodes(ops::silu_mul(x, x).unwrap()), 2);
    assert_eq!(nodes(ops::gelu_mul(x, x).unwrap()), 2);
    assert_eq!(nodes(ops::cross_entropy_sum(l, &t, &cw).unwrap()), 2);
    let mask = Tensor::zeros((2, 1, 4, 8), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(nodes(ops::scaled_masked_softmax(x, &mask, 0.5).unwrap()), 2);
    // x as [b, kv_heads 3, rep 1 * t 4, hd 8] queries and keys: q, k (one var) and the op.
    assert_eq!(nodes(ops::attention_probs(x, x, &mask.narrow(3, 0, 4).unwrap(), 0.5, 3).unwrap()), 2);
    let (u, bw) = (var(&[2, 3, 4, 2], &mut rng), var(&[8, 2], &mut rng));
    assert_eq!(nodes(ops::lora_add(x, u.as_tensor(), bw.as_tensor(), 2.0).unwrap()), 4);
    assert!(nodes(composite::rms_norm(x, w, 1e-5).unwrap()) > 3);
    assert!(nodes(composite::softmax_last_dim(x).unwrap()) > 2);
}

/// rms_norm -> rope -> softmax -> silu_mul -> cross_entropy: every input that should
/// get a gradient gets a non-zero one, equal to the composite chain's.
#[test]
fn gradients_flow_through_chained_fused_ops() {
    let mut rng = Rng(5);
    let (b, h, t, d) = (2, 3, 5, 8);
    let (c, s) = cos_sin(b, t, d, DType::F64);
    let tg = targets(&mut rng, b * h * t, d);
    let cw = (rng.tensor(&[b * h * t], 0.5, DType::F64) + 1.0).unwrap();
    let chain = move |fused: bool, xs: &[Tensor]| -> Result<Tensor> {
        let (x, w, up) = (&xs[0], &xs[1], &xs[2]);
        let o = if fused { ops::rms_norm(x, w, 1e-5)? } else { composite::rms_norm(x, w, 1e-5)? };
        let o = o.reshape((b, t, h, d))?.transpose(1, 2)?;
        let o = if fused { ops::rope(&o, &c, &s)? } else { composite::rope(&o, &c, &s)? };
        let o = if fused { ops::softmax_last_dim(&o)? } else { composite::softmax_last_dim(&o)? };
        let o = if fused { ops::silu_mul(&(o * 4.0)?, up)? } else { composite::silu_mul(&(o * 4.0)?, up)? };
        let o = o.flatten_to(2)?;
        if fused {
            ops::cross_entropy_sum(&o, &tg, &cw)
        } else {
            composite::cross_entropy_sum(&o, &tg, &cw)
        }
    };
    let case = case(
        "chain",
        vec![
            rng.tensor(&[b, t, h * d], 1.0, DType::F64),
            rng.tensor(&[h * d], 1.0, DType::F64),
            rng.tensor(&[b, h, t, d], 2.0, DType::F64),
        ],
        chain,
    );
    for (i, g) in grads(&case, true, Loss::Sum).iter().enumerate() {
        assert!(values(g).iter().all(|v| v.is_finite()), "input {i}: non-finite gradient");
        let zeros = values(g).iter().filter(|v| **v == 0.0).count();
        assert_eq!(zeros, 0, "input {i}: {zeros} zero gradient entries");
    }
    check(&case, &mut rng, &mut MaxErr::default());
}

/// A causal mask [b, 1, t, kv] as the model builds it: 0 where a query may attend, the
/// dtype's lowest value elsewhere; `pad` masks the first key of batch row 1 as padding.
fn causal_bias(b: usize, t: usize, kv: usize, pad: bool, dt: DType) -> Tensor {
    let min = if dt == DType::F64 { f64::MIN } else { f32::MIN as f64 };
    let past = kv - t;
    let v: Vec<f64> = (0..b * t * kv)
        .map(|i| {
            let (r, q, k) = (i / (t * kv), (i / kv) % t, i % kv);
            if k > past + q || (pad && r == 1 && k == 0) {
                min
            } else {
                0.0
            }
        })
        .collect();
    Tensor::from_vec(v, (b, 1, t, kv), &Device::Cpu).unwrap().to_dtype(dt).unwrap()
}

#[test]
fn scaled_masked_softmax_matches_composite() {
    check_all("scaled_masked_softmax", |rng, dt| {
        let op = |fused: bool, s: &Tensor, bias: &Tensor, scale: f64| {
            if fused {
                ops::scaled_masked_softmax(s, bias, scale)
            } else {
                composite::scaled_masked_softmax(s, bias, scale)
            }
        };
        let m1 = causal_bias(2, 5, 5, false, dt);
        let m2 = causal_bias(2, 4, 7, true, dt);
        let m3 = causal_bias(1, 6, 6, false, dt);
        let m4 = causal_bias(3, 40, 40, true, dt);
        vec![
            case("attention causal", vec![rng.tensor(&[2, 3, 5, 5], 3.0, dt)], move |f, xs| op(f, &xs[0], &m1, 0.125)),
            // A KV cache: 3 past keys, and padding in row 1.
            case("attention past + padding", vec![rng.tensor(&[2, 2, 4, 7], 3.0, dt)], move |f, xs| op(f, &xs[0], &m2, 0.3)),
            // A [1, 1, t, kv] mask broadcast over the batch, and strided scores.
            case("attention broadcast mask, transposed scores", vec![rng.tensor(&[2, 3, 6, 6], 2.0, dt)], move |f, xs| {
                op(f, &xs[0].transpose(2, 3)?, &m3, 1.0)
            }),
            // Several rayon tasks.
            case("attention many rows", vec![rng.tensor(&[3, 4, 40, 40], 2.0, dt)], move |f, xs| op(f, &xs[0], &m4, 0.125)),
        ]
    });
}

/// The unfused attention probabilities: `softmax(q kᵀ * scale + bias)` per query head with
/// `q` [b, kv_heads, rep * t, hd] (grouped-query heads folded into the rows).
fn probs_composite(q: &Tensor, k: &Tensor, bias: &Tensor, scale: f64, heads: usize) -> Result<Tensor> {
    let (b, kv_heads, rows, _) = q.dims4()?;
    let (t, kv) = (rows * kv_heads / heads, k.dim(2)?);
    composite::scaled_masked_softmax(&q.matmul(&k.t()?)?.reshape((b, heads, t, kv))?, bias, scale)?.reshape((b, kv_heads, rows, kv))
}

#[test]
fn attention_probs_matches_composite() {
    check_all("attention_probs", |rng, dt| {
        let op = move |fused: bool, q: &Tensor, k: &Tensor, bias: &Tensor, scale: f64, heads: usize| {
            if fused {
                ops::attention_probs(q, k, bias, scale, heads)
            } else {
                probs_composite(q, k, bias, scale, heads)
            }
        };
        let m1 = causal_bias(2, 5, 5, false, dt);
        let m2 = causal_bias(2, 4, 7, true, dt);
        let m3 = causal_bias(1, 6, 6, false, dt);
        // No padding here: padding key 0 would mask query 0's whole row, whose scores then
        // vanish into the mask's rounding, so finite differences see no slope there.
        let m4 = causal_bias(2, 40, 40, false, dt);
        vec![
            // Multi-head: 3 heads, 3 key heads.
            case("attention probs, causal", vec![rng.tensor(&[2, 3, 5, 4], 1.5, dt), rng.tensor(&[2, 3, 5, 4], 1.5, dt)], move |f, xs| {
                op(f, &xs[0], &xs[1], &m1, 0.5, 3)
            }),
            // Grouped-query: 4 query heads over 2 key heads (rep 2), 3 past keys, padding.
            case(
                "attention probs, GQA past + padding",
                vec![rng.tensor(&[2, 2, 8, 4], 1.5, dt), rng.tensor(&[2, 2, 7, 4], 1.5, dt)],
                move |f, xs| op(f, &xs[0], &xs[1], &m2, 0.3, 4),
            ),
            // A [1, 1, t, kv] mask broadcast over the batch; keys as a transposed view.
            case(
                "attention probs, broadcast mask, strided keys",
                vec![rng.tensor(&[2, 1, 12, 4], 1.5, dt), rng.tensor(&[2, 1, 4, 6], 1.5, dt)],
                move |f, xs| op(f, &xs[0], &xs[1].transpose(2, 3)?, &m3, 1.0, 2),
            ),
            // Several rayon tasks, rep 3.
            case(
                "attention probs, many rows",
                vec![rng.tensor(&[2, 2, 120, 8], 1.0, dt), rng.tensor(&[2, 2, 40, 8], 1.0, dt)],
                move |f, xs| op(f, &xs[0], &xs[1], &m4, 0.35, 6),
            ),
        ]
    });
}

/// The model computes attention through `attention_probs` whether or not a gradient is
/// tracked, and adapters must give the same logits after save/load: the fused forward must
/// equal the unfused one bit for bit (same matmul call, same softmax kernel).
#[test]
fn attention_probs_forward_is_bit_identical_to_the_unfused_path() {
    let mut rng = Rng(11);
    let (q, k) = (rng.tensor(&[2, 2, 2 * 9, 16], 2.0, DType::F32), rng.tensor(&[2, 2, 12, 16], 2.0, DType::F32));
    let bias = causal_bias(2, 9, 12, true, DType::F32);
    let got = values(&ops::attention_probs(&q, &k, &bias, 0.25, 4).unwrap());
    let scores = q.matmul(&k.t().unwrap()).unwrap().reshape((2, 4, 9, 12)).unwrap();
    let want = values(&ops::scaled_masked_softmax(&scores, &bias, 0.25).unwrap().reshape((2, 2, 18, 12)).unwrap());
    assert_eq!(got.len(), want.len());
    let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    assert_eq!(differ, 0, "{differ} probabilities differ from the unfused path");
}

#[test]
fn lora_add_matches_composite() {
    check_all("lora_add", |rng, dt| {
        let op = |fused: bool, xs: &[Tensor], s: f64| {
            if fused {
                ops::lora_add(&xs[0], &xs[1], &xs[2], s)
            } else {
                composite::lora_add(&xs[0], &xs[1], &xs[2], s)
            }
        };
        vec![
            case(
                "lora 2d",
                vec![rng.tensor(&[5, 12], 1.0, dt), rng.tensor(&[5, 4], 1.0, dt), rng.tensor(&[12, 4], 1.0, dt)],
                move |f, xs| op(f, xs, 2.0),
            ),
            case(
                "lora 3d",
                vec![rng.tensor(&[2, 7, 10], 1.0, dt), rng.tensor(&[2, 7, 3], 1.0, dt), rng.tensor(&[10, 3], 1.0, dt)],
                move |f, xs| op(f, xs, 0.5),
            ),
            // Strided operands: a transposed result and u, a transposed B.
            case(
                "lora strided",
                vec![rng.tensor(&[2, 9, 6], 1.0, dt), rng.tensor(&[2, 4, 6], 1.0, dt), rng.tensor(&[4, 9], 1.0, dt)],
                move |f, xs| {
                    let (r, u, b) = (xs[0].transpose(1, 2)?, xs[1].transpose(1, 2)?, xs[2].t()?);
                    op(f, &[r, u, b], 1.5)
                },
            ),
        ]
    });
}

/// k distinct flat positions of an out × in weight, in a shuffled order (the op sorts them).
fn sparse_indices(rng: &mut Rng, out: usize, inp: usize, k: usize) -> Tensor {
    let mut chosen: Vec<i64> = Vec::new();
    while chosen.len() < k {
        let f = rng.below(out * inp) as i64;
        if !chosen.contains(&f) {
            chosen.push(f);
        }
    }
    Tensor::new(chosen, &Device::Cpu).unwrap()
}

#[test]
fn sparse_add_matches_composite() {
    check_all("sparse_add", |rng, dt| {
        let (out, inp) = (12, 40);
        let idx = sparse_indices(rng, out, inp, 12); // density 2.5%: the fused op
        let op = move |fused: bool, xs: &[Tensor]| {
            if fused {
                ops::sparse_add(&xs[0], &xs[1], &xs[2], &idx)
            } else {
                composite::sparse_add(&xs[0], &xs[1], &xs[2], &idx, (out, inp))
            }
        };
        let op2 = op.clone();
        vec![
            case(
                "sparse 2d",
                vec![rng.tensor(&[5, out], 1.0, dt), rng.tensor(&[5, inp], 1.0, dt), rng.tensor(&[12], 1.0, dt)],
                move |f, xs| op(f, xs),
            ),
            // A transposed x: the op reads it contiguously.
            case(
                "sparse 3d strided",
                vec![rng.tensor(&[2, 3, out], 1.0, dt), rng.tensor(&[2, inp, 3], 1.0, dt), rng.tensor(&[12], 1.0, dt)],
                move |f, xs| op2(f, &[xs[0].clone(), xs[1].transpose(1, 2)?, xs[2].clone()]),
            ),
        ]
    });
}

/// The fused op is what runs at low density (one node), the composite above 3%; a bad index
/// is an error, not a panic.
#[test]
fn sparse_add_is_fused_below_the_density_limit() {
    let mut rng = Rng(12);
    let (r, x) = (
        Var::from_tensor(&rng.tensor(&[3, 12], 1.0, DType::F32)).unwrap(),
        Var::from_tensor(&rng.tensor(&[3, 40], 1.0, DType::F32)).unwrap(),
    );
    let d = Var::from_tensor(&rng.tensor(&[12], 1.0, DType::F32)).unwrap();
    let idx = sparse_indices(&mut rng, 12, 40, 12);
    let y = ops::sparse_add(r.as_tensor(), x.as_tensor(), d.as_tensor(), &idx).unwrap();
    assert_eq!(y.sorted_nodes().len(), 4, "result, x, delta and the op");
    let dense = Var::from_tensor(&rng.tensor(&[100], 1.0, DType::F32)).unwrap();
    let many = sparse_indices(&mut rng, 12, 40, 100); // 21%
    assert!(ops::sparse_add(r.as_tensor(), x.as_tensor(), dense.as_tensor(), &many).unwrap().sorted_nodes().len() > 4);
    let bad = Tensor::new(&[0i64, 480][..], &Device::Cpu).unwrap();
    let two = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    assert!(ops::sparse_add(r.as_tensor(), x.as_tensor(), &two, &bad).unwrap_err().to_string().contains("480"));
}

/// With a frozen result (the base output of layer 0, whose input does not track), only
/// u and B get gradients, as with the composite.
#[test]
fn lora_add_with_a_constant_result() {
    let mut rng = Rng(11);
    let result = rng.tensor(&[4, 6], 1.0, DType::F64);
    let (u, b) = (
        Var::from_tensor(&rng.tensor(&[4, 2], 1.0, DType::F64)).unwrap(),
        Var::from_tensor(&rng.tensor(&[6, 2], 1.0, DType::F64)).unwrap(),
    );
    let grads = |fused: bool| {
        let y = if fused {
            ops::lora_add(&result, u.as_tensor(), b.as_tensor(), 2.0)
        } else {
            composite::lora_add(&result, u.as_tensor(), b.as_tensor(), 2.0)
        }
        .unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        (g.get(u.as_tensor()).unwrap().clone(), g.get(b.as_tensor()).unwrap().clone())
    };
    let ((fu, fb), (cu, cb)) = (grads(true), grads(false));
    assert!(rel_err(&fu, &cu) < 1e-12 && rel_err(&fb, &cb) < 1e-12);
}
