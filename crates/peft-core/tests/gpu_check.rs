//! The GPU check (feature `cuda`; run by `scripts/gpu-check.sh` on a CUDA machine, see
//! docs/cuda.md). Without the feature this binary is empty.
//!
//! - `cuda_ops_match_cpu`: every fused op, forward and gradients through `backward()`, on
//!   CUDA against the CPU kernels (which `tests/ops.rs` checks against the composites and
//!   finite differences), in f32, f64, bf16 and f16; strided and broadcast inputs included.
//! - `cuda_fixture_f32`: the transformers/PEFT fixture suite on CUDA in f32, with the CPU
//!   suite's tolerances: base logits/loss/greedy, full fine-tuning gradients, and the LoRA,
//!   rsLoRA and DoRA cases (logits, loss, gradients, two AdamW steps, greedy).
//! - `cuda_fixture_bf16_base`: the same LoRA cases over a bf16 base on CUDA (adapters f32,
//!   as PEFT's autocast_adapter_dtype), against the f32 fixtures with bf16 tolerances.
//! - `bench_lora_tinyllama` (ignored; run with `--ignored`): LoRA training throughput and
//!   peak memory on a TinyLlama-1.1B-shaped model with random weights.
//!
//! Tolerances (normwise: max |got - want| / max |want|) are printed with every measured error.
#![cfg(feature = "cuda")]
mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::*;
use peft_core::io::adapter::load_adapter;
use peft_core::model::{loss, CausalLm, LoadOptions};
use peft_core::ops;
use peft_core::tuners::Tuners;
use peft_core::tuners::WithTuners;

fn cuda() -> Device {
    Device::new_cuda(std::env::var("PEFT_CUDA_DEVICE").ok().and_then(|s| s.parse().ok()).unwrap_or(0))
        .expect("a CUDA device (this is the GPU check)")
}

// ---- ops ------------------------------------------------------------------------------------

/// splitmix64, as tests/ops.rs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// f64 on the CPU, uniform in [-scale, scale).
    fn tensor(&mut self, dims: &[usize], scale: f64) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f64> = (0..n).map(|_| ((self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0) * scale).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }
}

fn normwise(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims());
    let a: Vec<f64> = got.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f64> = want.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(f64::MIN_POSITIVE);
    a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

type Run = Box<dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>>;

struct OpCase {
    name: &'static str,
    /// f64 on the CPU; u32 tensors (targets) pass through unchanged.
    inputs: Vec<Tensor>,
    /// Inputs that get a gradient.
    trainable: Vec<usize>,
    run: Run,
}

/// Forward and gradients of `sum(out * r)` with the inputs cast to `dtype` on `dev`.
fn forward_backward(case: &OpCase, dtype: DType, dev: &Device, r: &Tensor) -> (Tensor, Vec<Tensor>) {
    let mut vars = Vec::new();
    let xs: Vec<Tensor> = case
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let t = if t.dtype().is_float() { t.to_dtype(dtype).unwrap() } else { t.clone() };
            let t = t.to_device(dev).unwrap();
            if case.trainable.contains(&i) {
                let v = Var::from_tensor(&t).unwrap();
                let t = v.as_tensor().clone();
                vars.push(v);
                t
            } else {
                t
            }
        })
        .collect();
    let out = (case.run)(&xs).unwrap();
    let acc = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let r = r.to_dtype(acc).unwrap().to_device(dev).unwrap();
    let l = (out.to_dtype(acc).unwrap() * r).unwrap().sum_all().unwrap();
    let store = l.backward().unwrap();
    let grads =
        vars.iter().map(|v| store.get(v.as_tensor()).unwrap_or_else(|| panic!("{}: no gradient on {dev:?}", case.name)).clone()).collect();
    (out, grads)
}

fn op_cases(rng: &mut Rng) -> Vec<OpCase> {
    let mut cases = Vec::new();
    // RMSNorm: rows shorter and longer than a block, and a transposed (strided) input.
    for (name, dims) in [("rms_norm [3,5,64]", vec![3, 5, 64]), ("rms_norm [2,3,2048]", vec![2, 3, 2048])] {
        let d = *dims.last().unwrap();
        cases.push(OpCase {
            name,
            inputs: vec![rng.tensor(&dims, 2.0), (rng.tensor(&[d], 0.5) + 1.0).unwrap()],
            trainable: vec![0, 1],
            run: Box::new(|x: &[Tensor]| ops::rms_norm(&x[0], &x[1], 1e-6)),
        });
    }
    cases.push(OpCase {
        name: "rms_norm transposed [40,7]^T",
        inputs: vec![rng.tensor(&[40, 7], 2.0), (rng.tensor(&[40], 0.5) + 1.0).unwrap()],
        trainable: vec![0, 1],
        run: Box::new(|x: &[Tensor]| ops::rms_norm(&x[0].t()?, &x[1], 1e-5)),
    });
    // RoPE: per-row cos/sin, and one [1, t, d/2] broadcast over the batch.
    for (name, cs_b) in [("rope [2,4,7,16] cos [2,7,8]", 2), ("rope [2,4,7,16] cos [1,7,8]", 1)] {
        cases.push(OpCase {
            name,
            inputs: vec![rng.tensor(&[2, 4, 7, 16], 1.0), rng.tensor(&[cs_b, 7, 8], 1.0), rng.tensor(&[cs_b, 7, 8], 1.0)],
            trainable: vec![0],
            run: Box::new(|x: &[Tensor]| ops::rope(&x[0], &x[1], &x[2])),
        });
    }
    // Softmax: short rows (attention over a few keys), rows longer than a block, strided.
    for (name, dims) in [("softmax [4,6,5]", vec![4, 6, 5]), ("softmax [2,3,700]", vec![2, 3, 700])] {
        cases.push(OpCase {
            name,
            inputs: vec![rng.tensor(&dims, 4.0)],
            trainable: vec![0],
            run: Box::new(|x: &[Tensor]| ops::softmax_last_dim(&x[0])),
        });
    }
    cases.push(OpCase {
        name: "softmax transposed [33,9]^T",
        inputs: vec![rng.tensor(&[33, 9], 4.0)],
        trainable: vec![0],
        run: Box::new(|x: &[Tensor]| ops::softmax_last_dim(&x[0].t()?)),
    });
    // SwiGLU.
    cases.push(OpCase {
        name: "silu_mul [3,7,50]",
        inputs: vec![rng.tensor(&[3, 7, 50], 4.0), rng.tensor(&[3, 7, 50], 2.0)],
        trainable: vec![0, 1],
        run: Box::new(|x: &[Tensor]| ops::silu_mul(&x[0], &x[1])),
    });
    // Cross-entropy: a vocab row longer than a block, some ignored rows (weight 0).
    let (n, vocab) = (12, 3000);
    let targets: Vec<u32> = (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect();
    let weights: Vec<f64> = (0..n).map(|i| if i % 4 == 3 { 0.0 } else { 1.0 }).collect();
    cases.push(OpCase {
        name: "cross_entropy [12,3000]",
        inputs: vec![
            rng.tensor(&[n, vocab], 6.0),
            Tensor::new(targets, &Device::Cpu).unwrap(),
            Tensor::new(weights, &Device::Cpu).unwrap(),
        ],
        trainable: vec![0],
        run: Box::new(|x: &[Tensor]| ops::cross_entropy_sum(&x[0], &x[1], &x[2])),
    });
    cases
}

#[test]
fn cuda_ops_match_cpu() {
    let dev = cuda();
    let mut rng = Rng(0x6e75);
    let cases = op_cases(&mut rng);
    // (dtype, the CPU reference's dtype, tolerance)
    let table =
        [(DType::F64, DType::F64, 1e-10), (DType::F32, DType::F32, 1e-5), (DType::F16, DType::F32, 1e-2), (DType::BF16, DType::F32, 5e-2)];
    let mut failures = Vec::new();
    for case in &cases {
        for &(dtype, ref_dtype, tol) in &table {
            let r = {
                let probe = (case.run)(&case.inputs).unwrap();
                Rng(0x77).tensor(probe.dims(), 1.0)
            };
            let (want, want_g) = forward_backward(case, ref_dtype, &Device::Cpu, &r);
            let (got, got_g) = forward_backward(case, dtype, &dev, &r);
            assert_eq!(
                got.dtype(),
                if case.name.starts_with("cross_entropy") && dtype != DType::F64 { DType::F32 } else { dtype },
                "{}",
                case.name
            );
            let ef = normwise(&got, &want);
            let eg = got_g.iter().zip(&want_g).map(|(a, b)| normwise(a, b)).fold(0f64, f64::max);
            let ok = ef <= tol && eg <= tol;
            println!(
                "ops {:<32} {:<5} forward {ef:.1e}  grads {eg:.1e}  (tol {tol:.0e}) {}",
                case.name,
                format!("{dtype:?}"),
                if ok { "ok" } else { "FAIL" }
            );
            if !ok {
                failures.push(format!("{} {dtype:?}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "CUDA ops off: {failures:?}");
}

// ---- fixture suite ---------------------------------------------------------------------------

fn load_on(dev: &Device, dtype: DType) -> CausalLm {
    CausalLm::from_pretrained(&model_dir(), &LoadOptions { dtype, device: dev.clone() }).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Tolerances of one precision: logits (abs, or normwise for bf16), loss (relative),
/// gradients (normwise), parameters after two AdamW steps (abs), greedy ids asserted.
struct Tol {
    logits: f32,
    loss: f32,
    grads: f32,
    step2: f32,
    /// Elements with a tiny step-0 gradient, in units of lr.
    step2_small_grad_lr: f32,
    greedy: bool,
}

const F32_TOL: Tol = Tol { logits: 1e-4, loss: 1e-4, grads: 1e-3, step2: 1e-4, step2_small_grad_lr: 0.1, greedy: true };
/// bf16 keeps 8 bits of mantissa (relative rounding 2^-9 = 2e-3 per op); two layers and
/// the f32 adapters on top stay within a few percent of the f32 reference. AdamW's first
/// step moves each element by lr·sign(g), so elements with a tiny gradient may move the
/// other way (2 lr); the others are held to 0.3 lr. Greedy ids are printed, not asserted.
const BF16_TOL: Tol = Tol { logits: 3e-2, loss: 1e-2, grads: 1e-1, step2: 3e-3, step2_small_grad_lr: 2.5, greedy: false };

/// Largest |got - want| over unmasked positions, over max |want|.
fn masked_rel(got: &Tensor, want: &Tensor) -> f32 {
    let scale = flat(want).iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    max_masked_diff(got, want, &inputs().attention_mask) / scale
}

fn check_lora_case(dev: &Device, dtype: DType, case: &str, tol: &Tol) {
    let label = format!("{case} {dtype:?}");
    let mut model = load_on(dev, dtype);
    let mut tuners = Tuners::new();
    load_adapter(&mut tuners, &mut model, &fixture_dir().join("cases").join(case), "default", true).unwrap();
    for (_, p) in model.store.iter() {
        let want = if p.name.starts_with("base_model.") { DType::F32 } else { dtype };
        assert_eq!(p.dtype(), want, "{label}: {} dtype", p.name);
        assert!(p.device().is_cuda(), "{label}: {} not on the GPU", p.name);
    }
    let exp = expected(case);
    let inp = inputs();
    let logits = logits_with(&model, Some(&tuners));
    let dl = if dtype == DType::F32 {
        max_masked_diff(&logits, &exp["logits"], &inp.attention_mask)
    } else {
        masked_rel(&logits, &exp["logits"])
    };
    let l = scalar(&loss::causal_lm_loss(&logits, &inp.labels).unwrap());
    let e = scalar(&exp["loss"]);
    let dloss = (l - e).abs() / e.abs().max(1.0);
    model.store.zero_grad();
    loss_with(&mut model, Some(&tuners), true);
    let mut worst = (0f32, String::new());
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad) {
        let want = &exp[&format!("grad.{}", fixture_name(&p.name))];
        let err = rel_err(p.grad.as_ref().unwrap_or_else(|| panic!("{label}: no gradient for {}", p.name)), want);
        if err > worst.0 {
            worst = (err, p.name.clone());
        }
    }
    let loss1 = two_adamw_steps_with(&mut model, Some(&tuners), &adamw_from_case(case));
    let e1 = scalar(&exp["loss_after_step1"]);
    let dloss1 = (loss1 - e1).abs() / e1.abs().max(1.0);
    // As tests/contract/fixture.rs: elements whose step-0 gradient is < 1% of their tensor's largest
    // move in directions below the gradient tolerance; those are held to 0.1 lr.
    let lr = adamw_from_case(case).lr as f32;
    let (mut strict, mut loose) = (0f32, 0f32);
    for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad) {
        let name = fixture_name(&p.name);
        let (got, want, g0) = (flat(p.value()), flat(&exp[&format!("after_step2.{name}")]), flat(&exp[&format!("grad.{name}")]));
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
    let greedy = greedy_with(&model, Some(&tuners), &inp.input_ids[0][..inp.prompt_len], inp.new_tokens);
    let want_greedy = ids_of(&exp["greedy_after_step2"]);
    let same = greedy.iter().zip(&want_greedy).take_while(|(a, b)| a == b).count();
    println!(
        "fixture {label:<22} logits {dl:.1e} (tol {:.0e})  loss {dloss:.1e} (tol {:.0e})  grads {:.1e} (tol {:.0e}, worst {})  loss_after_step1 {dloss1:.1e}  after_step2 {strict:.1e} (tol {:.0e}; small-grad elements {loose:.1e}, tol {:.0e})  greedy {same}/{} ids agree",
        tol.logits, tol.loss, worst.0, tol.grads, worst.1, tol.step2, tol.step2_small_grad_lr * lr, want_greedy.len()
    );
    assert!(dl < tol.logits, "{label}: logits off by {dl}");
    assert!(dloss < tol.loss, "{label}: loss {l} vs {e}");
    assert!(worst.0 < tol.grads, "{label}: gradient of {} off by {}", worst.1, worst.0);
    assert!(dloss1 < tol.loss, "{label}: loss after step 1 {loss1} vs {e1}");
    assert!(strict < tol.step2, "{label}: after_step2 off by {strict}");
    assert!(loose < tol.step2_small_grad_lr * lr, "{label}: after_step2 (small-gradient elements) off by {loose}");
    if tol.greedy {
        assert_eq!(greedy, want_greedy, "{label}: greedy after step 2");
    }
}

#[test]
fn cuda_fixture_f32() {
    let dev = cuda();
    // Full f32 GEMMs (no TF32), as the reference.
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(false);
    let inp = inputs();

    // Base model: logits, loss, greedy generation.
    let model = load_on(&dev, DType::F32);
    let exp = expected("base");
    let logits = logits_with(&model, None);
    let dl = max_masked_diff(&logits, &exp["logits"], &inp.attention_mask);
    let l = scalar(&loss::causal_lm_loss(&logits, &inp.labels).unwrap());
    let e = scalar(&exp["loss"]);
    let greedy = greedy(&model, &inp.input_ids[0][..inp.prompt_len], inp.new_tokens);
    println!("fixture base F32: logits {dl:.1e} (tol 1e-4), loss {:.1e} (tol 1e-4)", (l - e).abs());
    assert!(dl < 1e-4, "base logits off by {dl}");
    assert!((l - e).abs() < 1e-4 * e.abs().max(1.0));
    assert_eq!(greedy, ids_of(&exp["greedy"]), "base greedy");
    drop(model);

    // Full fine-tuning: every gradient.
    let mut model = load_on(&dev, DType::F32);
    for p in model.store.iter_mut() {
        p.requires_grad = true;
    }
    let exp = expected("full");
    loss_with(&mut model, None, true);
    let mut worst = (0f32, String::new());
    for (_, p) in model.store.iter() {
        let err = rel_err(p.grad.as_ref().unwrap_or_else(|| panic!("no gradient for {}", p.name)), &exp[&format!("grad.{}", p.name)]);
        if err > worst.0 {
            worst = (err, p.name.clone());
        }
    }
    println!("fixture full F32: worst gradient {:.1e} (tol 1e-3, {})", worst.0, worst.1);
    assert!(worst.0 < 1e-3, "full: gradient of {} off by {}", worst.1, worst.0);

    for case in ["lora_qv", "lora_all_rslora", "dora"] {
        check_lora_case(&dev, DType::F32, case, &F32_TOL);
    }
}

#[test]
fn cuda_fixture_bf16_base() {
    let dev = cuda();
    let inp = inputs();
    let model = load_on(&dev, DType::BF16);
    let exp = expected("base");
    let logits = logits_with(&model, None);
    let dl = masked_rel(&logits, &exp["logits"]);
    let l = scalar(&loss::causal_lm_loss(&logits, &inp.labels).unwrap());
    let e = scalar(&exp["loss"]);
    println!(
        "fixture base BF16: logits {dl:.1e} (tol {:.0e}), loss {:.1e} (tol {:.0e})",
        BF16_TOL.logits,
        (l - e).abs() / e,
        BF16_TOL.loss
    );
    assert!(dl < BF16_TOL.logits, "bf16 base logits off by {dl}");
    assert!((l - e).abs() < BF16_TOL.loss * e.abs().max(1.0));
    drop(model);
    for case in ["lora_qv", "lora_all_rslora", "dora"] {
        check_lora_case(&dev, DType::BF16, case, &BF16_TOL);
    }
}

// ---- benchmark -----------------------------------------------------------------------------

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// (free, total) device memory in bytes.
fn mem_info(dev: &Device) -> (usize, usize) {
    dev.as_cuda_device().unwrap().cuda_stream().context().mem_get_info().unwrap()
}

/// LoRA training steps on a TinyLlama-1.1B-shaped model (22 layers, hidden 2048, MLP 5632,
/// 32 heads / 4 KV heads, vocab 32000) with random bf16 weights: r=16, alpha 32, every
/// linear but lm_head ("all-linear"), no dropout, AdamW. Prints one `BENCH` line;
/// scripts/gpu_bench_torch.py does the same in PyTorch + PEFT. Env: PEFT_BENCH_BATCH (8),
/// PEFT_BENCH_SEQ (512), PEFT_BENCH_STEPS (10), PEFT_BENCH_WARMUP (2), PEFT_BENCH_LAYERS (22).
#[test]
#[ignore = "benchmark: run by scripts/gpu-check.sh"]
fn bench_lora_tinyllama() {
    use peft_core::config::ModelConfig;
    use peft_core::io::safetensors::WeightMap;
    use peft_core::model::{Batch, Ctx};
    use peft_core::optim::{adamw_step, zeros_state, AdamWHyper};
    use std::collections::HashMap;
    use std::time::Instant;

    let dev = cuda();
    let (b, t) = (env_usize("PEFT_BENCH_BATCH", 8), env_usize("PEFT_BENCH_SEQ", 512));
    let (steps, warmup) = (env_usize("PEFT_BENCH_STEPS", 10), env_usize("PEFT_BENCH_WARMUP", 2));
    let layers = env_usize("PEFT_BENCH_LAYERS", 22);
    let (free0, total) = mem_info(&dev);

    let mut config = ModelConfig::llama(32000, 2048, 5632, layers, 32, 4);
    config.rms_norm_eps = 1e-5;
    config.max_position_embeddings = 2048;
    config.bos_token_id = Some(1);
    config.eos_token_ids = vec![2];
    config.torch_dtype = Some("bfloat16".into());
    let c = &config;
    let (h, kv) = (c.hidden_size, c.num_key_value_heads * c.head_dim);
    let mut w = WeightMap::default();
    let mut add = |name: String, dims: &[usize]| {
        let t = if dims.len() == 1 {
            Tensor::ones(dims, DType::BF16, &dev).unwrap()
        } else {
            Tensor::randn(0f32, 0.02, dims, &dev).unwrap().to_dtype(DType::BF16).unwrap()
        };
        w.tensors.insert(name, t);
    };
    add("model.embed_tokens.weight".into(), &[c.vocab_size, h]);
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        add(format!("{p}.input_layernorm.weight"), &[h]);
        add(format!("{p}.post_attention_layernorm.weight"), &[h]);
        add(format!("{p}.self_attn.q_proj.weight"), &[h, h]);
        add(format!("{p}.self_attn.k_proj.weight"), &[kv, h]);
        add(format!("{p}.self_attn.v_proj.weight"), &[kv, h]);
        add(format!("{p}.self_attn.o_proj.weight"), &[h, h]);
        add(format!("{p}.mlp.gate_proj.weight"), &[c.intermediate_size, h]);
        add(format!("{p}.mlp.up_proj.weight"), &[c.intermediate_size, h]);
        add(format!("{p}.mlp.down_proj.weight"), &[h, c.intermediate_size]);
    }
    add("model.norm.weight".into(), &[h]);
    add("lm_head.weight".into(), &[c.vocab_size, h]);
    let opts = LoadOptions { dtype: DType::BF16, device: dev.clone() };
    let mut model = CausalLm::from_weights(config.clone(), w, std::path::Path::new("random TinyLlama-1.1B"), &opts).unwrap();
    let mut tuners = Tuners::new();
    let cfg = lora(serde_json::json!({ "r": 16, "lora_alpha": 32, "target_modules": "all-linear", "lora_dropout": 0.0 }));
    tuners.inject(&mut model, "default", cfg, 0).unwrap();
    let trainable: usize = model.store.iter().filter(|(_, p)| p.requires_grad).map(|(_, p)| p.value().elem_count()).sum();

    let mut rng = Rng(0xbe9c);
    let ids: Vec<Vec<u32>> = (0..b).map(|_| (0..t).map(|_| (rng.next_u64() % c.vocab_size as u64) as u32).collect()).collect();
    let labels: Vec<Vec<i64>> = ids.iter().map(|r| r.iter().map(|&x| x as i64).collect()).collect();
    let batch = Batch { ids, attention_mask: None, position_ids: None, segment_ids: None };
    let hyper = AdamWHyper { lr: 1e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut state: HashMap<String, (Tensor, Tensor)> = HashMap::new();
    dev.synchronize().unwrap();

    let (mut fwd_bwd, mut opt, mut min_free) = (0f64, 0f64, usize::MAX);
    let mut last_loss = 0f32;
    let mut total_time = 0f64;
    for step in 0..warmup + steps {
        let t0 = Instant::now();
        let grads = {
            let ctx = Ctx::new(&model.store, false).with_tuners(&tuners).training(step as u64);
            let logits = model.forward(&batch, &ctx, None, false).unwrap();
            let l = loss::causal_lm_loss(&logits, &labels).unwrap();
            let grads = l.backward().unwrap();
            dev.synchronize().unwrap();
            // Activations and gradients are all alive here: the step's high-water mark.
            min_free = min_free.min(mem_info(&dev).0);
            last_loss = scalar(&l);
            grads
        };
        model.store.accumulate_grads(&grads).unwrap();
        drop(grads);
        let t1 = Instant::now();
        for (_, p) in model.store.iter().filter(|(_, p)| p.requires_grad) {
            let (m, v) = state.entry(p.name.clone()).or_insert_with(|| (zeros_state(p).unwrap(), zeros_state(p).unwrap()));
            adamw_step(p, m, v, step as u64 + 1, &hyper).unwrap();
        }
        model.store.zero_grad();
        dev.synchronize().unwrap();
        let t2 = Instant::now();
        if step >= warmup {
            fwd_bwd += (t1 - t0).as_secs_f64();
            opt += (t2 - t1).as_secs_f64();
            total_time += (t2 - t0).as_secs_f64();
        }
        println!("bench step {step}: loss {last_loss:.4}, {:.0} ms", (t2 - t0).as_secs_f64() * 1e3);
    }
    let tokens = (b * t * steps) as f64;
    let gib = |x: usize| x as f64 / (1u64 << 30) as f64;
    println!(
        "BENCH impl=peft-node layers={layers} batch={b} seq={t} steps={steps} trainable_params={trainable} tokens_per_s={:.1} step_ms={:.1} fwd_bwd_ms={:.1} optim_ms={:.1} peak_used_gib={:.2} total_gib={:.1} loss={last_loss:.4}",
        tokens / total_time,
        total_time / steps as f64 * 1e3,
        fwd_bwd / steps as f64 * 1e3,
        opt / steps as f64 * 1e3,
        gib(free0.saturating_sub(min_free)),
        gib(total),
    );
    assert!(last_loss.is_finite());
}
