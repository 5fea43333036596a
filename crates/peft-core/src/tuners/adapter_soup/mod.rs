//! AdapterSoup (Chronopoulou et al. 2023, "AdapterSoup: Weight Averaging to Improve
//! Generalization of Pretrained Language Models", Findings of EACL 2023, §2): for a new domain,
//! the adapters trained on the domains closest to it are averaged in weight space,
//! θ_soup = (1/k) Σᵢ θᵢ, and the average is used as one adapter (no training). The selection
//! (the k adapters with the lowest loss, i.e. perplexity, on a few samples of the new domain;
//! the paper also selects by text similarity) runs in `src/compose/soup.ts`; this is the
//! average, for adapters of any method with one config (same shapes, same frozen buffers).
//! The result is an ordinary adapter of the sources' method: it saves, loads and merges as they do.
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::Tuners;
use candle_core::Tensor;
use serde_json::Value;

/// Config fields that may differ between the adapters of one soup.
const FREE_FIELDS: [&str; 3] = ["inference_mode", "base_model_name_or_path", "revision"];

fn comparable(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        FREE_FIELDS.iter().for_each(|k| drop(m.remove(*k)));
    }
    v
}

impl Tuners {
    /// Adds adapter `name` (inactive), the uniform weight average of `adapters`, which must
    /// share one config (but for `FREE_FIELDS`) and their frozen buffers. Returns warnings.
    pub fn add_soup_adapter(&mut self, model: &mut CausalLm, adapters: &[&str], name: &str) -> Result<Vec<crate::Warning>> {
        let Some(first) = adapters.first() else {
            return Err(Error::arg("adapters", "at least one adapter to average", 0));
        };
        let config = self.config(first)?.clone_box();
        let json = comparable(config.to_json());
        if json.get("init_lora_weights").is_some_and(Value::is_string) {
            return Err(Error::arg(
                "adapters",
                "adapters whose init leaves the base weights alone",
                format!("`{first}` with init_lora_weights {}", json["init_lora_weights"]),
            ));
        }
        for a in &adapters[1..] {
            let other = comparable(self.config(a)?.to_json());
            if other != json {
                let key = json
                    .as_object()
                    .into_iter()
                    .flatten()
                    .find(|(k, v)| other.get(k.as_str()) != Some(*v))
                    .map_or("peft_type", |(k, _)| k.as_str());
                return Err(Error::arg(
                    "adapters",
                    format!("adapters of one config (`{key}` of `{first}`: {})", json[key]),
                    format!("`{key}` of `{a}`: {}", other[key]),
                ));
            }
        }
        let report = self.inject(model, name, config, 0)?;
        let fill = |t: &Tuners| -> Result<()> {
            for path in &report.targeted {
                let layer = |n: &str| t.layer(path, n).ok_or_else(|| Error::Unsupported(format!("adapter `{n}`: no layer at `{path}`")));
                let target = layer(name)?;
                let sources = adapters.iter().map(|a| layer(a)).collect::<Result<Vec<_>>>()?;
                for (k, id) in target.params().into_iter().enumerate() {
                    let mut sum: Option<Tensor> = None;
                    for s in &sources {
                        let v = model.store.get(s.params()[k]).value().clone();
                        sum = Some(match sum {
                            None => v,
                            Some(acc) => (acc + v)?,
                        });
                    }
                    let mean = (sum.expect("at least one adapter") / adapters.len() as f64)?;
                    model.store.get(id).set(&mean)?;
                }
                for (k, id) in target.buffers().into_iter().enumerate() {
                    let v = model.store.get(sources[0].buffers()[k]).value().clone();
                    for (s, a) in sources.iter().zip(adapters).skip(1) {
                        let other = model.store.get(s.buffers()[k]).value().clone();
                        if (&v - &other)?.abs()?.flatten_all()?.max(0)?.to_dtype(candle_core::DType::F64)?.to_vec0::<f64>()? != 0.0 {
                            return Err(Error::arg(
                                "adapters",
                                format!("adapters with the frozen tensors of `{first}` at `{path}`"),
                                format!("`{a}` with others"),
                            ));
                        }
                    }
                    model.store.get(id).set(&v)?;
                }
            }
            Ok(())
        };
        if let Err(e) = fill(self) {
            self.delete_adapter(model, name)?;
            return Err(e);
        }
        Ok(report.warnings)
    }
}
