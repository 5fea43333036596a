//! The contract's checks for the rows with a PEFT 0.21 fixture (`cases/<dir>`): the adapter
//! files load unchanged and save back byte-identical; logits, loss, every gradient, two AdamW
//! steps, greedy generation with the KV cache and merging match PEFT's numbers; every key of
//! `expected.safetensors` is checked.
use super::{mask_with_virtual, Case, Merge};
use crate::common::*;
use peft_core::io::adapter::{load_adapter, save_adapter, CONFIG_NAME, WEIGHTS_NAME};
use peft_core::model::loss;
use peft_core::tuners::Tuners;
use serde_json::Value;

pub fn has_fixture(row: &Case) -> bool {
    row.fixture.is_some()
}

/// Logits, loss, gradients, two AdamW steps, greedy ids and the merge, against PEFT's.
pub fn matches_peft(row: &Case) {
    let case = row.fixture.unwrap();
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let report = load_adapter(&mut tuners, &mut model, &case_dir(case), "default", true).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let exp = expected(case);
    let inp = inputs();
    let mut used = vec!["logits".to_string(), "loss".into(), "loss_after_step1".into(), "greedy_after_step2".into()];

    // Forward: the logits' mask counts the virtual positions (as many as PEFT's logits have) as attended.
    let logits = logits_with(&model, Some(&tuners));
    assert_eq!(logits.dims(), exp["logits"].dims(), "logits shape");
    let mask = mask_with_virtual(exp["logits"].dim(1).unwrap() - inp.input_ids[0].len());
    let dl = max_masked_diff(&logits, &exp["logits"], &mask);
    let (l, e) = (scalar(&loss::causal_lm_loss(&logits, &inp.labels).unwrap()), scalar(&exp["loss"]));
    println!("{case}: logits max abs err {dl:e}, loss err {:e}", (l - e).abs());
    assert!(dl < 1e-4, "logits differ by {dl}");
    assert!((l - e).abs() < 1e-4 * e.abs().max(1.0), "loss {l} vs {e}");

    // Every trainable parameter's gradient, named as PEFT names it.
    model.store.zero_grad();
    loss_with(&mut model, Some(&tuners), true);
    let mut worst = (0f32, String::new());
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        let key = format!("grad.{}", fixture_name(&p.name));
        let want = exp.get(&key).unwrap_or_else(|| panic!("fixture lacks {key}"));
        let err = rel_err(p.grad.as_ref().unwrap_or_else(|| panic!("no gradient for {}", p.name)), want);
        if err > worst.0 {
            worst = (err, p.name.clone());
        }
        used.push(key);
    }
    let grads = exp.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(used.len() - 4, grads, "trainable parameters vs fixture gradients");
    println!("{case}: {grads} gradients, worst rel err {:e} ({})", worst.0, worst.1);
    assert!(worst.0 < 1e-3, "gradient of {} off by {}", worst.1, worst.0);

    // Two AdamW steps. AdamW divides each element by its own gradient's magnitude, so an
    // element whose step-0 gradient is below 1% of its tensor's largest moves by ~lr in a
    // direction set by digits below the gradient tolerance (the f64 reference itself runs
    // RoPE, RMSNorm and softmax in f32): those are held to 0.1 lr, all others to 1e-4.
    let h = adamw_from_case(case);
    let loss1 = two_adamw_steps_with(&mut model, Some(&tuners), &h);
    let e1 = scalar(&exp["loss_after_step1"]);
    assert!((loss1 - e1).abs() < 1e-4 * e1.abs().max(1.0), "loss after step 1 {loss1} vs {e1}");
    let (mut strict, mut loose) = (0f32, 0f32);
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        let name = fixture_name(&p.name);
        let (got, want, g0) = (flat(&p.value()), flat(&exp[&format!("after_step2.{name}")]), flat(&exp[&format!("grad.{name}")]));
        let gmax = g0.iter().fold(0f32, |m, g| m.max(g.abs()));
        for i in 0..got.len() {
            let d = (got[i] - want[i]).abs();
            if g0[i].abs() < 1e-2 * gmax {
                loose = loose.max(d)
            } else {
                strict = strict.max(d)
            }
        }
        used.push(format!("after_step2.{name}"));
    }
    println!("{case}: loss_after_step1 err {:e}, after_step2 err {strict:e} (small-gradient elements {loose:e})", (loss1 - e1).abs());
    assert!(strict < 1e-4, "after_step2 off by {strict}");
    assert!(loose < 0.1 * h.lr as f32, "after_step2 (small-gradient elements) off by {loose}");
    let got = greedy_with(&model, Some(&tuners), &inp.input_ids[0][..inp.prompt_len], inp.new_tokens);
    assert_eq!(got, ids_of(&exp["greedy_after_step2"]), "greedy after step 2");

    // Merging, from PEFT's step-2 parameters (the merge numerics apart from AdamW's sensitivity).
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        p.set(&exp[&format!("after_step2.{}", fixture_name(&p.name))]).unwrap();
    }
    let before = logits_with(&model, Some(&tuners));
    match row.merge {
        Merge::Merges => {
            tuners.merge_and_unload(&mut model, None).unwrap();
            assert!(tuners.names().is_empty());
            assert!(model.store.iter().all(|(_, p)| !p.name.starts_with("base_model.")), "adapter tensors left after unload");
            let dm = max_masked_diff(&logits_with(&model, None), &before, &inp.attention_mask);
            let mut worst = 0f32;
            for (k, want) in exp.iter().filter(|(k, _)| k.starts_with("merged_after_step2.")) {
                worst = worst.max(max_abs_diff(&model.store.by_name(&k["merged_after_step2.".len()..]).unwrap().value(), want));
                used.push(k.clone());
            }
            println!("{case}: merged weights max abs err {worst:e}, merged vs unmerged logits {dm:e}");
            assert!(worst < 1e-4, "merged weights off by {worst}");
            assert!(dm < row.merge_tol, "merged vs unmerged logits {dm:e}");
        }
        Merge::Refuses(msg) => {
            let err = tuners.merge(&mut model, None).unwrap_err().to_string();
            assert!(err.contains(msg), "merge: `{err}` should say `{msg}`");
        }
    }
    let mut missed: Vec<&String> = exp.keys().filter(|k| !used.contains(k)).collect();
    missed.sort();
    assert!(missed.is_empty(), "expected keys not checked: {missed:?}");
}

/// PEFT's folder loaded then saved gives the same bytes in both files; the config has
/// exactly PEFT 0.21's fields where the row lists them.
pub fn files_round_trip(row: &Case) {
    let case = row.fixture.unwrap();
    let mut model = load_model();
    let mut tuners = Tuners::new();
    load_adapter(&mut tuners, &mut model, &case_dir(case), "default", false).unwrap();
    let out = tmp(&format!("round-trip-{case}"));
    save_adapter(&tuners, &model, "default", &out).unwrap();
    let (ours, text) = (std::fs::read(out.join(WEIGHTS_NAME)).unwrap(), std::fs::read_to_string(out.join(CONFIG_NAME)).unwrap());
    std::fs::remove_dir_all(&out).unwrap();
    assert!(ours == std::fs::read(case_dir(case).join(WEIGHTS_NAME)).unwrap(), "adapter_model.safetensors bytes differ");
    let peft_text = std::fs::read_to_string(case_dir(case).join(CONFIG_NAME)).unwrap();
    let (v, peft): (Value, Value) = (serde_json::from_str(&text).unwrap(), serde_json::from_str(&peft_text).unwrap());
    assert_eq!(v, peft, "adapter_config.json");
    assert_eq!(text, peft_text, "adapter_config.json bytes");
    if let Some(fields) = row.peft_fields {
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, fields().keys().collect::<Vec<_>>(), "PEFT 0.21 config fields");
    }
}
