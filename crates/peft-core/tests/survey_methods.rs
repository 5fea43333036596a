//! The methods from the PEFT survey's tree (issue 16): MoSLoRA, MoLoRA, MoV, MixLoRA, LoRA
//! Dropout, SoRA, Child-tuning_D and Compacter. Each keeps the method contract
//! (`method_contract`), starts as the base model, reduces to the method it generalises where
//! there is one, and refuses bad configs by key; the training procedures (MixLoRA's balance
//! loss, SoRA's proximal step, the dropout and child masks) are checked directly.
mod common;
mod method_contract;
use candle_core::{DType, Device, Tensor};
use common::*;
use method_contract::{check, config, error_of};
use peft_core::model::CausalLm;
use peft_core::tuners::Tuners;
use serde_json::{json, Value};

const Q0: &str = "base_model.model.model.layers.0.self_attn.q_proj";
/// q_proj of both decoder layers of the tiny model.
const QS: [&str; 2] = [Q0, "base_model.model.model.layers.1.self_attn.q_proj"];

/// Copies `attrs` of every q_proj from one model to the other, through `f`.
fn copy_q(from: &CausalLm, to: &CausalLm, attrs: &[&str], f: impl Fn(&str, Tensor) -> Tensor) {
    for q in QS {
        for attr in attrs {
            let name = format!("{q}.{attr}.default.weight");
            set(to, &name, &f(attr, value(from, &name)));
        }
    }
}

fn set(model: &CausalLm, name: &str, t: &Tensor) {
    model.store.by_name(name).unwrap_or_else(|_| panic!("no parameter {name}")).set(t).unwrap();
}

fn value(model: &CausalLm, name: &str) -> Tensor {
    model.store.by_name(name).unwrap_or_else(|_| panic!("no parameter {name}")).value().clone()
}

fn inject(v: &Value, seed: u64) -> (CausalLm, Tuners) {
    let mut model = load_model();
    let mut tuners = Tuners::new();
    tuners.inject(&mut model, "default", config(v), seed).unwrap();
    (model, tuners)
}

#[test]
fn moslora_contract() {
    let e = check(&json!({"peft_type": "MOSLORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}), 0, true);
    println!("MoSLoRA: finite differences rel err {e:e}");
}

#[test]
fn molora_contract() {
    let e = check(&json!({"peft_type": "MOLORA", "r": 2, "num_experts": 3, "target_modules": ["q_proj", "v_proj", "down_proj"]}), 0, false);
    println!("MoLoRA: finite differences rel err {e:e}");
}

#[test]
fn mov_contract() {
    let e = check(&json!({"peft_type": "MOV", "num_experts": 3}), 0, false);
    println!("MoV: finite differences rel err {e:e}");
}

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
    let (mos, mos_t) = inject(&json!({"peft_type": "MOSLORA", "r": 4, "lora_alpha": 8, "init_weights": false, "target_modules": targets}), 1);
    let (lora, lora_t) = inject(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "init_lora_weights": false, "target_modules": targets}), 2);
    copy_q(&mos, &lora, &["lora_A", "lora_B"], |_, t| t);
    copy_q(&mos, &mos, &["lora_AB"], |_, _| Tensor::eye(4, DType::F32, &Device::Cpu).unwrap());
    let d = max_abs_diff(&logits_with(&mos, Some(&mos_t)), &logits_with(&lora, Some(&lora_t)));
    assert!(d < 1e-5, "MoSLoRA(W = I) vs LoRA: {d}");
    assert!(max_abs_diff(&logits_with(&mos, Some(&mos_t)), &logits_with(&mos, None)) > 1e-3, "the adapter is not a no-op");
}

/// With one expert the gate is 1: MoLoRA is LoRA with that expert's factors.
#[test]
fn molora_with_one_expert_is_lora() {
    let targets = json!(["q_proj"]);
    let (mo, mo_t) = inject(&json!({"peft_type": "MOLORA", "r": 4, "lora_alpha": 8, "num_experts": 1, "init_weights": false, "target_modules": targets}), 1);
    let (lora, lora_t) = inject(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "init_lora_weights": false, "target_modules": targets}), 2);
    copy_q(&mo, &lora, &["lora_A", "lora_B"], |_, t| t);
    let d = max_abs_diff(&logits_with(&mo, Some(&mo_t)), &logits_with(&lora, Some(&lora_t)));
    assert!(d < 1e-5, "MoLoRA(E = 1) vs LoRA: {d}");
}

/// Two experts with equal router rows get gates ½ each: the mixture is the mean of their
/// ΔWs, i.e. one LoRA whose B is [B₁ B₂]/2 over A = [A₁; A₂].
#[test]
fn molora_mixes_experts_by_their_gates() {
    let targets = json!(["q_proj"]);
    let (mo, mo_t) = inject(&json!({"peft_type": "MOLORA", "r": 2, "lora_alpha": 2, "num_experts": 2, "init_weights": false, "target_modules": targets}), 3);
    let (lora, lora_t) = inject(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 4, "init_lora_weights": false, "target_modules": targets}), 4);
    copy_q(&mo, &mo, &["lora_router"], |_, r| Tensor::cat(&[r.get(0).unwrap(), r.get(0).unwrap()], 0).unwrap().reshape(r.dims()).unwrap());
    copy_q(&mo, &lora, &["lora_A", "lora_B"], |attr, t| if attr == "lora_B" { (t * 0.5).unwrap() } else { t });
    let d = max_abs_diff(&logits_with(&mo, Some(&mo_t)), &logits_with(&lora, Some(&lora_t)));
    assert!(d < 1e-5, "MoLoRA with equal gates vs the averaged LoRA: {d}");
}

/// MoV with one expert is (IA)³ on the same modules (scaling outputs, no feed-forward module).
#[test]
fn mov_with_one_expert_is_ia3() {
    let (mov, mov_t) = inject(&json!({"peft_type": "MOV", "num_experts": 1, "init_weights": false, "target_modules": ["k_proj", "v_proj"]}), 1);
    let (ia3, ia3_t) = inject(&json!({"peft_type": "IA3", "target_modules": ["k_proj", "v_proj"], "feedforward_modules": []}), 2);
    for (i, m) in [(0, "k_proj"), (0, "v_proj"), (1, "k_proj"), (1, "v_proj")] {
        let path = format!("base_model.model.model.layers.{i}.self_attn.{m}");
        let l = value(&mov, &format!("{path}.mov_experts.default.weight"));
        set(&ia3, &format!("{path}.ia3_l.default"), &l.reshape((l.elem_count(), 1)).unwrap());
    }
    let d = max_abs_diff(&logits_with(&mov, Some(&mov_t)), &logits_with(&ia3, Some(&ia3_t)));
    assert!(d < 1e-5, "MoV(E = 1) vs IA3: {d}");
    assert!(max_abs_diff(&logits_with(&mov, Some(&mov_t)), &logits_with(&mov, None)) > 1e-4, "the adapter is not a no-op");
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

#[test]
fn mixlora_contract() {
    let e = check(&json!({"peft_type": "MIXLORA", "r": 2, "num_experts": 3, "top_k": 2}), 0, false);
    println!("MixLoRA: finite differences rel err {e:e}");
    // Top-1 renormalises the one gate to 1 (MixLoRA's and Mixtral's routing): the router then learns
    // from the balance loss alone, which the contract's evaluation-mode gradients leave out.
    let e = check(&json!({"peft_type": "MIXLORA", "r": 2, "num_experts": 4, "top_k": 2, "expert_modules": ["down_proj"], "layers_to_transform": [1]}), 0, false);
    println!("MixLoRA (down_proj only, layer 1): finite differences rel err {e:e}");
}

/// One expert, top-1: the gate is 1 and the FFN is the base FFN with LoRA on gate, up and down,
/// i.e. a LoRA adapter on those linears with the same factors.
#[test]
fn mixlora_with_one_expert_is_lora_on_the_ffn() {
    let (mix, mix_t) = inject(&json!({"peft_type": "MIXLORA", "r": 2, "lora_alpha": 4, "num_experts": 1, "top_k": 1, "init_weights": false}), 1);
    let (lora, lora_t) = inject(&json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "init_lora_weights": false, "target_modules": ["gate_proj", "up_proj", "down_proj"]}), 2);
    for layer in 0..2 {
        for p in ["gate_proj", "up_proj", "down_proj"] {
            let path = format!("base_model.model.model.layers.{layer}.mlp.{p}");
            for attr in ["lora_A", "lora_B"] {
                let v = value(&mix, &format!("{path}.{attr}.default.weight"));
                set(&lora, &format!("{path}.{attr}.default.weight"), &v.get(0).unwrap());
            }
        }
    }
    let d = max_abs_diff(&logits_with(&mix, Some(&mix_t)), &logits_with(&lora, Some(&lora_t)));
    assert!(d < 1e-5, "MixLoRA(E = 1) vs LoRA on the FFN: {d}");
}

fn training_loss_of(model: &CausalLm, tuners: &Tuners) -> (Tensor, std::collections::BTreeMap<String, f64>) {
    use peft_core::tuners::WithTuners;
    let inp = inputs();
    let ctx = peft_core::model::Ctx::new(&model.store, false).with_tuners(tuners).training(7);
    let logits = model.forward(&inp.batch(), &ctx, None, false).unwrap();
    let l = peft_core::model::loss::causal_lm_loss(&logits, &inp.labels).unwrap();
    peft_core::tuners::aux_loss::training_loss(l, model, tuners, &ctx).unwrap()
}

/// A zero router gives every expert probability 1/E and (ties to the lower index) routes every
/// token to experts 0..k: Σ fᵢPᵢ = k/E, so L_aux = α·E·k/E = α·k in every layer, and their mean.
#[test]
fn mixlora_balance_loss_value_and_gradient() {
    let cfg = json!({"peft_type": "MIXLORA", "r": 2, "num_experts": 4, "top_k": 2, "router_aux_loss_coef": 0.25});
    let (model, tuners) = inject(&cfg, 1);
    for layer in 0..2 {
        let name = format!("base_model.model.model.layers.{layer}.mlp.mixlora_router.default.weight");
        set(&model, &name, &value(&model, &name).zeros_like().unwrap());
    }
    let (_, aux) = training_loss_of(&model, &tuners);
    assert!((aux["mixlora_balance"] - 0.25 * 2.0).abs() < 1e-6, "{aux:?}");
    // Not in evaluation: the plain cross-entropy.
    {
        use peft_core::tuners::WithTuners;
        let ctx = peft_core::model::Ctx::inference(&model.store).with_tuners(&tuners);
        let logits = model.forward(&inputs().batch(), &ctx, None, false).unwrap();
        let l = peft_core::model::loss::causal_lm_loss(&logits, &inputs().labels).unwrap();
        assert!(peft_core::tuners::aux_loss::training_loss(l, &model, &tuners, &ctx).unwrap().1.is_empty(), "no balance loss outside training");
    }

    // The balance term's gradient (through the mean router probabilities) by f64 finite differences.
    let (mut model, tuners) = method_contract::setup(&cfg, DType::F64);
    model.store.zero_grad();
    let (l, _) = training_loss_of(&model, &tuners);
    model.store.accumulate_grads(&l.backward().unwrap()).unwrap();
    let name = "base_model.model.model.layers.1.mlp.mixlora_router.default.weight";
    let g: Vec<f64> = model.store.by_name(name).unwrap().grad.as_ref().unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let base: Vec<f64> = value(&model, name).flatten_all().unwrap().to_vec1().unwrap();
    let dims = value(&model, name).dims().to_vec();
    let gmax = g.iter().fold(0f64, |m, x| m.max(x.abs()));
    for i in [0, 17, base.len() / 2, base.len() - 1] {
        let at = |d: f64| {
            let mut x = base.clone();
            x[i] += d;
            set(&model, name, &Tensor::from_vec(x, dims.as_slice(), &Device::Cpu).unwrap());
            training_loss_of(&model, &tuners).0.to_dtype(DType::F64).unwrap().to_vec0::<f64>().unwrap()
        };
        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        assert!((fd - g[i]).abs() / gmax < 1e-5, "router[{i}]: finite difference {fd} vs autograd {}", g[i]);
    }
}

#[test]
fn mixlora_config_errors_name_the_key() {
    for (cfg, key) in [
        (json!({"peft_type": "MIXLORA", "top_k": 5, "num_experts": 4}), "top_k"),
        (json!({"peft_type": "MIXLORA", "expert_modules": ["q_proj"]}), "expert_modules"),
        (json!({"peft_type": "MIXLORA", "expert_modules": []}), "expert_modules"),
        (json!({"peft_type": "MIXLORA", "target_modules": ["gate_proj"]}), "target_modules"),
        (json!({"peft_type": "MIXLORA", "router_aux_loss_coef": -1}), "router_aux_loss_coef"),
        (json!({"peft_type": "MIXLORA", "layers_to_transform": [9]}), "layers_to_transform"),
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(key), "{cfg}: {e}");
    }
}

#[test]
fn lora_dropout_contract() {
    let e = check(&json!({"peft_type": "LORA_DROPOUT", "r": 4, "param_dropout": 0.3, "target_modules": ["q_proj", "v_proj"]}), 0, true);
    println!("LoRA Dropout: finite differences rel err {e:e}");
}

/// Evaluation runs plain LoRA; a training step drops whole input columns of A and output rows
/// of B: their gradients are exactly zero, the kept ones are not, and a seed repeats the draw.
#[test]
fn lora_dropout_drops_columns_of_a_and_rows_of_b() {
    use peft_core::tuners::WithTuners;
    let targets = json!(["q_proj"]);
    let (ld, ld_t) = inject(&json!({"peft_type": "LORA_DROPOUT", "r": 4, "param_dropout": 0.5, "init_weights": false, "target_modules": targets}), 1);
    let (lora, lora_t) = inject(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "init_lora_weights": false, "target_modules": targets}), 2);
    copy_q(&ld, &lora, &["lora_A", "lora_B"], |_, t| t);
    assert!(max_abs_diff(&logits_with(&ld, Some(&ld_t)), &logits_with(&lora, Some(&lora_t))) < 1e-6, "evaluation = LoRA");

    let grads = |seed: u64| {
        let ctx = peft_core::model::Ctx::new(&ld.store, false).with_tuners(&ld_t).training(seed);
        let logits = ld.forward(&inputs().batch(), &ctx, None, false).unwrap();
        let l = peft_core::model::loss::causal_lm_loss(&logits, &inputs().labels).unwrap();
        let g = l.backward().unwrap();
        let of = |attr: &str| g.get(ld.store.by_name(&format!("{Q0}.{attr}.default.weight")).unwrap().value()).unwrap().to_vec2::<f32>().unwrap();
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

#[test]
fn sora_contract() {
    let e = check(&json!({"peft_type": "SORA", "r": 4, "target_modules": ["q_proj", "v_proj"]}), 0, true);
    println!("SoRA: finite differences rel err {e:e}");
}

/// The proximal step is the soft threshold at lr·λ (eq. 5); a gate at zero switches its rank
/// off, so the adapter equals the LoRA of the remaining ranks; initial gates 1 make it LoRA.
#[test]
fn sora_proximal_step_soft_thresholds_the_gates() {
    use peft_core::tuners::sora::proximal_step;
    let cfg = json!({"peft_type": "SORA", "r": 4, "lora_alpha": 8, "sparse_lambda": 2.0, "init_weights": false, "target_modules": ["q_proj"]});
    let (sora, sora_t) = inject(&cfg, 1);
    let gate = format!("{Q0}.sora_gate.default.weight");
    set(&sora, &gate, &Tensor::new(&[0.5f32, -0.05, 0.08, -1.0], &Device::Cpu).unwrap());
    let kept = proximal_step(&sora, &sora_t, 0.05).unwrap(); // ξ = 0.1
    let g: Vec<f32> = value(&sora, &gate).to_vec1().unwrap();
    let want = [0.4f32, 0.0, 0.0, -0.9];
    assert!(g.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{g:?}");
    assert_eq!(kept, vec![("default".to_string(), 6, 8)], "two of layer 0's four gates survive; layer 1's four ones shrink to 0.9");

    // Ranks 1 and 2 are off: the adapter is the LoRA of ranks 0 and 3 with B's columns scaled by the gates.
    let (lora, lora_t) = inject(&json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "init_lora_weights": false, "target_modules": ["q_proj"]}), 2);
    let (a, b) = (value(&sora, &format!("{Q0}.lora_A.default.weight")), value(&sora, &format!("{Q0}.lora_B.default.weight")));
    let keep = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
    let g2 = Tensor::new(&[0.4f32, -0.9], &Device::Cpu).unwrap();
    set(&lora, &format!("{Q0}.lora_A.default.weight"), &a.index_select(&keep, 0).unwrap());
    set(&lora, &format!("{Q0}.lora_B.default.weight"), &b.index_select(&keep, 1).unwrap().broadcast_mul(&g2).unwrap());
    for layer in [1] {
        // layer 1's q_proj is SoRA's only other target: make both models agree there by zeroing its B.
        let name = format!("base_model.model.model.layers.{layer}.self_attn.q_proj.lora_B.default.weight");
        set(&sora, &name, &value(&sora, &name).zeros_like().unwrap());
        set(&lora, &name, &value(&lora, &name).zeros_like().unwrap());
    }
    let d = max_abs_diff(&logits_with(&sora, Some(&sora_t)), &logits_with(&lora, Some(&lora_t)));
    assert!(d < 1e-5, "SoRA with two gates off vs the rank-2 LoRA: {d}");
    assert!(proximal_step(&sora, &sora_t, f64::NAN).is_err());
}

#[test]
fn child_tuning_contract() {
    let e = check(&json!({"peft_type": "CHILD_TUNING", "child_ratio": 0.3, "target_modules": ["q_proj", "down_proj"]}), 0, true);
    println!("Child-tuning_D: finite differences rel err {e:e}");
}

/// A training forward leaves the logits as evaluation's (the mask touches the gradient only);
/// its gradient is the full gradient on a random ~p_D share of entries, scaled by 1/p_D, and 0 elsewhere.
#[test]
fn child_tuning_masks_the_gradient_not_the_forward() {
    use peft_core::tuners::WithTuners;
    let (model, tuners) = method_contract::setup(&json!({"peft_type": "CHILD_TUNING", "child_ratio": 0.25, "target_modules": ["q_proj"]}), DType::F64);
    let name = format!("{Q0}.child_delta.default.weight");
    let grad_in = |training: bool| {
        let ctx = peft_core::model::Ctx::new(&model.store, false).with_tuners(&tuners);
        let ctx = if training { ctx.training(9) } else { ctx };
        let logits = model.forward(&inputs().batch(), &ctx, None, false).unwrap();
        let l = peft_core::model::loss::causal_lm_loss(&logits, &inputs().labels).unwrap();
        let g = l.backward().unwrap();
        let g: Vec<f64> = g.get(model.store.by_name(&name).unwrap().value()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
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

#[test]
fn compacter_contract() {
    let e = check(&json!({"peft_type": "COMPACTER", "bottleneck_size": 8, "phm_dim": 4, "phm_rank": 1}), 0, false);
    println!("Compacter: finite differences rel err {e:e}");
}

/// The PHM weight is Σᵢ Aᵢ ⊗ Bᵢ (eq. 3), checked against the Kronecker product written out,
/// and a fresh adapter (up sᵢ = 0) is the identity; the shared rule is saved once.
#[test]
fn compacter_phm_weight_is_a_sum_of_kronecker_products() {
    use peft_core::tuners::compacter::phm_weight;
    let (n, p, q, r) = (2usize, 3usize, 2usize, 1usize);
    let seq = |len: usize, k: f64| Tensor::from_vec((0..len).map(|i| ((i as f64 + 1.0) * k).sin()).collect::<Vec<f64>>(), len, &Device::Cpu).unwrap();
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

#[test]
fn dept_contract() {
    let e = check(&dept(16), 3, false);
    println!("DePT: finite differences rel err {e:e}");
}

/// With B = 0 DePT is prompt tuning with its prompt; with B ≠ 0 the offsets act per position,
/// the cache counts positions on (decoding token by token = one full pass, across the
/// `max_length` boundary), and the file holds the prompt and both factors under PEFT-style keys.
#[test]
fn dept_is_prompt_tuning_plus_position_offsets() {
    use peft_core::model::{Batch, Ctx, KvCache};
    use peft_core::tuners::WithTuners;
    let (d, d_t) = inject(&dept(5), 1);
    let (pt, pt_t) = inject(&json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3}), 2);
    set(&pt, "prompt_encoder.default.embedding.weight", &value(&d, "prompt_encoder.default.embedding.weight"));
    assert!(max_abs_diff(&logits_with(&d, Some(&d_t)), &logits_with(&pt, Some(&pt_t))) < 1e-6, "B = 0: prompt tuning");

    let (model, tuners) = method_contract::setup(&dept(5), DType::F64);
    let row: Vec<u32> = inputs().input_ids[0].iter().take(8).copied().collect();
    let ctx = Ctx::inference(&model.store).with_tuners(&tuners);
    let full = model.forward(&Batch::new(vec![row.clone()]), &ctx, None, false).unwrap();
    let mut cache = KvCache::new(model.layers.len());
    let mut steps = vec![model.forward(&Batch::new(vec![row[..3].to_vec()]), &ctx, Some(&mut cache), false).unwrap()];
    for &tok in &row[3..] {
        steps.push(model.forward(&Batch::new(vec![vec![tok]]), &ctx, Some(&mut cache), false).unwrap());
    }
    let diff = max_abs_diff(&Tensor::cat(&steps, 1).unwrap(), &full);
    assert!(diff < 1e-10, "cached decoding vs full pass: {diff}");
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
    assert_eq!((cfg["peft_type"].as_str(), cfg["r"].as_u64(), cfg["max_length"].as_u64(), cfg["token_dim"].as_u64()), (Some("DEPT"), Some(4), Some(5), Some(64)));
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
    ] {
        let e = error_of(&cfg);
        assert!(e.contains(key), "{cfg}: {e}");
    }
}
