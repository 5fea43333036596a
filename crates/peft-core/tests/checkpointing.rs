//! Gradient checkpointing: every trainable parameter's gradient with checkpointed layers
//! equals the one of the plain graph (1e-6 relative, f64) on the shared fixtures, for full
//! fine-tuning and adapters on LLaMA and Gemma 3, prefix tuning (its per-layer key/value
//! prefixes enter the layers as inputs), dropout and DyLoRA's per-step rank (replayed).
use candle_core::{DType, Device, Tensor};
use peft_core::io::adapter::load_adapter;
use peft_core::model::checkpoint::backward;
use peft_core::model::{loss, Batch, CausalLm, Checkpointing, Ctx, LoadOptions, ModelAccess, ModelHooks};
use peft_core::tuners::{parse_config, Tuners, WithTuners};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

/// The fixture folder of `arch` (`llama`: hf-peft-tiny-llama, else hf-peft-tiny-arch/<arch>).
fn fixture(arch: &str) -> PathBuf {
    if arch == "llama" { shared().join("hf-peft-tiny-llama") } else { shared().join("hf-peft-tiny-arch").join(arch) }
}

/// The model and its adapters, lent to the recompute as the Node handle lends its own.
struct Lent(RwLock<(CausalLm, Tuners)>);

impl ModelAccess for Lent {
    fn with_model(&self, f: &mut dyn FnMut(&CausalLm, Option<&dyn ModelHooks>) -> peft_core::Result<()>) -> peft_core::Result<()> {
        let g = self.0.read().unwrap();
        f(&g.0, Some(&g.1))
    }
}

enum Trainable<'a> {
    /// Every base weight (full fine-tuning).
    Full,
    /// A fixture case's adapter files.
    Case(&'a str),
    /// An adapter config injected with a fixed seed.
    Config(Value),
}

fn setup(arch: &str, trainable: Trainable) -> Arc<Lent> {
    let dir = fixture(arch);
    let mut model = CausalLm::from_pretrained(&dir.join("model"), &LoadOptions { dtype: DType::F64, device: Device::Cpu }).unwrap();
    let mut tuners = Tuners::new();
    match trainable {
        Trainable::Full => model.store.iter_mut().for_each(|p| p.requires_grad = true),
        Trainable::Case(case) => {
            load_adapter(&mut tuners, &mut model, &dir.join("cases").join(case), "default", true).unwrap();
        }
        Trainable::Config(cfg) => {
            let (cfg, _) = parse_config(&cfg, None, Path::new("test config")).unwrap();
            tuners.inject(&mut model, "default", cfg, 3).unwrap();
            // Off the zero init (LoRA's B), so that every factor gets a non-zero gradient.
            for p in model.store.iter_mut().filter(|p| p.requires_grad) {
                let v = p.value();
                let noise = (Tensor::arange(0u32, v.elem_count() as u32, &Device::Cpu).unwrap().to_dtype(DType::F64).unwrap() * 0.37).unwrap().sin().unwrap();
                p.set(&(v + (noise.reshape(v.dims()).unwrap() * 0.1).unwrap()).unwrap()).unwrap();
            }
        }
    }
    Arc::new(Lent(RwLock::new((model, tuners))))
}

fn batch(arch: &str) -> (Batch, Vec<Vec<i64>>) {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture(arch).join("inputs.json")).unwrap()).unwrap();
    let rows = |k: &str| -> Vec<Vec<i64>> { v[k].as_array().unwrap().iter().map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()).collect() };
    let ids = rows("input_ids").into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect();
    let mask = rows("attention_mask").into_iter().map(|r| r.into_iter().map(|x| x as u8).collect()).collect();
    (Batch { ids, attention_mask: Some(mask), position_ids: None, segment_ids: None }, rows("labels"))
}

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
    let params: Vec<(String, Tensor)> = model.store.iter().filter(|(_, p)| p.requires_grad).map(|(_, p)| (p.name.clone(), p.value().clone())).collect();
    drop(g); // the recompute borrows the model again
    let grads = backward(&l, cp.as_ref()).unwrap();
    assert!(!params.is_empty());
    params.into_iter().map(|(n, t)| {
        let grad = grads.get(&t).unwrap_or_else(|| panic!("{arch}: no gradient for {n} (checkpoint {checkpoint})")).clone();
        (n, grad)
    }).collect()
}

fn max_rel_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    let mut worst = (0f64, String::new());
    for ((n, x), (m, y)) in a.iter().zip(b) {
        assert_eq!(n, m);
        let scale = y.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        assert!(scale > 0.0, "{n}: zero gradient, the comparison would prove nothing");
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap() / scale;
        if d > worst.0 || worst.1.is_empty() {
            worst = (d, n.clone());
        }
    }
    worst
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
