//! `MamAdapterConfig`: one adapter name made of a prefix-tuning config and a parallel
//! bottleneck config, each parsed from the MAM fields by its own reader (so that bad
//! values are rejected with the same key-naming errors).
use crate::error::Result;
use crate::model::CausalLm;
use crate::tuners::bottleneck::{BottleneckConfig, Placement};
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::{HookSite, Sublayer};
use crate::tuners::prefix_tuning::PrefixTuningConfig;
use crate::tuners::prompt_tuning::learning;
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use serde_json::{json, Map, Value};
use std::path::Path;

/// The prompt-learning fields that the prefix part reads and that injection fills.
pub const PREFIX_KEYS: &[&str] = &[
    "num_virtual_tokens",
    "token_dim",
    "num_transformer_submodules",
    "num_attention_heads",
    "num_layers",
    "encoder_hidden_size",
    "prefix_projection",
];

#[derive(Debug, Clone)]
pub struct MamAdapterConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub prefix: PrefixTuningConfig,
    pub adapter: BottleneckConfig,
}

/// The sub-config fields: `keys` of `fields` over the base fields, with `extra` set.
pub fn sub_fields(fields: &Fields, peft_type: &str, keys: &[&str], extra: Value) -> Value {
    let mut m = Map::new();
    for k in ["inference_mode", "base_model_name_or_path", "revision", "task_type"].iter().chain(keys) {
        m.insert(k.to_string(), fields.get(k).clone());
    }
    m.insert("peft_type".into(), peft_type.into());
    if let Value::Object(e) = extra {
        m.extend(e);
    }
    Value::Object(m)
}

/// The prefix part: PEFT's `PrefixTuningConfig` reader on the prefix fields (N(0, 1) init).
pub fn prefix_config(fields: &Fields, source: &Path) -> Result<PrefixTuningConfig> {
    let v = sub_fields(fields, "PREFIX_TUNING", PREFIX_KEYS, json!({"init_weights": null, "modules_to_save": null}));
    Ok(PrefixTuningConfig::from_value(&v, source)?.0)
}

/// `PrefixTuningConfig::check_model` (fills the sizes from the model), then copies them
/// back so that `adapter_config.json` records them, as PEFT's prompt-learning configs do.
pub fn fill_prefix(
    prefix: &mut PrefixTuningConfig,
    fields: &mut Fields,
    model: &CausalLm,
    targets: &[LinearInfo],
) -> Result<Vec<crate::Warning>> {
    let warnings = prefix.check_model(model, targets)?;
    for k in PREFIX_KEYS {
        fields.set(k, prefix.fields.get(k).clone());
    }
    Ok(warnings)
}

/// A hybrid's fields (prompt-learning defaults and `defaults`, unknown fields kept with a
/// warning) and its prefix part.
pub fn parse_with_prefix(
    value: &Value,
    peft_type: &str,
    class: &str,
    defaults: Value,
    source: &Path,
) -> Result<(Fields, PrefixTuningConfig, Vec<crate::Warning>)> {
    let mut all = learning::defaults();
    if let (Some(a), Value::Object(d)) = (all.as_object_mut(), defaults) {
        a.extend(d);
    }
    let (fields, warnings) = Fields::parse(value, peft_type, class, all, source)?;
    fields.no_modules_to_save()?;
    let prefix = prefix_config(&fields, source)?;
    Ok((fields, prefix, warnings))
}

impl MamAdapterConfig {
    /// Defaults: the paper's MAM (l = 30, r = 512, s = 4, ReLU).
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = json!({"num_virtual_tokens": 30, "encoder_hidden_size": null, "prefix_projection": false,
            "bottleneck_size": 512, "non_linearity": "relu", "scaling": 4.0, "init_weights": true});
        let (fields, prefix, warnings) = parse_with_prefix(value, "MAM_ADAPTER", "MamAdapterConfig", defaults, source)?;
        let keys = ["bottleneck_size", "non_linearity", "scaling", "init_weights"];
        let v = sub_fields(
            &fields,
            "PARALLEL_ADAPTER",
            &keys,
            json!({"sublayers": ["mlp"], "layers_to_transform": null, "modules_to_save": null}),
        );
        let adapter = BottleneckConfig::from_fields(
            Fields { map: v.as_object().cloned().unwrap_or_default(), source: source.into() },
            Placement::Parallel,
        )?;
        Ok((MamAdapterConfig { fields, targets: TargetSpec::default(), prefix, adapter }, warnings))
    }
}

impl TunerConfig for MamAdapterConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "MAM_ADAPTER"
    }

    /// Neither part can: a prefix is not a weight, the adapter has a nonlinearity.
    fn can_merge(&self) -> bool {
        false
    }

    fn check_model(&mut self, model: &CausalLm, targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        fill_prefix(&mut self.prefix, &mut self.fields, model, targets)
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        let mut sites = vec![HookSite::prompt(model)];
        sites.extend(HookSite::sublayers(model, Sublayer::Mlp, None));
        Ok(Some(sites))
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        self.adapter.create_linear(t, bc)
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        match site {
            HookSite::Prompt { .. } => self.prefix.create_hook(site, bc),
            _ => self.adapter.create_hook(site, bc),
        }
    }

    /// The prefix is saved as `prompt_embeddings` (PEFT's prompt-learning key); the rest
    /// under PEFT's names without the adapter name.
    fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
        learning::checkpoint_key(param_name, adapter)
    }
}
