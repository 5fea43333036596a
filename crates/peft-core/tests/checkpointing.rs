//! Gradient checkpointing: every trainable parameter's gradient with checkpointed layers
//! equals the one of the plain graph (1e-6 relative, f64) on the shared fixtures, for full
//! fine-tuning and adapters on LLaMA and Gemma 3, prefix tuning (its per-layer key/value
//! prefixes enter the layers as inputs), dropout and DyLoRA's per-step rank (replayed).
use crate::arch_fixture;
use arch_fixture::{batch, max_rel_diff, setup, Lent, Trainable};
use candle_core::Tensor;
use peft_core::model::checkpoint::backward;
use peft_core::model::{loss, Checkpointing, Ctx};
use peft_core::tuners::WithTuners;
use serde_json::json;
use std::sync::Arc;

/// (name, gradient) of every trainable parameter after one forward and backward; `seed`
/// switches training mode (dropout) on.
fn gradients(lent: &Arc<Lent>, arch: &str, checkpoint: bool, seed: Option<u64>) -> Vec<(String, Tensor)> {
    let (input, labels) = batch(arch);
    let g = lent.0.read().unwrap();
    let (model, tuners) = (&g.0, &g.1);
    let mut ctx = Ctx::new(&model.store, false).with_tuners(tuners);
    if let Some(s) = seed {
        ctx = ctx.training(s);
    }
    let cp = checkpoint.then(|| Checkpointing::new(lent.clone()));
    if let Some(cp) = &cp {
        ctx = ctx.with_checkpointing(cp.clone());
    }
    let l = loss::causal_lm_loss(&model.forward(&input, &ctx, None, false).unwrap(), &labels).unwrap();
    drop(ctx);
    let params: Vec<(String, Tensor)> =
        model.store.iter().filter(|(_, p)| p.requires_grad()).map(|(_, p)| (p.name.clone(), p.value().clone())).collect();
    drop(g); // the recompute borrows the model again
    let grads = backward(&l, cp.as_ref()).unwrap();
    assert!(!params.is_empty());
    params
        .into_iter()
        .map(|(n, t)| {
            let grad = grads.get(&t).unwrap_or_else(|| panic!("{arch}: no gradient for {n} (checkpoint {checkpoint})")).clone();
            (n, grad)
        })
        .collect()
}

fn check(label: &str, arch: &str, trainable: Trainable, seed: Option<u64>) {
    let lent = setup(arch, trainable);
    let plain = gradients(&lent, arch, false, seed);
    let checkpointed = gradients(&lent, arch, true, seed);
    assert_eq!(plain.len(), checkpointed.len());
    let (d, name) = max_rel_diff(&checkpointed, &plain);
    println!("{label}: {} gradients, max relative difference {d:e} ({name})", plain.len());
    assert!(d < 1e-6, "{label}: {name} differs by {d:e} relative");
}

#[test]
fn llama_full_fine_tuning() {
    check("llama full", "llama", Trainable::Full, None);
}

#[test]
fn llama_lora() {
    check("llama lora_qv", "llama", Trainable::Case("lora_qv"), None);
}

#[test]
fn gemma3_full_fine_tuning() {
    check("gemma3 full", "gemma3", Trainable::Full, None);
}

#[test]
fn gemma3_lora() {
    check("gemma3 lora_all", "gemma3", Trainable::Case("lora_all"), None);
}

#[test]
fn prefix_tuning_prefixes_get_their_gradient() {
    check("llama prefix_tuning", "llama", Trainable::Case("prefix_tuning"), None);
}

#[test]
fn prompt_tuning_virtual_tokens_get_their_gradient() {
    check("llama prompt_tuning", "llama", Trainable::Case("prompt_tuning"), None);
}

#[test]
fn vera_shared_matrices_sum_over_layers() {
    check("llama vera", "llama", Trainable::Case("vera"), None);
}

#[test]
fn dropout_is_replayed_in_the_recompute() {
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.3, "target_modules": ["q_proj", "v_proj", "down_proj"], "init_lora_weights": false});
    check("llama lora dropout 0.3", "llama", Trainable::Config(cfg), Some(7));
}

#[test]
fn dylora_rank_draw_is_replayed_in_the_recompute() {
    let cfg = json!({"peft_type": "DYLORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.2, "target_modules": ["q_proj", "v_proj"]});
    check("llama dylora", "llama", Trainable::Config(cfg), Some(5));
}

/// Without `collect_into`, the checkpointed layers' parameters have no gradient: the
/// layers really ran as checkpoints (their graph was not kept).
#[test]
fn layer_gradients_come_from_the_recompute() {
    let lent = setup("llama", Trainable::Case("lora_qv"));
    let (input, labels) = batch("llama");
    let g = lent.0.read().unwrap();
    let ctx = Ctx::new(&g.0.store, false).with_tuners(&g.1).with_checkpointing(Checkpointing::new(lent.clone()));
    let l = loss::causal_lm_loss(&g.0.forward(&input, &ctx, None, false).unwrap(), &labels).unwrap();
    let a = g.0.store.by_name("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight").unwrap().value().clone();
    drop(ctx);
    drop(g);
    assert!(l.backward().unwrap().get(&a).is_none(), "a layer parameter got its gradient from the outer graph");
}

/// The test above would pass if dropout never ran: different seeds must give different gradients.
#[test]
fn dropout_seed_changes_the_gradients() {
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.3, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": false});
    let lent = setup("llama", Trainable::Config(cfg));
    let (d, _) = max_rel_diff(&gradients(&lent, "llama", true, Some(1)), &gradients(&lent, "llama", true, Some(2)));
    assert!(d > 1e-3, "dropout seeds 1 and 2 gave the same gradients ({d:e})");
}
