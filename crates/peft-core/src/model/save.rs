//! Writing the model as a Hugging Face checkpoint (`config.json` + `model.safetensors`),
//! e.g. after merging adapters: transformers and our loader both read it back.
use super::llama::Llama;
use crate::error::{Error, Result};
use crate::io::safetensors::{save_file, write_atomic};
use std::collections::BTreeMap;
use std::path::Path;

impl Llama {
    /// Base weights only (adapter parameters, named `base_model.…`, are not part of it).
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        if dir.is_file() {
            return Err(Error::arg("dir", "a folder to write the checkpoint in", format!("{} (an existing file)", dir.display())));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors: Vec<(String, candle_core::Tensor)> = self
            .store
            .iter()
            .filter(|(_, p)| !p.name.starts_with("base_model."))
            .map(|(_, p)| (p.name.clone(), p.value().clone()))
            .collect();
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        save_file(&tensors, Some(metadata), &dir.join("model.safetensors"))?;
        let mut config = self.config.to_hf_json();
        config["torch_dtype"] = crate::io::dtype_name(self.dtype).into();
        let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Unsupported(e.to_string()))?;
        write_atomic(&dir.join("config.json"), text.as_bytes())
    }
}
