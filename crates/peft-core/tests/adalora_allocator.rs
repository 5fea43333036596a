//! AdaLoRA's RankAllocator against PEFT's equations (`RankAllocator.update_ipt`,
//! `_element_score`, `_combine_ipt`, `budget_schedule`, `mask_to_budget`,
//! `AdaLoraModel.update_and_allocate`) on a hand-computed example, and the files PEFT
//! writes after an allocation (`resize_state_dict_by_rank_pattern`, rank_pattern).
use crate::common;
use crate::contract;
use candle_core::{Device, Tensor};
use common::*;
use contract::*;
use peft_core::io::adapter::{load_adapter, save_adapter, CONFIG_NAME, WEIGHTS_NAME};
use peft_core::io::safetensors::load_file;
use peft_core::model::CausalLm;
use peft_core::tuners::adalora::{AdaLoraConfig, RankAllocator};
use peft_core::tuners::Tuners;
use serde_json::{json, Value};

const M0: &str = "model.layers.0.self_attn.q_proj";
const M1: &str = "model.layers.1.self_attn.q_proj";

fn name(m: &str, attr: &str) -> String {
    format!("base_model.model.{m}.{attr}.default")
}

/// Every A, E, B value 1; the gradient of rank i is the constant (ε, α, β)[i] on E_i, on
/// row i of A and on column i of B, so that each importance is I = |1 · grad|.
fn set(model: &mut CausalLm, m: &str, grads: [[f64; 3]; 2]) {
    let t = |v: Vec<f64>, dims: &[usize]| Tensor::from_vec(v, dims, &Device::Cpu).unwrap();
    for (attr, k) in [("lora_E", 0), ("lora_A", 1), ("lora_B", 2)] {
        let p = model.store.by_name_mut(&name(m, attr)).unwrap();
        let dims = p.dims().to_vec();
        let g: Vec<f64> = match attr {
            "lora_B" => (0..64 * 2).map(|j| grads[j % 2][k]).collect(),
            "lora_A" => (0..2 * 64).map(|j| grads[j / 64][k]).collect(),
            _ => vec![grads[0][0], grads[1][0]],
        };
        p.set(&t(vec![1.0; g.len()], &dims)).unwrap();
        p.grad = Some(t(g, &dims).to_dtype(p.dtype()).unwrap());
    }
}

fn e_values(model: &CausalLm, m: &str) -> Vec<f32> {
    flat(&model.store.by_name(&name(m, "lora_E")).unwrap().value())
}

fn pattern(tuners: &Tuners) -> Value {
    let c = tuners.config("default").unwrap().as_any().downcast_ref::<AdaLoraConfig>().unwrap().clone();
    peft_core::tuners::TunerConfig::to_json(&c)["rank_pattern"].clone()
}

#[test]
fn allocation_follows_peft_equations_by_hand() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let cfg = json!({"init_r": 2, "target_r": 1, "beta1": 0.5, "beta2": 0.5, "tinit": 1, "tfinal": 1, "total_step": 10, "target_modules": ["q_proj"]});
    tuners.inject(&mut model, "default", config(&typed("ADALORA", cfg)), 0).unwrap();
    let mut alloc = RankAllocator::new(&tuners, &model, "default").unwrap();
    assert_eq!((alloc.init_bgt, alloc.target_bgt), (4, 2));
    // (ε, α, β) per rank: Σ I² = 3 and 4 in module 0, 0.75 and 9 in module 1.
    set(&mut model, M0, [[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]]);
    set(&mut model, M1, [[0.5, 0.5, 0.5], [3.0, 0.0, 0.0]]);

    // Step 1 <= tinit: EMAs only. Ī = 0.5·I, Ū = 0.5·|I − Ī| = 0.25·I, score 0.125·I².
    assert_eq!(alloc.update_and_allocate(&mut tuners, &model, 1).unwrap(), None);
    let s = alloc.rank_scores(&model.store).unwrap();
    assert_eq!(s, [vec![0.375, 0.5], vec![0.09375, 1.125]]);
    assert_eq!(pattern(&tuners), Value::Null);

    // Step 2: Ī = 0.75·I, Ū = 0.5·0.25·I + 0.5·0.25·I = 0.25·I, score 0.1875·I².
    // Budget ⌊(4 − 2)·(1 − 1/8)³ + 2⌋ = ⌊3.3398⌋ = 3: the 1 smallest rank (module 1, rank 0) goes.
    assert_eq!(alloc.update_and_allocate(&mut tuners, &model, 2).unwrap(), Some(3));
    assert_eq!(alloc.rank_scores(&model.store).unwrap(), [vec![0.5625, 0.75], vec![0.140625, 1.6875]]);
    assert_eq!(e_values(&model, M1), [0.0, 1.0]);
    assert_eq!(e_values(&model, M0), [1.0, 1.0]);
    assert_eq!(pattern(&tuners), json!({format!("{M0}.lora_E"): [true, true], format!("{M1}.lora_E"): [false, true]}));

    // Step 3: masked E₁₀ = 0 now has I = 0: Ī = 0.5·0.375 = 0.1875, Ū = 0.5·0.125 + 0.5·0.1875
    // = 0.15625, score 0.029296875; elsewhere Ī = 0.875·I, Ū = 0.1875·I, score 0.1640625·I².
    // Budget ⌊2·0.75³ + 2⌋ = 2: the 2 smallest (module 1 rank 0, module 0 rank 0) go.
    assert_eq!(alloc.update_and_allocate(&mut tuners, &model, 3).unwrap(), Some(2));
    let s = alloc.rank_scores(&model.store).unwrap();
    let want = [[0.4921875, 0.65625], [0.029296875 + 0.1640625 * 0.5, 0.1640625 * 9.0]];
    for (row, w) in s.iter().zip(want) {
        for (x, y) in row.iter().zip(w) {
            assert!((x - y).abs() < 1e-12, "{s:?} vs {want:?}");
        }
    }
    assert_eq!((e_values(&model, M0), e_values(&model, M1)), (vec![0.0, 1.0], vec![0.0, 1.0]));

    // Step 9 = total_step − tfinal: the final mask at the target budget, EMAs reset.
    assert_eq!(alloc.update_and_allocate(&mut tuners, &model, 9).unwrap(), Some(2));
    assert!(alloc.rank_scores(&model.store).is_err(), "importance reset");
    let final_pattern = json!({format!("{M0}.lora_E"): [false, true], format!("{M1}.lora_E"): [false, true]});
    assert_eq!(pattern(&tuners), final_pattern);
    // After it, the saved pattern is re-applied every step (the optimizer moved E again).
    set(&mut model, M0, [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]);
    assert_eq!(e_values(&model, M0), [1.0, 1.0]);
    alloc.update_and_allocate(&mut tuners, &model, 10).unwrap();
    assert_eq!(e_values(&model, M0), [0.0, 1.0]);

    // PEFT's files after allocation: only the kept ranks, the pattern in the config.
    let before = logits_with(&model, Some(&tuners));
    let out = tmp("alloc");
    save_adapter(&tuners, &model, "default", &out).unwrap();
    let keys = load_file(&out.join(WEIGHTS_NAME), None, &Device::Cpu).unwrap();
    assert_eq!(keys[&format!("base_model.model.{M0}.lora_A")].dims(), [1, 64]);
    assert_eq!(keys[&format!("base_model.model.{M1}.lora_B")].dims(), [64, 1]);
    assert_eq!(keys[&format!("base_model.model.{M1}.lora_E")].dims(), [1, 1]);
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join(CONFIG_NAME)).unwrap()).unwrap();
    assert_eq!(cfg["rank_pattern"], final_pattern);
    // Loaded back, the modules have the kept ranks (ranknum stays init_r): same output, and
    // saving again writes the same bytes.
    let mut fresh = load_model();
    let mut t2 = Tuners::new();
    load_adapter(&mut t2, &mut fresh, &out, "default", false).unwrap();
    assert_eq!(fresh.store.by_name(&name(M0, "lora_A")).unwrap().dims(), [1, 64]);
    assert!(max_abs_diff(&logits_with(&fresh, Some(&t2)), &before) < 1e-6);
    let again = tmp("alloc-again");
    save_adapter(&t2, &fresh, "default", &again).unwrap();
    for f in [WEIGHTS_NAME, CONFIG_NAME] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(), "{f}");
    }
    let _ = (std::fs::remove_dir_all(out), std::fs::remove_dir_all(again));
}

#[test]
fn budget_schedule_is_peft_cubic() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let cfg = json!({"init_r": 12, "target_r": 4, "tinit": 10, "tfinal": 20, "total_step": 100, "deltaT": 5, "target_modules": ["q_proj", "v_proj"]});
    tuners.inject(&mut model, "default", config(&typed("ADALORA", cfg)), 0).unwrap();
    let alloc = RankAllocator::new(&tuners, &model, "default").unwrap();
    let c = tuners.config("default").unwrap().as_any().downcast_ref::<AdaLoraConfig>().unwrap().clone();
    assert_eq!((alloc.init_bgt, alloc.target_bgt), (48, 16));
    // b(t) = ⌊(48 − 16)·(1 − (t − 10)/70)³ + 16⌋, masking when t % 5 == 0.
    for (t, want) in
        [(0, (48, false)), (10, (48, false)), (11, (46, false)), (15, (41, true)), (45, (20, true)), (80, (16, true)), (81, (16, true))]
    {
        assert_eq!(alloc.budget_schedule(&c, t), want, "step {t}");
    }
}

#[test]
fn allocator_errors_are_clear() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(&typed("ADALORA", json!({"init_r": 2, "target_r": 2, "total_step": 10}))), 0).unwrap();
    let e = RankAllocator::new(&tuners, &model, "default").err().unwrap().to_string();
    assert!(e.contains("`target_r`"), "{e}");
    tuners.inject(&mut model, "ok", config(&typed("ADALORA", json!({"init_r": 4, "target_r": 2, "total_step": 10}))), 0).unwrap();
    tuners.set_active(&mut model, &["ok"]).unwrap();
    let mut alloc = RankAllocator::new(&tuners, &model, "ok").unwrap();
    let e = alloc.update_and_allocate(&mut tuners, &model, 1).unwrap_err().to_string();
    assert!(e.contains("backward"), "{e}");
    let e = alloc.update_and_allocate(&mut tuners, &model, 11).unwrap_err().to_string();
    assert!(e.contains("no allocation"), "{e}");
    let mut t2 = Tuners::new();
    t2.inject(&mut model, "lora", lora(json!({"target_modules": ["q_proj"]})), 0).unwrap();
    assert!(RankAllocator::new(&t2, &model, "lora").is_err());
}
