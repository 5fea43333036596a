//! `Tuners::add_fusion_adapter`: an AdapterFusion over trained serial bottleneck adapters (the
//! paper's second stage: the N task adapters are frozen, only the fusion is trained).
use super::AdapterFusionConfig;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::bottleneck::config::{BottleneckConfig, Placement};
use crate::tuners::Tuners;
use serde_json::Value;
use std::path::Path;

/// The fields a fusion copies from its adapters, which must agree on them.
const SHAPE_FIELDS: [&str; 5] = ["bottleneck_size", "non_linearity", "scaling", "sublayers", "layers_to_transform"];

impl Tuners {
    /// Adds adapter `name`, an AdapterFusion over the serial bottleneck adapters `adapters`
    /// (copied into it, frozen); its Q, K, V train once it is made active. Returns warnings.
    pub fn add_fusion_adapter(&mut self, model: &mut CausalLm, adapters: &[&str], name: &str) -> Result<Vec<crate::Warning>> {
        if adapters.len() < 2 || adapters.len() > super::MAX_FUSED {
            return Err(Error::arg("adapters", format!("2 to {} bottleneck adapters to fuse", super::MAX_FUSED), adapters.len()));
        }
        let mut first: Option<(&str, Value)> = None;
        for &a in adapters {
            let c = self.config(a)?;
            let serial = c.as_any().downcast_ref::<BottleneckConfig>().is_some_and(|b| b.placement == Placement::Serial);
            if !serial {
                return Err(Error::arg(
                    "adapters",
                    "serial bottleneck adapters (peft_type \"BOTTLENECK_ADAPTER\")",
                    format!("adapter `{a}` of peft_type \"{}\"", c.peft_type()),
                ));
            }
            let json = c.to_json();
            match &first {
                None => first = Some((a, json)),
                Some((f, fj)) => {
                    if let Some(k) = SHAPE_FIELDS.iter().find(|k| fj[**k] != json[**k]) {
                        return Err(Error::arg(
                            "adapters",
                            format!("adapters of one shape (`{k}` of `{f}`: {})", fj[*k]),
                            format!("`{k}` of `{a}`: {}", json[*k]),
                        ));
                    }
                }
            }
        }
        let (_, shape) = first.expect("at least two adapters");
        let mut v = serde_json::json!({"peft_type": "ADAPTER_FUSION", "num_adapters": adapters.len(), "adapter_names": adapters});
        for k in SHAPE_FIELDS {
            v[k] = shape[k].clone();
        }
        v["base_model_name_or_path"] = shape["base_model_name_or_path"].clone();
        let (config, _) = AdapterFusionConfig::from_value(&v, Path::new("add_fusion_adapter"))?;
        // Each bottleneck layer's params() are its buffers' order in the fusion layer.
        self.add_from_trained(model, adapters, name, Box::new(config), |_, sources| {
            Ok(sources.into_iter().flat_map(|(_, values)| values).collect())
        })
    }
}
