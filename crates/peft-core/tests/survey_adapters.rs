//! Compacter (PHM adapters with shared Kronecker rules) and DePT (a soft prompt plus low-rank
//! position-wise embedding offsets), from the PEFT survey's tree (issue 16).
use crate::common;
use crate::contract;
use candle_core::{DType, Device, Tensor};
use common::*;
use contract::*;
use serde_json::{json, Value};

/// The PHM weight is Σᵢ Aᵢ ⊗ Bᵢ (eq. 3), checked against the Kronecker product written out,
/// and a fresh adapter (up sᵢ = 0) is the identity; the shared rule is saved once.
#[test]
fn compacter_phm_weight_is_a_sum_of_kronecker_products() {
    use peft_core::tuners::compacter::phm_weight;
    let (n, p, q, r) = (2usize, 3usize, 2usize, 1usize);
    let seq = |len: usize, k: f64| {
        Tensor::from_vec((0..len).map(|i| ((i as f64 + 1.0) * k).sin()).collect::<Vec<f64>>(), len, &Device::Cpu).unwrap()
    };
    let a = seq(n * n * n, 0.7).reshape((n, n, n)).unwrap();
    let s = seq(n * p * r, 1.3).reshape((n, p, r)).unwrap();
    let t = seq(n * r * q, 0.4).reshape((n, r, q)).unwrap();
    let w: Vec<Vec<f64>> = phm_weight(&a, &s, &t).unwrap().to_vec2().unwrap();
    let (av, b): (Vec<Vec<Vec<f64>>>, Vec<Vec<Vec<f64>>>) = (a.to_vec3().unwrap(), s.matmul(&t).unwrap().to_vec3().unwrap());
    for row in 0..n * p {
        for col in 0..n * q {
            let want: f64 = (0..n).map(|i| av[i][row / p][col / q] * b[i][row % p][col % q]).sum();
            assert!((w[row][col] - want).abs() < 1e-12, "W[{row}][{col}] = {} vs {want}", w[row][col]);
        }
    }
    let (model, tuners) = inject(&json!({"peft_type": "COMPACTER", "bottleneck_size": 8}), 0);
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &logits_with(&model, None)) < 1e-6, "identity at init");
    let keys: Vec<String> = tuners.checkpoint_keys(&model, "default").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.iter().filter(|k| k.contains("compacter_rule")).count(), 1, "{keys:?}");
    assert_eq!(keys.len(), 1 + 4 * 6, "the rule, and six tensors at each of the 4 sublayers");
}

#[test]
fn compacter_config_errors_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "COMPACTER", "bottleneck_size": 10, "phm_dim": 4}), "bottleneck_size"),
        (json!({"peft_type": "COMPACTER", "phm_dim": 7, "bottleneck_size": 14}), "phm_dim"),
        (json!({"peft_type": "COMPACTER", "phm_dim": 0}), "phm_dim"),
        (json!({"peft_type": "COMPACTER", "non_linearity": "softplus"}), "non_linearity"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(key), "{cfg}: {e}");
    }
}

fn dept(max_length: usize) -> Value {
    json!({"peft_type": "DEPT", "num_virtual_tokens": 3, "r": 4, "max_length": max_length})
}

/// With B = 0 DePT is prompt tuning with its prompt; with B ≠ 0 the offsets act per position,
/// the cache counts positions on (decoding token by token = one full pass, across the
/// `max_length` boundary), and the file holds the prompt and both factors under PEFT-style keys.
#[test]
fn dept_is_prompt_tuning_plus_position_offsets() {
    use peft_core::model::{Batch, Ctx};
    use peft_core::tuners::WithTuners;
    let (d, d_t) = inject(&dept(5), 1);
    let (pt, pt_t) = inject(&json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3}), 2);
    set(&pt, "prompt_encoder.default.embedding.weight", &value(&d, "prompt_encoder.default.embedding.weight"));
    assert!(max_abs_diff(&logits_with(&d, Some(&d_t)), &logits_with(&pt, Some(&pt_t))) < 1e-6, "B = 0: prompt tuning");
    let (dflt, dflt_t) = inject(&json!({"peft_type": "DEPT", "num_virtual_tokens": 3}), 1);
    assert_eq!(dflt_t.config("default").unwrap().to_json()["max_length"], 128, "null: the model's 128 positions (below 256)");
    assert_eq!(value(&dflt, "prompt_encoder.default.dept_A.weight").dims(), [128, 60]);

    let (model, tuners) = contract::setup(&dept(5), DType::F64);
    let row: Vec<u32> = inputs().input_ids[0].iter().take(8).copied().collect();
    let (full, diff) = cached_decoding_diff(&model, &tuners, &row);
    assert!(diff < 1e-10, "cached decoding vs full pass: {diff}");
    let ctx = Ctx::inference(&model.store).with_tuners(&tuners);
    // Positions 5.. get no offset: zeroing the rows of A past max_length changes nothing, row 4 does.
    let a = value(&model, "prompt_encoder.default.dept_A.weight");
    let zero_row = |i: usize| {
        let mut v: Vec<Vec<f64>> = a.to_vec2().unwrap();
        v[i].iter_mut().for_each(|x| *x = 0.0);
        Tensor::new(v, &Device::Cpu).unwrap()
    };
    set(&model, "prompt_encoder.default.dept_A.weight", &zero_row(4));
    let changed = max_abs_diff(&model.forward(&Batch::new(vec![row.clone()]), &ctx, None, false).unwrap(), &full);
    assert!(changed > 1e-6, "row 4 offsets the fifth token: {changed}");

    let dir = std::env::temp_dir().join(format!("peft-core-dept-{}", std::process::id()));
    peft_core::io::adapter::save_adapter(&tuners, &model, "default", &dir).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let mut keys: Vec<&String> = tensors.keys().collect();
    keys.sort();
    assert_eq!(keys, ["prompt_embeddings", "prompt_encoder.dept_A.weight", "prompt_encoder.dept_B.weight"]);
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["peft_type"].as_str(), cfg["r"].as_u64(), cfg["max_length"].as_u64(), cfg["token_dim"].as_u64()),
        (Some("DEPT"), Some(4), Some(5), Some(64))
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn dept_config_errors_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "DEPT", "r": 4}), "num_virtual_tokens"),
        (json!({"peft_type": "DEPT", "num_virtual_tokens": 3, "max_length": 0}), "max_length"),
        (json!({"peft_type": "DEPT", "num_virtual_tokens": 3, "max_length": 100000000}), "max_length"),
        (json!({"peft_type": "DEPT", "num_virtual_tokens": 3, "r": 100000}), "r"),
        (json!({"peft_type": "DEPT", "num_virtual_tokens": 3, "prompt_tuning_init": "WORDS"}), "prompt_tuning_init"),
        (json!({"peft_type": "DEPT", "num_virtual_tokens": 3, "max_length": 129}), "max_position_embeddings (128)"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(key), "{cfg}: {e}");
    }
}
