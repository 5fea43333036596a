//! `Tuners::add_mole_adapter`: a MoLE over trained LoRA adapters (the paper's setting: the
//! LoRAs are trained first, then frozen while the gates learn).
use super::MoleConfig;
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::lora::LoraLayer;
use crate::tuners::Tuners;
use candle_core::Tensor;
use std::path::Path;

impl Tuners {
    /// Adds adapter `name`, a MoLE over the LoRA adapters `adapters` (of one rank, on the same
    /// modules; each one's scaling is folded into its copied B). It is added inactive; its gates
    /// train once it is made active. Returns warnings.
    pub fn add_mole_adapter(&mut self, model: &mut CausalLm, adapters: &[&str], name: &str) -> Result<Vec<crate::Warning>> {
        if adapters.len() < 2 || adapters.len() > crate::tuners::molora::MAX_EXPERTS {
            return Err(Error::arg(
                "adapters",
                format!("2 to {} LoRA adapters to mix", crate::tuners::molora::MAX_EXPERTS),
                adapters.len(),
            ));
        }
        let first = crate::tuners::lora::weighted::lora_config(self, adapters[0])?;
        let r = first.r;
        let modules = self.modules(adapters[0])?.to_vec();
        for &a in &adapters[1..] {
            let c = crate::tuners::lora::weighted::lora_config(self, a)?;
            if c.r != r {
                return Err(Error::arg(
                    "adapters",
                    format!("LoRA adapters of one rank (`{}`: r = {r})", adapters[0]),
                    format!("`{a}`: r = {}", c.r),
                ));
            }
            if self.modules(a)? != modules.as_slice() {
                return Err(Error::arg(
                    "adapters",
                    format!("LoRA adapters on the same modules as `{}`", adapters[0]),
                    format!("`{a}` on {:?}", self.modules(a)?),
                ));
            }
        }
        let mut v = serde_json::json!({"peft_type": "MOLE", "r": r, "lora_alpha": r, "num_experts": adapters.len(), "adapter_names": adapters,
            "target_modules": modules});
        v["base_model_name_or_path"] = self.config(adapters[0])?.to_json()["base_model_name_or_path"].clone();
        let (config, _) = MoleConfig::from_value(&v, Path::new("add_mole_adapter"))?;
        self.add_from_trained(model, adapters, name, Box::new(config), |path, sources| {
            let (mut a_parts, mut b_parts) = (Vec::new(), Vec::new());
            for (layer, values) in sources {
                let lora = layer.as_any().and_then(|l| l.downcast_ref::<LoraLayer>()).filter(|l| l.dora.is_none() && l.r == r).ok_or_else(
                    || {
                        Error::arg(
                            "adapters",
                            format!("plain LoRA layers of rank {r} at `{path}`"),
                            format!("adapter `{}` (DoRA or another rank there)", layer.adapter_name()),
                        )
                    },
                )?;
                a_parts.push(values[0].clone());
                b_parts.push((&values[1] * lora.scaling)?);
            }
            Ok(vec![Tensor::cat(&a_parts, 0)?, Tensor::cat(&b_parts, 1)?])
        })
    }
}
