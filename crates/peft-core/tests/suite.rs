//! Every Rust integration test in one binary: one link instead of one per file (issue 15,
//! build time). Each `tests/<name>.rs` is a module here; `cargo test -p peft-core --test suite
//! <name>::` runs one file. `fuzz` (a bounded global allocator) and `gpu_check` (feature
//! `cuda`) stay binaries of their own. A file not listed here fails `suite_lists_every_test_file`.
//!
//! The shared helpers (`common/`, `contract/`, ...) are modules of this crate root, compiled
//! once; a test file takes them with `use crate::common;`.

// The shared helpers, compiled once for every file (each file `use crate::common;`).
mod arch_fixture;
mod common;
mod contract;

#[path = "adalora.rs"]
mod adalora;
#[path = "adalora_allocator.rs"]
mod adalora_allocator;
#[path = "adalora_training.rs"]
mod adalora_training;
#[path = "adamix_consistency.rs"]
mod adamix_consistency;
#[path = "architectures.rs"]
mod architectures;
#[path = "bottleneck.rs"]
mod bottleneck;
#[path = "checkpointing.rs"]
mod checkpointing;
#[path = "checkpoints.rs"]
mod checkpoints;
#[path = "chunked_loss.rs"]
mod chunked_loss;
#[path = "decode_kernels.rs"]
mod decode_kernels;
#[path = "dylora.rs"]
mod dylora;
#[path = "fixture_base.rs"]
mod fixture_base;
#[path = "gelu_mul.rs"]
mod gelu_mul;
#[path = "gguf.rs"]
mod gguf;
#[path = "gguf_export.rs"]
mod gguf_export;
#[path = "hybrid.rs"]
mod hybrid;
#[path = "ia3.rs"]
mod ia3;
#[path = "laplace.rs"]
mod laplace;
#[path = "loha.rs"]
mod loha;
#[path = "lokr.rs"]
mod lokr;
#[path = "lora_files.rs"]
mod lora_files;
#[path = "lora_grad.rs"]
mod lora_grad;
#[path = "lora_init.rs"]
mod lora_init;
#[path = "lora_lifecycle.rs"]
mod lora_lifecycle;
#[path = "lora_targeting.rs"]
mod lora_targeting;
#[path = "lora_weighted.rs"]
mod lora_weighted;
#[path = "methods.rs"]
mod methods;
#[path = "mixed_batch.rs"]
mod mixed_batch;
#[path = "ops.rs"]
mod ops;
#[path = "prompt_conditioning.rs"]
mod prompt_conditioning;
#[path = "prompt_tuning.rs"]
mod prompt_tuning;
#[path = "qdot.rs"]
mod qdot;
#[path = "qdot_int16.rs"]
mod qdot_int16;
#[path = "quantized.rs"]
mod quantized;
#[path = "sparse_mask.rs"]
mod sparse_mask;
#[path = "step_hooks.rs"]
mod step_hooks;
#[path = "survey_adapters.rs"]
mod survey_adapters;
#[path = "survey_lora.rs"]
mod survey_lora;
#[path = "survey_lpt.rs"]
mod survey_lpt;
#[path = "survey_masks.rs"]
mod survey_masks;
#[path = "survey_methods.rs"]
mod survey_methods;
#[path = "survey_mixtures.rs"]
mod survey_mixtures;
#[path = "survey_multitask.rs"]
mod survey_multitask;
#[path = "survey_sdiff.rs"]
mod survey_sdiff;
#[path = "tokenizer.rs"]
mod tokenizer;
#[path = "vera.rs"]
mod vera;

/// The suite must list every test file, or a new file would silently never run.
#[test]
fn suite_lists_every_test_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let listed = include_str!("suite.rs");
    let own_binaries = ["fuzz.rs", "gpu_check.rs", "suite.rs"];
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".rs") && !own_binaries.contains(&name.as_str()) && !listed.contains(&format!("#[path = \"{name}\"]")) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "tests/suite.rs does not list {missing:?}: add `#[path = \"<file>\"] mod <name>;`");
}
