//! SPoT (Vu et al. 2022, "SPoT: Better Frozen Model Adaptation through Soft Prompt Transfer",
//! ACL 2022, §2-3): a target task's prompt starts from a source task's trained prompt instead of
//! a random or vocabulary init, P_target ← P_source, then trains as usual. `init_from` names the
//! source adapter's folder (a saved prompt-tuning adapter: `prompt_embeddings` in
//! `adapter_model.safetensors`); it is an extension key, consumed at parse and not written back
//! (the saved config stays PEFT's).
use crate::error::{Error, Result};
use crate::io::safetensors::load_one;
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

/// Extension key naming the source prompt's adapter folder.
pub const INIT_FROM: &str = "init_from";

/// The source's prompt [n, h] in `dtype`; a file of another shape is refused naming both shapes.
pub fn source_prompt(dir: &Path, n: usize, h: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let file: PathBuf = dir.join("adapter_model.safetensors");
    let check = |shape: &[usize]| {
        if shape != [n, h] {
            return Err(Error::arg(
                INIT_FROM,
                format!("a source prompt of this adapter's shape [{n}, {h}] (num_virtual_tokens × token_dim)"),
                format!("`prompt_embeddings` of shape {shape:?} in {}", file.display()),
            ));
        }
        Ok(())
    };
    Ok(load_one(&file, "prompt_embeddings", check, device)?.to_dtype(DType::F32)?.to_dtype(dtype)?)
}
