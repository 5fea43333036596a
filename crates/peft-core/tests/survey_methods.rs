//! The LoRA variants from the PEFT survey's tree (issue 16): MoSLoRA, LoRA Dropout, SoRA and
//! Child-tuning_D. Each has a contract row (`contract/table.rs`), starts as the base model,
//! reduces to LoRA where it generalises it, and refuses bad configs by key; the training
//! procedures (the dropout and child masks, SoRA's proximal step) are checked directly.
use crate::common;
use crate::contract;
use candle_core::{DType, Device, Tensor};
use common::*;
use contract::*;
use serde_json::json;

#[test]
fn default_inits_are_the_base_model() {
    let base = logits_with(&load_model(), None);
    for v in [json!({"peft_type": "MOSLORA"}), json!({"peft_type": "MOLORA"}), json!({"peft_type": "MOV"})] {
        let (model, tuners) = inject(&v, 0);
        // MoV's gates sum to 1 only up to rounding (a few f32 ulps per layer).
        let d = max_abs_diff(&logits_with(&model, Some(&tuners)), &base);
        assert!(d < 1e-5, "{}: {d}", v["peft_type"]);
    }
}

/// MoSLoRA with the mixer W = I is LoRA with the same A and B (paper §3: LoRA is the special case).
#[test]
fn moslora_with_identity_mixer_is_lora() {
    let targets = json!(["q_proj"]);
    let (mos, mos_t) =
        inject(&json!({"peft_type": "MOSLORA", "r": 4, "lora_alpha": 8, "init_weights": false, "target_modules": targets}), 1);
    let (lora, lora_t) =
        inject(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "init_lora_weights": false, "target_modules": targets}), 2);
    copy_q(&mos, &lora, &["lora_A", "lora_B"], |_, t| t);
    copy_q(&mos, &mos, &["lora_AB"], |_, _| Tensor::eye(4, DType::F32, &Device::Cpu).unwrap());
    let d = max_abs_diff(&logits_with(&mos, Some(&mos_t)), &logits_with(&lora, Some(&lora_t)));
    assert!(d < 1e-5, "MoSLoRA(W = I) vs LoRA: {d}");
    assert!(max_abs_diff(&logits_with(&mos, Some(&mos_t)), &logits_with(&mos, None)) > 1e-3, "the adapter is not a no-op");
}

#[test]
fn bad_configs_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "MOSLORA", "r": 0}), "r"),
        (json!({"peft_type": "MOSLORA", "lora_dropout": 1.5}), "lora_dropout"),
        (json!({"peft_type": "MOSLORA", "r": 100000}), "r"),
        (json!({"peft_type": "MOLORA", "num_experts": 0}), "num_experts"),
        (json!({"peft_type": "MOLORA", "num_experts": 65}), "num_experts"),
        (json!({"peft_type": "MOLORA", "target_modules": ["nope"]}), "target_modules"),
        (json!({"peft_type": "MOV", "num_experts": "four"}), "num_experts"),
        (json!({"peft_type": "MOV", "modules_to_save": ["lm_head"]}), "modules_to_save"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(key), "{cfg}: {e}");
    }
}

/// Evaluation runs plain LoRA; a training step drops whole input columns of A and output rows
/// of B: their gradients are exactly zero, the kept ones are not, and a seed repeats the draw.
#[test]
fn lora_dropout_drops_columns_of_a_and_rows_of_b() {
    use peft_core::tuners::WithTuners;
    let targets = json!(["q_proj"]);
    let (ld, ld_t) =
        inject(&json!({"peft_type": "LORA_DROPOUT", "r": 4, "param_dropout": 0.5, "init_weights": false, "target_modules": targets}), 1);
    let (lora, lora_t) =
        inject(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "init_lora_weights": false, "target_modules": targets}), 2);
    copy_q(&ld, &lora, &["lora_A", "lora_B"], |_, t| t);
    assert!(max_abs_diff(&logits_with(&ld, Some(&ld_t)), &logits_with(&lora, Some(&lora_t))) < 1e-6, "evaluation = LoRA");

    let grads = |seed: u64| {
        let ctx = peft_core::model::Ctx::new(&ld.store, false).with_tuners(&ld_t).training(seed);
        let logits = ld.forward(&inputs().batch(), &ctx, None, false).unwrap();
        let l = peft_core::model::loss::causal_lm_loss(&logits, &inputs().labels).unwrap();
        let g = l.backward().unwrap();
        let of = |attr: &str| {
            g.get(&ld.store.by_name(&format!("{Q0}.{attr}.default.weight")).unwrap().value()).unwrap().to_vec2::<f32>().unwrap()
        };
        (of("lora_A"), of("lora_B"))
    };
    let (ga, gb) = grads(3);
    let (r, inp) = (ga.len(), ga[0].len());
    let zero_cols = (0..inp).filter(|&j| (0..r).all(|i| ga[i][j] == 0.0)).count();
    let full_cols = (0..inp).filter(|&j| (0..r).all(|i| ga[i][j] != 0.0)).count();
    assert_eq!(zero_cols + full_cols, inp, "A's gradient columns are all zero or all non-zero");
    assert!(zero_cols > inp / 4 && full_cols > inp / 4, "about half of A's columns dropped: {zero_cols} of {inp}");
    let zero_rows = gb.iter().filter(|row| row.iter().all(|&x| x == 0.0)).count();
    let full_rows = gb.iter().filter(|row| row.iter().all(|&x| x != 0.0)).count();
    assert_eq!(zero_rows + full_rows, gb.len(), "B's gradient rows are all zero or all non-zero");
    assert!(zero_rows > gb.len() / 4 && full_rows > gb.len() / 4, "about half of B's rows dropped: {zero_rows} of {}", gb.len());
    assert_eq!(grads(3), (ga, gb), "the seed repeats the masks");
}

/// The proximal step is the soft threshold at lr·λ (eq. 5); a gate at zero switches its rank
/// off, so the adapter equals the LoRA of the remaining ranks; initial gates 1 make it LoRA.
#[test]
fn sora_proximal_step_soft_thresholds_the_gates() {
    use peft_core::tuners::sora::proximal_step;
    let cfg =
        json!({"peft_type": "SORA", "r": 4, "lora_alpha": 8, "sparse_lambda": 2.0, "init_weights": false, "target_modules": ["q_proj"]});
    let (sora, sora_t) = inject(&cfg, 1);
    let gate = format!("{Q0}.sora_gate.default.weight");
    set(&sora, &gate, &Tensor::new(&[0.5f32, -0.05, 0.08, -1.0], &Device::Cpu).unwrap());
    let kept = proximal_step(&sora, &sora_t, 0.05).unwrap(); // ξ = 0.1
    let g: Vec<f32> = value(&sora, &gate).to_vec1().unwrap();
    let want = [0.4f32, 0.0, 0.0, -0.9];
    assert!(g.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{g:?}");
    assert_eq!(kept, vec![("default".to_string(), 6, 8)], "two of layer 0's four gates survive; layer 1's four ones shrink to 0.9");

    // Ranks 1 and 2 are off: the adapter is the LoRA of ranks 0 and 3 with B's columns scaled by the gates.
    let (lora, lora_t) =
        inject(&json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "init_lora_weights": false, "target_modules": ["q_proj"]}), 2);
    let (a, b) = (value(&sora, &format!("{Q0}.lora_A.default.weight")), value(&sora, &format!("{Q0}.lora_B.default.weight")));
    let keep = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
    let g2 = Tensor::new(&[0.4f32, -0.9], &Device::Cpu).unwrap();
    set(&lora, &format!("{Q0}.lora_A.default.weight"), &a.index_select(&keep, 0).unwrap());
    set(&lora, &format!("{Q0}.lora_B.default.weight"), &b.index_select(&keep, 1).unwrap().broadcast_mul(&g2).unwrap());
    {
        let layer = 1;
        // layer 1's q_proj is SoRA's only other target: make both models agree there by zeroing its B.
        let name = format!("base_model.model.model.layers.{layer}.self_attn.q_proj.lora_B.default.weight");
        set(&sora, &name, &value(&sora, &name).zeros_like().unwrap());
        set(&lora, &name, &value(&lora, &name).zeros_like().unwrap());
    }
    let d = max_abs_diff(&logits_with(&sora, Some(&sora_t)), &logits_with(&lora, Some(&lora_t)));
    assert!(d < 1e-5, "SoRA with two gates off vs the rank-2 LoRA: {d}");
    assert!(proximal_step(&sora, &sora_t, f64::NAN).is_err());
}

/// A training forward leaves the logits as evaluation's (the mask touches the gradient only);
/// its gradient is the full gradient on a random ~p_D share of entries, scaled by 1/p_D, and 0 elsewhere.
#[test]
fn child_tuning_masks_the_gradient_not_the_forward() {
    use peft_core::tuners::WithTuners;
    let (model, tuners) =
        contract::setup(&json!({"peft_type": "CHILD_TUNING", "child_ratio": 0.25, "target_modules": ["q_proj"]}), DType::F64);
    let name = format!("{Q0}.child_delta.default.weight");
    let grad_in = |training: bool| {
        let ctx = peft_core::model::Ctx::new(&model.store, false).with_tuners(&tuners);
        let ctx = if training { ctx.training(9) } else { ctx };
        let logits = model.forward(&inputs().batch(), &ctx, None, false).unwrap();
        let l = peft_core::model::loss::causal_lm_loss(&logits, &inputs().labels).unwrap();
        let g = l.backward().unwrap();
        let g: Vec<f64> = g.get(&model.store.by_name(&name).unwrap().value()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        (logits, g)
    };
    let (eval_logits, full) = grad_in(false);
    let (train_logits, child) = grad_in(true);
    assert!(max_abs_diff(&eval_logits, &train_logits) < 1e-12, "the forward is unchanged");
    let mut kept = 0;
    for (c, f) in child.iter().zip(&full) {
        if *c != 0.0 {
            kept += 1;
            assert!((c - f / 0.25).abs() <= 1e-9 * f.abs().max(1e-12), "kept entries are scaled by 1/p_D: {c} vs {f}");
        }
    }
    let share = kept as f64 / full.len() as f64;
    assert!((share - 0.25).abs() < 0.03, "about p_D of the entries are updated: {share}");
}
