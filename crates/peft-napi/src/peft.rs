//! Adapters on a model handle: inject, load, save, switch, merge, unload. The model is
//! modified in place, as PEFT's `inject_adapter` does; the TS `PeftModel` wraps the handle.
use crate::error::Result;
use crate::job::{UnitJob, WarningsJob};
use crate::model::{with_model, with_model_mut, NativeModel};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use peft_core::io::adapter;
use peft_core::tuners::parse_config;
use std::path::{Path, PathBuf};

fn names_ref(names: &Option<Vec<String>>) -> Option<Vec<&str>> {
    names.as_ref().map(|n| n.iter().map(String::as_str).collect())
}

#[napi]
impl NativeModel {
    /// Attaches a new adapter from a PEFT config (JSON, snake_case); returns warnings.
    #[napi(ts_return_type = "Promise<Array<NativeWarning>>")]
    pub fn add_adapter(&self, name: String, config_json: String, seed: i64) -> Result<AsyncTask<WarningsJob>> {
        let shared = self.inner.clone();
        Ok(WarningsJob::spawn(move || {
            with_model_mut(&shared, |m| {
                let value: serde_json::Value =
                    serde_json::from_str(&config_json).map_err(|e| peft_core::Error::arg("config", "a JSON object", e))?;
                let (mut config, mut warnings) = parse_config(&value, Some(&config_json), Path::new("(config)"))?;
                config.set_base_model_name_or_path(Some(m.source.clone()));
                let report = m.tuners.inject(&mut m.llama, &name, config, seed as u64)?;
                warnings.extend(report.warnings);
                Ok(warnings)
            })
        }))
    }

    /// Loads a PEFT adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
    #[napi(ts_return_type = "Promise<Array<NativeWarning>>")]
    pub fn load_adapter(&self, dir: String, name: String, trainable: bool) -> Result<AsyncTask<WarningsJob>> {
        let shared = self.inner.clone();
        Ok(WarningsJob::spawn(move || {
            with_model_mut(&shared, |m| {
                let report = adapter::load_adapter(&mut m.tuners, &mut m.llama, Path::new(&dir), &name, trainable)?;
                Ok(report.warnings)
            })
        }))
    }

    /// Writes the adapters (default: all) in PEFT's layout: `default` in `dir`, others in `dir/<name>`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save_adapters(&self, dir: String, names: Option<Vec<String>>) -> Result<AsyncTask<UnitJob>> {
        let shared = self.inner.clone();
        Ok(UnitJob::spawn(move || {
            with_model(&shared, |m| {
                let dir = PathBuf::from(&dir);
                if dir.is_file() {
                    return Err(peft_core::Error::arg(
                        "dir",
                        "a folder to save the adapter in",
                        format!("{} (an existing file)", dir.display()),
                    ));
                }
                adapter::save_pretrained(&m.tuners, &m.llama, &dir, names_ref(&names).as_deref()).map(|_| ())
            })
        }))
    }

    /// Writes adapter `name` as a llama.cpp LoRA GGUF (`outtype`: f32, f16, bf16 or q8_0).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save_lora_gguf(&self, path: String, name: String, outtype: String) -> Result<AsyncTask<UnitJob>> {
        let shared = self.inner.clone();
        Ok(UnitJob::spawn(move || {
            with_model(&shared, |m| {
                let ty = peft_core::io::gguf::outtype(&outtype)?;
                peft_core::io::gguf::write_lora_gguf(Path::new(&path), &m.llama, &m.tuners, &name, ty)
            })
        }))
    }

    /// Writes adapter `name` as an mlx-lm adapter folder (adapters.safetensors + adapter_config.json).
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save_mlx_adapter(&self, dir: String, name: String) -> Result<AsyncTask<UnitJob>> {
        let shared = self.inner.clone();
        Ok(UnitJob::spawn(move || {
            with_model(&shared, |m| peft_core::io::mlx::write_mlx_adapter(&m.tuners, &m.llama, &name, Path::new(&dir)))
        }))
    }

    #[napi]
    pub fn adapter_names(&self) -> Result<Vec<String>> {
        with_model(&self.inner, |m| Ok(m.tuners.names()))
    }

    #[napi]
    pub fn active_adapters(&self) -> Result<Vec<String>> {
        with_model(&self.inner, |m| Ok(m.tuners.active().to_vec()))
    }

    #[napi]
    pub fn adapter_config_json(&self, name: String) -> Result<String> {
        with_model(&self.inner, |m| Ok(adapter::config_json(m.tuners.config(&name)?)))
    }

    /// Module paths the adapter is attached to.
    #[napi]
    pub fn adapter_modules(&self, name: String) -> Result<Vec<String>> {
        with_model(&self.inner, |m| Ok(m.tuners.modules(&name)?.to_vec()))
    }

    #[napi]
    pub fn set_active_adapters(&self, names: Vec<String>) -> Result<()> {
        with_model_mut(&self.inner, |m| {
            let n: Vec<&str> = names.iter().map(String::as_str).collect();
            m.tuners.set_active(&mut m.llama, &n)
        })
    }

    #[napi]
    pub fn set_adapters_enabled(&self, on: bool) -> Result<()> {
        with_model_mut(&self.inner, |m| m.tuners.set_enabled(&mut m.llama, on))
    }

    #[napi(getter)]
    pub fn adapters_enabled(&self) -> Result<bool> {
        with_model(&self.inner, |m| Ok(m.tuners.is_enabled()))
    }

    #[napi]
    pub fn delete_adapter(&self, name: String) -> Result<Vec<crate::error::NativeWarning>> {
        with_model_mut(&self.inner, |m| m.tuners.delete_adapter(&mut m.llama, &name)).map(crate::error::to_js_warnings)
    }

    #[napi]
    pub fn merge_adapters(&self, names: Option<Vec<String>>) -> Result<()> {
        with_model_mut(&self.inner, |m| m.tuners.merge(&mut m.llama, names_ref(&names).as_deref()))
    }

    #[napi]
    pub fn unmerge_adapters(&self) -> Result<()> {
        with_model_mut(&self.inner, |m| m.tuners.unmerge(&mut m.llama))
    }

    #[napi(getter)]
    pub fn adapters_merged(&self) -> Result<bool> {
        with_model(&self.inner, |m| Ok(m.tuners.is_merged()))
    }

    /// Merging rewrites every targeted weight (125-180 ms on SmolLM2): on the libuv pool.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn merge_and_unload(&self, names: Option<Vec<String>>) -> Result<AsyncTask<UnitJob>> {
        let shared = self.inner.clone();
        Ok(UnitJob::spawn(move || with_model_mut(&shared, |m| m.tuners.merge_and_unload(&mut m.llama, names_ref(&names).as_deref()))))
    }

    #[napi]
    pub fn unload(&self) -> Result<()> {
        with_model_mut(&self.inner, |m| m.tuners.unload(&mut m.llama))
    }

    /// PyTorch's `train()` / `eval()`: dropout in adapters applies only in training.
    #[napi]
    pub fn set_training(&self, on: bool) -> Result<()> {
        with_model_mut(&self.inner, |m| {
            m.training = on;
            Ok(())
        })
    }

    #[napi(getter)]
    pub fn training(&self) -> Result<bool> {
        with_model(&self.inner, |m| Ok(m.training))
    }
}
