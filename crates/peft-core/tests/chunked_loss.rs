//! The chunked LM head + cross-entropy (`ops::linear_cross_entropy_sum`, `CausalLm::loss_sum`):
//! the op against the composite (logits, soft-cap, cross-entropy) and finite differences in
//! f64; on the fixtures, the loss and every gradient equal today's path (logits, then
//! `causal_lm_loss_sum`) to 1e-6 relative, tied embeddings (Gemma 3) included.
use crate::arch_fixture;
use arch_fixture::{batch, max_rel_diff, setup, setup_in, Lent, Trainable};
use candle_core::{DType, Device, Tensor, Var};
use peft_core::model::{loss, Ctx};
use peft_core::ops::{composite, linear_cross_entropy_sum};
use peft_core::tuners::WithTuners;
use serde_json::json;
use std::sync::Arc;

fn det(dims: &[usize], seed: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|i| ((i as f64 + 1.0) * seed).sin()).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// 23 rows, vocab 37, hidden 8; rows 5..10 (one whole chunk of 5) and row 17 ignored.
fn op_inputs() -> (Tensor, Tensor, Tensor, Tensor) {
    let (n, v, d) = (23, 37, 8);
    let targets = Tensor::from_vec((0..n as u32).map(|i| (i * 7 + 3) % v as u32).collect::<Vec<_>>(), n, &Device::Cpu).unwrap();
    let weights = Tensor::from_vec(
        (0..n).map(|i| if (5..10).contains(&i) || i == 17 { 0.0 } else { 1.0 + 0.1 * i as f64 }).collect::<Vec<_>>(),
        n,
        &Device::Cpu,
    )
    .unwrap();
    (det(&[n, d], 0.7), det(&[v, d], 1.3), targets, weights)
}

fn reference(h: &Tensor, w: &Tensor, t: &Tensor, wt: &Tensor, softcap: Option<f64>) -> Tensor {
    let z = h.matmul(&w.t().unwrap()).unwrap();
    let z = match softcap {
        Some(c) => (z.affine(1.0 / c, 0.0).unwrap().tanh().unwrap() * c).unwrap(),
        None => z,
    };
    composite::cross_entropy_sum(&z, t, wt).unwrap()
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() / scale
}

#[test]
fn op_matches_the_composite_in_value_and_gradients() {
    let (h0, w0, t, wt) = op_inputs();
    for softcap in [None, Some(3.0)] {
        for w_trainable in [true, false] {
            for chunk_rows in [1, 5, 7, 100] {
                let (h, w) = (Var::from_tensor(&h0).unwrap(), Var::from_tensor(&w0).unwrap());
                let wi = if w_trainable { w.as_tensor().clone() } else { w.as_tensor().detach() };
                let got = linear_cross_entropy_sum(h.as_tensor(), &wi, &t, &wt, softcap, chunk_rows).unwrap();
                let want = reference(h.as_tensor(), &wi, &t, &wt, softcap);
                let label = format!("softcap {softcap:?}, w trainable {w_trainable}, chunk {chunk_rows}");
                assert!(rel(&got, &want) < 1e-12, "{label}: loss {got} vs {want}");
                let (g, r) = ((got * 0.5).unwrap().backward().unwrap(), (want * 0.5).unwrap().backward().unwrap());
                let dh = rel(g.get(h.as_tensor()).unwrap(), r.get(h.as_tensor()).unwrap());
                assert!(dh < 1e-12, "{label}: dh differs by {dh:e}");
                // ignored rows get exactly zero
                let dh_ignored =
                    g.get(h.as_tensor()).unwrap().narrow(0, 5, 5).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
                assert_eq!(dh_ignored, 0.0, "{label}");
                if w_trainable {
                    let dw = rel(g.get(w.as_tensor()).unwrap(), r.get(w.as_tensor()).unwrap());
                    assert!(dw < 1e-12, "{label}: dw differs by {dw:e}");
                } else {
                    assert!(g.get(w.as_tensor()).is_none(), "{label}: a frozen head got a gradient");
                }
            }
        }
    }
}

#[test]
fn op_gradients_match_finite_differences() {
    let (h0, w0, t, wt) = op_inputs();
    let f = |h: &Tensor, w: &Tensor| linear_cross_entropy_sum(h, w, &t, &wt, Some(3.0), 4).unwrap().to_scalar::<f64>().unwrap();
    let (h, w) = (Var::from_tensor(&h0).unwrap(), Var::from_tensor(&w0).unwrap());
    let g = linear_cross_entropy_sum(h.as_tensor(), w.as_tensor(), &t, &wt, Some(3.0), 4).unwrap().backward().unwrap();
    let eps = 1e-6;
    for (x0, x, is_h) in [(&h0, &h, true), (&w0, &w, false)] {
        let analytic = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let n = analytic.len();
        for k in (0..n).step_by(n / 13 + 1) {
            let bump = |s: f64| {
                let mut v = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                v[k] += s;
                let p = Tensor::from_vec(v, x0.dims(), &Device::Cpu).unwrap();
                if is_h {
                    f(&p, &w0)
                } else {
                    f(&h0, &p)
                }
            };
            let numeric = (bump(eps) - bump(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[k]).abs() < 1e-6 * numeric.abs().max(1.0),
                "{} [{k}]: {numeric} vs {}",
                if is_h { "h" } else { "w" },
                analytic[k]
            );
        }
    }
}

/// (loss, gradients) of today's path (logits) or the chunked one, `chunk_rows` tokens a chunk.
fn run(lent: &Arc<Lent>, arch: &str, chunk_rows: Option<usize>) -> (f64, Vec<(String, Tensor)>) {
    let (input, labels) = batch(arch);
    let g = lent.0.read().unwrap();
    let (model, tuners) = (&g.0, &g.1);
    let ctx = Ctx::new(&model.store, false).with_tuners(tuners);
    let l = match chunk_rows {
        None => loss::causal_lm_loss(&model.forward(&input, &ctx, None, false).unwrap(), &labels).unwrap(),
        Some(rows) => {
            let (sum, count) = model.loss_sum_chunked(&input, &ctx, &labels, rows).unwrap();
            (sum / count as f64).unwrap()
        }
    };
    let grads = l.backward().unwrap();
    let out = model
        .store
        .iter()
        .filter(|(_, p)| p.requires_grad())
        .map(|(_, p)| (p.name.clone(), grads.get(&p.value()).unwrap_or_else(|| panic!("no gradient for {}", p.name)).clone()))
        .collect();
    (l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap(), out)
}

fn check_lent(label: &str, arch: &str, lent: Arc<Lent>, tol: f64) {
    let (want_loss, want) = run(&lent, arch, None);
    for rows in [5, 1 << 20] {
        let (got_loss, got) = run(&lent, arch, Some(rows));
        let (d, name) = max_rel_diff(&got, &want);
        let dl = (got_loss - want_loss).abs() / want_loss.abs();
        println!("{label}, {rows} rows a chunk: loss rel diff {dl:e}, {} gradients, max relative difference {d:e} ({name})", want.len());
        assert!(dl < tol && d < tol, "{label}: loss {dl:e}, {name} {d:e}");
    }
}

fn check(label: &str, arch: &str, trainable: Trainable) {
    check_lent(label, arch, setup(arch, trainable), 1e-6);
}

#[test]
fn llama_full_fine_tuning() {
    check("llama full", "llama", Trainable::Full);
}

#[test]
fn llama_lora() {
    check("llama lora_qv", "llama", Trainable::Case("lora_qv"));
}

#[test]
fn llama_prompt_tuning_virtual_positions() {
    check("llama prompt_tuning", "llama", Trainable::Case("prompt_tuning"));
}

#[test]
fn llama_lora_on_lm_head_takes_the_logits_path() {
    check(
        "llama lora on lm_head",
        "llama",
        Trainable::Config(json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "lm_head"]})),
    );
}

#[test]
fn gemma3_tied_embeddings_full_fine_tuning() {
    check("gemma3 (tied) full", "gemma3", Trainable::Full);
}

#[test]
fn gemma3_lora() {
    check("gemma3 lora_all", "gemma3", Trainable::Case("lora_all"));
}

#[test]
fn gemma3_with_final_logit_softcapping() {
    let lent = setup("gemma3", Trainable::Full);
    lent.0.write().unwrap().0.config.arch.final_logit_softcapping = Some(2.0);
    check_lent("gemma3 full, softcap 2", "gemma3", lent, 1e-6);
}

#[test]
fn llama_full_fine_tuning_f32() {
    check_lent("llama full f32", "llama", setup_in("llama", Trainable::Full, DType::F32), 1e-5);
}
