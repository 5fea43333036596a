//! Combining LoRA adapters into a new one: PEFT's `LoraModel.add_weighted_adapter` and
//! `_check_add_weighted_adapter` (`tuners/lora/model.py`, PEFT 0.21). The checks and the
//! new adapter's config live here; the per-module arithmetic is in `combine.rs`.
//!
//! Where we differ from PEFT, on purpose: a name already in use is an error (PEFT returns
//! silently, which hid bugs in its own tests, PEFT PR #3111); `weights` must match
//! `adapters` in length (PEFT's `zip` drops the extra ones); the adapters must be LoRA
//! adapters of one base model; DARE's masks come from a seeded `StdRng`, not torch's RNG;
//! the result never uses rsLoRA (below).
use super::combine::{combine_module, Combination, Recipe};
use super::config::{LoraConfig, LoraInit};
use super::merge_utils::{Merge, SignMethod};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::targeting::Targets;
use crate::tuners::{TunerConfig, Tuners};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

/// The keyword arguments of `add_weighted_adapter` (`svd_driver` is CUDA-only and has none).
#[derive(Debug, Clone)]
pub struct WeightedOptions {
    pub combination_type: String,
    pub svd_rank: Option<usize>,
    pub svd_clamp: Option<f64>,
    /// Only changes the shapes torch computes before truncating: the result is the same.
    pub svd_full_matrices: bool,
    pub density: Option<f64>,
    pub majority_sign_method: String,
    /// Seeds DARE's random masks.
    pub seed: u64,
}

impl Default for WeightedOptions {
    fn default() -> Self {
        WeightedOptions {
            combination_type: "svd".into(),
            svd_rank: None,
            svd_clamp: None,
            svd_full_matrices: true,
            density: None,
            majority_sign_method: "total".into(),
            seed: 0,
        }
    }
}

pub const COMBINATION_TYPES: &[&str] = &[
    "svd",
    "linear",
    "cat",
    "ties",
    "ties_svd",
    "dare_ties",
    "dare_linear",
    "dare_ties_svd",
    "dare_linear_svd",
    "magnitude_prune",
    "magnitude_prune_svd",
];

/// What the checks settle before anything is built.
pub(crate) struct Plan {
    pub recipe: Recipe,
    pub config: LoraConfig,
    pub warnings: Vec<crate::Warning>,
}

/// The config of a LoRA adapter, or an error naming the adapter and its type.
pub(crate) fn lora_config<'t>(tuners: &'t Tuners, name: &str) -> Result<&'t LoraConfig> {
    let c = tuners.config(name)?;
    c.as_any().downcast_ref::<LoraConfig>().ok_or_else(|| {
        Error::arg("adapters", "LoRA adapters only (peft_type \"LORA\")", format!("adapter `{name}` of peft_type \"{}\"", c.peft_type()))
    })
}

fn parse_combination(s: &str) -> Result<Combination> {
    let merge = |m: &str| match m {
        "ties" => Some(Merge::Ties),
        "dare_ties" => Some(Merge::DareTies),
        "dare_linear" => Some(Merge::DareLinear),
        "magnitude_prune" => Some(Merge::MagnitudePrune),
        _ => None,
    };
    let found = match s {
        "cat" => Some(Combination::Cat),
        "linear" => Some(Combination::Factors(Merge::TaskArithmetic)),
        "svd" => Some(Combination::Svd(Merge::TaskArithmetic)),
        _ => match s.strip_suffix("_svd") {
            Some(m) => merge(m).map(Combination::Svd),
            None => merge(s).map(Combination::Factors),
        },
    };
    found.ok_or_else(|| Error::arg("combination_type", format!("one of {}", COMBINATION_TYPES.join(", ")), format!("\"{s}\"")))
}

impl Tuners {
    /// Adds adapter `name`, the combination of `adapters` with `weights` (PEFT's
    /// `add_weighted_adapter`). It is added inactive and frozen. Returns warnings.
    pub fn add_weighted_adapter(
        &mut self,
        model: &mut CausalLm,
        adapters: &[&str],
        weights: &[f64],
        name: &str,
        opts: &WeightedOptions,
    ) -> Result<Vec<crate::Warning>> {
        let plan = self.plan_weighted(adapters, weights, name, opts)?;
        let recipe = plan.recipe;
        let mut warnings = plan.warnings;
        // The new adapter's rank is allocated on injection: refuse a huge svd_rank by its name
        // first (the same bound `bounds::check_sizes` puts on `r`).
        let widest = crate::tuners::bounds::widest_layer(&model.config);
        if matches!(recipe.combination, Combination::Svd(_)) && recipe.new_rank > widest {
            return Err(Error::arg("svd_rank", format!("at most the model's widest layer ({widest})"), recipe.new_rank));
        }
        let report = self.inject(model, name, Box::new(plan.config), 0)?;
        warnings.extend(report.warnings);
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let mut fill = || -> Result<()> {
            for path in &report.targeted {
                let (a, b) = combine_module(self, &model.store, path, adapters, weights, &recipe, &mut rng)?;
                match self.params_at(path, name)[..] {
                    [a_id, b_id, ..] => {
                        model.store.get(a_id).set(&a)?;
                        model.store.get(b_id).set(&b)?;
                    }
                    _ => return Err(Error::Unsupported(format!("adapter `{name}`: no LoRA layer on `{path}` after injection"))),
                }
            }
            Ok(())
        };
        if let Err(e) = fill() {
            self.delete_adapter(model, name)?;
            return Err(e);
        }
        Ok(warnings)
    }

    /// Parameters of adapter `name` at module `path` (LoRA: A, B, then DoRA's magnitude).
    pub(crate) fn params_at(&self, path: &str, name: &str) -> Vec<crate::model::ParamId> {
        self.layers.get(path).and_then(|ls| ls.iter().find(|l| l.adapter_name() == name)).map_or_else(Vec::new, |l| l.params())
    }

    /// The configs of `adapters`, checked: known LoRA adapters of one base model, one
    /// finite weight each.
    pub(crate) fn check_sources(&self, adapters: &[&str], weights: &[f64]) -> Result<Vec<&LoraConfig>> {
        if adapters.is_empty() {
            return Err(Error::arg("adapters", "at least one adapter name", "an empty list"));
        }
        let configs: Vec<&LoraConfig> = adapters.iter().map(|a| lora_config(self, a)).collect::<Result<_>>()?;
        if weights.len() != adapters.len() {
            return Err(Error::arg(
                "weights",
                format!("one weight per adapter ({} for {})", adapters.len(), adapters.join(", ")),
                format!("{} weights", weights.len()),
            ));
        }
        if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
            return Err(Error::arg("weights", "finite numbers", w));
        }
        let base = |c: &LoraConfig| c.fields.get("base_model_name_or_path").clone();
        if let Some((i, c)) = configs.iter().enumerate().find(|(_, c)| base(c) != base(configs[0])) {
            return Err(Error::arg(
                "adapters",
                format!("adapters of one base model (`{}` has base_model_name_or_path {})", adapters[0], base(configs[0])),
                format!("`{}` with base_model_name_or_path {}", adapters[i], base(c)),
            ));
        }
        Ok(configs)
    }

    /// `_check_add_weighted_adapter` and the new config (`replace(peft_config[adapters[0]], ...)`).
    pub(crate) fn plan_weighted(&self, adapters: &[&str], weights: &[f64], name: &str, opts: &WeightedOptions) -> Result<Plan> {
        let configs = self.check_sources(adapters, weights)?;
        if self.names().iter().any(|n| n == name) {
            return Err(Error::arg(
                "adapter_name",
                format!("a new adapter name (in use: {})", self.names().join(", ")),
                format!("\"{name}\""),
            ));
        }
        // A single adapter can only be combined linearly (PEFT).
        let kind = if adapters.len() == 1 { "linear" } else { opts.combination_type.as_str() };
        let combination = parse_combination(kind)?;
        let merge = combination.merge();
        let mut warnings = Vec::new();
        if !matches!(combination, Combination::Svd(_)) && (opts.svd_rank.is_some() || opts.svd_clamp.is_some()) {
            warnings.push(format!("svd_rank and svd_clamp are ignored by combination_type \"{kind}\"").into());
        }
        let density = match (merge.is_some_and(Merge::uses_density), opts.density) {
            (true, None) => return Err(Error::arg("density", format!("a fraction in (0, 1] for combination_type \"{}\"", kind), "none")),
            (true, Some(d)) if !(d > 0.0 && d <= 1.0) => {
                return Err(Error::arg("density", format!("a fraction in (0, 1] (the share of entries kept by \"{}\")", kind), d))
            }
            (true, Some(d)) => d,
            (false, Some(_)) => {
                warnings.push(format!("density is ignored by combination_type \"{}\"", kind).into());
                1.0
            }
            (false, None) => 1.0,
        };
        let sign = match opts.majority_sign_method.as_str() {
            "total" => SignMethod::Total,
            "frequency" => SignMethod::Frequency,
            other => return Err(Error::arg("majority_sign_method", "\"total\" or \"frequency\"", format!("\"{other}\""))),
        };
        if let Some(c) = opts.svd_clamp.filter(|c| !(0.0..=1.0).contains(c)) {
            return Err(Error::arg("svd_clamp", "a quantile in [0, 1]", c));
        }
        if opts.svd_rank == Some(0) {
            return Err(Error::arg("svd_rank", "a positive rank", 0));
        }
        // The most rank any module of an adapter has (its `r` or a `rank_pattern` value).
        let ranks: Vec<usize> = configs.iter().map(|c| c.rank_pattern.iter().map(|(_, r)| *r).fold(c.r, usize::max)).collect();
        let new_rank = match combination {
            Combination::Factors(_) => {
                if let Some(i) = ranks.iter().position(|r| *r != ranks[0]) {
                    return Err(Error::arg(
                        "adapters",
                        format!("adapters of one rank for combination_type \"{kind}\" (`{}` has r = {})", adapters[0], ranks[0]),
                        format!("`{}` with r = {} (use \"cat\" or an *_svd type to combine different ranks)", adapters[i], ranks[i]),
                    ));
                }
                ranks[0]
            }
            Combination::Cat => ranks.iter().sum(),
            Combination::Svd(_) => opts.svd_rank.unwrap_or_else(|| ranks.iter().copied().max().unwrap_or(1)),
        };
        let targets = union_targets(adapters, &configs)?;
        let mut config = configs[0].clone();
        config.r = new_rank;
        config.lora_alpha = new_rank as f64;
        config.rank_pattern.clear();
        config.alpha_pattern.clear();
        // The new adapter's scaling must be 1, so no rsLoRA. PEFT 0.21.0 (and 0.21.2) copies
        // `use_rslora` from the first adapter and so scales the result by √new_rank; PEFT's
        // main branch fixed that (PR #3449) and we follow the fix.
        config.use_rslora = false;
        // The combined weights overwrite the init; a default init leaves the base untouched
        // (a PiSSA source would otherwise take its principal part out of the base again).
        config.init = LoraInit::Default;
        for (k, v) in [
            ("r", json!(new_rank)),
            ("lora_alpha", json!(new_rank)),
            ("rank_pattern", json!({})),
            ("alpha_pattern", json!({})),
            ("use_rslora", json!(false)),
            ("init_lora_weights", json!(true)),
        ] {
            config.fields.set(k, v);
        }
        config.set_target_modules(targets);
        Ok(Plan { recipe: Recipe { combination, new_rank, density, sign, clamp: opts.svd_clamp }, config, warnings })
    }
}

/// PEFT's new `target_modules`: the union of the lists (in first-seen order; PEFT uses a
/// set), or the regular expressions joined as `(a)|(b)`. Mixing the two is refused.
fn union_targets(adapters: &[&str], configs: &[&LoraConfig]) -> Result<Targets> {
    let mut list: Vec<String> = Vec::new();
    let mut regexes: Vec<String> = Vec::new();
    for (name, c) in adapters.iter().zip(configs) {
        match &c.targets.target_modules {
            Some(Targets::List(l)) => l.iter().for_each(|t| {
                if !list.contains(t) {
                    list.push(t.clone())
                }
            }),
            Some(Targets::Regex(r)) => regexes.push(format!("({r})")),
            None => return Err(Error::arg("adapters", "adapters with target_modules", format!("`{name}` without target_modules"))),
        }
        if !list.is_empty() && !regexes.is_empty() {
            return Err(Error::arg(
                "adapters",
                "adapters whose target_modules are all lists or all regular expressions (PEFT cannot combine a mix)",
                format!("`{}` and `{name}` differ", adapters[0]),
            ));
        }
    }
    Ok(if regexes.is_empty() { Targets::List(list) } else { Targets::Regex(regexes.join("|")) })
}
