//! Mixed-batch inference (PEFT's `adapter_names=`): each row of one forward pass or one
//! generation runs its own adapter, and gives what that row gives alone with only its
//! adapter active (or with the adapters disabled for `__base__`).
use crate::common;
use crate::contract;
use candle_core::{Device, Tensor};
use common::*;
use contract::*;
use peft_core::io::adapter::load_adapter;
use peft_core::model::generate::{generate, Flow, GenerateOptions};
use peft_core::model::{Batch, CausalLm, Ctx};
use peft_core::tuners::Tuners;
use peft_core::tuners::WithTuners;
use serde_json::json;

/// Two LoRA adapters of different ranks and targets (r 4 on q/v; rsLoRA r 8 on every
/// linear) and one IA³ adapter (k/v, and down_proj as a feed-forward input scale), all from
/// the PEFT fixtures. Only `a` is active: the others must be reachable per row anyway.
fn three_adapters() -> (CausalLm, Tuners) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    for (case, name) in [("lora_qv", "a"), ("lora_all_rslora", "b"), ("ia3", "ia3")] {
        load_adapter(&mut tuners, &mut model, &case_dir(case), name, false).unwrap();
    }
    assert_eq!(tuners.active(), ["a"]);
    (model, tuners)
}

/// Four rows of 16 tokens; row 1 right-padded as in the fixture.
fn four_rows() -> Batch {
    let inp = inputs();
    let mut ids = inp.input_ids.clone();
    ids.push(inp.input_ids[0].iter().rev().copied().collect());
    ids.push(inp.input_ids[1][..9].iter().chain(&inp.input_ids[0][..7]).copied().collect());
    let mut mask = inp.attention_mask.clone();
    mask.extend([vec![1u8; 16], vec![1u8; 16]]);
    Batch { ids, attention_mask: Some(mask), position_ids: None, segment_ids: None }
}

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

fn row(batch: &Batch, r: usize) -> Batch {
    Batch {
        ids: vec![batch.ids[r].clone()],
        attention_mask: batch.attention_mask.as_ref().map(|m| vec![m[r].clone()]),
        position_ids: None,
        segment_ids: None,
    }
}

fn logits_on(model: &CausalLm, tuners: &Tuners, batch: &Batch) -> Tensor {
    model.forward(batch, &Ctx::inference(&model.store).with_tuners(tuners), None, false).unwrap()
}

fn mixed_logits(model: &CausalLm, tuners: &Tuners, batch: &Batch, assign: &[&str]) -> peft_core::Result<Tensor> {
    let rows = tuners.route_rows(&names(assign), &Device::Cpu)?;
    let ctx = Ctx::inference(&model.store).with_tuners_per_row(tuners, rows);
    model.forward(batch, &ctx, None, false)
}

/// Row `r` alone, with only adapter `name` running (`__base__`: adapters disabled).
fn alone(model: &mut CausalLm, tuners: &mut Tuners, batch: &Batch, r: usize, name: &str) -> Tensor {
    if name == "__base__" {
        tuners.set_enabled(model, false).unwrap();
    } else {
        tuners.set_active(model, &[name]).unwrap();
    }
    let out = model.forward(&row(batch, r), &Ctx::inference(&model.store).with_tuners(tuners), None, false).unwrap();
    tuners.set_enabled(model, true).unwrap();
    out
}

/// Compares every mixed row with the row alone (where the mask is 1); returns the largest
/// difference, and checks that each adapter row differs from the base model's.
fn check_rows(model: &mut CausalLm, tuners: &mut Tuners, batch: &Batch, assign: &[&str]) -> f32 {
    let mixed = mixed_logits(model, tuners, batch, assign).unwrap();
    let mut worst = 0f32;
    for (r, name) in assign.iter().enumerate() {
        let mask = vec![batch.attention_mask.as_ref().unwrap()[r].clone()];
        let got = mixed.narrow(0, r, 1).unwrap();
        let d = max_masked_diff(&got, &alone(model, tuners, batch, r, name), &mask);
        assert!(d <= 1e-5, "row {r} ({name}): {d}");
        worst = worst.max(d);
        if *name != "__base__" {
            let base = alone(model, tuners, batch, r, "__base__");
            assert!(max_masked_diff(&got, &base, &mask) > 1e-3, "row {r}: adapter `{name}` changes the output");
        }
    }
    worst
}

#[test]
fn each_row_gets_its_own_adapter() {
    let (mut model, mut tuners) = three_adapters();
    let batch = four_rows();
    let d = check_rows(&mut model, &mut tuners, &batch, &["a", "b", "__base__", "ia3"]);
    println!("mixed batch [a, b, __base__, ia3] vs rows alone: max |diff| {d:e}");
    // The active set plays no part; an adapter on several rows.
    tuners.set_active(&mut model, &["ia3", "b"]).unwrap();
    check_rows(&mut model, &mut tuners, &batch, &["ia3", "a", "ia3", "b"]);
    // One adapter on every row is the plain forward with it active (no gather at all).
    let all_b = mixed_logits(&model, &tuners, &batch, &["b"; 4]).unwrap();
    tuners.set_active(&mut model, &["b"]).unwrap();
    assert_eq!(max_abs_diff(&all_b, &logits_on(&model, &tuners, &batch)), 0.0);
    // Disabled adapters: every row is the base model, as in PEFT.
    tuners.set_enabled(&mut model, false).unwrap();
    let off = mixed_logits(&model, &tuners, &batch, &["a", "b", "__base__", "ia3"]).unwrap();
    assert_eq!(max_abs_diff(&off, &model.forward(&batch, &Ctx::inference(&model.store), None, false).unwrap()), 0.0);
}

/// The norm and sublayer sites route too: LN tuning (norm weights), a bottleneck adapter
/// (MLP output) and DoRA side by side. (Some PEFT versions refuse DoRA in mixed batches; its
/// forward is row by row, so routing it is exact, and we allow it.)
#[test]
fn norm_and_sublayer_adapters_route_per_row() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "bn", config(&typed("BOTTLENECK_ADAPTER", json!({}))), 0).unwrap();
    randomize(&model, 5);
    load_adapter(&mut tuners, &mut model, &case_dir("ln_tuning"), "ln", false).unwrap();
    load_adapter(&mut tuners, &mut model, &case_dir("dora"), "dora", false).unwrap();
    let batch = four_rows();
    let d = check_rows(&mut model, &mut tuners, &batch, &["ln", "__base__", "bn", "dora"]);
    println!("mixed batch [ln, __base__, bn, dora] vs rows alone: max |diff| {d:e}");
}

/// DyLoRA (at its eval rank, 2 of 4) and a sparse mask route per row as well.
#[test]
fn dylora_and_sparse_mask_route_per_row() {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let dylora = json!({ "r": 4, "r_min": 1, "eval_rank": 2, "target_modules": ["q_proj", "v_proj"] });
    // Only the active adapter is trainable (as in PEFT): each is randomised while active.
    tuners.inject(&mut model, "dy", config(&typed("DYLORA", dylora)), 0).unwrap();
    randomize(&model, 9);
    tuners.inject(&mut model, "sparse", config(&typed("SPARSE_MASK", json!({ "density": 0.05 }))), 0).unwrap();
    tuners.set_active(&mut model, &["sparse"]).unwrap();
    randomize(&model, 10);
    tuners.set_active(&mut model, &["dy"]).unwrap();
    let batch = four_rows();
    let d = check_rows(&mut model, &mut tuners, &batch, &["sparse", "dy", "__base__", "dy"]);
    println!("mixed batch [sparse, dy, __base__, dy] vs rows alone: max |diff| {d:e}");
}

fn greedy_opts() -> GenerateOptions {
    GenerateOptions { max_new_tokens: 8, sampling: Default::default(), seed: 0, stop_token_ids: vec![] }
}

/// Batched greedy generation over prompts of different lengths (left-padded) equals each
/// prompt generated alone with its adapter.
#[test]
fn generation_per_row_matches_each_adapter_alone() {
    let (mut model, mut tuners) = three_adapters();
    let inp = inputs();
    let prompts: Vec<Vec<u32>> = vec![
        inp.input_ids[0][..10].to_vec(),
        inp.input_ids[1][..6].to_vec(),
        inp.input_ids[0][4..12].to_vec(),
        inp.input_ids[1][..9].to_vec(),
    ];
    let assign = ["a", "b", "__base__", "ia3"];
    let rows = tuners.route_rows(&names(&assign), &Device::Cpu).unwrap();
    let ctx = Ctx::inference(&model.store).with_tuners_per_row(&tuners, rows);
    let mixed = generate(&model, &ctx, &prompts, &greedy_opts(), &mut |_| Flow::Continue).unwrap();
    drop(ctx);
    let mut differs = 0;
    for (r, name) in assign.iter().enumerate() {
        tuners.set_enabled(&mut model, false).unwrap();
        let base = greedy_with(&model, Some(&tuners), &prompts[r], 8);
        tuners.set_enabled(&mut model, true).unwrap();
        let want = if *name == "__base__" {
            base.clone()
        } else {
            tuners.set_active(&mut model, &[name]).unwrap();
            greedy_with(&model, Some(&tuners), &prompts[r], 8)
        };
        assert_eq!(mixed[r], want, "row {r} ({name})");
        differs += usize::from(want != base);
    }
    assert!(differs >= 2, "the adapters change the greedy tokens of at least two rows ({differs})");
}

#[test]
fn a_wrong_number_of_names_is_an_error() {
    let (model, tuners) = three_adapters();
    let e = mixed_logits(&model, &tuners, &four_rows(), &["a", "b", "__base__"]).unwrap_err().to_string();
    assert!(e.contains("adapterNames") && e.contains("(4)") && e.contains("3 names"), "{e}");
}

#[test]
fn an_unknown_adapter_is_an_error() {
    let (model, tuners) = three_adapters();
    let e = mixed_logits(&model, &tuners, &four_rows(), &["a", "nope", "__base__", "zzz"]).unwrap_err().to_string();
    assert!(e.contains("adapterNames") && e.contains("non-existing adapter(s): nope, zzz") && e.contains("a, b, ia3"), "{e}");
}

#[test]
fn merged_adapters_are_an_error() {
    let (mut model, mut tuners) = three_adapters();
    tuners.merge(&mut model, None).unwrap();
    let e = mixed_logits(&model, &tuners, &four_rows(), &["a", "b", "__base__", "ia3"]).unwrap_err().to_string();
    assert!(e.contains("merged") && e.contains("unmerge"), "{e}");
    tuners.unmerge(&mut model).unwrap();
    assert!(mixed_logits(&model, &tuners, &four_rows(), &["a", "b", "__base__", "ia3"]).is_ok());
}

#[test]
fn training_mode_is_an_error() {
    let (model, tuners) = three_adapters();
    let rows = tuners.route_rows(&names(&["a", "b", "__base__", "ia3"]), &Device::Cpu).unwrap();
    let ctx = Ctx::new(&model.store, false).training(0).with_tuners_per_row(&tuners, rows);
    let e = model.forward(&four_rows(), &ctx, None, false).unwrap_err().to_string();
    assert!(e.contains("adapterNames") && e.contains("training mode"), "{e}");
}

#[test]
fn prompt_learning_adapters_are_an_error() {
    let (mut model, mut tuners) = three_adapters();
    load_adapter(&mut tuners, &mut model, &case_dir("prompt_tuning"), "pt", false).unwrap();
    let e = mixed_logits(&model, &tuners, &four_rows(), &["a", "pt", "__base__", "ia3"]).unwrap_err().to_string();
    assert!(e.contains("`pt`") && e.contains("prompt-learning") && e.contains("PROMPT_TUNING"), "{e}");
}
