//! The base model and the full fine-tuning case against transformers.
use crate::common;
use common::*;
use peft_core::model::{loss, Ctx};

#[test]
fn base_logits_and_loss_match_transformers() {
    let model = load_model();
    let inp = inputs();
    let exp = expected("base");
    let ctx = Ctx::new(&model.store, true);
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    let diff = max_masked_diff(&logits, &exp["logits"], &inp.attention_mask);
    println!("base logits max abs err {diff:e}");
    assert!(diff < 1e-4, "logits differ by {diff}");
    let l = scalar(&loss::causal_lm_loss(&logits, &inp.labels).unwrap());
    let e = scalar(&exp["loss"]);
    println!("base loss {l} expected {e} err {:e}", (l - e).abs());
    assert!((l - e).abs() < 1e-4 * e.abs().max(1.0));
}

#[test]
fn full_finetuning_gradients_match_transformers() {
    let mut model = load_model();
    for p in model.store.iter_mut() {
        p.set_requires_grad(true).unwrap();
    }
    let inp = inputs();
    let exp = expected("full");
    let ctx = Ctx::new(&model.store, false);
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    let l = loss::causal_lm_loss(&logits, &inp.labels).unwrap();
    let e = scalar(&exp["loss"]);
    assert!((scalar(&l) - e).abs() < 1e-4 * e.abs().max(1.0));
    let grads = l.backward().unwrap();
    model.store.accumulate_grads(&grads).unwrap();
    let mut worst = (0f32, String::new());
    let mut n = 0;
    for (_, p) in model.store.iter() {
        let key = format!("grad.{}", p.name);
        let want = exp.get(&key).unwrap_or_else(|| panic!("fixture lacks {key}"));
        let got = p.grad.as_ref().unwrap_or_else(|| panic!("no gradient for {}", p.name));
        let err = rel_err(got, want);
        if err > worst.0 {
            worst = (err, p.name.clone());
        }
        n += 1;
    }
    let fixture_grads = exp.keys().filter(|k| k.starts_with("grad.")).count();
    println!("full: {n} gradients, worst rel err {:e} ({})", worst.0, worst.1);
    assert_eq!(n, fixture_grads);
    assert!(worst.0 < 1e-3, "gradient of {} off by {}", worst.1, worst.0);
}

#[test]
fn base_greedy_generation_matches_transformers() {
    let model = load_model();
    let inp = inputs();
    let exp = ids_of(&expected("base")["greedy"]);
    let got = greedy(&model, &inp.input_ids[0][..inp.prompt_len], inp.new_tokens);
    assert_eq!(got, exp);
}

#[test]
fn full_finetuning_adamw_steps_match_torch() {
    let mut model = load_model();
    for p in model.store.iter_mut() {
        p.set_requires_grad(true).unwrap();
    }
    let exp = expected("full");
    let loss1 = two_adamw_steps(&mut model, &adamw_from_case("full"));
    let e1 = scalar(&exp["loss_after_step1"]);
    println!("full: loss_after_step1 {loss1} expected {e1}");
    assert!((loss1 - e1).abs() < 1e-4 * e1.abs().max(1.0));
    let mut worst = 0f32;
    for (_, p) in model.store.iter() {
        let want = &exp[&format!("after_step2.{}", p.name)];
        let d = (p.value() - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        worst = worst.max(d);
    }
    println!("full: after_step2 max abs err {worst:e}");
    assert!(worst < 1e-4);
    let inp = inputs();
    let got = greedy(&model, &inp.input_ids[0][..inp.prompt_len], inp.new_tokens);
    assert_eq!(got, ids_of(&exp["greedy_after_step2"]));
}
