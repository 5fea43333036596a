//! Which modules an adapter attaches to, with PEFT's rules (`tuners_utils.py`:
//! `check_target_module_exists`, `_maybe_include_all_linear_layers`,
//! `_find_minimal_target_modules`, `inject_adapter`'s errors; `utils/other.py`:
//! `get_pattern_key`). Keys are module paths as transformers' `named_modules()` lists them.
use crate::error::{Error, Result};
use crate::model::CausalLm;
use regex::Regex;
use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// `target_modules` / `exclude_modules`: a list (exact name or `.name` suffix) or a string (full regex match).
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    List(Vec<String>),
    Regex(String),
}

/// A value that PEFT accepts as one item or a list (`layers_to_transform`, `layers_pattern`).
#[derive(Debug, Clone, PartialEq)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(x) => vec![x.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The targeting fields every PEFT method config shares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TargetSpec {
    pub target_modules: Option<Targets>,
    pub exclude_modules: Option<Targets>,
    pub layers_to_transform: Option<OneOrMany<i64>>,
    pub layers_pattern: Option<OneOrMany<String>>,
    pub modules_to_save: Option<Vec<String>>,
}

pub const ALL_LINEAR: &str = "all-linear";
/// PEFT condenses target lists at least this long to minimal suffixes (`MIN_TARGET_MODULES_FOR_OPTIMIZATION`).
const MIN_TARGET_MODULES_FOR_OPTIMIZATION: usize = 20;

/// Every module path of the model, in `named_modules()` order (the root "" left out).
pub fn module_names(model: &CausalLm) -> Vec<String> {
    model.module_names()
}

/// Python's `re.fullmatch(pattern, key)`.
pub(crate) fn full_regex(pattern: &str, key: &str, file: &Path) -> Result<Regex> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| Error::InvalidConfig {
        file: file.into(),
        key: key.into(),
        expected: "a regular expression (Rust `regex` syntax: no look-around or backreferences)".into(),
        found: format!("\"{pattern}\": {e}"),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    Yes,
    No,
    Excluded,
}

/// A `TargetSpec` with its regular expressions compiled once.
pub struct Matcher<'a> {
    spec: &'a TargetSpec,
    target_re: Option<Regex>,
    exclude_re: Option<Regex>,
    save_re: Vec<Regex>,
    layer_re: Vec<Regex>,
}

impl<'a> Matcher<'a> {
    pub fn new(spec: &'a TargetSpec, file: &Path) -> Result<Self> {
        let target_re = match &spec.target_modules {
            Some(Targets::Regex(p)) => Some(full_regex(p, "target_modules", file)?),
            _ => None,
        };
        let exclude_re = match &spec.exclude_modules {
            Some(Targets::Regex(p)) => Some(full_regex(p, "exclude_modules", file)?),
            _ => None,
        };
        let save_re = (spec.modules_to_save.iter().flatten())
            .map(|m| full_regex(&format!(r"(^|.*\.){m}($|\..*)"), "modules_to_save", file))
            .collect::<Result<_>>()?;
        // re.match(r".*?\.[^.]*\.(\d+)\.") picks the first numbered segment; with a
        // layers_pattern, the number right after it.
        let layer_re = match spec.layers_pattern.as_ref().map(OneOrMany::to_vec).filter(|v| !v.is_empty()) {
            None => vec![Regex::new(r"^.*?\.[^.]*\.(\d+)\.").expect("static regex")],
            Some(ps) => ps.iter().map(|p| full_regex(&format!(r".*?\.{p}\.(\d+)\..*"), "layers_pattern", file)).collect::<Result<_>>()?,
        };
        Ok(Matcher { spec, target_re, exclude_re, save_re, layer_re })
    }

    /// `check_target_module_exists(config, key)`.
    pub fn check(&self, key: &str) -> Match {
        let s = self.spec;
        match (&s.exclude_modules, &self.exclude_re) {
            (_, Some(re)) if re.is_match(key) => return Match::Excluded,
            (Some(Targets::List(ex)), _) if ex.iter().any(|e| key == e || key.ends_with(&format!(".{e}"))) => return Match::Excluded,
            _ => {}
        }
        if self.save_re.iter().any(|re| re.is_match(key)) {
            return Match::Excluded;
        }
        let list = match (&s.target_modules, &self.target_re) {
            (_, Some(re)) => return if re.is_match(key) { Match::Yes } else { Match::No },
            (Some(Targets::List(l)), _) => l,
            _ => return Match::No,
        };
        if list.iter().any(|t| t == key) {
            return Match::Yes; // an exact name bypasses layers_to_transform, as in PEFT
        }
        if !list.iter().any(|t| key.ends_with(&format!(".{t}"))) {
            return Match::No;
        }
        let wanted = match &s.layers_to_transform {
            Some(OneOrMany::Many(v)) if v.is_empty() => return Match::Yes,
            Some(l) => l.to_vec(),
            None => return Match::Yes,
        };
        let index = self.layer_re.iter().find_map(|re| re.captures(key)).and_then(|c| c[1].parse::<i64>().ok());
        match index {
            Some(i) if wanted.contains(&i) => Match::Yes,
            _ => Match::No,
        }
    }
}

/// The `target_modules` PEFT actually injects with: `all-linear` becomes the set of linear
/// module names minus the output head, and lists of 20 or more are condensed to minimal
/// suffixes. PEFT writes the result back into the config (and so into the saved file).
pub fn resolve_targets(spec: &TargetSpec, model: &CausalLm) -> Option<Targets> {
    let names = module_names(model);
    let mut list: Vec<String> = match &spec.target_modules {
        Some(Targets::Regex(s)) if s.to_lowercase() == ALL_LINEAR => linear_paths(model).into_iter().filter(|p| p != "lm_head").collect(),
        Some(Targets::List(l)) => l.clone(),
        _ => return None,
    };
    let all_linear = matches!(&spec.target_modules, Some(Targets::Regex(_)));
    if list.len() >= MIN_TARGET_MODULES_FOR_OPTIMIZATION {
        let set: HashSet<&String> = list.iter().collect();
        let others: Vec<&String> =
            names.iter().filter(|n| !set.contains(n) && !list.iter().any(|t| n.ends_with(&format!(".{t}")))).collect();
        let minimal = minimal_target_modules(&list, &others);
        if minimal.len() < list.len() {
            list = minimal;
        }
    } else if !all_linear {
        return None;
    }
    Some(Targets::List(list))
}

/// `_find_minimal_target_modules`: the fewest suffixes that select `targets` and none of `others`.
fn minimal_target_modules(targets: &[String], others: &[&String]) -> Vec<String> {
    let suffixes = |s: &str| -> Vec<String> {
        let parts: Vec<&str> = s.split('.').collect();
        (0..parts.len()).map(|i| parts[i..].join(".")).rev().collect()
    };
    let other_suffixes: HashSet<String> = others.iter().flat_map(|o| suffixes(o)).collect();
    let mut items: Vec<(Vec<String>, &String)> = targets.iter().collect::<BTreeSet<_>>().into_iter().map(|t| (suffixes(t), t)).collect();
    items.sort();
    let mut required: Vec<String> = Vec::new();
    for (sfx, item) in items {
        for s in sfx {
            if required.contains(&s) || other_suffixes.contains(&s) {
                continue;
            }
            if !required.iter().any(|r| item.ends_with(&format!(".{r}"))) {
                required.push(s);
                break;
            }
        }
    }
    if required.is_empty() {
        return targets.to_vec();
    }
    required
}

/// Module paths of the linear layers that can carry an adapter.
pub fn linear_paths(model: &CausalLm) -> Vec<String> {
    model.linears().iter().map(|l| l.path.clone()).collect()
}

/// The module paths an adapter with `spec` attaches to, or PEFT's error when none match.
pub fn select(spec: &TargetSpec, model: &CausalLm, file: &Path) -> Result<Vec<String>> {
    let m = Matcher::new(spec, file)?;
    let linears: HashSet<String> = linear_paths(model).into_iter().collect();
    let (mut hit, mut excluded, mut unmatched) = (Vec::new(), false, false);
    for key in module_names(model) {
        match m.check(&key) {
            Match::Excluded => excluded = true,
            Match::No => unmatched = true,
            Match::Yes if linears.contains(&key) => hit.push(key),
            Match::Yes => return Err(unsupported_target(&key, file)),
        }
    }
    if !hit.is_empty() {
        return Ok(hit);
    }
    let message = if excluded && !unmatched {
        "all modules were excluded; check `target_modules`, `exclude_modules` and `modules_to_save`".to_string()
    } else if spec.target_modules.is_none() {
        "no `target_modules` given".to_string()
    } else if !excluded {
        format!("target modules {} not found in the base model{}", describe(spec.target_modules.as_ref()), layer_note(spec))
    } else {
        format!(
            "no modules were targeted: the `target_modules` {} that matched were excluded{}",
            describe(spec.target_modules.as_ref()),
            layer_note(spec)
        )
    };
    Err(Error::InvalidConfig { file: file.into(), key: "target_modules".into(), expected: available(model), found: message })
}

fn unsupported_target(key: &str, file: &Path) -> Error {
    Error::InvalidConfig {
        file: PathBuf::from(file),
        key: "target_modules".into(),
        expected: "linear layers only (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head)".into(),
        found: format!("`{key}`, which is not a linear layer (or is one this model ties or does not support yet)"),
    }
}

fn describe(t: Option<&Targets>) -> String {
    match t {
        Some(Targets::List(l)) => format!("{l:?}"),
        Some(Targets::Regex(r)) => format!("\"{r}\" (a regular expression matched against the full module path)"),
        None => "None".into(),
    }
}

fn layer_note(spec: &TargetSpec) -> String {
    let mut s = String::new();
    if let Some(l) = &spec.layers_to_transform {
        s += &format!(" (layers_to_transform {:?}", l.to_vec());
        if let Some(p) = &spec.layers_pattern {
            s += &format!(", layers_pattern {:?}", p.to_vec());
        }
        s += ")";
    }
    s
}

fn available(model: &CausalLm) -> String {
    let paths = linear_paths(model);
    let mut leaves: Vec<&str> = Vec::new();
    for p in &paths {
        let leaf = p.rsplit('.').next().unwrap_or(p);
        if !leaves.contains(&leaf) {
            leaves.push(leaf);
        }
    }
    format!("names of linear modules: {} (full paths such as `{}`)", leaves.join(", "), paths.first().map_or("", |s| s))
}
