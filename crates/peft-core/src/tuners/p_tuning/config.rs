//! `PromptEncoderConfig` (`peft_type` "P_TUNING") as PEFT 0.21 reads and writes it.
use super::PromptEncoder;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::init::{kaiming_uniform, normal, uniform};
use crate::tuners::prompt_tuning::learning::{self, Dims};
use crate::tuners::prompt_tuning::PromptEmbedding;
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct PTuningConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub num_virtual_tokens: usize,
    pub dims: Dims,
    pub encoder_hidden_size: usize,
}

impl PTuningConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let mut defaults = learning::defaults();
        defaults.as_object_mut().expect("object").extend(
            json!({"encoder_reparameterization_type": "MLP", "encoder_hidden_size": null, "encoder_num_layers": 2, "encoder_dropout": 0.0})
                .as_object()
                .expect("object")
                .clone(),
        );
        let (fields, mut warnings) = Fields::parse(value, "P_TUNING", "PromptEncoderConfig", defaults, source)?;
        let num_virtual_tokens = learning::check(&fields)?;
        if fields.choice("encoder_reparameterization_type", &["MLP", "LSTM"])? == "LSTM" {
            return Err(fields.err("encoder_reparameterization_type", "\"MLP\" (the LSTM encoder is not supported)"));
        }
        fields.opt_positive("encoder_hidden_size", "the encoder's hidden size")?;
        if fields.positive("encoder_num_layers", "the encoder's layers")? != 2 {
            warnings.push("for MLP, the argument `encoder_num_layers` is ignored. Exactly 2 MLP layers are used (as PEFT)".into());
        }
        if fields.num_in("encoder_dropout", |p| (0.0..1.0).contains(&p), "a probability in [0, 1)")? != 0.0 {
            warnings.push("`encoder_dropout` is ignored by the MLP encoder (as in PEFT)".into());
        }
        Ok((
            PTuningConfig { fields, targets: TargetSpec::default(), num_virtual_tokens, dims: Dims::default(), encoder_hidden_size: 0 },
            warnings,
        ))
    }
}

impl TunerConfig for PTuningConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "P_TUNING"
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn check_model(&mut self, model: &CausalLm, _targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        let (dims, warnings) = learning::fill(&mut self.fields, model, false)?;
        self.dims = dims;
        if self.fields.get("encoder_hidden_size").is_null() {
            self.fields.set("encoder_hidden_size", self.dims.token_dim);
        }
        self.encoder_hidden_size = self.fields.positive("encoder_hidden_size", "the encoder's hidden size")?;
        Ok(warnings)
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        Ok(Some(vec![HookSite::prompt(model)]))
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("p-tuning does not attach to linear layers (`{}`)", t.path)))
    }

    /// `PromptEncoder.__init__`: N(0, 1) embedding, nn.Linear's init for the MLP.
    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Prompt { embed_tokens, .. } = site else {
            return Err(Error::Unsupported(format!("p-tuning attaches to the prompt, not `{}`", site.path())));
        };
        let dev = bc.store.get(*embed_tokens).device();
        let (n, td, hid, dt) = (self.num_virtual_tokens, self.dims.token_dim, self.encoder_hidden_size, bc.dtype);
        let name = |attr: &str| learning::param_name(bc.adapter, attr);
        let emb = if bc.loading { Tensor::zeros((n, td), dt, &dev)? } else { normal(n, td, 1.0, bc.rng, dt, &dev)? };
        let embedding = bc.store.add(name("embedding.weight"), emb, false)?;
        if bc.loading {
            return Ok(Box::new(PromptEmbedding { adapter: bc.adapter.to_string(), embedding }));
        }
        let mut mlp = Vec::new();
        for (i, (out, inp)) in [(hid, td), (hid, hid), (td, hid)].into_iter().enumerate() {
            let w = kaiming_uniform(out, inp, bc.rng, dt, &dev)?;
            let b = uniform(out, 1.0 / (inp as f64).sqrt(), bc.rng, dt, &dev)?;
            let w = bc.store.add(name(&format!("mlp_head.{}.weight", 2 * i)), w, false)?;
            let b = bc.store.add(name(&format!("mlp_head.{}.bias", 2 * i)), b, false)?;
            mlp.push((w, b));
        }
        let mlp = [mlp[0], mlp[1], mlp[2]];
        Ok(Box::new(PromptEncoder { adapter: bc.adapter.to_string(), embedding, mlp }))
    }

    fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
        learning::checkpoint_key(param_name, adapter)
    }
}
