//! The fuzz targets: every parser that reads a user's file, reached through the entry point a
//! user calls (a checkpoint folder, a GGUF file, an adapter folder, a tokenizer and its chat
//! template). Seeds are the shared tiny fixtures, files our writers make from them, and the
//! committed `corpus/` (configs of every method, real chat templates).
use super::harness::Target;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use peft_core::io::adapter::{load_adapter, save_adapter};
use peft_core::io::gguf::write_llama_gguf;
use peft_core::io::safetensors::load_checkpoint_dir;
use peft_core::model::{Batch, CausalLm, Ctx, LoadOptions};
use peft_core::tokenizer::{GgufTokenizerSpec, Tokenizer};
use peft_core::tuners::WithTuners;
use peft_core::tuners::{parse_config, Tuners};
use peft_core::ModelConfig;
use serde_json::json;
use std::path::{Path, PathBuf};

pub fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}
fn model_dir() -> PathBuf {
    fixture().join("hf-peft-tiny-llama/model")
}
fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus")
}

/// A scratch folder of this target's own, reused by every input.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peft-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Errors must name the file they are about: a user has to know which one to fix.
fn named(e: peft_core::Error, file: &Path) -> Result<(), String> {
    let message = e.to_string();
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    let dir = file.parent().unwrap().display().to_string();
    if message.contains(&name) || message.contains(&dir) {
        Err(message)
    } else {
        panic!("the error does not name {}: {message}", file.display())
    }
}

/// The end of a safetensors header (8-byte length + JSON), or of a GGUF's tensor table.
pub fn safetensors_header(b: &[u8]) -> usize {
    b.get(..8).map(|n| 8 + u64::from_le_bytes(n.try_into().unwrap()).min(1 << 20) as usize).unwrap_or(b.len())
}
pub fn gguf_header(b: &[u8]) -> usize {
    let needle = b"output.weight";
    b.windows(needle.len()).rposition(|w| w == needle).map(|p| p + 64).unwrap_or(b.len())
}
pub fn whole(b: &[u8]) -> usize {
    b.len()
}

const JSON_DICT: &[&[u8]] = &[
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\"\"",
    b"-1",
    b"1e308",
    b"4294967296",
    b"NaN",
    b"\"r\": 1e9,",
    b"\"num_virtual_tokens\": 1e9,",
    b"[[[[[[[[",
    b"\\u0000",
    b"\"target_modules\": \".*\",",
];
const TEMPLATE_DICT: &[&[u8]] = &[
    b"{% for i in range(100000) %}",
    b"{% endfor %}",
    b"{{ messages * 100000000 }}",
    b"{{ 'x' * 1000000000 }}",
    b"{% set x = x ~ x %}",
    b"{{ raise_exception('no') }}",
    b"{% if %}",
    b"{{ messages[0]['content'] }}",
    b"{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    b"{{ bos_token }}",
    b"{% generation %}",
    b"{% endgeneration %}",
    b"{{ strftime_now('%Y') }}",
    b"{{ tools | tojson }}",
];

/// A checkpoint folder: config.json and model.safetensors, one of them mutated.
pub fn checkpoint(run: &(dyn Fn(&[u8]) -> Result<(), String> + Sync)) -> Target<'_> {
    let config = std::fs::read(model_dir().join("config.json")).unwrap();
    let weights = std::fs::read(model_dir().join("model.safetensors")).unwrap();
    // One input = a tag byte choosing the file, then its bytes.
    let seeds = vec![[&[0u8][..], &config].concat(), [&[1u8][..], &weights].concat()];
    Target { name: "checkpoint", seeds, dict: JSON_DICT, focus: |b| 1 + safetensors_header(&b[1.min(b.len())..]).min(b.len()), run }
}

pub fn run_checkpoint(input: &[u8]) -> Result<(), String> {
    let dir = scratch("checkpoint");
    let (tag, body) = input.split_first().ok_or("empty")?;
    let (config, weights) = (dir.join("config.json"), dir.join("model.safetensors"));
    let fixture = model_dir();
    let (c, w) = if tag % 2 == 0 {
        (body.to_vec(), std::fs::read(fixture.join("model.safetensors")).unwrap())
    } else {
        (std::fs::read(fixture.join("config.json")).unwrap(), body.to_vec())
    };
    std::fs::write(&config, c).unwrap();
    std::fs::write(&weights, w).unwrap();
    let opts = LoadOptions { quantized: tag & 2 != 0, ..Default::default() };
    match CausalLm::from_pretrained(&dir, &opts) {
        Ok(model) => smoke(&model),
        Err(e) => named(e, if tag % 2 == 0 { &config } else { &weights }),
    }
}

/// A model that loads must also run: a forward over a few tokens.
fn smoke(model: &CausalLm) -> Result<(), String> {
    forward(model, None)
}

fn forward(model: &CausalLm, tuners: Option<&Tuners>) -> Result<(), String> {
    let mut ctx = Ctx::inference(&model.store);
    if let Some(t) = tuners {
        ctx = ctx.with_tuners(t);
    }
    model.forward(&Batch::new(vec![vec![1, 2, 3]]), &ctx, None, false).map(|_| ()).map_err(|e| e.to_string())
}

/// config.json alone, over every architecture's tiny config.
pub fn config_seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![std::fs::read(model_dir().join("config.json")).unwrap()];
    for arch in ["gemma3", "mistral", "phi3", "qwen2", "qwen3"] {
        seeds.push(std::fs::read(fixture().join(format!("hf-peft-tiny-arch/{arch}/model/config.json"))).unwrap());
    }
    seeds
}

pub fn run_config(input: &[u8]) -> Result<(), String> {
    let path = scratch("config").join("config.json");
    std::fs::write(&path, input).unwrap();
    match ModelConfig::from_file(&path) {
        Ok(_) => Ok(()),
        Err(e) => named(e, &path),
    }
}

/// The tiny LLaMA written as GGUF by our writer (Q8_0 and Q4_K blocks), with a tokenizer.
pub fn gguf_seeds() -> Vec<Vec<u8>> {
    let cfg = ModelConfig::from_file(&model_dir().join("config.json")).unwrap();
    let w = load_checkpoint_dir(&model_dir(), Some(DType::F32), &Device::Cpu).unwrap().tensors;
    let spec = GgufTokenizerSpec {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens: (0..cfg.vocab_size).map(|i| format!("tok{i}")).collect(),
        token_types: (0..cfg.vocab_size).map(|i| if i < 3 { 3 } else { 1 }).collect(),
        scores: vec![],
        merges: vec![],
        bos_token_id: Some(0),
        eos_token_id: Some(1),
        pad_token_id: Some(2),
        unknown_token_id: None,
        add_bos_token: Some(false),
        add_eos_token: None,
        add_space_prefix: None,
        chat_template: Some(std::fs::read_to_string(corpus().join("chatml.jinja")).unwrap()),
    };
    [GgmlDType::Q8_0, GgmlDType::Q4_0]
        .into_iter()
        .map(|q| {
            let path = scratch("gguf-seed").join("seed.gguf");
            write_llama_gguf(&path, &cfg, &w, Some(&spec), q).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect()
}

pub fn run_gguf(input: &[u8]) -> Result<(), String> {
    let path = scratch("gguf").join("model.gguf");
    std::fs::write(&path, input).unwrap();
    let quantized = input.len().is_multiple_of(2);
    match CausalLm::from_pretrained_with_tokenizer(&path, &LoadOptions { quantized, ..Default::default() }) {
        Ok((model, tok)) => {
            smoke(&model)?;
            if let Some(t) = tok {
                let ids = t.encode("tok5 to tok", true).map_err(|e| e.to_string())?;
                t.decode(&ids, false).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Err(e) => named(e, &path),
    }
}

/// Adapter folders of several methods, saved from the tiny model; an input is a tag byte
/// (which file) and the file's bytes, the other file coming from the seed it was made from.
pub fn adapter_seeds() -> Vec<Vec<u8>> {
    let configs = [
        json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_dora": false}),
        json!({"peft_type": "LORA", "r": 2, "target_modules": "all-linear", "use_rslora": true, "rank_pattern": {"q_proj": 3}}),
        json!({"peft_type": "IA3", "target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]}),
        json!({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4, "task_type": "CAUSAL_LM"}),
        json!({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 3, "task_type": "CAUSAL_LM"}),
        json!({"peft_type": "VERA", "r": 8, "target_modules": ["q_proj", "v_proj"]}),
        json!({"peft_type": "LOHA", "r": 2, "target_modules": ["q_proj"]}),
        json!({"peft_type": "ADALORA", "init_r": 4, "target_r": 2, "total_step": 10, "target_modules": ["q_proj"]}),
    ];
    let mut seeds = vec![];
    for (i, cfg) in configs.into_iter().enumerate() {
        let mut model = CausalLm::from_pretrained(&model_dir(), &LoadOptions::default()).unwrap();
        let mut tuners = Tuners::new();
        let (c, _) = parse_config(&cfg, None, Path::new("seed")).unwrap();
        tuners.inject(&mut model, "default", c, 7).unwrap();
        let dir = scratch("adapter-seed").join(format!("{i}"));
        save_adapter(&tuners, &model, "default", &dir).unwrap();
        let config = std::fs::read(dir.join("adapter_config.json")).unwrap();
        let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        // tag: low bit = which file is mutated; the rest = which seed gives the other file.
        seeds.push([&[(i as u8) << 1][..], &config].concat());
        seeds.push([&[(i as u8) << 1 | 1][..], &weights].concat());
    }
    seeds
}

pub fn run_adapter(seeds: &[Vec<u8>], input: &[u8]) -> Result<(), String> {
    let (tag, body) = input.split_first().ok_or("empty")?;
    let pair = ((tag >> 1) as usize % (seeds.len() / 2)) * 2;
    let dir = scratch("adapter").join("a");
    std::fs::create_dir_all(&dir).unwrap();
    let (config, weights) = if tag & 1 == 0 { (body, &seeds[pair + 1][1..]) } else { (&seeds[pair][1..], body) };
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    std::fs::write(dir.join("adapter_model.safetensors"), weights).unwrap();
    let mut model = CausalLm::from_pretrained(&model_dir(), &LoadOptions::default()).unwrap();
    let mut tuners = Tuners::new();
    match load_adapter(&mut tuners, &mut model, &dir, "default", false) {
        Ok(_) => forward(&model, Some(&tuners)),
        Err(e) => named(e, &dir),
    }
}

pub fn run_tokenizer(input: &[u8]) -> Result<(), String> {
    let path = scratch("tokenizer").join("tokenizer.json");
    std::fs::write(&path, input).unwrap();
    match Tokenizer::from_file(&path) {
        Ok(t) => {
            let ids = t.encode("Hello, world! 123", true).map_err(|e| e.to_string())?;
            t.decode(&ids, true).map(|_| ()).map_err(|e| e.to_string())
        }
        Err(e) => named(e, &path),
    }
}

/// tokenizer_config.json seeds: the fixture's, plus one per committed chat template.
pub fn template_seeds() -> Vec<Vec<u8>> {
    let base: serde_json::Value = serde_json::from_slice(&std::fs::read(model_dir().join("tokenizer_config.json")).unwrap()).unwrap();
    let mut seeds = vec![];
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jinja") {
            let mut cfg = base.clone();
            cfg["chat_template"] = std::fs::read_to_string(&path).unwrap().into();
            seeds.push(serde_json::to_vec_pretty(&cfg).unwrap());
        }
    }
    seeds.sort();
    seeds
}

pub fn run_template(input: &[u8]) -> Result<(), String> {
    let dir = scratch("template");
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.exists() {
        std::fs::copy(model_dir().join("tokenizer.json"), &tokenizer).unwrap();
    }
    let path = dir.join("tokenizer_config.json");
    std::fs::write(&path, input).unwrap();
    let t = Tokenizer::from_file(&tokenizer).map_err(|e| e.to_string())?;
    let messages = [
        json!({"role": "system", "content": "Be brief."}),
        json!({"role": "user", "content": "Hi"}),
        json!({"role": "assistant", "content": "Hello"}),
        json!({"role": "user", "content": "Capital of France?"}),
    ];
    t.apply_chat_template(&messages, true).map(|_| ()).map_err(|e| e.to_string())
}

pub const DICTS: (&[&[u8]], &[&[u8]]) = (JSON_DICT, TEMPLATE_DICT);
