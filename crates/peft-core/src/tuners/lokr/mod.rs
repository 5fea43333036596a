//! LoKr (Edalati et al. 2022, "KronA", and LyCORIS' LoKr: ΔW = W₁ ⊗ W₂, a Kronecker product
//! of a small and a (possibly low-rank, W₂ = A₂B₂) factor), scaled by alpha/r, after PEFT
//! 0.21 `tuners/lokr` (`LoKrConfig`, `LoKrLayer.update_layer`, `create_adapter_parameters`,
//! the three `reset_adapter_parameters*`, `factorization`, `make_kron`).
use crate::error::Result;
use crate::tuners::fields::{config_plumbing, object, Fields};
use crate::tuners::init::kaiming_uniform;
use crate::tuners::lycoris::{DeltaWeight, LycorisFields, LycorisLayer};
use crate::tuners::{param_dict_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig, PEFT_VERSION};
use candle_core::Tensor;
use serde_json::{json, Map, Value};
use std::path::Path;

/// PEFT 0.21 `LoKrConfig().to_dict()`.
pub fn peft_defaults() -> Map<String, Value> {
    object(json!({
        "alpha": 8, "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": null, "decompose_both": false,
        "decompose_factor": -1, "exclude_modules": null, "inference_mode": false, "init_weights": true,
        "layers_pattern": null, "layers_to_transform": null, "module_dropout": 0.0, "modules_to_save": null,
        "peft_type": "LOKR", "peft_version": PEFT_VERSION, "r": 8, "rank_dropout": 0.0, "rank_dropout_scale": false,
        "rank_pattern": {}, "revision": null, "target_modules": null, "task_type": null, "use_effective_conv2d": false
    }))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LokrInit {
    /// `true`: w1 (or w1_a) zero, the rest kaiming-uniform.
    Default,
    /// `"lycoris"`: w2 (or w2_b) zero, the rest kaiming-uniform.
    Lycoris,
    /// `false`: all kaiming-uniform.
    Random,
}

#[derive(Debug, Clone)]
pub struct LokrConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub lycoris: LycorisFields,
    pub decompose_both: bool,
    pub decompose_factor: i64,
    pub rank_dropout_scale: bool,
    pub init: LokrInit,
}

impl LokrConfig {
    pub fn from_value(value: &Value, raw: Option<&str>, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) = Fields::parse(value, "LOKR", "LoKrConfig", peft_defaults(), source)?;
        f.refuse_unless_default(&["modules_to_save"], &peft_defaults())?;
        let lycoris = LycorisFields::parse(&f, raw)?;
        let decompose_both = f.bool("decompose_both")?;
        let decompose_factor = f.int("decompose_factor", "an integer (-1, or a factor > 0)")?;
        if decompose_factor == 0 || decompose_factor < -1 {
            return Err(f.err("decompose_factor", "-1 (factors near the square root) or a positive factor"));
        }
        let rank_dropout_scale = f.bool("rank_dropout_scale")?;
        let init = match &f.map["init_weights"] {
            Value::Bool(true) => LokrInit::Default,
            Value::Bool(false) => LokrInit::Random,
            Value::String(s) if s == "lycoris" => LokrInit::Lycoris,
            _ => return Err(f.err("init_weights", "true, false or \"lycoris\"")),
        };
        Ok((
            LokrConfig { targets: f.target_spec()?, fields: f, lycoris, decompose_both, decompose_factor, rank_dropout_scale, init },
            warnings,
        ))
    }
}

/// PEFT's `factorization(dimension, factor)`: (m, n) with m·n = dimension and m ≤ n. With
/// `factor` > 0 dividing the dimension, (factor, dimension/factor) as is; otherwise the
/// divisor pair with the smallest sum whose first member does not exceed `factor`
/// (-1: no bound, so the pair nearest the square root).
pub fn factorization(dimension: usize, factor: i64) -> (usize, usize) {
    if factor > 0 && dimension.is_multiple_of(factor as usize) {
        return (factor as usize, dimension / factor as usize);
    }
    let factor = if factor == -1 { dimension } else { factor.max(0) as usize };
    let (mut m, mut n) = (1, dimension);
    let length = m + n;
    while m < n {
        let mut new_m = m + 1;
        while !dimension.is_multiple_of(new_m) {
            new_m += 1;
        }
        let new_n = dimension / new_m;
        if new_m + new_n > length || new_m > factor {
            break;
        }
        (m, n) = (new_m, new_n);
    }
    if m > n {
        (m, n) = (n, m);
    }
    (m, n)
}

/// `make_kron(w1, w2, scale)` for 2-D factors: w1 ⊗ w2 (torch.kron), built by broadcasting
/// w1 [a, b] against w2 [c, d] into [a, c, b, d], so that autograd follows.
pub fn kron(w1: &Tensor, w2: &Tensor) -> Result<Tensor> {
    let ((a, b), (c, d)) = (w1.dims2()?, w2.dims2()?);
    let k = w1.reshape((a, 1, b, 1))?.broadcast_mul(&w2.reshape((1, c, 1, d))?)?;
    Ok(k.reshape((a * c, b * d))?)
}

/// Which factors are full matrices (`use_w1`, `use_w2`) rather than low-rank products.
#[derive(Debug)]
pub struct Kronecker {
    pub full_w1: bool,
    pub full_w2: bool,
}

impl DeltaWeight for Kronecker {
    fn delta(&self, p: &[Tensor]) -> Result<Tensor> {
        let (w1, rest) = if self.full_w1 { (p[0].clone(), &p[1..]) } else { (p[0].matmul(&p[1])?, &p[2..]) };
        let w2 = if self.full_w2 { rest[0].clone() } else { rest[0].matmul(&rest[1])? };
        kron(&w1, &w2)
    }
}

impl TunerConfig for LokrConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "LOKR"
    }

    /// `TRANSFORMERS_MODELS_TO_LOKR_TARGET_MODULES_MAPPING["llama"]`.
    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn can_merge(&self) -> bool {
        true
    }

    /// `update_layer` (Linear): out = l·k, in = m·n by `factorization`; ΔW = W₁ [l, m] ⊗
    /// W₂ [k, n]. W₁ is full unless `decompose_both` and r < max(l, m)/2; W₂ is full unless
    /// r < max(k, n)/2; a low-rank factor is a [·, r] · b [r, ·].
    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let (r, alpha) = self.lycoris.rank_alpha(&self.fields, &t.path)?;
        let (in_m, in_n) = factorization(t.in_features, self.decompose_factor);
        let (out_l, out_k) = factorization(t.out_features, self.decompose_factor);
        let full_w1 = !(self.decompose_both && (r as f64) < out_l.max(in_m) as f64 / 2.0);
        let full_w2 = r as f64 >= out_k.max(in_n) as f64 / 2.0;
        let dev = bc.store.get(t.weight).device();
        let dt = bc.dtype;
        let zero_w1 = self.init == LokrInit::Default;
        let zero_w2 = self.init == LokrInit::Lycoris;
        let mut tensors: Vec<(&str, Tensor)> = Vec::new();
        let mut kaiming = |rows: usize, cols: usize, zero: bool| -> Result<Tensor> {
            if zero {
                Ok(Tensor::zeros((rows, cols), dt, &dev)?)
            } else {
                kaiming_uniform(rows, cols, bc.rng, dt, &dev)
            }
        };
        if full_w1 {
            tensors.push(("lokr_w1", kaiming(out_l, in_m, zero_w1)?));
        } else {
            tensors.push(("lokr_w1_a", kaiming(out_l, r, zero_w1)?));
            tensors.push(("lokr_w1_b", kaiming(r, in_m, false)?));
        }
        if full_w2 {
            tensors.push(("lokr_w2", kaiming(out_k, in_n, zero_w2)?));
        } else {
            tensors.push(("lokr_w2_a", kaiming(out_k, r, false)?));
            tensors.push(("lokr_w2_b", kaiming(r, in_n, zero_w2)?));
        }
        let mut params = Vec::new();
        for (attr, v) in tensors {
            params.push(bc.store.add(param_dict_name(&t.path, attr, bc.adapter), v, false)?);
        }
        Ok(Box::new(LycorisLayer {
            adapter: bc.adapter.to_string(),
            params,
            delta: Kronecker { full_w1, full_w2 },
            scaling: alpha / r as f64,
            rank_dropout: self.lycoris.rank_dropout,
            rank_dropout_scale: self.rank_dropout_scale,
            module_dropout: self.lycoris.module_dropout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factorization_follows_peft_docstring() {
        assert_eq!(factorization(256, -1), (16, 16));
        assert_eq!(factorization(128, -1), (8, 16));
        assert_eq!(factorization(127, -1), (1, 127));
        assert_eq!(factorization(128, 4), (4, 32));
        assert_eq!(factorization(64, -1), (8, 8));
        assert_eq!(factorization(32, -1), (4, 8));
        assert_eq!(factorization(160, -1), (10, 16));
        assert_eq!(factorization(160, 3), (2, 80)); // 3 does not divide 160: bounded search
    }
}
