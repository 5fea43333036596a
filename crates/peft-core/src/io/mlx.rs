//! mlx-lm's LoRA adapters, both ways: `adapters.safetensors` + `adapter_config.json` as
//! mlx-lm's `tuner/utils.py` `load_adapters` reads them. mlx-lm applies one LoRA shape to the
//! modules `lora_parameters.keys` (paths inside a transformer block, e.g. `self_attn.q_proj`)
//! of the last `num_layers` blocks (`model.layers[-num_layers:]`), computing
//! y = W x + scale · (x · lora_a) · lora_b (`tuner/lora.py` `LoRALinear`) with lora_a [in, r]
//! and lora_b [r, out] stored under `model.layers.<i>.<key>.lora_a`; DoRA (`tuner/dora.py`)
//! adds the magnitude `m` [out], PEFT's `lora_magnitude_vector`, with the same formula.
//! PEFT's A [r, in] and B [out, r] are their transposes and its scaling is mlx's absolute
//! `scale` (alpha / r, or alpha / √r for rsLoRA), so PEFT's side is `lora_alpha = scale · r`.
use crate::error::{Error, Result};
use crate::io::adapter::pyjson;
use crate::io::safetensors::{save_file, write_atomic};
use crate::model::CausalLm;
use crate::tuners::lora::layer::LoraLayer;
use crate::tuners::Tuners;
use candle_core::Tensor;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

pub const MLX_WEIGHTS: &str = "adapters.safetensors";
pub const MLX_CONFIG: &str = "adapter_config.json";
const PEFT_PREFIX: &str = "base_model.model.";
const MERGE_HINT: &str = "merge it instead (mergeAndUnload(), then savePretrained or saveGguf), which mlx-lm loads as a plain model";

/// Whether `dir` holds an mlx-lm adapter (its config has `lora_parameters` and no `peft_type`).
pub fn is_mlx_folder(dir: &Path) -> bool {
    let config = || -> Option<Value> { serde_json::from_str(&std::fs::read_to_string(dir.join(MLX_CONFIG)).ok()?).ok() };
    dir.join(MLX_WEIGHTS).is_file() && config().is_some_and(|c| c.get("lora_parameters").is_some() && c.get("peft_type").is_none())
}

/// `model.layers.<i>.<key>` -> (i, key).
fn split_block(path: &str) -> Option<(usize, &str)> {
    let (n, key) = path.strip_prefix("model.layers.")?.split_once('.')?;
    Some((n.parse().ok()?, key))
}

/// Writes adapter `name` as an mlx-lm adapter folder, refusing what mlx-lm cannot express.
pub fn write_mlx_adapter(tuners: &Tuners, model: &CausalLm, name: &str, dir: &Path) -> Result<()> {
    let config = tuners.config(name)?;
    let refuse = |why: String| Error::Unsupported(format!("adapter `{name}`: mlx-lm cannot express {why}; {MERGE_HINT}"));
    if config.peft_type() != "LORA" {
        return Err(refuse(format!("{} (its adapters are LoRA and DoRA only)", config.peft_type())));
    }
    if tuners.is_merged() {
        return Err(Error::Unsupported(format!("adapter `{name}`: it is merged into the base weights; unmerge it first")));
    }
    let mut by_block: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    let mut layers: Vec<(&str, &LoraLayer)> = Vec::new();
    for (path, layer) in tuners.layers_of(name)? {
        let lora = layer
            .as_any()
            .and_then(|a| a.downcast_ref::<LoraLayer>())
            .ok_or_else(|| refuse(format!("`{path}`, which is not a LoRA layer")))?;
        if lora.pissa_init.is_some() {
            return Err(refuse("a PiSSA/OLoRA initialisation (it changed the base weights)".into()));
        }
        let (block, key) = split_block(path).ok_or_else(|| refuse(format!("LoRA on `{path}`, outside the transformer blocks")))?;
        by_block.entry(block).or_default().insert(key.to_string());
        layers.push((path, lora));
    }
    let Some(&(_, first)) = layers.first() else { return Err(Error::Unsupported(format!("adapter `{name}` has no LoRA layers"))) };
    if let Some((path, l)) = layers.iter().find(|(_, l)| l.r != first.r || (l.scaling - first.scaling).abs() > 1e-12 * first.scaling.abs())
    {
        return Err(refuse(format!("a rank or scaling that differs per module (`{path}`: r {} scale {}, first module: r {} scale {}; mlx-lm has one rank and scale)", l.r, l.scaling, first.r, first.scaling)));
    }
    if layers.iter().any(|(_, l)| l.dora.is_some() != first.dora.is_some()) {
        return Err(refuse("DoRA on some modules only".into()));
    }
    let keys = by_block.values().next().cloned().unwrap_or_default();
    if let Some((block, k)) = by_block.iter().find(|(_, k)| **k != keys) {
        return Err(refuse(format!("different modules per layer (layer {block}: {k:?}, others: {keys:?})")));
    }
    let n = model.config.num_hidden_layers;
    let blocks: Vec<usize> = by_block.keys().copied().collect();
    if blocks != (n - blocks.len()..n).collect::<Vec<_>>() {
        return Err(refuse(format!("LoRA on layers {blocks:?}: mlx-lm adapts the last num_layers layers of {n}")));
    }
    let mut tensors = Vec::with_capacity(layers.len() * 3);
    for (path, l) in &layers {
        tensors.push((format!("{path}.lora_a"), model.store.get(l.a).value().t()?.contiguous()?));
        tensors.push((format!("{path}.lora_b"), model.store.get(l.b).value().t()?.contiguous()?));
        if let Some(d) = &l.dora {
            tensors.push((format!("{path}.m"), model.store.get(d.magnitude).value().clone()));
        }
    }
    let config = json!({
        "fine_tune_type": if first.dora.is_some() { "dora" } else { "lora" },
        "num_layers": blocks.len(),
        "lora_parameters": { "rank": first.r, "scale": first.scaling, "dropout": first.dropout, "keys": keys },
    });
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Unsupported(e.to_string()))?;
    // Config and weights go in together (io::folder), as every adapter save does.
    crate::io::folder::write_folder(dir, |tmp| {
        save_file(&tensors, Some(BTreeMap::from([("format".to_string(), "mlx".to_string())])), &tmp.join(MLX_WEIGHTS))?;
        write_atomic(&tmp.join(MLX_CONFIG), text.as_bytes())
    })
}

/// An mlx-lm adapter folder's config and weights as a PEFT LoRA config (JSON text) and state
/// dict, for a model of `n_layers` blocks.
pub fn mlx_to_peft(dir: &Path, tensors: HashMap<String, Tensor>, n_layers: usize) -> Result<(String, HashMap<String, Tensor>)> {
    let path = dir.join(MLX_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let c: Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
    let invalid = |key: &str, expected: &str| Error::InvalidConfig {
        file: path.clone(),
        key: key.into(),
        expected: expected.into(),
        found: c.pointer(&format!("/{}", key.replace('.', "/"))).map_or("nothing".into(), Value::to_string),
    };
    let dora = match c.get("fine_tune_type").and_then(Value::as_str).unwrap_or("lora") {
        "lora" => false,
        "dora" => true,
        _ => return Err(invalid("fine_tune_type", "\"lora\" or \"dora\" (a \"full\" fine-tune is a whole model, not an adapter)")),
    };
    let p = &c["lora_parameters"];
    let rank = p["rank"].as_u64().filter(|&r| r > 0).ok_or_else(|| invalid("lora_parameters.rank", "a positive integer"))?;
    let scale = p["scale"].as_f64().filter(|s| s.is_finite()).ok_or_else(|| invalid("lora_parameters.scale", "a number"))?;
    let dropout = match &p["dropout"] {
        Value::Null => 0.0,
        v => v.as_f64().filter(|d| (0.0..1.0).contains(d)).ok_or_else(|| invalid("lora_parameters.dropout", "a number in [0, 1)"))?,
    };
    let num_layers = c["num_layers"].as_i64().ok_or_else(|| invalid("num_layers", "an integer"))?;
    if num_layers > n_layers as i64 {
        return Err(invalid("num_layers", &format!("at most the model's {n_layers} layers")));
    }
    // mlx-lm's `model.layers[-max(num_layers, 0):]`: -1 and 0 mean every layer.
    let first = if num_layers <= 0 { 0 } else { n_layers - num_layers as usize };
    // The modules: the config's keys, or (mlx-lm's default, every linear) those the file has.
    let keys: BTreeSet<String> = match p.get("keys") {
        Some(Value::Array(k)) => k
            .iter()
            .map(|k| k.as_str().map(String::from).ok_or_else(|| invalid("lora_parameters.keys", "a list of module paths")))
            .collect::<Result<_>>()?,
        None | Some(Value::Null) => {
            tensors.keys().filter_map(|n| split_block(n.strip_suffix(".lora_a")?)).map(|(_, k)| k.to_string()).collect()
        }
        _ => return Err(invalid("lora_parameters.keys", "a list of module paths")),
    };
    let file = dir.join(MLX_WEIGHTS);
    let mut tensors = tensors;
    let mut out = HashMap::new();
    for block in first..n_layers {
        for key in &keys {
            let module = format!("model.layers.{block}.{key}");
            let mut take = |leaf: &str| {
                tensors.remove(&format!("{module}.{leaf}")).ok_or_else(|| Error::Adapter {
                    file: file.clone(),
                    message: format!("`{module}.{leaf}` is missing (keys {keys:?} on the last {} layers)", n_layers - first),
                })
            };
            out.insert(format!("{PEFT_PREFIX}{module}.lora_A.weight"), take("lora_a")?.t()?.contiguous()?);
            out.insert(format!("{PEFT_PREFIX}{module}.lora_B.weight"), take("lora_b")?.t()?.contiguous()?);
            if dora {
                out.insert(format!("{PEFT_PREFIX}{module}.lora_magnitude_vector"), take("m")?);
            }
        }
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(Error::Adapter {
            file,
            message: format!("`{extra}` is not an adapter weight of keys {keys:?} on the last {} layers", n_layers - first),
        });
    }
    let layers = (first > 0).then(|| (first..n_layers).collect::<Vec<_>>());
    let config = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": scale * rank as f64, "lora_dropout": dropout,
        "target_modules": keys, "layers_to_transform": layers, "use_dora": dora, "bias": "none", "fan_in_fan_out": false,
        "init_lora_weights": true, "use_rslora": false,
    });
    Ok((pyjson::dumps(&config), out))
}
