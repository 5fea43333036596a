//! The LoRA improvements of the survey's tree, part B (issue 16): PeriodicLoRA (and the others
//! as they come). Each keeps the method contract; the training procedures are checked directly.
mod common;
mod method_contract;
mod survey_common;
use candle_core::DType;
use common::*;
use method_contract::{check, error_of, setup};
use serde_json::json;
use survey_common::*;

#[test]
fn periodic_lora_contract() {
    let e = check(&json!({"peft_type": "PERIODIC_LORA", "r": 4, "lora_alpha": 8, "merge_every": 3, "target_modules": ["q_proj", "v_proj"]}), 0, true);
    println!("PeriodicLoRA: finite differences rel err {e:e}");
}

#[test]
fn bad_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "PERIODIC_LORA", "merge_every": 0}), "merge_every"),
        (json!({"peft_type": "PERIODIC_LORA", "r": 0}), "r"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(key), "{cfg}: {e}");
    }
}

/// At the end of a stage the update s·B A moves into the merged buffer (the logits do not
/// change), B restarts at 0 and A is redrawn; between stages nothing happens. A second stage
/// adds to the first: the adapter's update is their sum, beyond rank r.
#[test]
fn periodic_lora_unloads_each_stage_and_restarts() {
    use peft_core::tuners::periodic_lora::restart;
    let (model, tuners) = setup(&json!({"peft_type": "PERIODIC_LORA", "r": 2, "lora_alpha": 2, "merge_every": 2, "target_modules": ["q_proj"]}), DType::F64);
    let (a, b, m) = (format!("{Q0}.lora_A.default.weight"), format!("{Q0}.lora_B.default.weight"), format!("{Q0}.lora_merged.default.weight"));
    let before = logits_with(&model, Some(&tuners));
    let stage1 = value(&model, &b).matmul(&value(&model, &a)).unwrap(); // s = 1
    let a1 = value(&model, &a).copy().unwrap(); // the store sets values in place
    assert!(restart(&model, &tuners, 1, 7).unwrap().is_empty(), "mid-stage");
    let r = restart(&model, &tuners, 2, 7).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0.as_str(), r[0].1, r[0].2.len()), ("default", 1, 4), "stage 1 ended; A and B of 2 layers reset");
    assert!(max_abs_diff(&logits_with(&model, Some(&tuners)), &before) < 1e-10, "unloading keeps the output");
    assert!(max_abs_diff(&value(&model, &m), &stage1) < 1e-12, "M = s·B A of stage 1");
    assert!(value(&model, &b).abs().unwrap().sum_all().unwrap().to_vec0::<f64>().unwrap() == 0.0, "B restarts at 0");
    assert!(max_abs_diff(&value(&model, &a), &a1) > 1e-3, "A is redrawn");
    // Stage 2 learns another rank-2 update; after its restart M holds both: rank 4 > r.
    set(&model, &b, &value(&model, &b).ones_like().unwrap());
    let stage2 = value(&model, &b).matmul(&value(&model, &a)).unwrap();
    restart(&model, &tuners, 4, 7).unwrap();
    assert!(max_abs_diff(&value(&model, &m), &(stage1 + stage2).unwrap()) < 1e-12, "M = the sum of the stages");
}
