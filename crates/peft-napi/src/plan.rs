//! What the memory planner (`src/plan/`) needs from a GGUF file without loading its tensors:
//! the resolved config and each tensor's stored type and byte size, from the bounded header
//! reader (`io::gguf::read`). A real Q4_K_M file mixes block types, so the planner sizes each
//! tensor as stored rather than assuming one type.
use napi_derive::napi;
use peft_core::io::gguf::{config_from_metadata, gguf_to_hf, model_type_of, tokenizer_spec, GgufFile};
use std::path::Path;

use crate::error::{to_js, Result};

#[napi(object)]
pub struct GgufTensorSummary {
    /// The Hugging Face name when the architecture maps it, else the GGUF name.
    pub name: String,
    /// ggml's type name: F32, F16, BF16, Q4_0, Q4K, ...
    pub ggml_type: String,
    /// Hugging Face order (outermost first).
    pub shape: Vec<u32>,
    /// Bytes as stored in the file.
    pub bytes: f64,
}

#[napi(object)]
pub struct GgufSummary {
    /// The resolved config, as JSON in Hugging Face's key names.
    pub config_json: String,
    pub tensors: Vec<GgufTensorSummary>,
}

/// Reads the header only (the map is opened, but no tensor data is touched).
#[napi]
pub fn gguf_summary(path: String) -> Result<GgufSummary> {
    let file = GgufFile::open(Path::new(&path)).map_err(to_js)?;
    let model_type = model_type_of(&file).map_err(to_js)?;
    let config = config_from_metadata(&file, &tokenizer_spec(&file).map_err(to_js)?).map_err(to_js)?;
    let tensors = file
        .tensors
        .iter()
        .map(|t| GgufTensorSummary {
            name: gguf_to_hf(&t.name, model_type).unwrap_or_else(|| t.name.clone()),
            ggml_type: format!("{:?}", t.dtype),
            shape: t.dims.iter().map(|&d| d as u32).collect(),
            bytes: t.size as f64,
        })
        .collect();
    Ok(GgufSummary { config_json: config.resolved_json().to_string(), tensors })
}
