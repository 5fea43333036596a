//! `UniPeltConfig`: one adapter name made of a prefix-tuning config, a LoRA config and a
//! serial bottleneck config, each parsed by its own reader from the UniPELT fields.
use super::gate::{Gate, GatedAdapter, GatedLora, PrefixGate};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::bottleneck::{BottleneckConfig, Placement};
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::{HookSite, Sublayer};
use crate::tuners::lora::LoraConfig;
use crate::tuners::mam::config::{fill_prefix, parse_with_prefix, sub_fields};
use crate::tuners::prefix_tuning::PrefixTuningConfig;
use crate::tuners::prompt_tuning::learning;
use crate::tuners::targeting;
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Device;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct UniPeltConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub prefix: PrefixTuningConfig,
    pub lora: LoraConfig,
    pub adapter: BottleneckConfig,
}

impl UniPeltConfig {
    /// Defaults: the paper's GLUE setup scaled to its parts (prefix length 10, LoRA r = 8 on
    /// q_proj and v_proj, adapter bottleneck 48 with ReLU); `lora_alpha` = r so that the
    /// gate alone scales LoRA, as in the official code.
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = json!({"num_virtual_tokens": 10, "encoder_hidden_size": null, "prefix_projection": false,
            "r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": null,
            "bottleneck_size": 48, "non_linearity": "relu", "init_weights": true});
        let (fields, prefix, warnings) = parse_with_prefix(value, "UNIPELT", "UniPeltConfig", defaults, source)?;
        let targets = fields.target_spec()?;
        let lv = sub_fields(&fields, "LORA", &["r", "lora_alpha", "lora_dropout", "target_modules"], json!({}));
        let lora = LoraConfig::from_value(&lv, None, source)?.0;
        let keys = ["bottleneck_size", "non_linearity", "init_weights"];
        let av = sub_fields(
            &fields,
            "BOTTLENECK_ADAPTER",
            &keys,
            json!({"scaling": 1.0, "sublayers": ["mlp"], "layers_to_transform": null, "modules_to_save": null}),
        );
        let adapter = BottleneckConfig::from_fields(
            Fields { map: av.as_object().cloned().unwrap_or_default(), source: source.into() },
            Placement::Serial,
        )?;
        Ok((UniPeltConfig { fields, targets, prefix, lora, adapter }, warnings))
    }
}

fn device_of(bc: &BuildCtx) -> Device {
    bc.store.iter().next().map(|(_, p)| p.device()).unwrap_or(Device::Cpu)
}

impl TunerConfig for UniPeltConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "UNIPELT"
    }

    /// The paper's W_q and W_v.
    fn default_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    /// The gates depend on the input: nothing can be folded into a weight.
    fn can_merge(&self) -> bool {
        false
    }

    fn check_model(&mut self, model: &CausalLm, targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        fill_prefix(&mut self.prefix, &mut self.fields, model, targets)
    }

    /// The prompt (prefix), each attention (G_P), each MLP (gated adapter), and the LoRA linears.
    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        let mut sites = vec![HookSite::prompt(model)];
        sites.extend(HookSite::sublayers(model, Sublayer::Attention, None));
        sites.extend(HookSite::sublayers(model, Sublayer::Mlp, None));
        let paths = targeting::select(&self.targets, model, &self.fields.source)?;
        let by_path: HashMap<String, _> = model.linears().into_iter().map(|l| (l.path.clone(), l)).collect();
        for p in &paths {
            sites.push(HookSite::Linear(LinearInfo::of(by_path[p], &model.store)?));
        }
        Ok(Some(sites))
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let lora = self.lora.create_linear(t, bc)?;
        let device = device_of(bc);
        let gate = Gate::build(&t.path, "gate_lora", t.in_features, bc, &device)?;
        Ok(Box::new(GatedLora { lora, gate }))
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let device = device_of(bc);
        match site {
            HookSite::Prompt { .. } => self.prefix.create_hook(site, bc),
            HookSite::Linear(info) => self.create_linear(info, bc),
            HookSite::Sublayer { path, kind: Sublayer::Attention, hidden, .. } => {
                let gate = Gate::build(path, "gate_prefix", *hidden, bc, &device)?;
                Ok(Box::new(PrefixGate { adapter: bc.adapter.to_string(), gate }))
            }
            HookSite::Sublayer { path, kind: Sublayer::Mlp, hidden, .. } => {
                let adapter = self.adapter.build(site, bc, &device)?;
                let gate = Gate::build(path, "gate_adapter", *hidden, bc, &device)?;
                Ok(Box::new(GatedAdapter { adapter, gate }))
            }
            HookSite::Norm { path, .. } => Err(Error::Unsupported(format!("UniPELT does not attach to the norm `{path}`"))),
        }
    }

    /// The prefix is saved as `prompt_embeddings`; the rest under PEFT's names without
    /// the adapter name (`...q_proj.lora_A.weight`, `...q_proj.gate_lora.weight`, ...).
    fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
        learning::checkpoint_key(param_name, adapter)
    }
}
