//! `add_weighted_adapter` (PEFT's `LoraModel.add_weighted_adapter`) against dense
//! references on the tiny model in f64: every combination type, the new config, forward,
//! save/load, LoRAHub's composition, and the errors of incompatible inputs (lora_weighted/errors.rs). The merge
//! utilities are checked on small hand-computed matrices.
use crate::common;
#[path = "lora_weighted/errors.rs"]
mod errors;
use candle_core::{DType, Device, Tensor};
use common::*;
use peft_core::model::{CausalLm, LoadOptions};
use peft_core::tuners::lora::WeightedOptions;
use peft_core::tuners::Tuners;
use serde_json::json;

pub const Q0: &str = "model.layers.0.self_attn.q_proj";
pub const V1: &str = "model.layers.1.self_attn.v_proj";
pub const K0: &str = "model.layers.0.self_attn.k_proj";

/// `a` (r 4, alpha 8: s = 2) on q/v and `b` (r 4, alpha 2: s = 0.5) on q/k, random B.
pub fn two_loras() -> (CausalLm, Tuners) {
    let mut model =
        CausalLm::from_pretrained(&model_dir(), &LoadOptions { dtype: DType::F64, device: Device::Cpu, quantized: false }).unwrap();
    let mut tuners = Tuners::new();
    let a = lora(json!({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": false}));
    tuners.inject(&mut model, "a", a, 1).unwrap();
    let b = lora(json!({"r": 4, "lora_alpha": 2, "target_modules": ["q_proj", "k_proj"], "init_lora_weights": false}));
    tuners.inject(&mut model, "b", b, 2).unwrap();
    (model, tuners)
}

pub fn factor(model: &CausalLm, path: &str, ab: &str, name: &str) -> Tensor {
    model.store.by_name(&format!("base_model.model.{path}.lora_{ab}.{name}.weight")).unwrap().value().clone()
}

/// s · B A of adapter `name` at `path` (zeros when it has no LoRA there).
pub fn delta(model: &CausalLm, tuners: &Tuners, path: &str, name: &str) -> Tensor {
    if !tuners.modules(name).unwrap().iter().any(|m| m == path) {
        return model.store.by_name(&format!("{path}.weight")).unwrap().value().zeros_like().unwrap();
    }
    let c = tuners.config(name).unwrap().to_json();
    let s = c["lora_alpha"].as_f64().unwrap() / c["r"].as_f64().unwrap();
    (factor(model, path, "B", name).matmul(&factor(model, path, "A", name)).unwrap() * s).unwrap()
}

pub fn combine(tuners: &mut Tuners, model: &mut CausalLm, weights: &[f64], name: &str, kind: &str, f: impl FnOnce(&mut WeightedOptions)) {
    let mut o = WeightedOptions { combination_type: kind.into(), ..Default::default() };
    f(&mut o);
    tuners.add_weighted_adapter(model, &["a", "b"], weights, name, &o).unwrap();
}

fn weighted_sum(model: &CausalLm, tuners: &Tuners, path: &str, w: &[f64]) -> Tensor {
    ((delta(model, tuners, path, "a") * w[0]).unwrap() + (delta(model, tuners, path, "b") * w[1]).unwrap()).unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

#[test]
fn linear_with_one_weight_reproduces_that_adapter() {
    let (mut model, mut tuners) = two_loras();
    combine(&mut tuners, &mut model, &[1.0, 0.0], "only_a", "linear", |_| ());
    for path in [Q0, V1, K0] {
        let d = max_abs_diff(&delta(&model, &tuners, path, "only_a"), &delta(&model, &tuners, path, "a"));
        assert!(d < 1e-12, "{path}: {d}");
    }
    let c = tuners.config("only_a").unwrap().to_json();
    assert_eq!((c["r"].clone(), c["lora_alpha"].clone()), (json!(4), json!(4)), "r = lora_alpha = the common rank, so the scaling is 1");
    assert_eq!(c["target_modules"], json!(["q_proj", "v_proj", "k_proj"]), "the union of the target modules");
    assert_eq!(tuners.active(), ["a"], "the new adapter is added inactive");
    assert!(tuners.params("only_a").unwrap().iter().all(|id| !model.store.get(*id).requires_grad()), "and frozen");
}

/// PEFT's linear type combines the factors, not the deltas: with √|wᵢsᵢ| on both (and the
/// sign on A), B·A = (Σ √|wᵢsᵢ| Bᵢ)(Σ ±√|wᵢsᵢ| Aᵢ), cross terms included.
#[test]
fn linear_combines_the_factors_with_square_root_weights() {
    let (mut model, mut tuners) = two_loras();
    let w = [0.7, -1.3];
    combine(&mut tuners, &mut model, &w, "lin", "linear", |_| ());
    let (sa, sb) = ((w[0] * 2.0f64).abs().sqrt(), (w[1] * 0.5f64).abs().sqrt());
    let a = ((factor(&model, Q0, "A", "a") * sa).unwrap() - (factor(&model, Q0, "A", "b") * sb).unwrap()).unwrap();
    let b = ((factor(&model, Q0, "B", "a") * sa).unwrap() + (factor(&model, Q0, "B", "b") * sb).unwrap()).unwrap();
    let d = max_abs_diff(&delta(&model, &tuners, Q0, "lin"), &b.matmul(&a).unwrap());
    assert!(d < 1e-12, "{d}");
    // Where only `a` has a LoRA, it alone is combined: w·s·B A.
    let d = max_abs_diff(&delta(&model, &tuners, V1, "lin"), &(delta(&model, &tuners, V1, "a") * w[0]).unwrap());
    assert!(d < 1e-12, "{d}");
}

#[test]
fn cat_is_the_exact_weighted_sum_and_the_same_as_both_active() {
    let (mut model, mut tuners) = two_loras();
    let w = [0.6, -2.0];
    combine(&mut tuners, &mut model, &w, "cat", "cat", |_| ());
    for path in [Q0, V1, K0] {
        let d = max_abs_diff(&delta(&model, &tuners, path, "cat"), &weighted_sum(&model, &tuners, path, &w));
        assert!(d < 1e-12, "{path}: {d}");
    }
    assert_eq!(tuners.config("cat").unwrap().to_json()["r"], json!(8), "cat sums the ranks");
    // Weights 1, 1: the forward equals both adapters active at once.
    combine(&mut tuners, &mut model, &[1.0, 1.0], "both", "cat", |_| ());
    tuners.set_active(&mut model, &["a", "b"]).unwrap();
    let together = logits_with(&model, Some(&tuners));
    tuners.set_active(&mut model, &["both"]).unwrap();
    let d = max_abs_diff(&logits_with(&model, Some(&tuners)), &together);
    assert!(d < 1e-9, "{d}");
}

#[test]
fn svd_at_full_rank_is_the_weighted_sum_and_truncates_optimally() {
    let (mut model, mut tuners) = two_loras();
    let w = [0.8, 1.5];
    combine(&mut tuners, &mut model, &w, "svd8", "svd", |o| o.svd_rank = Some(8));
    combine(&mut tuners, &mut model, &w, "svd4", "svd", |_| ());
    assert_eq!(tuners.config("svd4").unwrap().to_json()["r"], json!(4), "svd_rank defaults to the largest rank");
    for path in [Q0, V1, K0] {
        let exact = weighted_sum(&model, &tuners, path, &w);
        let d = max_abs_diff(&delta(&model, &tuners, path, "svd8"), &exact);
        assert!(d < 1e-10, "{path}: {d}");
        // Eckart–Young: the rank-4 error is the norm of the singular values past the 4th.
        let (out, inp) = exact.dims2().unwrap();
        let (_, s, _) = peft_core::tuners::linalg::svd(&flat(&exact), out, inp);
        let tail: f64 = s[4..].iter().map(|x| x * x).sum::<f64>().sqrt();
        let err =
            (delta(&model, &tuners, path, "svd4") - &exact).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap().sqrt();
        assert!((err - tail).abs() < 1e-9 * (1.0 + tail), "{path}: {err} vs {tail}");
    }
}

#[test]
fn svd_clamp_bounds_the_factors_at_the_quantile() {
    let (mut model, mut tuners) = two_loras();
    combine(&mut tuners, &mut model, &[1.0, 1.0], "free", "svd", |_| ());
    combine(&mut tuners, &mut model, &[1.0, 1.0], "clamped", "svd", |o| o.svd_clamp = Some(0.9));
    let values = |n: &str| [flat(&factor(&model, Q0, "B", n)), flat(&factor(&model, Q0, "A", n))].concat();
    let mut free = values("free");
    let clamped = values("clamped");
    free.sort_by(f64::total_cmp);
    let pos = 0.9 * (free.len() - 1) as f64;
    let hi = free[pos as usize] + (free[pos as usize + 1] - free[pos as usize]) * pos.fract();
    let expected: Vec<f64> = values("free").iter().map(|x| x.clamp(-hi, hi)).collect();
    assert!(clamped.iter().zip(&expected).all(|(x, y)| (x - y).abs() < 1e-12));
    assert!(clamped.iter().filter(|x| x.abs() >= hi - 1e-15).count() >= clamped.len() / 20, "about a tenth is clamped");
}

/// TIES and magnitude pruning on the factors against `reference_merge` (below), written
/// from PEFT's merge_utils independently of the crate's.
#[test]
fn ties_and_magnitude_prune_match_the_reference_on_the_factors() {
    let (mut model, mut tuners) = two_loras();
    let w = [1.0, -0.5];
    for (kind, method) in [("ties", "total"), ("ties", "frequency"), ("magnitude_prune", "total")] {
        let name = format!("{kind}_{method}");
        combine(&mut tuners, &mut model, &w, &name, kind, |o| {
            o.density = Some(0.3);
            o.majority_sign_method = method.into();
        });
        let (wa, wb) = ([2f64.sqrt(), -(0.25f64.sqrt())], [2f64.sqrt(), 0.25f64.sqrt()]);
        for (ab, ws) in [("A", wa), ("B", wb)] {
            let tasks = [flat(&factor(&model, Q0, ab, "a")), flat(&factor(&model, Q0, ab, "b"))];
            let expected = reference_merge(&tasks, &ws, 0.3, kind == "ties", method == "frequency");
            let got = flat(&factor(&model, Q0, ab, &name));
            let d = got.iter().zip(&expected).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(d < 1e-12, "{name} {ab}: {d}");
        }
    }
}

/// PEFT: keep the top int(d·n) by magnitude per task; TIES elects the sign per entry from
/// the pruned tasks (sum, or count of signs) and averages the weighted entries that agree.
fn reference_merge(tasks: &[Vec<f64>], w: &[f64], density: f64, ties: bool, frequency: bool) -> Vec<f64> {
    let n = tasks[0].len();
    let pruned: Vec<Vec<f64>> = tasks
        .iter()
        .map(|t| {
            let mut mags: Vec<f64> = t.iter().map(|x| x.abs()).collect();
            mags.sort_by(|a, b| b.total_cmp(a));
            let k = (density * n as f64) as usize;
            let cut = mags[k - 1];
            t.iter().map(|&x| if x.abs() >= cut { x } else { 0.0 }).collect()
        })
        .collect();
    (0..n)
        .map(|j| {
            if !ties {
                return pruned.iter().zip(w).map(|(t, wi)| t[j] * wi).sum();
            }
            let vote: f64 = pruned.iter().map(|t| if frequency { t[j].signum() * f64::from(u8::from(t[j] != 0.0)) } else { t[j] }).sum();
            let elected = if vote >= 0.0 { 1.0 } else { -1.0 };
            let agree: Vec<f64> =
                pruned.iter().zip(w).filter(|(t, _)| t[j] != 0.0 && t[j].signum() == elected).map(|(t, wi)| t[j] * wi).collect();
            agree.iter().sum::<f64>() / (agree.len().max(1) as f64)
        })
        .collect()
}

#[test]
fn dare_is_reproducible_by_seed_and_at_density_one_is_the_plain_merge() {
    let (mut model, mut tuners) = two_loras();
    let w = [0.9, 0.4];
    for (dare, plain) in [("dare_linear", "linear"), ("dare_ties", "ties"), ("dare_linear_svd", "svd"), ("dare_ties_svd", "ties_svd")] {
        combine(&mut tuners, &mut model, &w, &format!("{dare}_1"), dare, |o| o.density = Some(1.0));
        let density = if plain.contains("ties") { Some(1.0) } else { None };
        combine(&mut tuners, &mut model, &w, &format!("{plain}_ref"), plain, |o| o.density = density);
        let d = max_abs_diff(&delta(&model, &tuners, Q0, &format!("{dare}_1")), &delta(&model, &tuners, Q0, &format!("{plain}_ref")));
        assert!(d < 1e-10, "{dare} at density 1 vs {plain}: {d}");
        tuners.delete_adapter(&mut model, &format!("{plain}_ref")).unwrap();
        for (name, seed) in [("s7", 7), ("s7bis", 7), ("s8", 8)] {
            combine(&mut tuners, &mut model, &w, &format!("{dare}_{name}"), dare, |o| {
                o.density = Some(0.5);
                o.seed = seed;
            });
        }
        let d = |x: &str, y: &str| {
            max_abs_diff(&delta(&model, &tuners, Q0, &format!("{dare}_{x}")), &delta(&model, &tuners, Q0, &format!("{dare}_{y}")))
        };
        assert_eq!(d("s7", "s7bis"), 0.0, "{dare}: same seed, same adapter");
        assert!(d("s7", "s8") > 1e-3, "{dare}: another seed, other masks");
    }
    // dare_linear at density 0.5 keeps about half of A's entries, rescaled by 2.
    let (a, b) = (flat(&factor(&model, Q0, "A", "a")), flat(&factor(&model, Q0, "A", "b")));
    let got = flat(&factor(&model, Q0, "A", "dare_linear_s7"));
    let (wa, wb) = ((0.9f64 * 2.0).sqrt(), (0.4f64 * 0.5).sqrt());
    let explained = got
        .iter()
        .enumerate()
        .filter(|(j, g)| [0.0, 2.0 * wa * a[*j], 2.0 * wb * b[*j], 2.0 * (wa * a[*j] + wb * b[*j])].iter().any(|c| (*g - c).abs() < 1e-12));
    assert_eq!(explained.count(), got.len(), "every entry is a sum of kept, rescaled entries");
}

#[test]
fn merge_utils_on_hand_computed_matrices() {
    use peft_core::tuners::lora::merge_utils::{merge, Merge, SignMethod};
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let tasks = vec![vec![1.0, -2.0, 3.0], vec![-1.0, 1.0, 0.5]];
    let mut m = |kind: Merge, w: &[f64], d: f64, s: SignMethod| merge(kind, &tasks, w, d, s, &mut rng);
    assert_eq!(m(Merge::Ties, &[1.0, 1.0], 1.0, SignMethod::Total), [1.0, -2.0, 1.75]);
    assert_eq!(m(Merge::Ties, &[1.0, 1.0], 0.7, SignMethod::Total), [-1.0, -2.0, 3.0]);
    assert_eq!(m(Merge::Ties, &[2.0, 1.0], 0.7, SignMethod::Total), [-1.0, -4.0, 6.0]);
    assert_eq!(m(Merge::Ties, &[2.0, 1.0], 0.7, SignMethod::Frequency), [-1.0, 1.0, 6.0]);
    assert_eq!(m(Merge::MagnitudePrune, &[2.0, 1.0], 0.7, SignMethod::Total), [-1.0, -3.0, 6.0]);
    assert_eq!(m(Merge::TaskArithmetic, &[2.0, 1.0], 0.1, SignMethod::Total), [1.0, -3.0, 6.5]);
}

#[test]
fn combined_adapter_saves_and_loads_like_any_lora() {
    let (mut model, mut tuners) = two_loras();
    combine(&mut tuners, &mut model, &[0.5, 0.5], "mix", "ties_svd", |o| o.density = Some(0.7));
    let dir = std::env::temp_dir().join(format!("peft-weighted-{}", std::process::id()));
    peft_core::io::adapter::save_adapter(&tuners, &model, "mix", &dir).unwrap();
    let saved = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let report = peft_core::io::adapter::load_adapter(&mut tuners, &mut model, &dir, "mix2", false).unwrap();
    assert_eq!(report.targeted, tuners.modules("mix").unwrap());
    for path in [Q0, V1, K0] {
        assert_eq!(max_abs_diff(&delta(&model, &tuners, path, "mix2"), &delta(&model, &tuners, path, "mix")), 0.0);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(saved.contains("\"r\": 4") && saved.contains("\"lora_alpha\": 4"), "{saved}");
}

/// The combined adapter has scaling 1 even from rsLoRA sources (s = α/√r = 8/2 here):
/// one adapter with weight 1 gives back the same model.
#[test]
fn rslora_sources_give_an_adapter_with_scaling_one() {
    let (mut model, mut tuners) = two_loras();
    let rs = lora(json!({"r": 4, "lora_alpha": 8, "use_rslora": true, "target_modules": ["q_proj"], "init_lora_weights": false}));
    tuners.inject(&mut model, "rs", rs, 5).unwrap();
    tuners.add_weighted_adapter(&mut model, &["rs"], &[1.0], "copy", &WeightedOptions::default()).unwrap();
    assert_eq!(tuners.config("copy").unwrap().to_json()["use_rslora"], json!(false));
    let expected = (factor(&model, Q0, "B", "rs").matmul(&factor(&model, Q0, "A", "rs")).unwrap() * 4.0).unwrap();
    assert!(max_abs_diff(&delta(&model, &tuners, Q0, "copy"), &expected) < 1e-12);
    tuners.set_active(&mut model, &["rs"]).unwrap();
    let original = logits_with(&model, Some(&tuners));
    tuners.set_active(&mut model, &["copy"]).unwrap();
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &original) < 1e-10);
}

/// A combination of a PiSSA adapter is saved with a default init: loading it must not take
/// the principal part out of the base weights a second time.
#[test]
fn a_combined_pissa_adapter_loads_without_touching_the_base() {
    let (mut model, mut tuners) = two_loras();
    let pissa = lora(json!({"r": 4, "lora_alpha": 4, "target_modules": ["q_proj"], "init_lora_weights": "pissa"}));
    tuners.inject(&mut model, "p", pissa, 3).unwrap();
    tuners
        .add_weighted_adapter(
            &mut model,
            &["p"],
            &[1.0],
            "pmix",
            &WeightedOptions { combination_type: "linear".into(), ..Default::default() },
        )
        .unwrap();
    let dir = std::env::temp_dir().join(format!("peft-weighted-pissa-{}", std::process::id()));
    peft_core::io::adapter::save_adapter(&tuners, &model, "pmix", &dir).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(saved["init_lora_weights"], json!(true));
    let base = model.store.by_name(&format!("{Q0}.weight")).unwrap().value().clone();
    peft_core::io::adapter::load_adapter(&mut tuners, &mut model, &dir, "pmix2", false).unwrap();
    assert_eq!(max_abs_diff(&model.store.by_name(&format!("{Q0}.weight")).unwrap().value(), &base), 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

/// LoRAHub refuses to recompose a merged composition (unmerging would subtract the new
/// factors) and, on a refused composition, leaves no adapter behind.
#[test]
fn lorahub_refuses_merged_compositions_and_leaves_nothing_on_error() {
    let (mut model, mut tuners) = two_loras();
    let c = lora(json!({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": false}));
    tuners.inject(&mut model, "c", c, 4).unwrap();
    tuners.compose_lorahub(&mut model, &["a", "c"], &[0.5, 0.5], "hub").unwrap();
    tuners.merge(&mut model, Some(&["hub"])).unwrap();
    let err = tuners.compose_lorahub(&mut model, &["a", "c"], &[0.2, 0.8], "hub").unwrap_err().to_string();
    assert!(err.contains("merged"), "{err}");
    tuners.unmerge(&mut model).unwrap();
    let wide = lora(json!({"r": 8, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": false}));
    tuners.inject(&mut model, "wide", wide, 5).unwrap();
    let err = tuners.compose_lorahub(&mut model, &["a", "wide"], &[0.5, 0.5], "hub2").unwrap_err().to_string();
    assert!(err.contains("wide"), "{err}");
    assert!(!tuners.names().iter().any(|n| n == "hub2"), "no half-built adapter: {:?}", tuners.names());
}
