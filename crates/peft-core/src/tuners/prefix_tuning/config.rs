//! `PrefixTuningConfig` as PEFT 0.21 reads and writes it, and its build at the prompt site.
use super::{PrefixLayer, Projection};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::init::{kaiming_uniform, normal, uniform};
use crate::tuners::prompt_tuning::learning::{self, Dims};
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct PrefixTuningConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub num_virtual_tokens: usize,
    pub prefix_projection: bool,
    /// `init_weights: "zero"`: a zero prefix (or a zero last projection layer).
    pub zero_init: bool,
    pub dims: Dims,
    pub encoder_hidden_size: usize,
}

impl PrefixTuningConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let mut defaults = learning::defaults();
        defaults.as_object_mut().expect("object").extend(
            json!({"init_weights": null, "encoder_hidden_size": null, "prefix_projection": false}).as_object().expect("object").clone(),
        );
        let (fields, warnings) = Fields::parse(value, "PREFIX_TUNING", "PrefixTuningConfig", defaults, source)?;
        let num_virtual_tokens = learning::check(&fields)?;
        let zero_init = match fields.opt_str("init_weights")? {
            None => false,
            Some(s) if s == "zero" => true,
            Some(_) => return Err(fields.err("init_weights", "null (random) or \"zero\"")),
        };
        fields.opt_positive("encoder_hidden_size", "the projection's hidden size")?;
        let prefix_projection = fields.bool("prefix_projection")?;
        Ok((
            PrefixTuningConfig {
                fields,
                targets: TargetSpec::default(),
                num_virtual_tokens,
                prefix_projection,
                zero_init,
                dims: Dims::default(),
                encoder_hidden_size: 0,
            },
            warnings,
        ))
    }
}

impl TunerConfig for PrefixTuningConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "PREFIX_TUNING"
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn check_model(&mut self, model: &CausalLm, _targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        let (dims, warnings) = learning::fill(&mut self.fields, model, true)?;
        self.dims = dims;
        if self.fields.get("encoder_hidden_size").is_null() {
            self.fields.set("encoder_hidden_size", self.dims.token_dim);
        }
        self.encoder_hidden_size = self.fields.positive("encoder_hidden_size", "the projection's hidden size")?;
        Ok(warnings)
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        Ok(Some(vec![HookSite::prompt(model)]))
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("prefix tuning does not attach to linear layers (`{}`)", t.path)))
    }

    /// `PrefixEncoder.__init__`: N(0, 1) embeddings (nn.Embedding), nn.Linear's init for
    /// the projection; `init_weights: "zero"` zeroes the prefix or the last layer. A loaded
    /// adapter (PEFT's inference-mode encoder) is the saved prefix, without projection.
    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Prompt { config, embed_tokens } = site else {
            return Err(Error::Unsupported(format!("prefix tuning attaches to the prompt, not `{}`", site.path())));
        };
        let Dims { num_virtual_tokens: n, token_dim, num_attention_heads: heads, num_layers } = self.dims;
        let out = num_layers * 2 * token_dim;
        let dev = bc.store.get(*embed_tokens).device();
        let project = self.prefix_projection && !bc.loading;
        let name = |attr: &str| learning::param_name(bc.adapter, attr);
        let emb_dim = if project { token_dim } else { out };
        let emb = if self.zero_init && !project {
            Tensor::zeros((n, emb_dim), bc.dtype, &dev)?
        } else {
            normal(n, emb_dim, 1.0, bc.rng, bc.dtype, &dev)?
        };
        let embedding = bc.store.add(name("embedding.weight"), emb, false)?;
        let projection = if project {
            let hid = self.encoder_hidden_size;
            let w1 = kaiming_uniform(hid, token_dim, bc.rng, bc.dtype, &dev)?;
            let b1 = uniform(hid, 1.0 / (token_dim as f64).sqrt(), bc.rng, bc.dtype, &dev)?;
            let (w2, b2) = if self.zero_init {
                (Tensor::zeros((out, hid), bc.dtype, &dev)?, Tensor::zeros(out, bc.dtype, &dev)?)
            } else {
                (kaiming_uniform(out, hid, bc.rng, bc.dtype, &dev)?, uniform(out, 1.0 / (hid as f64).sqrt(), bc.rng, bc.dtype, &dev)?)
            };
            Some(Projection {
                w1: bc.store.add(name("transform.0.weight"), w1, false)?,
                b1: bc.store.add(name("transform.0.bias"), b1, false)?,
                w2: bc.store.add(name("transform.2.weight"), w2, false)?,
                b2: bc.store.add(name("transform.2.bias"), b2, false)?,
            })
        } else {
            None
        };
        let head_dim = token_dim / heads;
        if head_dim != config.head_dim || heads != config.num_key_value_heads {
            return Err(Error::Unsupported(format!("prefix tuning: {heads} heads of {head_dim} do not fit the model's key/value heads")));
        }
        Ok(Box::new(PrefixLayer { adapter: bc.adapter.to_string(), embedding, projection, num_layers, heads, head_dim }))
    }

    fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
        learning::checkpoint_key(param_name, adapter)
    }
}
