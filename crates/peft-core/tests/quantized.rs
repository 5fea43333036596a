//! Quantized frozen bases: through a quantized linear, outputs and input gradients equal the
//! dequantize-to-f32 path (1e-5 relative) for every storage type kept; a GGUF model loaded
//! quantized gives the logits, loss and adapter gradients of the same file dequantized; a
//! quantized base weight refuses to train, and merging turns it dense.
use crate::common;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor, Var};
use common::{inputs, lora, rel_err, QUANT_TYPES};
use peft_core::io::gguf::write_llama_gguf;
use peft_core::model::{CausalLm, Ctx, LoadOptions, QWeight};
use peft_core::tuners::{Tuners, WithTuners};
use peft_core::{ops, ModelConfig};
use std::path::PathBuf;
use std::sync::Arc;

fn randn(dims: &[usize], seed: u64) -> Tensor {
    // A deterministic pseudo-random fill (sin of a scrambled index), no rand dependency.
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i as f64 * 12.9898 + seed as f64 * 78.233).sin() * 43758.5453).fract() as f32 - 0.5).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

/// A weight in `ty` and the same weight dequantized (what the f32 path multiplies by).
fn weight(ty: GgmlDType, rows: usize, cols: usize) -> (Arc<QWeight>, Tensor) {
    let w = randn(&[rows, cols], 7);
    let q = QTensor::quantize(&w, ty).unwrap();
    let dense = q.dequantize(&Device::Cpu).unwrap();
    let bytes = q.data().unwrap();
    (Arc::new(QWeight::from_bytes("w", ty, rows, cols, &bytes).unwrap()), dense)
}

#[test]
fn qlinear_equals_the_dequantized_linear_for_every_storage_type() {
    // 4100 rows of 256: the input gradient sums over two tiles of rows (4096 + 4). 100 rows of
    // 2304: forward tiles of 48 rows and a short last one, the input gradient over blocks of
    // at most 256 columns. An odd number of input rows throughout.
    for ((rows, cols), ty) in [(4100, 256), (100, 2304)].into_iter().flat_map(|s| QUANT_TYPES.map(|t| (s, t))) {
        let (q, dense) = weight(ty, rows, cols);
        assert_eq!(q.dims(), (rows, cols));
        let x = Var::from_tensor(&randn(&[3, 7, cols], 1)).unwrap();
        let r = randn(&[3, 7, rows], 2);
        let y_q = ops::qlinear(x.as_tensor(), &q, None).unwrap();
        let y_d = x.as_tensor().broadcast_matmul(&dense.t().unwrap()).unwrap();
        assert!(rel_err(&y_q, &y_d) < 1e-5, "{ty:?} {rows}×{cols} forward: {}", rel_err(&y_q, &y_d));
        let g_q = (y_q * &r).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().clone();
        let g_d = (y_d * &r).unwrap().sum_all().unwrap().backward().unwrap().get(x.as_tensor()).unwrap().clone();
        assert!(rel_err(&g_q, &g_d) < 1e-5, "{ty:?} {rows}×{cols} input gradient: {}", rel_err(&g_q, &g_d));
        // The embedding lookup dequantizes just the rows asked for.
        let mut rows_out = vec![0f32; 2 * cols];
        q.gather_rows(&[rows as u32 - 1, 5], &mut rows_out);
        let want = Tensor::cat(&[dense.get(rows - 1).unwrap(), dense.get(5).unwrap()], 0).unwrap();
        assert_eq!(rows_out, want.to_vec1::<f32>().unwrap(), "{ty:?} rows");
        assert!(q.storage_bytes() < rows * cols * 4, "{ty:?} is smaller than f32");
    }
}

#[test]
fn decode_rows_multiply_through_the_storage_type() {
    // f32 activations against each weight row decoded in registers (ops::qdot): the
    // dequantized product up to the order of the sums (tests/qdot.rs checks each kernel).
    // Q4_0, Q5_0 and Q8_0 dot in integers with activations rounded to 16 bits per block
    // (tests/qdot_int16.rs bounds it): about 2⁻¹⁶ of the largest activation, 1e-4 here.
    let (rows, cols) = (300, 512);
    let x = randn(&[3, cols], 4);
    for ty in QUANT_TYPES {
        let (q, dense) = weight(ty, rows, cols);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = Tensor::from_vec(q.matmul_rows(&xs, 3), (3, rows), &Device::Cpu).unwrap();
        let want = x.matmul(&dense.t().unwrap()).unwrap();
        let tol = if q.matmul_rows_int(peft_core::ops::qdot::Kernel::detect(), &xs, 3).is_some() { 1e-4 } else { 1e-5 };
        assert!(rel_err(&got, &want) < tol, "{ty:?}: {}", rel_err(&got, &want));
        // Inference through qlinear with a few rows takes this path.
        let via_op = ops::qlinear(&x, &q, None).unwrap();
        assert_eq!(common::max_abs_diff(&via_op, &got), 0.0, "{ty:?}");
    }
}

#[test]
fn row_permutation_moves_whole_quantized_rows() {
    let (q, dense) = weight(GgmlDType::Q4_0, 8, 64);
    let order = [3, 1, 7, 0, 2, 6, 5, 4];
    let p = q.permute_rows(&order).to_tensor(DType::F32, &Device::Cpu).unwrap();
    for (i, &r) in order.iter().enumerate() {
        assert_eq!(p.get(i).unwrap().to_vec1::<f32>().unwrap(), dense.get(r).unwrap().to_vec1::<f32>().unwrap());
    }
}

fn tmp(name: &str) -> PathBuf {
    // Tests run in parallel: every call gets its own number.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("peft-quantized-{}-{n}-{name}", std::process::id()))
}

/// The tiny fixture model written as a GGUF in `ty` (rows of 64 and 160: Q4_0/Q8_0 blocks fit).
fn fixture_gguf(ty: GgmlDType) -> PathBuf {
    let dir = common::model_dir();
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let w = peft_core::io::safetensors::load_checkpoint_dir(&dir, Some(DType::F32), &Device::Cpu).unwrap();
    let path = tmp(&format!("{ty:?}.gguf"));
    write_llama_gguf(&path, &cfg, &w.tensors, None, ty).unwrap();
    path
}

fn load(path: &std::path::Path, quantized: bool) -> CausalLm {
    CausalLm::from_pretrained(path, &LoadOptions { quantized, ..Default::default() }).unwrap()
}

fn with_lora(model: &mut CausalLm) -> Tuners {
    let mut tuners = Tuners::new();
    let cfg = lora(serde_json::json!({"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "init_lora_weights": false}));
    tuners.inject(model, "default", cfg, 3).unwrap();
    tuners
}

/// Loss (chunked LM head, as training runs) and the adapter gradients by name.
fn loss_and_grads(model: &mut CausalLm, tuners: &Tuners) -> (f32, Vec<(String, Tensor)>) {
    let inp = inputs();
    let ctx = Ctx::new(&model.store, false).with_tuners(tuners);
    let (sum, count) = model.loss_sum_chunked(&inp.batch(), &ctx, &inp.labels, 5).unwrap();
    let loss = (sum / count as f64).unwrap();
    drop(ctx);
    let grads = loss.backward().unwrap();
    model.store.accumulate_grads(&grads).unwrap();
    let mut g: Vec<(String, Tensor)> = model.store.iter().filter_map(|(_, p)| p.grad.clone().map(|g| (p.name.clone(), g))).collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    (common::scalar(&loss), g)
}

#[test]
fn a_quantized_gguf_model_computes_what_its_dequantized_copy_computes() {
    for ty in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
        let path = fixture_gguf(ty);
        let (mut q, mut d) = (load(&path, true), load(&path, false));
        let (bytes, n) = q.store.quantized_bytes();
        // Every linear (14) plus the embedding and the head.
        assert_eq!(n, 16, "{ty:?}: weights kept quantized");
        assert!(bytes > 0 && d.store.quantized_bytes().1 == 0);
        let (tq, td) = (with_lora(&mut q), with_lora(&mut d));
        let (lq, ld) = (common::logits_with(&q, Some(&tq)), common::logits_with(&d, Some(&td)));
        assert!(rel_err(&lq, &ld) < 1e-5, "{ty:?} logits {}", rel_err(&lq, &ld));
        let ((loss_q, gq), (loss_d, gd)) = (loss_and_grads(&mut q, &tq), loss_and_grads(&mut d, &td));
        assert!((loss_q - loss_d).abs() / loss_d.abs() < 1e-5, "{ty:?} loss {loss_q} vs {loss_d}");
        assert_eq!(gq.len(), 28, "{ty:?}: A and B of 14 linears");
        assert_eq!(gq.iter().map(|g| &g.0).collect::<Vec<_>>(), gd.iter().map(|g| &g.0).collect::<Vec<_>>());
        for ((name, a), (_, b)) in gq.iter().zip(&gd) {
            assert!(rel_err(a, b) < 1e-5, "{ty:?} {name}: {}", rel_err(a, b));
        }
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn greedy_decoding_over_a_quantized_base_follows_its_dequantized_copy() {
    // Decode steps go through the storage type's dot kernels, the prompt through the tiled
    // gemm; the first 32 greedy tokens equal those of the same file loaded as f32.
    let path = fixture_gguf(GgmlDType::Q4_0);
    let (q, d) = (load(&path, true), load(&path, false));
    let prompt = [1u32, 5, 9, 2, 7, 3];
    let (tq, td) = (common::greedy(&q, &prompt, 32), common::greedy(&d, &prompt, 32));
    assert_eq!(tq.len(), prompt.len() + 32);
    assert_eq!(tq, td);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_quantized_base_weight_is_frozen_and_merging_makes_it_dense() {
    let path = fixture_gguf(GgmlDType::Q8_0);
    let mut model = load(&path, true);
    let name = "model.layers.0.self_attn.q_proj.weight";
    let err = model.store.by_name_mut(name).unwrap().set_requires_grad(true).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains("float32"), "{err}");
    let before = model.store.by_name(name).unwrap().value();
    let mut tuners = with_lora(&mut model);
    let logits = common::logits_with(&model, Some(&tuners));
    tuners.merge_and_unload(&mut model, None).unwrap();
    let p = model.store.by_name(name).unwrap();
    assert!(p.quantized().is_none(), "merged weights are dense");
    assert!(common::max_abs_diff(&p.value(), &before) > 0.0);
    let merged = common::logits_with(&model, None);
    assert!(rel_err(&merged, &logits) < 1e-5, "merged logits {}", rel_err(&merged, &logits));
    std::fs::remove_file(path).unwrap();
}
