//! The fitted posterior next to its adapter: `laplace_state.safetensors` (per LoRA matrix,
//! under the adapter file's key: `<key>.output_eigenvectors` [out, k], `.output_eigenvalues`
//! [k], `.input_eigenvectors` [in, k'], `.input_eigenvalues` [k'], and `.output_flat_eigenvalue`,
//! `.input_flat_eigenvalue` [1]: the eigenvalue of the unlisted directions, `kron.rs`; f64) and
//! `laplace_config.json` (prior precision, curvature, token count, factor bounds). The MAP
//! weights are the adapter's own, so the adapter file and this pair together give the same
//! predictive.
use super::capture::lora_sites;
use super::kron::Eigen;
use super::posterior::{KronPosterior, LaplacePosterior};
use crate::error::{Error, Result};
use crate::io::safetensors::{load_file, save_file, write_atomic};
use crate::model::CausalLm;
use crate::tuners::Tuners;
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::path::Path;

pub const STATE_FILE: &str = "laplace_state.safetensors";
pub const CONFIG_FILE: &str = "laplace_config.json";

fn key(tuners: &Tuners, adapter: &str, name: &str) -> Result<String> {
    Ok(tuners.config(adapter)?.checkpoint_key(name, adapter))
}

pub fn save(posterior: &LaplacePosterior, tuners: &Tuners, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors = Vec::new();
    for m in &posterior.matrices {
        let k = key(tuners, &posterior.adapter, &m.name)?;
        for (side, e) in [("output", &m.output), ("input", &m.input)] {
            tensors.push((format!("{k}.{side}_eigenvectors"), e.u.clone()));
            tensors.push((format!("{k}.{side}_eigenvalues"), Tensor::from_slice(&e.s, e.s.len(), &Device::Cpu)?));
            tensors.push((format!("{k}.{side}_flat_eigenvalue"), Tensor::from_slice(&[e.flat], 1, &Device::Cpu)?));
        }
    }
    save_file(&tensors, None, &dir.join(STATE_FILE))?;
    let config = json!({
        "method": "laplace-lora",
        "hessian_structure": "kron",
        "hessian": posterior.hessian,
        "prior_precision": posterior.prior_precision,
        "tokens": posterior.tokens,
        "nll_sum": posterior.nll_sum,
        "max_factor_side": posterior.max_factor_side,
        "factor_rank": posterior.factor_rank,
    });
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Unsupported(e.to_string()))?;
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// The posterior saved in `dir` for `adapter` (attached to `model`, with the weights it was fitted on).
pub fn load(dir: &Path, model: &CausalLm, tuners: &Tuners, adapter: &str) -> Result<LaplacePosterior> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let bad = |key: &str, expected: &str| Error::Adapter { file: config_path.clone(), message: format!("`{key}`: expected {expected}") };
    let c: Value =
        serde_json::from_str(&text).map_err(|e| Error::Adapter { file: config_path.clone(), message: format!("not JSON: {e}") })?;
    let num = |key: &str| c.get(key).and_then(Value::as_f64).ok_or_else(|| bad(key, "a number"));
    let prior = num("prior_precision")?;
    if !(prior.is_finite() && prior > 0.0) {
        return Err(bad("prior_precision", "a finite positive number"));
    }
    let hessian = c.get("hessian").and_then(Value::as_str).ok_or_else(|| bad("hessian", "\"fisher\" or \"empirical\""))?;
    super::fit::Curvature::parse(hessian).map_err(|_| bad("hessian", "\"fisher\" or \"empirical\""))?;
    let state_path = dir.join(STATE_FILE);
    let mut tensors = load_file(&state_path, Some(DType::F64), &Device::Cpu)?;
    let mut take = |name: String, dims: &dyn Fn(&[usize]) -> bool, expected: String| -> Result<Tensor> {
        let t = tensors.remove(&name).ok_or_else(|| Error::Adapter { file: state_path.clone(), message: format!("no tensor `{name}`") })?;
        if !dims(t.dims()) {
            return Err(Error::Adapter {
                file: state_path.clone(),
                message: format!("`{name}` has shape {:?}, expected {expected}", t.dims()),
            });
        }
        Ok(t)
    };
    let mut matrices = Vec::new();
    for site in lora_sites(tuners, adapter)? {
        for param in [site.a, site.b] {
            let p = model.store.get(param);
            let (out, inp) = p.value().dims2()?;
            let k = key(tuners, adapter, &p.name)?;
            let mut side = |name: &str, d: usize| -> Result<Eigen> {
                let u = take(format!("{k}.{name}_eigenvectors"), &|s| s.len() == 2 && s[0] == d && s[1] <= d, format!("[{d}, k ≤ {d}]"))?;
                let n = u.dim(1)?;
                let s = take(format!("{k}.{name}_eigenvalues"), &|s| s == [n], format!("[{n}]"))?.to_vec1::<f64>()?;
                let flat = take(format!("{k}.{name}_flat_eigenvalue"), &|s| s == [1], "[1]".into())?.to_vec1::<f64>()?[0];
                if s.iter().chain([&flat]).any(|v| !v.is_finite() || *v < 0.0) {
                    return Err(Error::Adapter {
                        file: state_path.clone(),
                        message: format!("`{k}.{name}_eigenvalues` / `_flat_eigenvalue`: expected finite values ≥ 0"),
                    });
                }
                Ok(Eigen { u, s, flat })
            };
            let (output, input) = (side("output", out)?, side("input", inp)?);
            matrices.push(KronPosterior { name: p.name.clone(), param, output, input, size: out * inp });
        }
    }
    Ok(LaplacePosterior {
        adapter: adapter.to_string(),
        hessian: hessian.to_string(),
        matrices,
        prior_precision: prior,
        tokens: num("tokens")? as usize,
        nll_sum: num("nll_sum")?,
        max_factor_side: num("max_factor_side")? as usize,
        factor_rank: num("factor_rank")? as usize,
    })
}
