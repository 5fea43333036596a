//! VeRA (Kopiczko et al. 2024, "Vector-based Random Matrix Adaptation", eq. 2:
//! h = W₀x + Λ_b B Λ_d A x, with A, B frozen random matrices shared by all layers and only
//! the scaling vectors d, b trained), after PEFT 0.21 `tuners/vera` (`VeraConfig`,
//! `VeraModel._find_dim`, `_init_vera_A_vera_B`, `_kaiming_init`, `_get_adapter_state_dict`,
//! `VeraLayer.update_layer`, `Linear`).
pub mod layer;
pub mod torch_rng;

pub use layer::VeraLayer;

use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::fields::{config_plumbing, object, Fields};
use crate::tuners::init::normal;
use crate::tuners::lora::model::check_bias;
use crate::tuners::{param_dict_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig, PEFT_VERSION};
use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};
use std::path::Path;
use torch_rng::{kaiming_init, Mt19937};

/// PEFT 0.21 `VeraConfig().to_dict()`.
pub fn peft_defaults() -> Map<String, Value> {
    object(json!({
        "auto_mapping": null, "base_model_name_or_path": null, "bias": "none", "d_initial": 0.1, "fan_in_fan_out": false,
        "inference_mode": false, "init_weights": true, "layers_pattern": null, "layers_to_transform": null,
        "modules_to_save": null, "peft_type": "VERA", "peft_version": PEFT_VERSION, "projection_prng_key": 0, "r": 256,
        "revision": null, "save_projection": true, "target_modules": null, "task_type": null, "vera_dropout": 0.0
    }))
}

#[derive(Debug, Clone)]
pub struct VeraConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub r: usize,
    pub vera_dropout: f64,
    pub d_initial: f64,
    pub init_weights: bool,
    pub projection_prng_key: u64,
    pub save_projection: bool,
    pub bias: String,
    /// (largest out, largest in) over the targeted linears, set at injection (`_find_dim`).
    pub projection_dims: Option<(usize, usize)>,
}

impl VeraConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (mut f, mut warnings) = Fields::parse(value, "VERA", "VeraConfig", peft_defaults(), source)?;
        f.refuse_unless_default(&["modules_to_save"], &peft_defaults())?;
        f.fix_fan_in_fan_out(&mut warnings)?;
        let r = f.positive("r", "the rank of the shared projections")?;
        let vera_dropout = f.prob("vera_dropout")?;
        let d_initial = f.num("d_initial")?;
        let init_weights = f.bool("init_weights")?;
        let key = f.int("projection_prng_key", "an integer seed")?;
        let projection_prng_key =
            u64::try_from(key).map_err(|_| f.err("projection_prng_key", "a non-negative integer seed (torch's manual_seed)"))?;
        let save_projection = f.bool("save_projection")?;
        let bias = f.opt_str("bias")?.unwrap_or_default();
        if !["none", "all", "vera_only"].contains(&bias.as_str()) {
            return Err(f.err("bias", "\"none\", \"all\" or \"vera_only\""));
        }
        if !save_projection {
            // VeraConfig.__post_init__ warns too; the projections are regenerated bit for bit.
            warnings.push(
                "save_projection is false: vera_A and vera_B are not in the file and are regenerated from projection_prng_key \
                 (torch's CPU generator, reproduced here); set save_projection to true to make the checkpoint self-contained"
                    .into(),
            );
        }
        let targets = f.target_spec()?;
        let c = VeraConfig {
            fields: f,
            targets,
            r,
            vera_dropout,
            d_initial,
            init_weights,
            projection_prng_key,
            save_projection,
            bias,
            projection_dims: None,
        };
        Ok((c, warnings))
    }

    /// `_init_vera_A_vera_B`: one generator seeded with the key draws vera_A [r, in_max]
    /// then vera_B [out_max, r], both `_kaiming_init` (float32, as torch's).
    pub fn projections(&self, (out, inp): (usize, usize), device: &Device) -> Result<(Tensor, Tensor)> {
        let mut g = Mt19937::new(self.projection_prng_key);
        let a = kaiming_init(self.r, inp, &mut g);
        let b = kaiming_init(out, self.r, &mut g);
        Ok((Tensor::from_vec(a, (self.r, inp), device)?, Tensor::from_vec(b, (out, self.r), device)?))
    }
}

impl TunerConfig for VeraConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "VERA"
    }

    /// `TRANSFORMERS_MODELS_TO_VERA_TARGET_MODULES_MAPPING["llama"]`.
    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn can_merge(&self) -> bool {
        true
    }

    /// `_get_adapter_state_dict`: `base_model.vera_A`/`vera_B` only with `save_projection`.
    fn saves_buffers(&self) -> bool {
        self.save_projection
    }

    /// `_find_dim`: the projections are sized by the largest in and out features targeted.
    fn check_model(&mut self, _model: &CausalLm, targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        let warnings = check_bias("VeraConfig", &self.bias, targets)?;
        let out = targets.iter().map(|t| t.out_features).max().unwrap_or(0);
        let inp = targets.iter().map(|t| t.in_features).max().unwrap_or(0);
        self.projection_dims = Some((out, inp));
        Ok(warnings)
    }

    /// `VeraLayer.update_layer` + `reset_vera_parameters`: λ_b zeros and λ_d = d_initial
    /// (`init_weights`), else λ_b ones and λ_d standard normal. The first layer adds the
    /// adapter's projections (`base_model.vera_A.<adapter>`), the others share them.
    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dims = self.projection_dims.ok_or_else(|| Error::Unsupported("VeRA: projection sizes unknown (check_model not run)".into()))?;
        let dev = bc.store.get(t.weight).device();
        let (dt, r) = (bc.dtype, self.r);
        let (name_a, name_b) = (format!("base_model.vera_A.{}", bc.adapter), format!("base_model.vera_B.{}", bc.adapter));
        let (vera_a, vera_b) = match (bc.store.id(&name_a), bc.store.id(&name_b)) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                let (a, b) = self.projections(dims, &dev)?;
                let a = bc.store.add(name_a, a.to_dtype(dt)?, false)?;
                (a, bc.store.add(name_b, b.to_dtype(dt)?, false)?)
            }
        };
        let (lambda_b, lambda_d) = if self.init_weights {
            (Tensor::zeros(t.out_features, dt, &dev)?, (Tensor::ones(r, dt, &dev)? * self.d_initial)?)
        } else {
            (Tensor::ones(t.out_features, dt, &dev)?, normal(1, r, 1.0, bc.rng, dt, &dev)?.flatten_all()?)
        };
        let lambda_b = bc.store.add(param_dict_name(&t.path, "vera_lambda_b", bc.adapter), lambda_b, false)?;
        let lambda_d = bc.store.add(param_dict_name(&t.path, "vera_lambda_d", bc.adapter), lambda_d, false)?;
        Ok(Box::new(VeraLayer {
            adapter: bc.adapter.to_string(),
            lambda_b,
            lambda_d,
            vera_a,
            vera_b,
            in_features: t.in_features,
            out_features: t.out_features,
            dropout: self.vera_dropout,
        }))
    }
}
