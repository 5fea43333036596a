//! Incompatible adapters and bad arguments to `add_weighted_adapter` give errors that name
//! what differs, and leave no half-built adapter behind; LoRAHub's element-wise composition.
use super::*;

fn err(tuners: &mut Tuners, model: &mut CausalLm, adapters: &[&str], weights: &[f64], f: impl FnOnce(&mut WeightedOptions)) -> String {
    let mut o = WeightedOptions::default();
    f(&mut o);
    let names = tuners.names();
    let e = tuners.add_weighted_adapter(model, adapters, weights, "new", &o).expect_err("should fail").to_string();
    assert_eq!(tuners.names(), names, "a failed combination adds no adapter");
    e
}

fn has(e: &str, parts: &[&str]) {
    assert!(parts.iter().all(|p| e.contains(p)), "{e}");
}

#[test]
fn unknown_adapter_names_and_weight_counts() {
    let (mut model, mut tuners) = two_loras();
    has(&err(&mut tuners, &mut model, &["a", "c"], &[1.0, 1.0], |_| ()), &["\"c\"", "a, b"]);
    has(&err(&mut tuners, &mut model, &["a", "b"], &[1.0], |_| ()), &["weights", "one weight per adapter (2", "1 weights"]);
    has(&err(&mut tuners, &mut model, &["a", "b"], &[1.0, f64::NAN], |_| ()), &["weights", "finite"]);
    has(&err(&mut tuners, &mut model, &[], &[], |_| ()), &["adapters", "at least one"]);
    has(
        &err(&mut tuners, &mut model, &["a", "b"], &[1.0, 1.0], |o| o.combination_type = "average".into()),
        &["combination_type", "\"average\"", "dare_ties"],
    );
    has(
        &err(&mut tuners, &mut model, &["a", "b"], &[1.0, 1.0], |o| o.majority_sign_method = "vote".into()),
        &["majority_sign_method", "\"vote\""],
    );
    let o = WeightedOptions::default();
    let e = tuners.add_weighted_adapter(&mut model, &["a", "b"], &[1.0, 1.0], "b", &o).unwrap_err().to_string();
    has(&e, &["adapter_name", "\"b\"", "in use"]);
}

#[test]
fn other_peft_types_and_base_models_are_refused() {
    let (mut model, mut tuners) = two_loras();
    let ia3 = peft_core::tuners::parse_config(
        &json!({"peft_type": "IA3", "target_modules": ["k_proj"], "feedforward_modules": []}),
        None,
        "t".as_ref(),
    )
    .unwrap()
    .0;
    tuners.inject(&mut model, "ia3", ia3, 0).unwrap();
    has(&err(&mut tuners, &mut model, &["a", "ia3"], &[1.0, 1.0], |_| ()), &["LoRA adapters only", "`ia3`", "\"IA3\""]);
    let other = lora(json!({"r": 4, "target_modules": ["q_proj"], "base_model_name_or_path": "other-llama"}));
    tuners.inject(&mut model, "other", other, 0).unwrap();
    has(&err(&mut tuners, &mut model, &["a", "other"], &[1.0, 1.0], |_| ()), &["one base model", "`other`", "\"other-llama\"", "null"]);
}

#[test]
fn ranks_must_agree_for_the_factor_types_only() {
    let (mut model, mut tuners) = two_loras();
    tuners.inject(&mut model, "r2", lora(json!({"r": 2, "target_modules": ["q_proj"], "init_lora_weights": false})), 3).unwrap();
    for kind in ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"] {
        let e = err(&mut tuners, &mut model, &["a", "r2"], &[1.0, 1.0], |o| {
            o.combination_type = kind.into();
            o.density = Some(0.5);
        });
        has(&e, &["one rank", kind, "`a` has r = 4", "`r2` with r = 2"]);
    }
    // cat and the svd types accept different ranks: r = 4 + 2, and the largest, 4.
    for (kind, r) in [("cat", 6), ("svd", 4)] {
        let o = WeightedOptions { combination_type: kind.into(), ..Default::default() };
        tuners.add_weighted_adapter(&mut model, &["a", "r2"], &[1.0, 1.0], kind, &o).unwrap();
        assert_eq!(tuners.config(kind).unwrap().to_json()["r"], json!(r));
    }
}

#[test]
fn density_is_required_in_range_for_pruning_types() {
    let (mut model, mut tuners) = two_loras();
    for kind in ["ties", "ties_svd", "dare_linear", "dare_ties_svd", "magnitude_prune"] {
        has(
            &err(&mut tuners, &mut model, &["a", "b"], &[1.0, 1.0], |o| o.combination_type = kind.into()),
            &["density", "(0, 1]", kind, "none"],
        );
        for d in [0.0, -0.2, 1.5, f64::NAN] {
            let e = err(&mut tuners, &mut model, &["a", "b"], &[1.0, 1.0], |o| {
                o.combination_type = kind.into();
                o.density = Some(d);
            });
            has(&e, &["density", "(0, 1]", &d.to_string()]);
        }
    }
}

#[test]
fn svd_arguments_and_target_types() {
    let (mut model, mut tuners) = two_loras();
    has(&err(&mut tuners, &mut model, &["a", "b"], &[1.0, 1.0], |o| o.svd_rank = Some(65)), &["svd_rank", "at most 64", "65"]);
    has(&err(&mut tuners, &mut model, &["a", "b"], &[1.0, 1.0], |o| o.svd_rank = Some(0)), &["svd_rank", "positive"]);
    has(&err(&mut tuners, &mut model, &["a", "b"], &[1.0, 1.0], |o| o.svd_clamp = Some(1.5)), &["svd_clamp", "[0, 1]", "1.5"]);
    tuners.inject(&mut model, "rx", lora(json!({"r": 4, "target_modules": ".*\\.o_proj"})), 0).unwrap();
    has(&err(&mut tuners, &mut model, &["a", "rx"], &[1.0, 1.0], |_| ()), &["all lists or all regular expressions", "`a` and `rx`"]);
    // Regular expressions alone are joined as PEFT joins them.
    tuners.inject(&mut model, "ry", lora(json!({"r": 4, "target_modules": ".*\\.up_proj"})), 0).unwrap();
    tuners.add_weighted_adapter(&mut model, &["rx", "ry"], &[1.0, 1.0], "rxy", &WeightedOptions::default()).unwrap();
    assert_eq!(tuners.config("rxy").unwrap().to_json()["target_modules"], json!("(.*\\.o_proj)|(.*\\.up_proj)"));
    assert_eq!(tuners.modules("rxy").unwrap().len(), 4);
}

#[test]
fn lorahub_composes_a_and_b_elementwise() {
    let (mut model, mut tuners) = two_loras();
    tuners
        .inject(
            &mut model,
            "a2",
            lora(json!({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": false})),
            9,
        )
        .unwrap();
    let w = [0.4, -1.2];
    tuners.compose_lorahub(&mut model, &["a", "a2"], &w, "hub").unwrap();
    tuners.compose_lorahub(&mut model, &["a", "a2"], &[w[0], w[1]], "hub").unwrap(); // overwrites in place
    for path in [Q0, V1] {
        for ab in ["A", "B"] {
            let expected = ((factor(&model, path, ab, "a") * w[0]).unwrap() + (factor(&model, path, ab, "a2") * w[1]).unwrap()).unwrap();
            assert!(max_abs_diff(&factor(&model, path, ab, "hub"), &expected) < 1e-14);
        }
    }
    assert_eq!(tuners.config("hub").unwrap().to_json()["lora_alpha"], json!(8), "the first module's config (and scaling)");
    let e = tuners.compose_lorahub(&mut model, &["a", "b"], &[1.0, 1.0], "hub2").unwrap_err().to_string();
    has(&e, &["same layers as `a`", "`b` on other modules"]);
    let e = tuners.compose_lorahub(&mut model, &["a", "a2"], &[1.0], "hub").unwrap_err().to_string();
    has(&e, &["weights", "one weight per adapter"]);
}

#[test]
fn ignored_arguments_warn() {
    let (mut model, mut tuners) = two_loras();
    let o = WeightedOptions { combination_type: "cat".into(), svd_rank: Some(2), density: Some(0.5), ..Default::default() };
    let w = tuners.add_weighted_adapter(&mut model, &["a", "b"], &[1.0, 1.0], "c", &o).unwrap();
    assert!(w.iter().any(|w| w.message.contains("svd_rank and svd_clamp are ignored by combination_type \"cat\"")), "{w:?}");
    assert!(w.iter().any(|w| w.message.contains("density is ignored")), "{w:?}");
    // One adapter is always combined linearly, whatever the type asked (PEFT).
    let o = WeightedOptions { combination_type: "ties".into(), density: Some(0.5), ..Default::default() };
    let w = tuners.add_weighted_adapter(&mut model, &["a"], &[2.0], "twice_a", &o).unwrap();
    assert!(w.iter().any(|w| w.message.contains("density is ignored by combination_type \"linear\"")), "{w:?}");
    let d = max_abs_diff(&delta(&model, &tuners, Q0, "twice_a"), &(delta(&model, &tuners, Q0, "a") * 2.0).unwrap());
    assert!(d < 1e-12, "{d}");
}
