//! Laplace-LoRA (Yang et al. 2024) on the fixture's tiny model, in f64: the K-FAC factors
//! against explicit per-token sums, the Kronecker posterior's samples against (G⊗A + λI)⁻¹,
//! the GLM variance against autograd Jacobians, λ → ∞ giving the MAP softmax, the
//! marginal-likelihood prior fit by finite differences, save/load, and bad input.
use crate::common;
use crate::contract;
use candle_core::{DType, Device, Tensor};
use common::*;
use contract::setup;
use peft_core::model::{loss, Batch, CausalLm, Ctx};
use peft_core::tuners::laplace::capture::{capture, lora_sites};
use peft_core::tuners::laplace::kron::KronFactor;
use peft_core::tuners::laplace::posterior::KronPosterior;
use peft_core::tuners::laplace::{predict, Curvature, FitOptions, LaplaceFit, LaplacePosterior, PredictMethod, PredictOptions};
use peft_core::tuners::{Tuners, WithTuners};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn lora_model() -> (CausalLm, Tuners) {
    setup(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}), DType::F64)
}

fn opts(curvature: Curvature, max_factor_side: usize, factor_rank: usize) -> FitOptions {
    FitOptions { curvature, max_factor_side, factor_rank, seed: 5 }
}

fn fitted(model: &CausalLm, tuners: &Tuners, o: FitOptions, rows: &[usize]) -> LaplaceFit {
    let inp = inputs();
    let mut fit = LaplaceFit::new(model, tuners, "default", o).unwrap();
    for &r in rows {
        let batch = Batch {
            ids: vec![inp.input_ids[r].clone()],
            attention_mask: Some(vec![inp.attention_mask[r].clone()]),
            position_ids: None,
            segment_ids: None,
        };
        fit.add_batch(model, tuners, &batch, &[inp.labels[r].clone()]).unwrap();
    }
    fit
}

/// The listed part U diag(s) Uᵀ of a factor (all of a dense one).
fn listed(f: &KronFactor) -> Tensor {
    match f {
        KronFactor::Dense(t) => t.clone(),
        KronFactor::LowRank { u, s, .. } => u
            .broadcast_mul(&Tensor::new(s.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap())
            .unwrap()
            .matmul(&u.t().unwrap())
            .unwrap(),
    }
}

/// The whole factor: U diag(s) Uᵀ + flat·(I − U Uᵀ) for a low-rank one.
fn dense(f: &KronFactor) -> Tensor {
    match f {
        KronFactor::Dense(t) => t.clone(),
        KronFactor::LowRank { u, side, .. } => {
            let complement = (Tensor::eye(*side, DType::F64, &Device::Cpu).unwrap() - u.matmul(&u.t().unwrap()).unwrap()).unwrap();
            (listed(f) + (complement * f.flat()).unwrap()).unwrap()
        }
    }
}

fn diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

fn scale(a: &Tensor) -> f64 {
    a.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap()
}

/// Σ_t v_t v_tᵀ over the rows of v, by loops.
fn outer_sum(v: &Tensor) -> Tensor {
    let rows = v.to_vec2::<f64>().unwrap();
    let d = rows[0].len();
    let mut s = vec![0.0; d * d];
    for r in &rows {
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] += r[i] * r[j];
            }
        }
    }
    Tensor::from_vec(s, (d, d), &Device::Cpu).unwrap()
}

/// The probes' x and g are what autograd says: Σ_t (s·Bᵀg) xᵀ is ∂L/∂A and Σ_t g (s·A x)ᵀ is
/// ∂L/∂B from the ordinary training loss. The fitted factors are the explicit sums of their
/// outer products (dense), or that sum's top-k eigenpairs (low rank); and one batch of two
/// rows (one padded) gives the sum of the two rows fitted alone.
#[test]
fn kfac_factors_equal_explicit_per_token_sums() {
    let (model, tuners) = lora_model();
    let inp = inputs();
    let sites = lora_sites(&tuners, "default").unwrap();
    let captured = capture(&model, &tuners, &sites, &inp.batch(), |logits| Ok(loss::causal_lm_loss_sum(logits, &inp.labels)?.0)).unwrap();
    let ctx = Ctx::new(&model.store, false).with_tuners(&tuners);
    let (l, _) = loss::causal_lm_loss_sum(&model.forward(&inp.batch(), &ctx, None, false).unwrap(), &inp.labels).unwrap();
    let grads = l.backward().unwrap();
    assert_eq!(captured[0].x.dim(0).unwrap(), 25, "16 + 9 tokens the mask keeps");
    for (site, c) in sites.iter().zip(&captured) {
        let (u, gu) = site.inner(&model.store, c).unwrap();
        let ga = grads.get(&model.store.get(site.a).value()).unwrap().clone();
        let gb = grads.get(&model.store.get(site.b).value()).unwrap().clone();
        assert!(diff(&gu.t().unwrap().matmul(&c.x).unwrap(), &ga) < 1e-10 * scale(&ga), "{}: dL/dA", site.path);
        assert!(diff(&c.g.t().unwrap().matmul(&u).unwrap(), &gb) < 1e-10 * scale(&gb), "{}: dL/dB", site.path);
    }

    let fit = fitted(&model, &tuners, opts(Curvature::Empirical, 1000, 4), &[0, 1]);
    let both = {
        let mut f = LaplaceFit::new(&model, &tuners, "default", opts(Curvature::Empirical, 1000, 4)).unwrap();
        f.add_batch(&model, &tuners, &inp.batch(), &inp.labels).unwrap();
        f
    };
    assert_eq!((fit.tokens, both.tokens), (25, 25));
    for (i, (site, c)) in sites.iter().zip(&captured).enumerate() {
        let (u, gu) = site.inner(&model.store, c).unwrap();
        let explicit = [(outer_sum(&gu), outer_sum(&c.x)), (outer_sum(&c.g), outer_sum(&u))];
        for (j, (g, a)) in explicit.iter().enumerate() {
            let m = &both.matrices[2 * i + j];
            assert!(
                diff(&dense(&m.output), g) < 1e-10 * scale(g) && diff(&dense(&m.input), a) < 1e-10 * scale(a),
                "{}: batch factors",
                m.name
            );
            let per_row = &fit.matrices[2 * i + j];
            assert!(
                diff(&dense(&per_row.output), g) < 1e-10 * scale(g) && diff(&dense(&per_row.input), a) < 1e-10 * scale(a),
                "{}: per-row sums",
                m.name
            );
        }
    }

    // Low rank above side 32: q_proj's 64-wide factors keep their top 6 eigenpairs, exactly
    // when the batch's 25 tokens fold in at once (a later batch folds into the truncation).
    let mut low = LaplaceFit::new(&model, &tuners, "default", opts(Curvature::Empirical, 32, 6)).unwrap();
    low.add_batch(&model, &tuners, &inp.batch(), &inp.labels).unwrap();
    let m = &low.matrices[0]; // q_proj lora_A: input 64 wide
    let KronFactor::LowRank { s, .. } = &m.input else { panic!("64 > 32: low rank") };
    let exact = dense(&both.matrices[0].input);
    let (_, ev, _) = peft_core::tuners::linalg::svd(&exact.flatten_all().unwrap().to_vec1::<f64>().unwrap(), 64, 64);
    for k in 0..6 {
        assert!((s[k] - ev[k]).abs() < 1e-6 * ev[0], "eigenvalue {k}: {} vs {}", s[k], ev[k]);
    }
    let top6 = listed(&m.input);
    let residual = diff(&top6, &exact);
    assert!(residual <= ev[6] * 1.0001 + 1e-9, "the rest is at most the 7th eigenvalue: {residual} vs {}", ev[6]);
    // The 58 unlisted directions share the dropped mass (Tipping & Bishop 1999, eq. 8): the
    // mean of the exact eigenvalues 7..64, so the trace is kept.
    let dropped = ev[6..].iter().sum::<f64>() / 58.0;
    assert!(dropped > 0.0 && (m.input.flat() - dropped).abs() < 1e-9 * ev[0], "flat eigenvalue {} vs {dropped}", m.input.flat());
    let trace = |t: &Tensor| (0..64).map(|i| t.get(i).unwrap().get(i).unwrap().to_scalar::<f64>().unwrap()).sum::<f64>();
    assert!((trace(&dense(&m.input)) - trace(&exact)).abs() < 1e-9 * trace(&exact));
    // factorRank = the full side: the low-rank factor is the exact one (flat ≈ 0: 25 tokens).
    let mut full = LaplaceFit::new(&model, &tuners, "default", opts(Curvature::Empirical, 32, 64)).unwrap();
    full.add_batch(&model, &tuners, &inp.batch(), &inp.labels).unwrap();
    assert!(matches!(full.matrices[0].input, KronFactor::LowRank { .. }));
    assert!(
        diff(&dense(&full.matrices[0].input), &exact) < 1e-9 * scale(&exact),
        "full rank: {}",
        diff(&dense(&full.matrices[0].input), &exact)
    );
}

/// (M ⊗ N)[i·n + k, j·n + l] = M[i, j] N[k, l].
fn kron(m: &[Vec<f64>], n: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (p, q) = (m.len(), n.len());
    (0..p * q).map(|r| (0..p * q).map(|c| m[r / q][c / q] * n[r % q][c % q]).collect()).collect()
}

fn invert(mut a: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut inv: Vec<Vec<f64>> = (0..n).map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect()).collect();
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| a[x][c].abs().total_cmp(&a[y][c].abs())).unwrap();
        a.swap(c, p);
        inv.swap(c, p);
        let d = a[c][c];
        for j in 0..n {
            a[c][j] /= d;
            inv[c][j] /= d;
        }
        for r in 0..n {
            if r != c {
                let f = a[r][c];
                for j in 0..n {
                    a[r][j] -= f * a[c][j];
                    inv[r][j] -= f * inv[c][j];
                }
            }
        }
    }
    inv
}

fn random_factor(side: usize, n: usize, max_side: usize, rank: usize, rng: &mut StdRng) -> KronFactor {
    let mut f = KronFactor::new(side, max_side, rank).unwrap();
    let v: Vec<f64> = (0..n * side).map(|_| rng.random_range(-1.0..1.0)).collect();
    f.add(&Tensor::from_vec(v, (n, side), &Device::Cpu).unwrap()).unwrap();
    f
}

/// On a 3 × 4 layer: Σ M is (G⊗A + λI)⁻¹ vec(M) exactly, and the sample covariance of 40000
/// draws matches it within 5 standard errors per entry (the standard error of a sample
/// covariance entry is √((Σ_ii Σ_jj + Σ_ij²)/N)); also with A truncated to rank 2, and both
/// truncated, as low rank plus a flat eigenvalue (the exact posterior of that factor).
#[test]
fn kronecker_samples_have_the_posterior_covariance() {
    let mut rng = StdRng::seed_from_u64(1);
    for (g_max, g_rank, max_side, rank) in [(10, 3, 10, 4), (10, 3, 3, 2), (2, 1, 3, 2)] {
        let g = random_factor(3, 5, g_max, g_rank, &mut rng);
        let a = random_factor(4, 6, max_side, rank, &mut rng);
        assert_eq!(a.eigen(1.0).unwrap().flat > 0.0, rank < 4, "a truncated factor has a flat eigenvalue");
        assert_eq!(g.eigen(1.0).unwrap().flat > 0.0, g_rank < 3);
        let prior = 0.7;
        let post = KronPosterior {
            name: "w".into(),
            param: peft_core::model::ParamStore::default()
                .add("w", Tensor::zeros((3, 4), DType::F64, &Device::Cpu).unwrap(), false)
                .unwrap(),
            output: g.eigen(1.0).unwrap(),
            input: a.eigen(1.0).unwrap(),
            size: 12,
        };
        let (gm, am) = (dense(&g).to_vec2::<f64>().unwrap(), dense(&a).to_vec2::<f64>().unwrap());
        let mut precision = kron(&gm, &am);
        (0..12).for_each(|i| precision[i][i] += prior);
        let cov = invert(precision);
        let m: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
        let got = post
            .covariance_times(&Tensor::from_slice(&m, (3, 4), &Device::Cpu).unwrap(), prior)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        for i in 0..12 {
            let want: f64 = (0..12).map(|j| cov[i][j] * m[j]).sum();
            assert!((got[i] - want).abs() < 1e-10, "Σ M [{i}]: {} vs {want}", got[i]);
        }
        let n = 40000;
        let mut sum = vec![vec![0.0; 12]; 12];
        for _ in 0..n {
            let z = post.sample_offset(prior, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            for i in 0..12 {
                for j in 0..12 {
                    sum[i][j] += z[i] * z[j];
                }
            }
        }
        for i in 0..12 {
            for j in 0..12 {
                let est = sum[i][j] / n as f64;
                let se = ((cov[i][i] * cov[j][j] + cov[i][j] * cov[i][j]) / n as f64).sqrt();
                assert!((est - cov[i][j]).abs() < 5.0 * se, "cov[{i}][{j}] (rank {rank}): {est} vs {} ± {se}", cov[i][j]);
            }
        }
    }
}

fn predict_with(
    post: &LaplacePosterior,
    model: &CausalLm,
    tuners: &Tuners,
    method: PredictMethod,
    targets: Option<Vec<u32>>,
    samples: usize,
) -> peft_core::tuners::laplace::Prediction {
    let o = PredictOptions { positions: Some(vec![vec![3, 15], vec![8]]), targets, method, samples, seed: 9 };
    predict(post, model, tuners, &inputs().batch(), &o).unwrap()
}

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The GLM logit variance J Σ Jᵀ equals the one from autograd's Jacobians of the logit; with
/// λ → ∞ both predictives give the MAP softmax, and at a fitted λ they differ from it.
#[test]
fn glm_variance_and_the_map_limit() {
    let (model, tuners) = lora_model();
    let fit = fitted(&model, &tuners, opts(Curvature::Fisher, 1000, 4), &[0, 1]);
    let post = LaplacePosterior::from_fit(&fit, &model, Some(0.5)).unwrap();
    let targets = vec![5u32, 77, 200, 383];
    let glm = predict_with(&post, &model, &tuners, PredictMethod::Glm, Some(targets.clone()), 0);
    let var = glm.logit_variance.clone().unwrap();
    // autograd: row 0, position 3, token 77
    let ctx = Ctx::new(&model.store, false).with_tuners(&tuners);
    let logits = model.forward(&inputs().batch(), &ctx, None, false).unwrap();
    let grads = logits.get(0).unwrap().get(3).unwrap().get(77).unwrap().backward().unwrap();
    let mut want = 0.0;
    for m in &post.matrices {
        let j = grads.get(&model.store.get(m.param).value()).unwrap().clone();
        want += (&j * m.covariance_times(&j, 0.5).unwrap()).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
    }
    assert!(((var[1] as f64) - want).abs() < 1e-5 * want, "GLM variance {} vs autograd {want}", var[1]);
    assert!(var.iter().all(|v| *v > 0.0));

    let map = predict_with(&post, &model, &tuners, PredictMethod::Map, Some(targets.clone()), 0);
    let mc = predict_with(&post, &model, &tuners, PredictMethod::Mc, Some(targets.clone()), 8);
    assert_eq!(glm.positions, vec![(0, 3), (0, 15), (1, 8)]);
    assert!(max_gap(&glm.probs, &map.probs) > 1e-4 && max_gap(&mc.probs, &map.probs) > 1e-4, "a finite prior changes the predictive");
    // λ = 1e16: weight noise of std 1e-8, below the f32 probabilities' resolution
    let sharp = LaplacePosterior::from_fit(&fit, &model, Some(1e16)).unwrap();
    for method in [PredictMethod::Glm, PredictMethod::Mc] {
        let p = predict_with(&sharp, &model, &tuners, method, Some(targets.clone()), 4);
        assert!(max_gap(&p.probs, &map.probs) < 1e-6, "{method:?} at λ = 1e16: {}", max_gap(&p.probs, &map.probs));
    }
    let full = predict_with(&sharp, &model, &tuners, PredictMethod::Mc, None, 2);
    let full_map = predict_with(&sharp, &model, &tuners, PredictMethod::Map, None, 0);
    assert_eq!(full.width, 384);
    assert!(max_gap(&full.probs, &full_map.probs) < 1e-6);
    let after = logits_with(&model, Some(&tuners));
    assert!(diff(&after, &logits.detach()) == 0.0, "sampling puts the MAP weights back");
}

/// The fitted prior precision is finite, positive, and a maximum of log Z; the slope formula
/// matches central finite differences of log Z.
#[test]
fn marginal_likelihood_fits_the_prior_precision() {
    let (model, tuners) = lora_model();
    let fit = fitted(&model, &tuners, opts(Curvature::Fisher, 32, 6), &[0, 1]);
    let post = LaplacePosterior::from_fit(&fit, &model, None).unwrap();
    let lam = post.prior_precision;
    assert!(lam.is_finite() && lam > 0.0, "λ = {lam}");
    println!("fitted prior precision {lam}");
    for l in [lam * 0.1, lam, lam * 3.0, 2.5] {
        let h = l * 1e-5;
        let fd = (post.log_marginal_likelihood(&model, l + h).unwrap() - post.log_marginal_likelihood(&model, l - h).unwrap()) / (2.0 * h);
        let slope = post.log_marginal_likelihood_slope(&model, l).unwrap();
        assert!((fd - slope).abs() < 1e-5 * slope.abs().max(1.0), "λ = {l}: finite difference {fd} vs slope {slope}");
    }
    assert!(
        post.log_marginal_likelihood_slope(&model, lam).unwrap().abs()
            < 1e-6 * post.log_marginal_likelihood_slope(&model, lam * 0.5).unwrap().abs()
    );
    let at = |l: f64| post.log_marginal_likelihood(&model, l).unwrap();
    assert!(at(lam) > at(lam * 2.0) && at(lam) > at(lam / 2.0));
}

#[test]
fn save_and_load_give_the_same_predictive() {
    let (model, tuners) = lora_model();
    let fit = fitted(&model, &tuners, opts(Curvature::Fisher, 32, 6), &[0, 1]);
    let post = LaplacePosterior::from_fit(&fit, &model, None).unwrap();
    let dir = std::env::temp_dir().join(format!("laplace-test-{}", std::process::id()));
    peft_core::tuners::laplace::io::save(&post, &tuners, &dir).unwrap();
    let back = peft_core::tuners::laplace::io::load(&dir, &model, &tuners, "default").unwrap();
    assert_eq!(back.prior_precision, post.prior_precision);
    for (method, t, s) in [(PredictMethod::Glm, Some(vec![1u32, 2, 3]), 0), (PredictMethod::Mc, None, 3)] {
        let (a, b) = (predict_with(&post, &model, &tuners, method, t.clone(), s), predict_with(&back, &model, &tuners, method, t, s));
        assert_eq!(a.probs, b.probs, "{method:?}");
    }
    // a truncated file names itself and the tensor
    let state = dir.join("laplace_state.safetensors");
    let (tensors, _) = (peft_core::io::safetensors::load_file(&state, None, &Device::Cpu).unwrap(), ());
    let mut kept: Vec<(String, Tensor)> = tensors.into_iter().collect();
    kept.retain(|(k, _)| !k.contains("layers.1.self_attn.v_proj.lora_B.weight.input_eigenvalues"));
    peft_core::io::safetensors::save_file(&kept, None, &state).unwrap();
    let e = peft_core::tuners::laplace::io::load(&dir, &model, &tuners, "default").unwrap_err().to_string();
    assert!(e.contains("laplace_state.safetensors") && e.contains("v_proj.lora_B.weight.input_eigenvalues"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_gives_clear_errors() {
    let (model, tuners) = setup(&json!({"peft_type": "IA3", "target_modules": ["q_proj"], "feedforward_modules": []}), DType::F64);
    let e = LaplaceFit::new(&model, &tuners, "default", FitOptions::default()).err().unwrap().to_string();
    assert!(e.contains("IA3") && e.contains("LoRA"), "{e}");
    let (model, tuners) = lora_model();
    let e = LaplaceFit::new(&model, &tuners, "other", FitOptions::default()).err().unwrap().to_string();
    assert!(e.contains("other"), "{e}");
    let mut off = lora_model();
    off.1.set_enabled(&mut off.0, false).unwrap();
    let e = LaplaceFit::new(&off.0, &off.1, "default", FitOptions::default()).err().unwrap().to_string();
    assert!(e.contains("must be active, enabled and unmerged"), "{e}");
    let empty = LaplaceFit::new(&model, &tuners, "default", FitOptions::default()).unwrap();
    let e = LaplacePosterior::from_fit(&empty, &model, Some(1.0)).unwrap_err().to_string();
    assert!(e.contains("batches"), "{e}");
    let fit = fitted(&model, &tuners, FitOptions::default(), &[0]);
    for p in [0.0, -1.0, f64::NAN] {
        assert!(LaplacePosterior::from_fit(&fit, &model, Some(p)).unwrap_err().to_string().contains("priorPrecision"));
    }
    assert!(Curvature::parse("ggn").unwrap_err().to_string().contains("hessian"));
    assert!(PredictMethod::parse("probit").unwrap_err().to_string().contains("method"));
    let post = LaplacePosterior::from_fit(&fit, &model, Some(1.0)).unwrap();
    let run = |positions: Option<Vec<Vec<usize>>>, targets: Option<Vec<u32>>, method, samples| {
        predict(&post, &model, &tuners, &inputs().batch(), &PredictOptions { positions, targets, method, samples, seed: 0 })
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(run(Some(vec![vec![16], vec![0]]), None, PredictMethod::Map, 0).contains("positions[0]"));
    assert!(run(Some(vec![vec![1]]), None, PredictMethod::Map, 0).contains("positions"));
    assert!(run(None, Some(vec![384]), PredictMethod::Map, 0).contains("targetTokens"));
    assert!(run(None, None, PredictMethod::Glm, 0).contains("targetTokens"));
    assert!(run(None, None, PredictMethod::Mc, 0).contains("samples"));
    let mut bad_labels = inputs().labels;
    bad_labels[0][3] = 999;
    let mut f = LaplaceFit::new(&model, &tuners, "default", FitOptions::default()).unwrap();
    assert!(f.add_batch(&model, &tuners, &inputs().batch(), &bad_labels).unwrap_err().to_string().contains("labels"));
}
