//! A LoRA adapter as llama.cpp loads it (`convert_lora_to_gguf.py`, `llama_adapter_lora_init`):
//! `general.type = "adapter"`, `adapter.type = "lora"`, `general.architecture` of the base,
//! one `adapter.lora.alpha`, and per targeted weight `<base GGUF name>.lora_a` = PEFT's A
//! [r, in] and `.lora_b` = B [out, r]. llama.cpp computes W·x + (alpha / r)·B(A·x) with r the
//! tensor's own rank, so a module whose PEFT scaling differs (rsLoRA, rank or alpha patterns)
//! gets the ratio folded into its B. B of LLaMA's q/k gets the base's Q/K row permutation.
use super::config::gguf_architecture;
use super::names::{hf_to_gguf, rope_heads, to_gguf_rows};
use super::quant::OutType;
use super::write::{write_gguf_file, TensorEntry, Val};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::lora::layer::LoraLayer;
use crate::tuners::Tuners;
use candle_core::quantized::GgmlDType;
use candle_core::DType;
use std::path::Path;

/// What a method needs instead, for refusals.
const MERGED_HINT: &str = "export the merged model instead (mergeAndUnload(), then save it), which llama.cpp runs as a plain model";

/// An adapter's tensor type by llama.cpp's `--outtype` name: f32, f16, bf16 or q8_0 (what
/// `convert_lora_to_gguf.py` offers; the 4-bit mixes are for whole models).
pub fn outtype(name: &str) -> Result<GgmlDType> {
    match OutType::parse(name) {
        Ok(OutType::Uniform(t)) => Ok(t),
        _ => Err(Error::arg("outtype", "f32, f16, bf16 or q8_0", format!("\"{name}\""))),
    }
}

/// Writes adapter `name` of `tuners` on `model` as a llama.cpp LoRA GGUF at `path`, tensors in
/// `outtype` (f32, f16, bf16 or q8_0).
pub fn write_lora_gguf(path: &Path, model: &CausalLm, tuners: &Tuners, name: &str, outtype: GgmlDType) -> Result<()> {
    if !matches!(outtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::Q8_0) {
        return Err(Error::arg("outtype", "f32, f16, bf16 or q8_0", format!("{outtype:?}")));
    }
    let config = tuners.config(name)?;
    if config.peft_type() != "LORA" {
        return Err(Error::Unsupported(format!(
            "adapter `{name}`: llama.cpp's adapters are LoRA only, this one is {}; {MERGED_HINT}",
            config.peft_type()
        )));
    }
    if tuners.is_merged() {
        return Err(Error::Unsupported(format!("adapter `{name}`: it is merged into the base weights; unmerge it first")));
    }
    let model_type = model.config.arch.model_type.as_str();
    let arch = gguf_architecture(model_type).ok_or_else(|| Error::Unsupported(format!("a GGUF adapter for a {model_type} model")))?;
    let mut layers = Vec::new();
    for (path, layer) in tuners.layers_of(name)? {
        let lora = layer
            .as_any()
            .and_then(|a| a.downcast_ref::<LoraLayer>())
            .ok_or_else(|| Error::Unsupported(format!("adapter `{name}`: `{path}` is not a LoRA layer")))?;
        if lora.dora.is_some() {
            return Err(Error::Unsupported(format!(
                "adapter `{name}`: DoRA (use_dora) has a magnitude vector llama.cpp cannot apply; {MERGED_HINT}"
            )));
        }
        if lora.pissa_init.is_some() {
            return Err(Error::Unsupported(format!(
                "adapter `{name}`: PiSSA changed the base weights, which llama.cpp's base file does not have; {MERGED_HINT}"
            )));
        }
        if path == "lm_head" && model.config.tie_word_embeddings {
            return Err(Error::Unsupported(format!(
                "adapter `{name}`: LoRA on lm_head of a model with tied embeddings (llama.cpp cannot load it); {MERGED_HINT}"
            )));
        }
        layers.push((path, lora));
    }
    if layers.is_empty() {
        return Err(Error::Unsupported(format!("adapter `{name}` has no LoRA layers to export")));
    }
    // The file's alpha is that of the first module (the config's, unless a pattern overrides it).
    let (r0, s0) = (layers[0].1.r, layers[0].1.scaling);
    let alpha = s0 * r0 as f64;
    let mut tensors = Vec::with_capacity(2 * layers.len());
    for (path, lora) in &layers {
        let weight = format!("{path}.weight");
        let gguf = hf_to_gguf(&weight, model_type)
            .or_else(|| (path == &"lm_head").then(|| "output.weight".to_string()))
            .ok_or_else(|| Error::Unsupported(format!("adapter `{name}`: `{path}` has no llama.cpp tensor")))?;
        let a = model.store.get(lora.a).value().to_dtype(DType::F32)?;
        let mut b = model.store.get(lora.b).value().to_dtype(DType::F32)?;
        // llama.cpp's scale for this tensor is alpha / r; PEFT's is `scaling`.
        let fold = lora.scaling * lora.r as f64 / alpha;
        if (fold - 1.0).abs() > 1e-12 {
            b = b.affine(fold, 0.0)?;
        }
        if let Some(n_head) = rope_heads(&model.config, &weight) {
            b = to_gguf_rows(&b, n_head)?;
        }
        // Rows that a quantized type cannot block (r or in not a multiple of 32) stay f32.
        let ty = |t: &candle_core::Tensor| if t.dims()[1].is_multiple_of(outtype.block_size()) { outtype } else { GgmlDType::F32 };
        tensors.push((format!("{gguf}.lora_a"), a.clone(), ty(&a)));
        tensors.push((format!("{gguf}.lora_b"), b.clone(), ty(&b)));
    }
    let kv = [
        ("general.architecture", Val::Str(arch)),
        ("general.type", Val::Str("adapter")),
        ("general.name", Val::Str(name)),
        ("adapter.type", Val::Str("lora")),
        ("adapter.lora.alpha", Val::F32(alpha as f32)),
    ];
    let entries: Vec<TensorEntry> =
        tensors.iter().map(|(name, t, ty)| TensorEntry { name: name.clone(), dims: t.dims().to_vec(), ty: *ty }).collect();
    write_gguf_file(path, &kv, &entries, |i| Ok(tensors[i].1.clone()))
}
