//! The mixtures of experts from the PEFT survey's tree (issue 16): MoLoRA and MoV (soft-routed
//! LoRA / (IA)³ experts) and MixLoRA (top-k routed LoRA experts on the FFN with the
//! load-balancing loss). The reductions to one expert, the gates, and the balance
//! loss's value and gradient.
use crate::common;
use crate::contract;
use candle_core::{DType, Device, Tensor};
use common::*;
use contract::*;
use peft_core::model::CausalLm;
use peft_core::tuners::Tuners;
use serde_json::json;

/// With one expert the gate is 1: MoLoRA is LoRA with that expert's factors.
#[test]
fn molora_with_one_expert_is_lora() {
    let targets = json!(["q_proj"]);
    let (mo, mo_t) = inject(
        &json!({"peft_type": "MOLORA", "r": 4, "lora_alpha": 8, "num_experts": 1, "init_weights": false, "target_modules": targets}),
        1,
    );
    let (lora, lora_t) =
        inject(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "init_lora_weights": false, "target_modules": targets}), 2);
    copy_q(&mo, &lora, &["lora_A", "lora_B"], |_, t| t);
    let d = max_abs_diff(&logits_with(&mo, Some(&mo_t)), &logits_with(&lora, Some(&lora_t)));
    assert!(d < 1e-5, "MoLoRA(E = 1) vs LoRA: {d}");
}

/// Two experts with equal router rows get gates ½ each: the mixture is the mean of their
/// ΔWs, i.e. one LoRA whose B is [B₁ B₂]/2 over A = [A₁; A₂].
#[test]
fn molora_mixes_experts_by_their_gates() {
    let targets = json!(["q_proj"]);
    let (mo, mo_t) = inject(
        &json!({"peft_type": "MOLORA", "r": 2, "lora_alpha": 2, "num_experts": 2, "init_weights": false, "target_modules": targets}),
        3,
    );
    let (lora, lora_t) =
        inject(&json!({"peft_type": "LORA", "r": 4, "lora_alpha": 4, "init_lora_weights": false, "target_modules": targets}), 4);
    copy_q(&mo, &mo, &["lora_router"], |_, r| Tensor::cat(&[r.get(0).unwrap(), r.get(0).unwrap()], 0).unwrap().reshape(r.dims()).unwrap());
    copy_q(&mo, &lora, &["lora_A", "lora_B"], |attr, t| if attr == "lora_B" { (t * 0.5).unwrap() } else { t });
    let d = max_abs_diff(&logits_with(&mo, Some(&mo_t)), &logits_with(&lora, Some(&lora_t)));
    assert!(d < 1e-5, "MoLoRA with equal gates vs the averaged LoRA: {d}");
}

/// MoV with one expert is (IA)³ on the same modules (scaling outputs, no feed-forward module).
#[test]
fn mov_with_one_expert_is_ia3() {
    let (mov, mov_t) =
        inject(&json!({"peft_type": "MOV", "num_experts": 1, "init_weights": false, "target_modules": ["k_proj", "v_proj"]}), 1);
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

/// One expert, top-1: the gate is 1 and the FFN is the base FFN with LoRA on gate, up and down,
/// i.e. a LoRA adapter on those linears with the same factors.
#[test]
fn mixlora_with_one_expert_is_lora_on_the_ffn() {
    let (mix, mix_t) =
        inject(&json!({"peft_type": "MIXLORA", "r": 2, "lora_alpha": 4, "num_experts": 1, "top_k": 1, "init_weights": false}), 1);
    let (lora, lora_t) = inject(
        &json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "init_lora_weights": false, "target_modules": ["gate_proj", "up_proj", "down_proj"]}),
        2,
    );
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
        assert!(
            peft_core::tuners::aux_loss::training_loss(l, &model, &tuners, &ctx).unwrap().1.is_empty(),
            "no balance loss outside training"
        );
    }

    // The balance term's gradient (through the mean router probabilities) by f64 finite differences.
    let (mut model, tuners) = contract::setup(&cfg, DType::F64);
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
