//! PEFT adapter folders: `adapter_config.json` + `adapter_model.safetensors`, read and
//! written exactly as PEFT 0.21 does (`PeftModel.save_pretrained`, `config.py`
//! `save_pretrained`, `utils/save_and_load.py` `get_peft_model_state_dict` /
//! `set_peft_model_state_dict`). Tensor keys carry no adapter name
//! (`base_model.model.<module>.lora_A.weight`); loading checks every key and shape.
pub mod pyjson;

use crate::error::{Error, Result};
use crate::io::mlx;
use crate::io::safetensors::{load_file, save_file, write_atomic};
use crate::model::CausalLm;
use crate::tuners::{parse_config, InjectReport, TunerConfig, Tuners};
use candle_core::Tensor;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub const CONFIG_NAME: &str = "adapter_config.json";
pub const WEIGHTS_NAME: &str = "adapter_model.safetensors";

/// The config of an adapter folder, parsed for its `peft_type`, with warnings.
pub fn read_config(dir: &Path) -> Result<(Box<dyn TunerConfig>, Vec<crate::Warning>)> {
    if !dir.exists() {
        return Err(Error::MissingFile {
            path: dir.into(),
            what: "an adapter folder (adapter_config.json + adapter_model.safetensors)".into(),
        });
    }
    if !dir.is_dir() {
        return Err(Error::Adapter { file: dir.into(), message: "expected a folder holding adapter_config.json, found a file".into() });
    }
    let path = dir.join(CONFIG_NAME);
    if !path.exists() {
        return Err(Error::MissingFile { path, what: "the adapter config written by PEFT's save_pretrained".into() });
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
    if value.get("peft_type").is_none() {
        return Err(Error::InvalidConfig {
            file: path,
            key: "peft_type".into(),
            expected: "the PEFT method, e.g. \"LORA\"".into(),
            found: "nothing".into(),
        });
    }
    parse_config(&value, Some(&text), &path)
}

/// Loads a PEFT adapter folder onto `model` as adapter `name`. With `trainable` false the
/// adapter is frozen (PEFT's `is_trainable=False`, its default). Nothing is left attached
/// when the files do not fit the model.
/// An mlx-lm adapter folder (`adapters.safetensors`, `lora_parameters`) is converted on the way.
pub fn load_adapter(tuners: &mut Tuners, model: &mut CausalLm, dir: &Path, name: &str, trainable: bool) -> Result<InjectReport> {
    if mlx::is_mlx_folder(dir) {
        let file = dir.join(mlx::MLX_WEIGHTS);
        let raw = load_file(&file, None, &model.device)?;
        let (text, tensors) = mlx::mlx_to_peft(dir, raw, model.config.num_hidden_layers)?;
        let value: Value = serde_json::from_str(&text).map_err(|e| Error::Unsupported(e.to_string()))?;
        let (config, warnings) = parse_config(&value, Some(&text), &dir.join(mlx::MLX_CONFIG))?;
        return attach(tuners, model, config, warnings, tensors, &file, name, trainable);
    }
    let (config, warnings) = read_config(dir)?;
    let file = dir.join(WEIGHTS_NAME);
    if !file.exists() {
        let what = if dir.join("adapter_model.bin").exists() {
            "the adapter weights as safetensors (adapter_model.bin is a pickle, which is not read: re-save it with safe_serialization=True)"
        } else {
            "the adapter weights"
        };
        return Err(Error::MissingFile { path: file, what: what.into() });
    }
    let tensors = load_file(&file, None, &model.device)?;
    attach(tuners, model, config, warnings, tensors, &file, name, trainable)
}

/// Injects adapter `name` of `config` and fills it with `tensors` (PEFT's keys) read from `file`.
#[allow(clippy::too_many_arguments)]
fn attach(
    tuners: &mut Tuners,
    model: &mut CausalLm,
    mut config: Box<dyn TunerConfig>,
    mut warnings: Vec<crate::Warning>,
    tensors: HashMap<String, Tensor>,
    file: &Path,
    name: &str,
    trainable: bool,
) -> Result<InjectReport> {
    config.set_inference_mode(!trainable);
    let file = file.to_path_buf();
    let mut report = tuners.inject_with(model, name, config, 0, true)?;
    match fill(tuners, model, name, tensors, &file).and_then(|w| tuners.check_loaded(model, name, &file).map(|()| w)) {
        Ok(mut nonfinite) => warnings.append(&mut nonfinite),
        Err(e) => {
            let _ = tuners.delete_adapter(model, name);
            return Err(e);
        }
    }
    warnings.append(&mut report.warnings);
    report.warnings = warnings;
    Ok(report)
}

/// Copies the file's tensors into the freshly injected adapter, checking keys and shapes.
/// Returns a warning for each tensor holding NaN or infinite values (a diverged training
/// run saves them; the adapter then turns every output into NaN).
fn fill(tuners: &Tuners, model: &CausalLm, name: &str, mut tensors: HashMap<String, Tensor>, file: &Path) -> Result<Vec<crate::Warning>> {
    let mut warnings = Vec::new();
    let expected = tuners.checkpoint_keys(model, name)?;
    let want: BTreeSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let have: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();
    let missing: Vec<&str> = want.difference(&have).copied().collect();
    let extra: Vec<&str> = have.difference(&want).copied().collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut message = String::from("the tensors do not match the adapter its config describes on this model:");
        if !missing.is_empty() {
            message += &format!(" missing {}", list(&missing));
        }
        if !extra.is_empty() {
            message += &format!("{} unexpected {}", if missing.is_empty() { "" } else { ";" }, list(&extra));
        }
        return Err(Error::Adapter { file: file.into(), message });
    }
    for (key, id) in &expected {
        let p = model.store.get(*id);
        let t = tensors.remove(key).expect("checked above");
        if t.dims() != p.dims() {
            return Err(Error::Adapter {
                file: file.into(),
                message: format!(
                    "`{key}` has shape {:?}, the model expects {:?} (check r, rank_pattern and the base model)",
                    t.dims(),
                    p.dims()
                ),
            });
        }
        if t.dtype().is_float() != p.dtype().is_float() {
            return Err(Error::WeightDtype { file: file.into(), name: key.clone(), found: format!("{:?}", t.dtype()) });
        }
        if let Some(w) = nonfinite_warning(&t, key, file)? {
            warnings.push(w);
        }
        p.set(&t)?;
    }
    Ok(warnings)
}

fn nonfinite_warning(t: &Tensor, key: &str, file: &Path) -> Result<Option<crate::Warning>> {
    if !t.dtype().is_float() {
        return Ok(None);
    }
    let values = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let nan = values.iter().filter(|v| v.is_nan()).count();
    let inf = values.iter().filter(|v| v.is_infinite()).count();
    if nan + inf == 0 {
        return Ok(None);
    }
    let message = format!(
        "{}: `{key}` holds {nan} NaN and {inf} infinite value(s) of {}; outputs with this adapter will be NaN/Inf (was it saved from a diverged run?)",
        file.display(),
        values.len()
    );
    Ok(Some(crate::Warning::new(crate::WarningCode::NonFinite, key, message)))
}

fn list(keys: &[&str]) -> String {
    const SHOWN: usize = 8;
    let mut s = keys.iter().take(SHOWN).map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ");
    if keys.len() > SHOWN {
        s += &format!(" and {} more", keys.len() - SHOWN);
    }
    s
}

/// Writes adapter `name` to the folder `dir` (created if needed) as PEFT's
/// `save_pretrained` does: the tensors under PEFT's keys with metadata `{"format": "pt"}`,
/// and the config with every field, `inference_mode: true`, 2-space indented, keys sorted.
/// The folder is written as a unit (`io::folder::write_folder`).
pub fn save_adapter(tuners: &Tuners, model: &CausalLm, name: &str, dir: &Path) -> Result<()> {
    if dir.is_file() {
        return Err(Error::Adapter { file: dir.into(), message: "the save path should be a folder, not a file".into() });
    }
    super::folder::write_folder(dir, |tmp| write_adapter_files(tuners, model, name, tmp))
}

fn write_adapter_files(tuners: &Tuners, model: &CausalLm, name: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tensors: Vec<(String, Tensor)> = tuners.checkpoint_tensors(model, name)?;
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    save_file(&tensors, Some(meta), &dir.join(WEIGHTS_NAME))?;
    write_atomic(&dir.join(CONFIG_NAME), config_json(tuners.config(name)?).as_bytes())
}

/// `PeftModel.save_pretrained` layout: adapter `default` in `dir`, any other in `dir/<name>`.
/// `names`: the adapters to save (default: all). Returns the folders written.
pub fn save_pretrained(tuners: &Tuners, model: &CausalLm, dir: &Path, names: Option<&[&str]>) -> Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Err(Error::Adapter { file: dir.into(), message: "the save path should be a folder, not a file".into() });
    }
    let names: Vec<String> = names.map_or_else(|| tuners.names(), |n| n.iter().map(|s| s.to_string()).collect());
    // All the adapters of one call go in together (one temporary folder, one swap).
    super::folder::write_folder(dir, |tmp| {
        for name in &names {
            let out = if name == "default" { tmp.to_path_buf() } else { tmp.join(name) };
            write_adapter_files(tuners, model, name, &out)?;
        }
        Ok(())
    })?;
    Ok(names.iter().map(|name| if name == "default" { dir.to_path_buf() } else { dir.join(name) }).collect())
}

/// `adapter_config.json` text for `config` as PEFT saves it (`inference_mode` set to true).
pub fn config_json(config: &dyn TunerConfig) -> String {
    let mut v = config.to_json();
    if let Value::Object(m) = &mut v {
        m.insert("inference_mode".into(), Value::Bool(true));
    }
    pyjson::dumps(&v)
}
