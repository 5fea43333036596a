//! Sizes an adapter config asks for, bounded by the model's shapes before anything is allocated.
//! `r`, `num_virtual_tokens` and the like come from adapter_config.json files, TS configs and the
//! CLI; a huge value used to reach the allocator first and abort the process ("memory allocation
//! of N bytes failed", issue 15). PEFT itself accepts any positive rank; the bounds here only
//! reject sizes no model can use, so every config PEFT writes for this model still loads.
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// Ranks and bottleneck widths: LoRA's `r` (and DyLoRA's, LoHa's, LoKr's, VeRA's), AdaLoRA's
/// `init_r`/`target_r`, DyLoRA's `r_min`/`eval_rank`, the bottleneck adapters' width. A rank above
/// the widest linear of the model adds nothing a full-rank update would not give.
const RANK_KEYS: &[&str] = &["r", "init_r", "target_r", "r_min", "eval_rank"];

/// Checks every size field of `config` (the config's JSON, hybrid methods' sub-configs included)
/// against `model`; the error names the key, the file and the bound.
pub fn check_sizes(config: &Value, model: &ModelConfig, file: &Path) -> Result<()> {
    let widest = widest_layer(model);
    let vera = config.get("peft_type").and_then(Value::as_str) == Some("VERA");
    let bound = |key: &str| -> Option<(usize, String)> {
        match key {
            // VeRA's `r` sizes two projections shared by every layer (PEFT's default is 256, more
            // than a small model's widest layer): a looser bound
            "r" if vera => Some((4 * widest, format!("4 x the model's widest layer ({}) for VeRA", 4 * widest))),
            k if RANK_KEYS.contains(&k) => Some((widest, format!("the model's widest layer ({widest})"))),
            "num_virtual_tokens" => {
                Some((model.max_position_embeddings, format!("max_position_embeddings ({})", model.max_position_embeddings)))
            }
            // the prompt encoder's MLP/LSTM width: PEFT's default is the hidden size
            // An adapter's bottleneck may be wider than a small model (MAM's default 512 on a
            // 160-wide test model), as an encoder's hidden size may: the same loose bound.
            "encoder_hidden_size" | "bottleneck_size" => Some((4 * widest, format!("4 x the model's widest layer ({})", 4 * widest))),
            "encoder_num_layers" => Some((64, "64".into())),
            _ => None,
        }
    };
    walk(config, "", &bound, file)
}

/// The widest linear layer's in or out features (the vocabulary aside).
pub fn widest_layer(model: &ModelConfig) -> usize {
    model.hidden_size.max(model.intermediate_size).max(model.num_attention_heads * model.head_dim)
}

fn walk(value: &Value, prefix: &str, bound: &dyn Fn(&str) -> Option<(usize, String)>, file: &Path) -> Result<()> {
    let Value::Object(map) = value else { return Ok(()) };
    for (key, v) in map {
        let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        match (key.as_str(), v) {
            ("rank_pattern", Value::Object(pattern)) => {
                for (module, r) in pattern {
                    check(r, bound("r"), &format!("{name}.{module}"), file)?;
                }
            }
            (_, Value::Object(_)) => walk(v, &name, bound, file)?,
            _ => check(v, bound(key), &name, file)?,
        }
    }
    Ok(())
}

fn check(v: &Value, bound: Option<(usize, String)>, key: &str, file: &Path) -> Result<()> {
    let (Some((max, why)), Some(n)) = (bound, v.as_f64()) else { return Ok(()) };
    if n > max as f64 {
        return Err(Error::InvalidConfig {
            file: file.into(),
            key: key.into(),
            expected: format!("at most {why} for this model"),
            found: v.to_string(),
        });
    }
    Ok(())
}
