//! Prefix-Propagation (Li et al. 2023, "Prefix Propagation: Parameter-Efficient Tuning for Long
//! Sequences", ACL 2023, §3, eq. 4): prefix tuning's per-layer key/value prefixes are replaced by
//! prefix *hidden states* that propagate through the layers. l virtual tokens P₀ are prepended
//! at the input, and at every later layer j the hidden states of those l positions get a trained
//! offset, H_j[:l] ← H_j[:l] + P_j, so each layer's prefix is computed by the model from the
//! previous layer's (keys and values come from the layer's own projections).
//!
//! Placement: layer j's input is layer j−1's output, so P_j is added to the first l positions of
//! the MLP output of layer j−1 (before its residual add: the same sum). The positions are this
//! pass's leading virtual ones (`Ctx::virtual_positions`; none when decoding from a cache, whose
//! prefix keys and values were computed at prefill). P₀ is PEFT's prompt tuning (its fields and
//! inits, `prompt_embeddings`); P₁…P_{L−1} start at zero (ours: the paper gives no init), so a
//! new adapter is prompt tuning. Our own `peft_type` "PREFIX_PROPAGATION"; tensors
//! `prompt_embeddings` [l, d] and `model.layers.{j}.mlp.prefix_propagation.weight` [l, d].
//! Used alone among prompt adapters (its positions are the first l).
use crate::error::{Error, Result};
use crate::model::{CausalLm, Ctx, ParamId};
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::{HookSite, Sublayer};
use crate::tuners::init::normal;
use crate::tuners::prompt_tuning::learning;
use crate::tuners::prompt_tuning::PromptTuningConfig;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct PrefixPropagationConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub prompt: PromptTuningConfig,
    /// true (default): P₁… start at zero; false: N(0, 0.02²) (tests).
    pub init_weights: bool,
}

impl PrefixPropagationConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (prompt, fields, warnings) =
            learning::with_own_fields(value, source, "PREFIX_PROPAGATION", "PrefixPropagationConfig", &[("init_weights", json!(true))])?;
        let init_weights = fields.bool("init_weights")?;
        Ok((PrefixPropagationConfig { fields, targets: TargetSpec::default(), prompt, init_weights }, warnings))
    }
}

impl TunerConfig for PrefixPropagationConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "PREFIX_PROPAGATION"
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn check_model(&mut self, model: &CausalLm, targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        learning::fill_from_prompt(&mut self.prompt, &mut self.fields, model, targets)
    }

    /// The prompt (P₀) and the MLP outputs of layers 0..L−2 (P₁…P_{L−1}).
    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        let mut sites = self.prompt.hook_sites(model)?.unwrap_or_default();
        let before_last: Vec<usize> = (0..model.layers.len().saturating_sub(1)).collect();
        sites.extend(HookSite::sublayers(model, Sublayer::Mlp, Some(&before_last)));
        Ok(Some(sites))
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("Prefix-Propagation does not attach to linear layers (`{}`)", t.path)))
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Sublayer { path, hidden, .. } = site else {
            return self.prompt.create_hook(site, bc);
        };
        let device = bc.store.iter().next().map(|(_, p)| p.value().device().clone()).unwrap_or(Device::Cpu);
        let l = self.prompt.num_virtual_tokens;
        let p = if self.init_weights {
            Tensor::zeros((l, *hidden), bc.dtype, &device)?
        } else {
            normal(l, *hidden, 0.02, bc.rng, bc.dtype, &device)?
        };
        let offset = bc.store.add(param_name(path, "prefix_propagation", bc.adapter), p, false)?;
        Ok(Box::new(PropagationLayer { adapter: bc.adapter.to_string(), offset }))
    }

    fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
        learning::checkpoint_key(param_name, adapter)
    }
}

/// P_j at the MLP output of layer j−1.
#[derive(Debug)]
pub struct PropagationLayer {
    pub adapter: String,
    /// [l, d].
    pub offset: ParamId,
}

impl AdapterLayer for PropagationLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.offset]
    }

    /// `output[:, :l] + P_j` when this pass starts with ≥ l virtual positions, else unchanged.
    fn sublayer(&self, _input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let p = ctx.param(self.offset);
        let (l, t) = (p.dim(0)?, output.dim(1)?);
        if ctx.virtual_positions() < l || t < l {
            return Ok(output);
        }
        let head = (output.narrow(1, 0, l)?.to_dtype(p.dtype())?.broadcast_add(&p.unsqueeze(0)?)?).to_dtype(output.dtype())?;
        if t == l {
            return Ok(head);
        }
        Ok(Tensor::cat(&[&head, &output.narrow(1, l, t - l)?], 1)?)
    }
}
