//! Configs that contradict their weights are refused naming the key and both values; unknown
//! architectures are refused listing the supported ones.
use peft_core::model::{CausalLm, LoadOptions};
use std::path::PathBuf;

fn arch_dir(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/hf-peft-tiny-arch").join(arch).join("model")
}

/// Loads the fixture `arch` with its config.json edited by `edit`; returns the error text.
fn load_edited(arch: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let src = arch_dir(arch);
    let dir = std::env::temp_dir().join(format!("peft-core-arch-{arch}-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let _guard = Cleanup(dir.clone());
    std::os::unix::fs::symlink(src.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    match CausalLm::from_pretrained(&dir, &LoadOptions::default()) {
        Ok(_) => panic!("{arch}: the edited config loaded"),
        Err(e) => e.to_string(),
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Removes a scratch folder also when the test fails.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn assert_names(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "`{p}` missing from: {err}");
    }
}

#[test]
fn a_wrong_head_dim_names_the_key_and_both_shapes() {
    let err = load_edited("qwen3", |c| c["head_dim"] = 12.into());
    assert_names(&err, &["q_proj.weight", "[64, 48]", "[48, 48]", "head_dim 12", "num_attention_heads 4", "contradicts"]);
}

#[test]
fn a_fused_weight_of_the_wrong_size_names_the_key() {
    let err = load_edited("phi3", |c| c["intermediate_size"] = 100.into());
    assert_names(&err, &["gate_up_proj.weight", "[224, 48]", "[200, 48]", "2 × intermediate_size 100"]);
}

#[test]
fn missing_biases_name_the_key_that_implies_them() {
    // Mistral's weights have no q/k/v biases; a Qwen2 config says there are.
    let err = load_edited("mistral", |c| c["model_type"] = "qwen2".into());
    assert_names(&err, &["model_type", "qwen2", "q_proj.bias"]);
    let err = load_edited("mistral", |c| c["attention_bias"] = true.into());
    assert_names(&err, &["attention_bias", "q_proj.bias"]);
}

#[test]
fn biases_the_config_does_not_use_are_refused() {
    // Qwen2's weights have q/k/v biases; read as LLaMA without attention_bias they would be dropped.
    let err = load_edited("qwen2", |c| c["model_type"] = "llama".into());
    assert_names(&err, &["attention_bias", "_proj.bias", "does not use"]);
}

#[test]
fn unknown_architectures_list_the_supported_ones() {
    let err = load_edited("qwen2", |c| c["model_type"] = "gpt2".into());
    assert_names(&err, &["gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3_text"]);
}

#[test]
fn heads_that_do_not_divide_the_hidden_size_need_a_head_dim() {
    let err = load_edited("qwen2", |c| {
        c["num_attention_heads"] = 5.into();
        c["num_key_value_heads"] = 5.into();
    });
    assert_names(&err, &["num_attention_heads", "hidden_size (48)", "head_dim"]);
}

#[test]
fn gemma_layer_types_must_match_the_layer_count() {
    let err = load_edited("gemma3", |c| c["layer_types"] = serde_json::json!(["full_attention"]));
    assert_names(&err, &["layer_types", "3"]);
    let err = load_edited("gemma3", |c| c["sliding_window"] = serde_json::Value::Null);
    assert_names(&err, &["sliding_window"]);
}
