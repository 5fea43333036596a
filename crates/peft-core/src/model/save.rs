//! Writing the model as a Hugging Face checkpoint (`config.json` + `model.safetensors`),
//! e.g. after merging adapters: transformers and our loader both read it back.
use super::decoder::CausalLm;
use crate::error::{Error, Result};
use crate::io::safetensors::{save_file, write_atomic};
use std::collections::BTreeMap;
use std::path::Path;

impl CausalLm {
    /// Base weights only (adapter parameters, named `base_model.…`, are not part of it), in
    /// the model's dtype.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        self.save_pretrained_as(dir, None)
    }

    /// As `save_pretrained`, with the floating-point weights converted to `dtype` (e.g. bf16
    /// for a model loaded from a quantized GGUF, which trains and merges in f32).
    pub fn save_pretrained_as(&self, dir: &Path, dtype: Option<candle_core::DType>) -> Result<()> {
        self.save_with_tokenizer(dir, dtype, None)
    }

    /// As `save_pretrained_as`, with the tokenizer's files; the folder is written as a unit
    /// (`io::folder::write_folder`), so config, weights and tokenizer always come from one save.
    pub fn save_with_tokenizer(
        &self,
        dir: &Path,
        dtype: Option<candle_core::DType>,
        tokenizer: Option<&crate::tokenizer::Tokenizer>,
    ) -> Result<()> {
        let dtype = dtype.unwrap_or(self.dtype);
        if !dtype.is_float() {
            return Err(Error::arg("dtype", format!("a floating-point dtype, {}", crate::dtype::expected()), format!("{dtype:?}")));
        }
        if dir.is_file() {
            return Err(Error::arg("dir", "a folder to write the checkpoint in", format!("{} (an existing file)", dir.display())));
        }
        crate::io::folder::write_folder(dir, |tmp| {
            self.write_checkpoint(tmp, dtype)?;
            tokenizer.map_or(Ok(()), |t| t.write_files(tmp))
        })
    }

    fn write_checkpoint(&self, dir: &Path, dtype: candle_core::DType) -> Result<()> {
        let tensors: Vec<(String, candle_core::Tensor)> = self
            .store
            .iter()
            .filter(|(_, p)| !p.name.starts_with("base_model."))
            .map(|(_, p)| Ok((p.name.clone(), if p.dtype().is_float() { p.value().to_dtype(dtype)? } else { p.value().clone() })))
            .collect::<Result<_>>()?;
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        save_file(&tensors, Some(metadata), &dir.join("model.safetensors"))?;
        let mut config = self.config.to_hf_json();
        config["torch_dtype"] = crate::dtype::name(dtype).into();
        let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Unsupported(e.to_string()))?;
        write_atomic(&dir.join("config.json"), text.as_bytes())
    }
}
