//! LoRA as a method of the tuner base: building a layer per targeted linear with PEFT's
//! inits (`LoraLayer.update_layer`, `reset_lora_parameters`, `pissa_init`), DoRA's
//! magnitude, and PEFT's file keys (`LoraModel._get_adapter_state_dict`).
use super::config::{LoraConfig, LoraInit};
use super::dora::{self, Dora};
use super::layer::LoraLayer;
use crate::error::{Error, Result};
use crate::model::{CausalLm, ParamStore};
use crate::tuners::init::{kaiming_uniform, normal};
use crate::tuners::linalg::svd;
use crate::tuners::svd_fast::randomized_svd;
use crate::tuners::targeting::Targets;
use crate::tuners::{param_name, remove_adapter_name, AdapterLayer, BuildCtx, LinearInfo, TunerConfig};
use crate::{Warning, WarningCode};
use candle_core::{DType, Tensor};
use serde_json::Value;
use std::any::Any;

impl TunerConfig for LoraConfig {
    fn peft_type(&self) -> &'static str {
        "LORA"
    }

    fn targets(&self) -> &crate::tuners::TargetSpec {
        &self.targets
    }

    fn default_targets(&self) -> &'static [&'static str] {
        // TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["llama"]
        &["q_proj", "v_proj"]
    }

    fn set_target_modules(&mut self, targets: Targets) {
        self.fields.set("target_modules", targets_json(&targets));
        self.targets.target_modules = Some(targets);
    }

    fn inference_mode(&self) -> bool {
        self.inference_mode
    }

    fn set_inference_mode(&mut self, on: bool) {
        self.inference_mode = on;
        self.fields.set("inference_mode", on);
    }

    fn set_base_model_name_or_path(&mut self, name: Option<String>) {
        self.fields.set("base_model_name_or_path", name.map_or(Value::Null, Value::String));
    }

    fn can_merge(&self) -> bool {
        true
    }

    fn check_model(&mut self, _model: &CausalLm, targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        check_bias("LoraConfig", &self.bias, targets)
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let (r, alpha) = self.rank_alpha(&t.path)?;
        let scaling = self.scaling(r, alpha);
        let w = bc.store.get(t.weight).value().clone();
        let (dt, dev) = (bc.dtype, w.device().clone());
        let mut pissa_init = None;
        let (a, b) = match &self.init {
            LoraInit::Default => (kaiming_uniform(r, t.in_features, bc.rng, dt, &dev)?, Tensor::zeros((t.out_features, r), dt, &dev)?),
            LoraInit::Random => {
                (kaiming_uniform(r, t.in_features, bc.rng, dt, &dev)?, kaiming_uniform(t.out_features, r, bc.rng, dt, &dev)?)
            }
            LoraInit::Gaussian => {
                (normal(r, t.in_features, 1.0 / r as f64, bc.rng, dt, &dev)?, Tensor::zeros((t.out_features, r), dt, &dev)?)
            }
            LoraInit::Pissa { niter } => {
                let (a, b) = pissa(&w, r, scaling, *niter, &t.path, dt)?;
                // W ← W − s·BA, from the rounded A and B so that the output is unchanged.
                let principal = (b.to_dtype(DType::F64)?.matmul(&a.to_dtype(DType::F64)?)? * scaling)?;
                bc.store.get(t.weight).set(&(w.to_dtype(DType::F64)? - principal)?)?;
                pissa_init = Some((a.clone(), b.clone()));
                (a, b)
            }
            // Plain LoRA once trained weights are loaded; only olora/corda/loftq/lora_ga
            // change the base weight and mica is a variant, which this crate does not run.
            LoraInit::Other(s) if bc.loading && (s == "eva" || s == "orthogonal") => {
                (Tensor::zeros((r, t.in_features), dt, &dev)?, Tensor::zeros((t.out_features, r), dt, &dev)?)
            }
            LoraInit::Other(s) => return Err(Error::InvalidConfig {
                file: self.fields.source.clone(),
                key: "init_lora_weights".into(),
                expected:
                    "true, false, \"gaussian\", \"pissa\" or \"pissa_niter_<n>\" (and, to load trained weights, \"eva\" or \"orthogonal\")"
                        .into(),
                found: format!("\"{s}\" (not supported)"),
            }),
        };
        let add = |store: &mut ParamStore, attr: &str, v: Tensor| store.add(param_name(&t.path, attr, bc.adapter), v, false);
        let a_id = add(bc.store, "lora_A", a.clone())?;
        let b_id = add(bc.store, "lora_B", b.clone())?;
        let dora = if self.use_dora {
            let m = dora::init_magnitude(&bc.store.get(t.weight).value().clone(), &a, &b, scaling, dt)?;
            Some(Dora::new(add(bc.store, "lora_magnitude_vector", m)?))
        } else {
            None
        };
        Ok(Box::new(LoraLayer {
            adapter: bc.adapter.to_string(),
            path: t.path.clone(),
            base_weight: t.weight,
            a: a_id,
            b: b_id,
            r,
            alpha,
            scaling,
            dropout: self.lora_dropout,
            dora,
            pissa_init,
        }))
    }

    fn to_json(&self) -> Value {
        Value::Object(self.fields.map.clone())
    }

    /// DoRA's magnitude is saved without `.weight` (a ParameterDict in older PEFT).
    fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
        let key = remove_adapter_name(param_name, adapter);
        match key.strip_suffix(".weight") {
            Some(k) if k.ends_with(".lora_magnitude_vector") => k.to_string(),
            _ => key,
        }
    }

    fn source(&self) -> &std::path::Path {
        &self.fields.source
    }

    fn clone_box(&self) -> Box<dyn TunerConfig> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The `bias` option of LoRA, VeRA and AdaLoRA: training biases is not supported, so "all" or
/// "lora_only" is refused where a targeted layer has a bias, and warned about where none has
/// (it then trains nothing; PEFT's "all" would also train the biases of modules not targeted).
pub fn check_bias(class: &str, bias: &str, targets: &[LinearInfo]) -> Result<Vec<Warning>> {
    if bias == "none" {
        return Ok(Vec::new());
    }
    if let Some(t) = targets.iter().find(|t| t.bias.is_some()) {
        let path = &t.path;
        return Err(Error::Unsupported(format!(
            "{class} bias \"{bias}\": training the bias of `{path}` is not supported (use bias \"none\")"
        )));
    }
    let message = format!("{class} bias \"{bias}\" trains nothing: no targeted module has a bias (other modules' biases are not trained)");
    Ok(vec![Warning::new(WarningCode::IgnoredField, "bias", message)])
}

fn targets_json(t: &Targets) -> Value {
    match t {
        Targets::List(l) => Value::Array(l.iter().cloned().map(Value::String).collect()),
        Targets::Regex(s) => Value::String(s.clone()),
    }
}

/// `pissa_init`: W = V S Uᴴ; A = diag(√(S_r/s)) Uᴴ_r, B = V_r diag(√(S_r/s)), so s·BA is
/// the rank-r principal part of W. Singular vectors are only defined up to sign, so A and
/// B may differ from torch's in sign; their product does not. `pissa_niter_N` takes the top
/// r triplets from a randomized SVD with N subspace iterations (PEFT: torch's `svd_lowrank`,
/// seeded differently, so its A and B differ slightly from PEFT's); plain "pissa" is exact.
fn pissa(w: &Tensor, r: usize, scaling: f64, niter: Option<u32>, path: &str, dt: DType) -> Result<(Tensor, Tensor)> {
    let (out, inp) = w.dims2()?;
    if r > out.min(inp) {
        return Err(Error::arg("r", format!("at most {} for PiSSA on `{path}` ({out} x {inp})", out.min(inp)), r));
    }
    let flat = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    let (u, s, vt, k) = match niter {
        None => {
            let (u, s, vt) = svd(&flat, out, inp);
            (u, s, vt, out.min(inp))
        }
        Some(n) => {
            let (u, s, vt) = randomized_svd(&flat, out, inp, r, n as usize, 0)?;
            (u, s, vt, r)
        }
    };
    let root: Vec<f64> = s[..r].iter().map(|x| (x / scaling).sqrt()).collect();
    let mut a = Vec::with_capacity(r * inp);
    for (i, root_i) in root.iter().enumerate() {
        a.extend(vt[i * inp..(i + 1) * inp].iter().map(|v| v * root_i));
    }
    let mut b = Vec::with_capacity(out * r);
    for i in 0..out {
        b.extend(root.iter().enumerate().map(|(j, root_j)| u[i * k + j] * root_j));
    }
    let dev = w.device();
    Ok((Tensor::from_vec(a, (r, inp), dev)?.to_dtype(dt)?, Tensor::from_vec(b, (out, r), dev)?.to_dtype(dt)?))
}
