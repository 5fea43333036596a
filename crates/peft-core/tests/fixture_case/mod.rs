//! One PEFT fixture case for the methods at the non-linear hook sites (prompt, prefix,
//! norms): the adapter files loaded unchanged and saved back byte-identical, logits, loss,
//! every gradient, two AdamW steps, greedy generation with the KV cache, and merging.
#![allow(dead_code)]
use super::common::*;
use peft_core::io::adapter::{config_json, load_adapter, save_adapter};
use peft_core::model::loss;
use peft_core::tuners::Tuners;

pub fn case_dir(case: &str) -> std::path::PathBuf {
    fixture_dir().join("cases").join(case)
}

fn flat(t: &candle_core::Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `virtual_tokens`: positions the logits carry before the real tokens (prompt tuning).
pub fn check_case(case: &str, virtual_tokens: usize, can_merge: bool) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    let report = load_adapter(&mut tuners, &mut model, &case_dir(case), "default", true).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let exp = expected(case);
    let inp = inputs();

    // Files: saved back byte-identical, the config equal as JSON.
    let out = std::env::temp_dir().join(format!("peft-node-{case}-{}", std::process::id()));
    save_adapter(&tuners, &model, "default", &out).unwrap();
    let a = std::fs::read(case_dir(case).join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "{case}: adapter_model.safetensors not byte-identical");
    let ja: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(case_dir(case).join("adapter_config.json")).unwrap()).unwrap();
    let jb: serde_json::Value = serde_json::from_str(&config_json(tuners.config("default").unwrap())).unwrap();
    assert_eq!(ja, jb, "{case}: adapter_config.json");
    std::fs::remove_dir_all(&out).ok();

    // Forward: the mask of the logits counts the virtual positions as attended.
    let logits = logits_with(&model, Some(&tuners));
    assert_eq!(logits.dims(), exp["logits"].dims(), "{case}: logits shape");
    let mask: Vec<Vec<u8>> = inp.attention_mask.iter().map(|r| [vec![1u8; virtual_tokens], r.clone()].concat()).collect();
    let dl = max_masked_diff(&logits, &exp["logits"], &mask);
    let l = scalar(&loss::causal_lm_loss(&logits, &inp.labels).unwrap());
    let e = scalar(&exp["loss"]);
    println!("{case}: logits max abs err {dl:e}, loss err {:e}", (l - e).abs());
    assert!(dl < 1e-4, "{case}: logits differ by {dl}");
    assert!((l - e).abs() < 1e-4 * e.abs().max(1.0), "{case}: loss {l} vs {e}");

    // Every trainable parameter's gradient, named as PEFT names it.
    model.store.zero_grad();
    loss_with(&mut model, Some(&tuners), true);
    let mut worst = (0f32, String::new());
    let mut n = 0;
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        let key = format!("grad.{}", fixture_name(&p.name));
        let want = exp.get(&key).unwrap_or_else(|| panic!("fixture lacks {key}"));
        let err = rel_err(p.grad.as_ref().unwrap_or_else(|| panic!("no gradient for {}", p.name)), want);
        if err > worst.0 {
            worst = (err, p.name.clone());
        }
        n += 1;
    }
    assert_eq!(n, exp.keys().filter(|k| k.starts_with("grad.")).count(), "{case}: trainable parameters vs fixture gradients");
    println!("{case}: {n} gradients, worst rel err {:e} ({})", worst.0, worst.1);
    assert!(worst.0 < 1e-3, "{case}: gradient of {} off by {}", worst.1, worst.0);

    // Two AdamW steps. As in tests/lora.rs: elements whose step-0 gradient is below 1% of
    // the tensor's largest are held to 0.1 lr, all others to the README's 1e-4.
    let h = adamw_from_case(case);
    let loss1 = two_adamw_steps_with(&mut model, Some(&tuners), &h);
    let e1 = scalar(&exp["loss_after_step1"]);
    println!("{case}: loss_after_step1 err {:e}", (loss1 - e1).abs());
    assert!((loss1 - e1).abs() < 1e-4 * e1.abs().max(1.0));
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
    }
    println!("{case}: after_step2 max abs err {strict:e} (elements with |grad| < 1% of max: {loose:e})");
    assert!(strict < 1e-4, "{case}: after_step2 off by {strict}");
    assert!(loose < 0.1 * h.lr as f32, "{case}: after_step2 (small-gradient elements) off by {loose}");
    let got = greedy_with(&model, Some(&tuners), &inp.input_ids[0][..inp.prompt_len], inp.new_tokens);
    assert_eq!(got, ids_of(&exp["greedy_after_step2"]), "{case}: greedy after step 2");

    // Merging, from PEFT's step-2 parameters.
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad()) {
        p.set(&exp[&format!("after_step2.{}", fixture_name(&p.name))]).unwrap();
    }
    let before = logits_with(&model, Some(&tuners));
    if can_merge {
        tuners.merge_and_unload(&mut model, None).unwrap();
        assert!(tuners.names().is_empty());
        let after = logits_with(&model, None);
        let dm = max_masked_diff(&after, &before, &inp.attention_mask);
        println!("{case}: merged vs unmerged logits {dm:e}");
        assert!(dm < 1e-5);
    } else {
        let err = tuners.merge(&mut model, None).unwrap_err().to_string();
        assert!(err.contains("cannot be merged"), "{err}");
    }
}
