//! Module selection for methods that target modules other than linear layers (norms for
//! LN tuning and SSF): PEFT's `check_target_module_exists` rules (`targeting.rs`) over
//! every module path, keeping those of the kinds the method supports.
use super::targeting::{module_names, Match, Matcher, TargetSpec};
use crate::error::{Error, Result};
use crate::model::CausalLm;
use std::path::Path;

/// The module paths `spec` targets, each accepted by `supported`; `what` names the
/// supported kinds in errors.
pub fn select_modules(
    spec: &TargetSpec,
    model: &CausalLm,
    file: &Path,
    supported: &dyn Fn(&str) -> bool,
    what: &str,
) -> Result<Vec<String>> {
    let m = Matcher::new(spec, file)?;
    let mut hit = Vec::new();
    for key in module_names(model) {
        if m.check(&key) == Match::Yes {
            if !supported(&key) {
                return Err(Error::InvalidConfig {
                    file: file.into(),
                    key: "target_modules".into(),
                    expected: what.into(),
                    found: format!("`{key}`, which this method cannot adapt"),
                });
            }
            hit.push(key);
        }
    }
    if hit.is_empty() {
        return Err(Error::InvalidConfig {
            file: file.into(),
            key: "target_modules".into(),
            expected: what.into(),
            found: format!("{:?}: no module of the base model matched", spec.target_modules),
        });
    }
    Ok(hit)
}

/// Whether `path` is one of the model's RMSNorms.
pub fn is_norm(model: &CausalLm, path: &str) -> bool {
    model.norms().iter().any(|n| n.path == path)
}
