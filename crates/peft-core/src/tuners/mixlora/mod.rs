//! MixLoRA (Li et al. 2024, "MixLoRA: Enhancing Large Language Models Fine-Tuning with
//! LoRA-based Mixture of Experts", §3.2, eqs. 5-8): each chosen decoder layer's FFN becomes a
//! sparse mixture of E experts that share the frozen FFN weights and differ by LoRA deltas on
//! its projections, Eᵢ(x) = (W_down + ΔW_downᵢ)·act((W_gate + ΔW_gateᵢ)x) ⊙ (W_up + ΔW_upᵢ)x,
//! ΔW = s·BA. A router picks the top-k experts per token and mixes them with the softmax of
//! their router logits, y = Σ_{i ∈ topk} softmax(W_r x)ᵢ / Σ_{j ∈ topk} softmax(W_r x)ⱼ · Eᵢ(x).
//! Training adds the load-balancing loss of Switch Transformers (Fedus et al. 2022, eq. 4-6,
//! MixLoRA eq. 9): L_aux = α · E · Σᵢ fᵢ Pᵢ, fᵢ the share of the layer's tokens routed to
//! expert i (counted over the k choices, so Σfᵢ = k) and Pᵢ the mean router probability, averaged
//! over the adapted layers (`layer.rs`). The routing is per token: the adapter cannot merge.
//!
//! Our own `peft_type` "MIXLORA". Tensors, at `model.layers.{i}.mlp`: `mixlora_router.weight`
//! [E, hidden], and per projection p in `expert_modules` `<p>.lora_A.weight` [E, r, in] and
//! `<p>.lora_B.weight` [E, out, r] (expert i: index i of the first axis). On Phi-3's fused
//! `gate_up_proj` the names gate_proj/up_proj stand for its two halves.
pub mod layer;

pub use layer::MixLoraLayer;

use crate::config::Activation;
use crate::error::{Error, Result};
use crate::model::layers::GateUpProj;
use crate::model::{CausalLm, ParamId};
use crate::tuners::fields::{config_plumbing, object, Fields};
use crate::tuners::hooks::{HookSite, Sublayer};
use crate::tuners::init::{kaiming_uniform, normal};
use crate::tuners::low_rank::LowRank;
use crate::tuners::molora::num_experts;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::path::Path;

/// The FFN projections an expert may adapt, in the order the layer holds them.
pub const PROJECTIONS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// MixLoRA's defaults (the paper's code: 8 experts, top-2, rank 8, alpha 16, router init
/// N(0, 0.02), aux coefficient 0.001).
pub fn defaults() -> Map<String, Value> {
    object(json!({
        "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "num_experts": 8, "top_k": 2, "router_aux_loss_coef": 0.001,
        "router_init_range": 0.02, "expert_modules": PROJECTIONS, "layers_to_transform": null, "init_weights": true,
        "target_modules": null, "modules_to_save": null
    }))
}

/// Where one projection's base weight lives: the parameter and its rows (a half of a fused gate_up).
#[derive(Debug, Clone, Copy)]
pub struct BaseRows {
    pub weight: ParamId,
    pub offset: usize,
    pub rows: usize,
    pub in_features: usize,
}

/// The frozen FFN of one decoder layer, as its experts share it.
#[derive(Debug, Clone)]
pub struct FfnWeights {
    /// gate, up, down.
    pub proj: [BaseRows; 3],
    pub act: Activation,
}

#[derive(Debug, Clone)]
pub struct MixLoraConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// Each expert's LoRA fields.
    pub low_rank: LowRank,
    pub num_experts: usize,
    pub top_k: usize,
    pub aux_coef: f64,
    pub router_init_range: f64,
    /// Which of `PROJECTIONS` carry expert LoRAs.
    pub expert_modules: [bool; 3],
    /// Per MLP path, set by `check_model`.
    pub ffn: HashMap<String, FfnWeights>,
    pub num_layers: usize,
}

impl MixLoraConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) = Fields::parse(value, "MIXLORA", "MixLoraConfig", defaults(), source)?;
        let low_rank = LowRank::parse(&f, "the rank of each expert's LoRA")?;
        if !f.get("target_modules").is_null() {
            return Err(f.err(
                "target_modules",
                "null (MixLoRA replaces the FFNs: choose layers with `layers_to_transform` and projections with `expert_modules`)",
            ));
        }
        let num_experts = num_experts(&f)?;
        let top_k = f.positive("top_k", "the experts per token")?;
        if top_k > num_experts {
            return Err(f.err("top_k", &format!("at most num_experts ({num_experts})")));
        }
        let names = f.strings("expert_modules")?;
        let what = "a non-empty list of \"gate_proj\", \"up_proj\", \"down_proj\"";
        if names.is_empty() || names.iter().any(|n| !PROJECTIONS.contains(&n.as_str())) {
            return Err(f.err("expert_modules", what));
        }
        let expert_modules = PROJECTIONS.map(|p| names.iter().any(|n| n == p));
        f.layer_indices(usize::MAX)?;
        let c = MixLoraConfig {
            low_rank,
            num_experts,
            top_k,
            aux_coef: f.num_in("router_aux_loss_coef", |x| x >= 0.0 && x.is_finite(), "a number >= 0")?,
            router_init_range: f.num_in("router_init_range", |x| x > 0.0 && x.is_finite(), "a number > 0 (the router's init std)")?,
            expert_modules,
            targets: TargetSpec::default(),
            fields: f,
            ffn: HashMap::new(),
            num_layers: 0,
        };
        Ok((c, warnings))
    }
}

fn rows_of(l: &crate::model::Linear, model: &CausalLm, offset: usize, rows: Option<usize>) -> Result<BaseRows> {
    let (out, inp) = model.store.get(l.weight).value().dims2()?;
    if l.bias.is_some() {
        return Err(Error::Unsupported(format!("MixLoRA: the FFN projection `{}` has a bias, which the experts do not model", l.path)));
    }
    Ok(BaseRows { weight: l.weight, offset, rows: rows.unwrap_or(out), in_features: inp })
}

impl TunerConfig for MixLoraConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "MIXLORA"
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        let layers = self.fields.layer_indices(model.layers.len())?;
        Ok(Some(HookSite::sublayers(model, Sublayer::Mlp, layers.as_deref())))
    }

    /// Records each MLP's frozen weights (the experts share them) and the number of layers.
    fn check_model(&mut self, model: &CausalLm, _targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        self.ffn.clear();
        for block in &model.layers {
            let mlp = &block.mlp;
            let (gate, up) = match &mlp.gate_up {
                GateUpProj::Separate { gate_proj, up_proj } => (rows_of(gate_proj, model, 0, None)?, rows_of(up_proj, model, 0, None)?),
                GateUpProj::Fused { gate_up_proj } => {
                    let half = model.store.get(gate_up_proj.weight).value().dim(0)? / 2;
                    (rows_of(gate_up_proj, model, 0, Some(half))?, rows_of(gate_up_proj, model, half, Some(half))?)
                }
            };
            let down = rows_of(&mlp.down_proj, model, 0, None)?;
            self.ffn.insert(mlp.path.clone(), FfnWeights { proj: [gate, up, down], act: mlp.act });
        }
        self.num_layers = self.hook_sites(model)?.map_or(0, |s| s.len());
        Ok(Vec::new())
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("MixLoRA attaches to the FFN sublayers, not the linear `{}`", t.path)))
    }

    /// Router N(0, router_init_range); each expert's A Kaiming-uniform, B zero (init_weights),
    /// so every expert starts as the frozen FFN and the mixture (weights summing to 1) too.
    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Sublayer { path, hidden, kind: Sublayer::Mlp, .. } = site else {
            return Err(Error::Unsupported(format!("MixLoRA attaches to the FFN sublayers, not `{}`", site.path())));
        };
        let ffn = self.ffn.get(path).ok_or_else(|| Error::Unsupported(format!("MixLoRA: no FFN weights recorded for `{path}`")))?.clone();
        let device: Device = bc.store.get(ffn.proj[0].weight).value().device().clone();
        let (dt, e, r) = (bc.dtype, self.num_experts, self.low_rank.r);
        let router = normal(e, *hidden, self.router_init_range, bc.rng, dt, &device)?;
        let router = bc.store.add(param_name(path, "mixlora_router", bc.adapter), router, false)?;
        let mut experts = [None, None, None];
        for (k, name) in PROJECTIONS.iter().enumerate() {
            if !self.expert_modules[k] {
                continue;
            }
            let (out, inp) = (ffn.proj[k].rows, ffn.proj[k].in_features);
            let a = kaiming_uniform(e * r, inp, bc.rng, dt, &device)?.reshape((e, r, inp))?;
            let b = if self.low_rank.init_weights {
                Tensor::zeros((e, out, r), dt, &device)?
            } else {
                kaiming_uniform(e * out, r, bc.rng, dt, &device)?.reshape((e, out, r))?
            };
            let sub = format!("{path}.{name}");
            let a = bc.store.add(param_name(&sub, "lora_A", bc.adapter), a, false)?;
            let b = bc.store.add(param_name(&sub, "lora_B", bc.adapter), b, false)?;
            experts[k] = Some((a, b));
        }
        Ok(Box::new(MixLoraLayer {
            adapter: bc.adapter.to_string(),
            router,
            experts,
            ffn,
            num_experts: e,
            top_k: self.top_k,
            scaling: self.low_rank.scaling(),
            dropout: self.low_rank.lora_dropout,
            aux_coef: self.aux_coef,
            num_layers: self.num_layers.max(1),
        }))
    }
}
