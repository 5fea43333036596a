//! Adapters attached to a loaded model, PEFT-style. The tuner base (`Tuners`, in
//! `lifecycle.rs`) owns what every method shares: matching module paths (`targeting.rs`),
//! injecting, several named adapters, the active set, enable/disable, merge/unmerge,
//! delete, unload and merge-and-unload, and the PEFT naming of parameters and file keys.
//! A method brings two things: a config (`TunerConfig`) that knows how to build its layer
//! for one targeted module, and that layer (`AdapterLayer`).
//!
//! Hook sites (`hooks.rs`), all driven through the model's `ModelHooks` (`attach.rs`): the linear layers (LoRA,
//! IA³, VeRA, LoHa, LoKr, AdaLoRA, SSF, bias tuning, sparse masks: an optional input
//! transform before the base matmul, then an output hook that sees the running result); the
//! prompt (prompt tuning and p-tuning prepend virtual tokens, prefix tuning adds per-layer
//! key/value prefixes; the attention mask is widened as PEFT widens it; DePT also offsets the
//! input embeddings); the norms (LN
//! tuning swaps the weight, SSF scales and shifts the output); and the attention and MLP
//! sublayer outputs (bottleneck and parallel adapters). A method implements the
//! `AdapterLayer` methods of its sites; the ones that are not linear-only list their sites
//! in `TunerConfig::hook_sites`. Each method lives in one folder next to `lora/`.
pub mod adalora;
mod attach;
pub mod aux_loss;
pub mod bias;
pub mod bottleneck;
pub mod bounds;
pub mod child_tuning;
pub mod compacter;
pub mod defaults;
pub mod dept;
pub mod dylora;
pub mod fields;
pub mod hooks;
pub mod ia3;
pub mod init;
pub mod lifecycle;
pub mod linalg;
pub mod ln_tuning;
pub mod loha;
pub mod lokr;
pub mod lora;
pub mod lora_dropout;
pub mod low_rank;
pub mod lycoris;
pub mod mam;
mod merging;
pub mod mixlora;
pub mod molora;
pub mod moslora;
pub mod p_tuning;
pub mod patterns;
pub mod prefix_tuning;
pub mod prompt_tuning;
pub mod routing;
pub mod select;
pub mod sora;
pub mod sparse_mask;
pub mod ssf;
pub mod svd_fast;
pub mod targeting;
pub mod unipelt;
pub mod vera;
// Survey methods, part A (issue 16).
pub mod adamix;
pub mod adapter_fusion;
pub mod adapter_soup;
mod frozen_experts;
pub mod idpg;
pub mod mole;
pub mod prefix_propagation;
pub mod smop;
// Survey methods, part B (issue 16): selective/structured masks and LoRA improvements.
pub mod far;
pub mod fish_dip;
pub mod intrinsic_said;
pub mod lt_sft;
pub mod masked_delta;
pub mod periodic_lora;
pub mod s_diff_pruning;
// Survey methods, Laplace-LoRA (issue 16): a posterior over a trained LoRA adapter.
pub mod laplace;
pub mod lpt;

pub use crate::model::PROMPT_ENCODER;
pub use attach::WithTuners;
pub use hooks::{HookSite, Sublayer};
pub use lifecycle::{InjectReport, Tuners};
pub use targeting::{TargetSpec, Targets};

use crate::error::{Error, Result};
use crate::model::{CausalLm, ParamId, ParamStore};
use crate::model::{Ctx, Linear};
use candle_core::{DType, Tensor};
use rand::rngs::StdRng;
use serde_json::Value;
use std::any::Any;
use std::path::Path;

/// Prefix of every adapter parameter name: PEFT's `PeftModel.base_model` (the tuner) wraps
/// the transformers model as `.model`, so `base_model.model.<module path>.<param>`.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// The PEFT version whose file format (config fields, defaults, tensor keys) we write.
pub const PEFT_VERSION: &str = "0.21.0";

/// A targeted linear layer as a method sees it when building its adapter layer.
#[derive(Debug, Clone)]
pub struct LinearInfo {
    pub path: String,
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub out_features: usize,
    pub in_features: usize,
}

impl LinearInfo {
    pub fn of(linear: &Linear, store: &ParamStore) -> Result<Self> {
        let (out_features, in_features) = store.get(linear.weight).value().dims2()?;
        Ok(LinearInfo { path: linear.path.clone(), weight: linear.weight, bias: linear.bias, out_features, in_features })
    }
}

/// What `TunerConfig::create_linear` gets besides the target.
pub struct BuildCtx<'a> {
    pub store: &'a mut ParamStore,
    pub adapter: &'a str,
    /// dtype of adapter parameters: the model's, but f32 for f16/bf16 models as PEFT's
    /// `autocast_adapter_dtype` does (small adapters train badly in half precision).
    pub dtype: DType,
    pub rng: &'a mut StdRng,
    /// Trained weights will be loaded over the init (some inits are accepted only then).
    pub loading: bool,
}

/// One method's layer for one module and one adapter name.
pub trait AdapterLayer: Send + Sync {
    fn adapter_name(&self) -> &str;

    /// Its parameters in the store (named as PEFT's `named_parameters()`).
    fn params(&self) -> Vec<ParamId>;

    /// Replaces the input of the base matmul (IA³ on feed-forward layers scales it). None: unchanged.
    fn transform_input(&self, _x: &Tensor, _ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The new running result from the layer input `x` and `result` (the base output plus
    /// the contributions of adapters earlier in the active list, as in PEFT's loop).
    /// Default: unchanged (layers at other hook sites).
    fn forward(&self, _base: &Linear, _x: &Tensor, result: Tensor, _ctx: &Ctx) -> Result<Tensor> {
        Ok(result)
    }

    /// Prompt site: virtual token embeddings [n, hidden] prepended to the input embeddings.
    fn virtual_tokens(&self, _ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Prompt site: virtual token embeddings [b, n, hidden] that depend on the instance (SMoP's
    /// routed prompts, IDPG's generated ones), from the input at prefill. Default: none.
    fn instance_tokens(&self, _inputs: &crate::model::PromptInputs, _ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Prompt site: the decoder layer whose input the adapter's `instance_tokens` replace its
    /// `virtual_tokens` (placeholders, hidden from the tokens below it) in (LPT). None (the
    /// default): `instance_tokens` are prepended to the input.
    fn late_layer(&self) -> Option<usize> {
        None
    }

    /// Prompt site: the input tokens' embeddings [b, t, hidden] changed (DePT's position-wise
    /// offsets); `past` real tokens came before them. Default: unchanged.
    fn input_embeddings(&self, x: Tensor, _past: usize, _ctx: &Ctx) -> Result<Tensor> {
        Ok(x)
    }

    /// Prompt site: per decoder layer, keys and values [kv_heads, n, head_dim] attended
    /// before the tokens (PEFT's prefix `past_key_values`).
    fn kv_prefix(&self, _ctx: &Ctx) -> Result<Option<Vec<(Tensor, Tensor)>>> {
        Ok(None)
    }

    /// Attention site (`model.layers.{i}.self_attn`): this adapter's gate [b, t] on its own
    /// key/value prefix, per query, from the attention input x [b, t, hidden] (UniPELT's
    /// G_P scales P_K and P_V). None (the default): the prefix enters ungated.
    fn prefix_gate(&self, _x: &Tensor, _ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Norm site: the weight to normalise with instead of `weight` (LN tuning).
    fn norm_weight(&self, _weight: &Tensor, _ctx: &Ctx) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Norm site: the norm's output transformed (SSF after a norm). Default: unchanged.
    fn norm_output(&self, y: Tensor, _ctx: &Ctx) -> Result<Tensor> {
        Ok(y)
    }

    /// Sublayer site: the attention or MLP output (before the residual add) from the
    /// sublayer input (the normed hidden state) and the running output. Default: unchanged.
    fn sublayer(&self, _input: &Tensor, output: Tensor, _ctx: &Ctx) -> Result<Tensor> {
        Ok(output)
    }

    /// Tensors in the store that belong to the adapter but are never trained (PEFT's
    /// buffers: VeRA's shared projections, a sparse mask's indices), removed with it, and
    /// saved and loaded with it unless the config's `saves_buffers` says no. Several layers
    /// may return the same one. Default: none.
    fn buffers(&self) -> Vec<ParamId> {
        Vec::new()
    }

    /// What `save` writes instead of the parameters' values, as (parameter name, tensor)
    /// pairs keyed by `checkpoint_key` (p-tuning saves its encoder's output, as PEFT).
    /// Default: None, the parameters themselves.
    fn export(&self, _store: &ParamStore) -> Result<Option<Vec<(String, Tensor)>>> {
        Ok(None)
    }

    /// The merged bias of the base linear (`bias`: its current one, None when it has none).
    /// None: the method leaves the bias alone (the default).
    fn merge_bias(&mut self, _bias: Option<&Tensor>, _out_features: usize, _store: &ParamStore) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Inverse of `merge_bias`.
    fn unmerge_bias(&mut self, _bias: &Tensor, _store: &ParamStore) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The merged base weight from the current one. Methods that cannot merge keep the default.
    fn merge(&mut self, _weight: &Tensor, _store: &ParamStore) -> Result<Tensor> {
        Err(Error::Unsupported(format!("adapter `{}`: this method cannot be merged into the base weights", self.adapter_name())))
    }

    /// Inverse of `merge`.
    fn unmerge(&mut self, _weight: &Tensor, _store: &ParamStore) -> Result<Tensor> {
        Err(Error::Unsupported(format!("adapter `{}`: this method cannot be unmerged", self.adapter_name())))
    }

    /// The layer as `Any`, for exporters that read one method's layers (GGUF LoRA adapters).
    fn as_any(&self) -> Option<&dyn Any> {
        None
    }

    /// Checks the values just loaded from `file` (index buffers in range). Default: nothing to check.
    fn check_loaded(&self, _store: &ParamStore, _file: &Path) -> Result<()> {
        Ok(())
    }

    /// Called when the adapter is removed without merging: undo any change the layer made
    /// to the base weight at injection (PiSSA's residual). Default: nothing to undo.
    fn restore_base(&self, _store: &ParamStore) -> Result<()> {
        Ok(())
    }
}

/// One method's configuration as the tuner base sees it.
pub trait TunerConfig: Send + Sync + std::fmt::Debug {
    /// PEFT's `peft_type`, e.g. `LORA`.
    fn peft_type(&self) -> &'static str;
    fn targets(&self) -> &TargetSpec;
    /// PEFT rewrites `target_modules` at injection (`all-linear` becomes the module names).
    fn set_target_modules(&mut self, targets: Targets);
    /// What the method targets on LLaMA when `target_modules` is None; `defaults.rs` swaps in
    /// PEFT's per-architecture table for the methods PEFT has. Empty: needs no targets.
    fn default_targets(&self) -> &'static [&'static str] {
        &[]
    }
    fn inference_mode(&self) -> bool;
    fn set_inference_mode(&mut self, on: bool);
    fn set_base_model_name_or_path(&mut self, name: Option<String>);
    /// Whether the layers can be merged into the base weights.
    fn can_merge(&self) -> bool;
    /// Checks that need the model (biases, tied heads) and fills the sizes the config leaves
    /// to it; returns warnings, each with its code and the config key it is about.
    fn check_model(&mut self, _model: &CausalLm, _targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        Ok(Vec::new())
    }
    /// Builds the adapter layer of one targeted linear, adding its parameters to the store.
    fn create_linear(&self, target: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>>;
    /// Methods that attach at other hook sites (`hooks.rs`) list them here; None (the
    /// default) selects linear layers by `targets()` and builds them with `create_linear`.
    fn hook_sites(&self, _model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        Ok(None)
    }
    /// Builds the layer of one site returned by `hook_sites`.
    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        match site {
            HookSite::Linear(info) => self.create_linear(info, bc),
            _ => Err(Error::Unsupported(format!("{}: no layer for the hook site `{}`", self.peft_type(), site.path()))),
        }
    }
    /// `adapter_config.json` as PEFT writes it: every field of the PEFT config class.
    fn to_json(&self) -> Value;
    /// The key of a parameter in `adapter_model.safetensors`.
    fn checkpoint_key(&self, param_name: &str, adapter: &str) -> String {
        remove_adapter_name(param_name, adapter)
    }
    /// Whether the layers' `buffers` are saved with the adapter (VeRA's `save_projection`).
    fn saves_buffers(&self) -> bool {
        true
    }
    /// The tensor saved under `key` from the parameter's value (AdaLoRA keeps only the ranks
    /// its allocation left). Default: the value itself.
    fn checkpoint_tensor(&self, _key: &str, value: &Tensor) -> Result<Tensor> {
        Ok(value.clone())
    }
    /// Where the config came from (a file, or the caller), for errors.
    fn source(&self) -> &Path;
    fn clone_box(&self) -> Box<dyn TunerConfig>;
    fn as_any(&self) -> &dyn Any;
}

impl Clone for Box<dyn TunerConfig> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Parses an `adapter_config.json` value into the config of its method, by `peft_type`.
/// `source` names the file (or the caller) in errors. Returns the config and its warnings.
pub fn parse_config(value: &Value, raw: Option<&str>, source: &Path) -> Result<(Box<dyn TunerConfig>, Vec<crate::Warning>)> {
    let peft_type = value.get("peft_type").and_then(Value::as_str);
    match peft_type {
        Some("LORA") => {
            let (c, w) = lora::LoraConfig::from_value(value, raw, source)?;
            Ok((Box::new(c), w))
        }
        Some("IA3") => boxed(ia3::Ia3Config::from_value(value, source)),
        Some("VERA") => boxed(vera::VeraConfig::from_value(value, source)),
        Some("LOHA") => boxed(loha::LohaConfig::from_value(value, raw, source)),
        Some("LOKR") => boxed(lokr::LokrConfig::from_value(value, raw, source)),
        Some("ADALORA") => boxed(adalora::AdaLoraConfig::from_value(value, source)),
        Some("PROMPT_TUNING") => boxed(prompt_tuning::PromptTuningConfig::from_value(value, source)),
        Some("PREFIX_TUNING") => boxed(prefix_tuning::PrefixTuningConfig::from_value(value, source)),
        Some("LN_TUNING") => boxed(ln_tuning::LnTuningConfig::from_value(value, source)),
        Some("BOTTLENECK_ADAPTER") => boxed(bottleneck::BottleneckConfig::from_value(value, source, bottleneck::Placement::Serial)),
        Some("PARALLEL_ADAPTER") => boxed(bottleneck::BottleneckConfig::from_value(value, source, bottleneck::Placement::Parallel)),
        Some("P_TUNING") => boxed(p_tuning::PTuningConfig::from_value(value, source)),
        Some("SSF") => boxed(ssf::SsfConfig::from_value(value, source)),
        Some("BIAS_TUNING") => boxed(bias::BiasTuningConfig::from_value(value, source)),
        Some("DYLORA") => boxed(dylora::DyLoraConfig::from_value(value, source)),
        Some("MAM_ADAPTER") => boxed(mam::MamAdapterConfig::from_value(value, source)),
        Some("UNIPELT") => boxed(unipelt::UniPeltConfig::from_value(value, source)),
        Some("SPARSE_MASK") => boxed(sparse_mask::SparseMaskConfig::from_value(value, source)),
        Some("MOSLORA") => boxed(moslora::MosLoraConfig::from_value(value, source)),
        Some("MOLORA") => boxed(molora::MoLoraConfig::from_value(value, source)),
        Some("MOV") => boxed(molora::MovConfig::from_value(value, source)),
        Some("MIXLORA") => boxed(mixlora::MixLoraConfig::from_value(value, source)),
        Some("LORA_DROPOUT") => boxed(lora_dropout::LoraDropoutConfig::from_value(value, source)),
        Some("SORA") => boxed(sora::SoraConfig::from_value(value, source)),
        Some("CHILD_TUNING") => boxed(child_tuning::ChildTuningConfig::from_value(value, source)),
        Some("COMPACTER") => boxed(compacter::CompacterConfig::from_value(value, source)),
        Some("DEPT") => boxed(dept::DeptConfig::from_value(value, source)),
        Some("ADAPTER_FUSION") => boxed(adapter_fusion::AdapterFusionConfig::from_value(value, source)),
        Some("MOLE") => boxed(mole::MoleConfig::from_value(value, source)),
        Some("ADAMIX") => boxed(adamix::AdaMixConfig::from_value(value, source)),
        Some("SMOP") => boxed(smop::SmopConfig::from_value(value, source)),
        Some("IDPG") => boxed(idpg::IdpgConfig::from_value(value, source)),
        Some("PREFIX_PROPAGATION") => boxed(prefix_propagation::PrefixPropagationConfig::from_value(value, source)),
        Some("FAR") => boxed(far::FarConfig::from_value(value, source)),
        Some("LT_SFT") => boxed(lt_sft::LtSftConfig::from_value(value, source)),
        Some("FISH_DIP") => boxed(fish_dip::FishDipConfig::from_value(value, source)),
        Some("PERIODIC_LORA") => boxed(periodic_lora::PeriodicLoraConfig::from_value(value, source)),
        Some("S_DIFF_PRUNING") => boxed(s_diff_pruning::SDiffPruningConfig::from_value(value, source)),
        Some("INTRINSIC_SAID") => boxed(intrinsic_said::IntrinsicSaidConfig::from_value(value, source)),
        Some("LPT") => boxed(lpt::LptConfig::from_value(value, source)),
        other => Err(Error::InvalidConfig {
            file: source.into(),
            key: "peft_type".into(),
            expected: format!("one of the supported PEFT types: {}", SUPPORTED_PEFT_TYPES.join(", ")),
            found: other.map_or_else(|| value.get("peft_type").map_or("nothing".into(), Value::to_string), |s| format!("\"{s}\"")),
        }),
    }
}

/// Any warning type a method's reader returns (a `Warning`, or a plain sentence).
fn boxed<C: TunerConfig + 'static, W: Into<crate::Warning>>(r: Result<(C, Vec<W>)>) -> Result<(Box<dyn TunerConfig>, Vec<crate::Warning>)> {
    r.map(|(c, w)| (Box::new(c) as Box<dyn TunerConfig>, w.into_iter().map(Into::into).collect()))
}

pub const SUPPORTED_PEFT_TYPES: &[&str] = &[
    "LORA",
    "IA3",
    "VERA",
    "LOHA",
    "LOKR",
    "ADALORA",
    "PROMPT_TUNING",
    "PREFIX_TUNING",
    "LN_TUNING",
    "BOTTLENECK_ADAPTER",
    "PARALLEL_ADAPTER",
    "SSF",
    "BIAS_TUNING",
    "P_TUNING",
    "DYLORA",
    "MAM_ADAPTER",
    "UNIPELT",
    "SPARSE_MASK",
    "MOSLORA",
    "MOLORA",
    "MOV",
    "MIXLORA",
    "LORA_DROPOUT",
    "SORA",
    "CHILD_TUNING",
    "COMPACTER",
    "DEPT",
    "ADAPTER_FUSION",
    "MOLE",
    "ADAMIX",
    "SMOP",
    "IDPG",
    "PREFIX_PROPAGATION",
    "FAR",
    "LT_SFT",
    "FISH_DIP",
    "PERIODIC_LORA",
    "S_DIFF_PRUNING",
    "INTRINSIC_SAID",
    "LPT",
];

/// PEFT's `_remove_adapter_name_from_state_dict_key`: `x.lora_A.default.weight` ->
/// `x.lora_A.weight`; a parameter named directly `x.default` -> `x`.
pub fn remove_adapter_name(key: &str, adapter: &str) -> String {
    if !key.contains('.') {
        return key.to_string();
    }
    if let Some(k) = key.strip_suffix(&format!(".{adapter}")) {
        return k.to_string();
    }
    let (head, suffix) = key.rsplit_once('.').unwrap_or((key, ""));
    let head = head.strip_suffix(&format!(".{adapter}")).unwrap_or(head);
    format!("{head}.{suffix}")
}

/// The name PEFT's `named_parameters()` gives an adapter tensor: `base_model.model.<path>.<attr>.<adapter>.weight`.
pub fn param_name(path: &str, attr: &str, adapter: &str) -> String {
    format!("{PEFT_PREFIX}{path}.{attr}.{adapter}.weight")
}

/// The name PEFT gives a tensor of an `nn.ParameterDict` (IA³, VeRA, LoHa, LoKr, AdaLoRA):
/// `base_model.model.<path>.<attr>.<adapter>`, saved as `base_model.model.<path>.<attr>`.
pub fn param_dict_name(path: &str, attr: &str, adapter: &str) -> String {
    format!("{PEFT_PREFIX}{path}.{attr}.{adapter}")
}
