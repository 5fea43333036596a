//! The real SmolLM2-135M-Instruct (Q4_1) from `node scripts/fetch-smollm2.mjs`, when present.
use candle_core::{DType, Device, Tensor};
use peft_core::io::gguf::{load_gguf, GgufFile};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Row norms of a Q or K projection averaged over heads and layers: one value per row of a
/// head. A trained model's norms grow with the RoPE wavelength, and in HF's rotate-half layout
/// rows j and j + hd/2 share frequency j, so the profile rises over each half and repeats. In
/// llama.cpp's interleaved order (a missed or wrong un-permutation) it would rise across the
/// whole head instead, so `[hd/2..hd/2+8]` would sit far above `[0..8]`.
fn norm_profile(ws: &[&Tensor], head_dim: usize) -> Vec<f32> {
    let mut profile = vec![0f32; head_dim];
    for w in ws {
        let norms: Vec<f32> = w.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1().unwrap();
        norms.iter().enumerate().for_each(|(i, n)| profile[i % head_dim] += n);
    }
    profile
}

#[test]
fn smollm2_135m_instruct_q4_1() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        println!("SKIPPED: {} is absent; run `node scripts/fetch-smollm2.mjs`", path.display());
        return;
    }
    let start = Instant::now();
    let ck = load_gguf(&path, DType::F32, &Device::Cpu, false).unwrap();
    let load_time = start.elapsed();
    let c = &ck.config;
    assert_eq!((c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads), (30, 576, 9, 3));
    assert_eq!((c.vocab_size, c.tie_word_embeddings, c.head_dim), (49152, true, 64));
    let t = &ck.tokenizer;
    assert_eq!((t.model.as_str(), t.tokens.len()), ("gpt2", 49152));
    assert!(!t.merges.is_empty());
    let template = t.chat_template.as_deref().expect("a chat template");
    assert!(template.contains("<|im_start|>"), "{template}");
    assert_eq!(ck.weights.tensors.len(), 2 + 30 * 9);

    let file = GgufFile::open(&path).unwrap();
    let mut types = BTreeMap::new();
    for info in &file.tensors {
        *types.entry(format!("{:?}", info.dtype)).or_insert(0) += 1;
    }
    let mean = |p: &[f32], r: std::ops::Range<usize>| p[r.clone()].iter().sum::<f32>() / r.len() as f32;
    let half = c.head_dim / 2;
    let mut rope_ratios = vec![];
    for proj in ["q_proj", "k_proj"] {
        let ws: Vec<&Tensor> =
            (0..c.num_hidden_layers).map(|l| &ck.weights.tensors[&format!("model.layers.{l}.self_attn.{proj}.weight")]).collect();
        let p = norm_profile(&ws, c.head_dim);
        let (repeat, sawtooth) = (mean(&p, half..half + 8) / mean(&p, 0..8), mean(&p, half - 8..half) / mean(&p, half..half + 8));
        rope_ratios.push(format!("{proj}: second/first half start {repeat:.3}, first half end/second half start {sawtooth:.3}"));
        assert!((0.9..1.1).contains(&repeat) && sawtooth > 1.2, "{proj} rows are not in HF's rotate-half layout: {p:?}");
    }
    let ids = |id: Option<u32>| id.map(|i| format!("{i} {:?}", t.tokens[i as usize])).unwrap_or("none".into());
    println!("SmolLM2 load (F32, dequantized): {load_time:?}; GGUF v{}, tensor types {types:?}", file.version);
    println!("config: {c:?}");
    println!(
        "tokenizer.ggml.pre = {:?}; {} merges; bos {}; eos {}; pad {}; unk {}; add_bos {:?}",
        t.pre,
        t.merges.len(),
        ids(t.bos_token_id),
        ids(t.eos_token_id),
        ids(t.pad_token_id),
        ids(t.unknown_token_id),
        t.add_bos_token
    );
    println!("chat template:\n{template}");
    println!("RoPE layout check (row-norm profile): {rope_ratios:?}");
}
