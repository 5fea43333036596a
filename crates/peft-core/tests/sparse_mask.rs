//! SPARSE_MASK (FishMask / fixed-mask diff pruning): exact gradients
//! of every masked delta by f64 finite differences, the mask choices (magnitude, random,
//! Fisher), what the files hold, and config errors.
use crate::common;
use crate::contract;
use candle_core::{DType, Device, Tensor};
use common::*;
use contract::{config, error_of, loss64, setup};
use peft_core::io::adapter::save_adapter;
use peft_core::model::{loss, Batch, CausalLm, Ctx};
use peft_core::tuners::sparse_mask::{estimate_fisher, inject_with_fisher, FisherBatch, FisherScores, SparseMaskConfig};
use peft_core::tuners::{TargetSpec, Targets, Tuners};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

const Q0: &str = "model.layers.0.self_attn.q_proj";

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap()
}

fn indices_of(model: &CausalLm, path: &str) -> Vec<i64> {
    model.store.by_name(&format!("base_model.model.{path}.sparse_indices.default")).unwrap().value().to_vec1::<i64>().unwrap()
}

fn inject(model: &mut CausalLm, cfg: SparseMaskConfig) -> Tuners {
    let mut tuners = Tuners::new();
    tuners.inject(model, "default", Box::new(cfg), 0).unwrap();
    tuners
}

fn parsed(v: &Value) -> SparseMaskConfig {
    SparseMaskConfig::from_value(v, Path::new("test config")).unwrap().0
}

/// The k largest of `scores`, ties to the lower index, ascending: the definition, by a full sort.
fn top_k_by_sort(scores: &[f64], k: usize) -> Vec<i64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
    let mut top: Vec<i64> = order[..k].iter().map(|&i| i as i64).collect();
    top.sort();
    top
}

/// Every entry of one delta against central differences of the f64 loss.
#[test]
fn every_masked_delta_has_the_exact_gradient() {
    let (mut model, tuners) =
        setup(&json!({"peft_type": "SPARSE_MASK", "density": 0.01, "target_modules": ["q_proj", "down_proj"]}), DType::F64);
    loss_with(&mut model, Some(&tuners), true);
    let mut worst = 0f64;
    for path in [Q0, "model.layers.1.mlp.down_proj"] {
        let name = format!("base_model.model.{path}.sparse_delta.default");
        let p = model.store.by_name(&name).unwrap();
        let (base, grad) = (values(&p.value()), values(p.grad.as_ref().unwrap()));
        let gmax = grad.iter().fold(0f64, |m, x| m.max(x.abs()));
        for i in 0..base.len() {
            let at = |h: f64| {
                let mut x = base.clone();
                x[i] += h;
                model.store.by_name(&name).unwrap().set(&Tensor::new(x, &Device::Cpu).unwrap()).unwrap();
                loss64(&model, &tuners)
            };
            let h = 1e-5;
            let fd = (at(h) - at(-h)) / (2.0 * h);
            worst = worst.max((fd - grad[i]).abs() / gmax);
        }
        model.store.by_name(&name).unwrap().set(&Tensor::new(base, &Device::Cpu).unwrap()).unwrap();
    }
    println!("sparse mask: largest finite-difference error over every delta entry {worst:e} (relative to the largest gradient)");
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn magnitude_keeps_the_largest_weights_and_density_one_keeps_all() {
    let mut model = load_model();
    let w = values(&model.store.by_name(&format!("{Q0}.weight")).unwrap().value());
    let abs: Vec<f64> = w.iter().map(|x| x.abs()).collect();
    let tuners = inject(&mut model, parsed(&json!({"peft_type": "SPARSE_MASK", "density": 0.1, "target_modules": ["q_proj", "up_proj"]})));
    assert_eq!(indices_of(&model, Q0), top_k_by_sort(&abs, 410), "k = round(0.1 · 4096)");
    assert_eq!(indices_of(&model, "model.layers.1.mlp.up_proj").len(), 1024, "round(0.1 · 160 · 64)");
    assert_eq!(tuners.modules("default").unwrap().len(), 4);

    let mut model = load_model();
    inject(&mut model, parsed(&json!({"peft_type": "SPARSE_MASK", "density": 1.0, "target_modules": ["q_proj"]})));
    assert_eq!(indices_of(&model, Q0), (0..4096).collect::<Vec<i64>>());
    // A tiny density still trains one entry: the largest.
    let mut model = load_model();
    inject(&mut model, parsed(&json!({"peft_type": "SPARSE_MASK", "density": 1e-9, "target_modules": ["q_proj"]})));
    assert_eq!(indices_of(&model, Q0), top_k_by_sort(&abs, 1));
}

/// PaFi's mask: the k smallest |W| (ties to the lower index), disjoint from the magnitude mask.
#[test]
fn smallest_magnitude_keeps_the_smallest_weights() {
    let mut model = load_model();
    let w = values(&model.store.by_name(&format!("{Q0}.weight")).unwrap().value());
    let neg_abs: Vec<f64> = w.iter().map(|x| -x.abs()).collect();
    inject(
        &mut model,
        parsed(&json!({"peft_type": "SPARSE_MASK", "density": 0.1, "mask_type": "smallest_magnitude", "target_modules": ["q_proj"]})),
    );
    let small = indices_of(&model, Q0);
    assert_eq!(small, top_k_by_sort(&neg_abs, 410));
    let largest_kept = small.iter().map(|&i| w[i as usize].abs()).fold(0f64, f64::max);
    let smallest_left = (0..w.len() as i64).filter(|i| !small.contains(i)).map(|i| w[i as usize].abs()).fold(f64::INFINITY, f64::min);
    assert!(largest_kept <= smallest_left, "kept |w| up to {largest_kept}, left out one of {smallest_left}");
}

#[test]
fn random_masks_are_seeded_distinct_and_per_layer() {
    let draw = |seed: u64| {
        let mut model = load_model();
        inject(&mut model, parsed(&json!({"peft_type": "SPARSE_MASK", "density": 0.25, "mask_type": "random", "mask_seed": seed})));
        (indices_of(&model, Q0), indices_of(&model, "model.layers.1.self_attn.q_proj"))
    };
    let (a, a1) = draw(7);
    assert_eq!(a.len(), 1024);
    assert!(a.windows(2).all(|w| w[0] < w[1]), "distinct and ascending");
    assert!(a[0] >= 0 && a[1023] < 4096);
    assert_eq!((a.clone(), a1.clone()), draw(7), "same seed, same mask");
    assert_ne!(a, draw(8).0, "another seed, another mask");
    assert_ne!(a, a1, "layers of the same shape get different masks");
}

fn fisher_batches() -> Vec<FisherBatch> {
    let inp = inputs();
    vec![
        FisherBatch { batch: inp.batch(), labels: inp.labels.clone() },
        FisherBatch { batch: Batch::new(vec![vec![40, 41, 42, 43, 44]]), labels: vec![vec![40, 41, 42, 43, 44]] },
    ]
}

#[test]
fn fisher_is_the_mean_squared_gradient_and_leaves_the_model_as_it_was() {
    let mut model = load_model();
    let spec = TargetSpec { target_modules: Some(Targets::List(vec!["q_proj".into(), "v_proj".into()])), ..Default::default() };
    let scores = estimate_fisher(&mut model, &spec, &fisher_batches(), Path::new("test")).unwrap();
    assert_eq!(scores.len(), 4);
    assert!(model.store.iter().all(|(_, p)| !p.requires_grad() && p.grad.is_none()), "requires_grad restored, no gradient left");

    // The definition, by hand: the gradient of each batch's loss, squared, averaged.
    let mut expected = vec![0f64; 4096];
    for b in fisher_batches() {
        let mut m = load_model();
        m.store.by_name_mut(&format!("{Q0}.weight")).unwrap().set_requires_grad(true).unwrap();
        let ctx = Ctx::new(&m.store, false);
        let l = loss::causal_lm_loss(&m.forward(&b.batch, &ctx, None, false).unwrap(), &b.labels).unwrap();
        let g = values(l.backward().unwrap().get(&m.store.by_name(&format!("{Q0}.weight")).unwrap().value()).unwrap());
        expected.iter_mut().zip(g).for_each(|(e, g)| *e += g * g / 2.0);
    }
    let got = values(&scores[Q0]);
    let scale = expected.iter().fold(0f64, |m, x| m.max(*x));
    assert!(scale > 0.0);
    let err = got.iter().zip(&expected).fold(0f64, |m, (a, b)| m.max((a - b).abs())) / scale;
    assert!(err < 1e-5, "Fisher differs from the mean squared gradient by {err}");
}

#[test]
fn fisher_masks_keep_the_highest_scores() {
    let mut model = load_model();
    // Known scores: a fixed pseudo-random permutation, so the expected top-k is clear.
    let known: Vec<f64> = (0..4096u64).map(|i| ((i * 2654435761) % 4099) as f64).collect();
    let mut fisher = FisherScores::new();
    fisher.insert(Q0.to_string(), Tensor::from_vec(known.iter().map(|&x| x as f32).collect::<Vec<_>>(), (64, 64), &Device::Cpu).unwrap());
    let v = json!({"peft_type": "SPARSE_MASK", "density": 0.02, "mask_type": "fisher", "target_modules": ["q_proj"], "layers_to_transform": [0]});
    inject(&mut model, parsed(&v).with_fisher(Arc::new(fisher)));
    assert_eq!(indices_of(&model, Q0), top_k_by_sort(&known, 82));

    // Estimated scores choose a mask that differs from the magnitude one.
    let mut model = load_model();
    let spec = TargetSpec { target_modules: Some(Targets::List(vec!["q_proj".into()])), ..Default::default() };
    let est = Arc::new(estimate_fisher(&mut model, &spec, &fisher_batches(), Path::new("test")).unwrap());
    let mut tuners = Tuners::new();
    inject_with_fisher(&mut tuners, &mut model, "default", parsed(&v), est.clone(), 0).unwrap();
    let fisher_idx = indices_of(&model, Q0);
    assert_eq!(fisher_idx, top_k_by_sort(&values(&est[Q0]), 82));
    let kept = tuners.config("default").unwrap().as_any().downcast_ref::<SparseMaskConfig>().unwrap();
    assert!(kept.fisher.is_none() && Arc::strong_count(&est) == 1, "the adapter does not keep the scores");
    let mut m2 = load_model();
    inject(
        &mut m2,
        parsed(&json!({"peft_type": "SPARSE_MASK", "density": 0.02, "target_modules": ["q_proj"], "layers_to_transform": [0]})),
    );
    assert_ne!(fisher_idx, indices_of(&m2, Q0));
}

#[test]
fn the_file_holds_only_the_masked_deltas_and_their_indices() {
    let (model, tuners) = setup(&json!({"peft_type": "SPARSE_MASK", "density": 0.01}), DType::F32);
    let dir = std::env::temp_dir().join(format!("peft-node-sparse-files-{}", std::process::id()));
    save_adapter(&tuners, &model, "default", &dir).unwrap();
    let file = dir.join("adapter_model.safetensors");
    let saved = peft_core::io::safetensors::load_file(&file, None, &Device::Cpu).unwrap();
    assert_eq!(saved.len(), 2 * 14, "a delta and its indices per targeted linear");
    let mut entries = 0;
    for l in model.linears().iter().filter(|l| l.path != "lm_head") {
        let (out, inp) = model.store.get(l.weight).value().dims2().unwrap();
        let k = ((0.01 * (out * inp) as f64).round() as usize).max(1);
        let d = &saved[&format!("base_model.model.{}.sparse_delta", l.path)];
        let i = &saved[&format!("base_model.model.{}.sparse_indices", l.path)];
        assert_eq!((d.dims(), d.dtype()), (&[k][..], DType::F32));
        assert_eq!((i.dims(), i.dtype()), (&[k][..], DType::I64));
        entries += out * inp;
    }
    let bytes = std::fs::metadata(&file).unwrap().len();
    println!(
        "sparse mask, density 0.01: adapter_model.safetensors {bytes} bytes for {entries} adapted weight entries ({} bytes dense f32)",
        entries * 4
    );
    assert!(bytes < (entries as u64 * 4) / 20);
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["peft_type"].as_str(), cfg["density"].as_f64(), cfg["mask_type"].as_str()),
        (Some("SPARSE_MASK"), Some(0.01), Some("magnitude"))
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Indices edited in the file (out of range, repeated, or floats) are refused when loading,
/// naming the file, and leave no adapter behind.
#[test]
fn corrupt_indices_in_a_file_are_refused() {
    let (model, tuners) = setup(&json!({"peft_type": "SPARSE_MASK", "density": 0.01}), DType::F32);
    let dir = std::env::temp_dir().join(format!("peft-node-sparse-corrupt-{}", std::process::id()));
    save_adapter(&tuners, &model, "default", &dir).unwrap();
    let file = dir.join("adapter_model.safetensors");
    let saved = peft_core::io::safetensors::load_file(&file, None, &Device::Cpu).unwrap();
    let key = format!("base_model.model.{Q0}.sparse_indices");
    let good = saved[&key].to_vec1::<i64>().unwrap();
    let (out, inp) = model.store.by_name(&format!("{Q0}.weight")).unwrap().value().dims2().unwrap();
    let mut repeated = good.clone();
    repeated[1] = repeated[0];
    let cases: Vec<(&str, Tensor)> = vec![
        (
            "out of range",
            Tensor::from_vec(
                good.iter().map(|&i| if i == good[0] { (out * inp) as i64 } else { i }).collect::<Vec<_>>(),
                good.len(),
                &Device::Cpu,
            )
            .unwrap(),
        ),
        ("repeated", Tensor::from_vec(repeated, good.len(), &Device::Cpu).unwrap()),
        ("floats", Tensor::from_vec(good.iter().map(|&i| i as f32).collect::<Vec<_>>(), good.len(), &Device::Cpu).unwrap()),
    ];
    for (what, bad) in cases {
        let mut tensors: Vec<(String, Tensor)> = saved.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        tensors.iter_mut().filter(|(k, _)| *k == key).for_each(|(_, v)| *v = bad.clone());
        peft_core::io::safetensors::save_file(&tensors, None, &file).unwrap();
        let (mut model2, mut tuners2) = (load_model(), Tuners::new());
        let err = peft_core::io::adapter::load_adapter(&mut tuners2, &mut model2, &dir, "default", false).unwrap_err().to_string();
        assert!(err.contains("adapter_model.safetensors"), "{what}: {err}");
        assert!(err.contains("sparse_indices") || err.contains("dtype") || err.contains("I64") || err.contains("F32"), "{what}: {err}");
        assert!(tuners2.names().is_empty(), "{what}: nothing left attached");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "SPARSE_MASK", "density": 0}), "density"),
        (json!({"peft_type": "SPARSE_MASK", "density": 1.5}), "density"),
        (json!({"peft_type": "SPARSE_MASK", "density": -0.1}), "density"),
        (json!({"peft_type": "SPARSE_MASK", "density": f64::NAN}), "density"),
        (json!({"peft_type": "SPARSE_MASK", "density": "0.5"}), "density"),
        (json!({"peft_type": "SPARSE_MASK"}), "density"),
        (json!({"peft_type": "SPARSE_MASK", "density": 0.1, "mask_type": "l1"}), "mask_type"),
        (json!({"peft_type": "SPARSE_MASK", "density": 0.1, "mask_type": "fisher"}), "mask_type"),
        (json!({"peft_type": "SPARSE_MASK", "density": 0.1, "mask_seed": -1}), "mask_seed"),
        (json!({"peft_type": "SPARSE_MASK", "density": 0.1, "target_modules": ["nope"]}), "target_modules"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(&format!("`{key}`")), "{cfg}: {e}");
    }
    let e = error_of(&json!({"peft_type": "SPARSE_MASK", "density": 1.5}));
    assert!(e.contains("(0, 1]") && e.contains("1.5"), "{e}");
    // Fisher scores for other modules than the targeted ones.
    let spec = TargetSpec { target_modules: Some(Targets::List(vec!["k_proj".into()])), ..Default::default() };
    let mut model = load_model();
    let est = estimate_fisher(&mut model, &spec, &fisher_batches(), Path::new("test")).unwrap();
    let cfg = parsed(&json!({"peft_type": "SPARSE_MASK", "density": 0.1, "mask_type": "fisher", "target_modules": ["q_proj"]}))
        .with_fisher(Arc::new(est));
    let e = Tuners::new().inject(&mut model, "default", Box::new(cfg), 0).unwrap_err().to_string();
    assert!(e.contains("`mask_type`") && e.contains(Q0), "{e}");
    assert!(estimate_fisher(&mut model, &spec, &[], Path::new("test")).unwrap_err().to_string().contains("batches"));
}

#[test]
fn unknown_fields_are_kept_with_a_warning() {
    let (c, w) =
        SparseMaskConfig::from_value(&json!({"peft_type": "SPARSE_MASK", "density": 0.5, "sparsity_schedule": "cubic"}), Path::new("x"))
            .unwrap();
    assert!(w.iter().any(|w| w.message.contains("sparsity_schedule")), "{w:?}");
    assert_eq!(peft_core::tuners::TunerConfig::to_json(&c)["sparsity_schedule"], "cubic");
    let _ = config(&json!({"peft_type": "SPARSE_MASK", "density": 0.5}));
}
