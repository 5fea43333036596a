//! A warning as it is born: what kind (`code`), the config key or tensor it is about
//! (`field`), and the sentence for people (`message`). Callers act on `code` and `field`
//! (the CLI refuses a misspelled flag, the unknown field it became) instead of parsing the
//! sentence; the binding carries all three to JS as `{ code, field, message }`.
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningCode {
    /// A config key the method does not have: kept and written back, not used (PEFT drops
    /// it with a warning).
    UnknownField,
    /// A key that is read but has no effect here (`runtime_config`, `fan_in_fan_out` on a
    /// layer that is not Conv1D, ...).
    IgnoredField,
    /// An adapter tensor holding NaN or infinite values; `field` is its key in the file.
    NonFinite,
    /// A value the config gave, replaced by one that fits the model (prefix tuning's
    /// `token_dim` on a model with fewer key/value heads than query heads).
    Adjusted,
    /// Anything else: the message says it.
    Other,
}

impl WarningCode {
    /// The spelling JS sees (`warning.code`).
    pub fn as_str(self) -> &'static str {
        match self {
            WarningCode::UnknownField => "unknown_field",
            WarningCode::IgnoredField => "ignored_field",
            WarningCode::NonFinite => "non_finite",
            WarningCode::Adjusted => "adjusted",
            WarningCode::Other => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub code: WarningCode,
    /// The config key or tensor name the warning is about, when there is one.
    pub field: Option<String>,
    pub message: String,
}

impl Warning {
    pub fn new(code: WarningCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Warning { code, field: Some(field.into()), message: message.into() }
    }

    /// `key` is not a field of `class`; it is kept in the file as PEFT keeps it.
    pub fn unknown_field(class: &str, key: &str) -> Self {
        Warning::new(WarningCode::UnknownField, key, format!("unknown {class} field `{key}` (kept and written back, not used)"))
    }

    /// A warning of a reader shared by several methods, naming the config class that used it
    /// (prompt tuning's reader serves DEPT and IDPG).
    pub fn renaming_class(mut self, from: &str, to: &str) -> Self {
        self.message = self.message.replace(from, to);
        self
    }

    /// PEFT never saves `runtime_config`; a file that has it gets it ignored.
    pub fn runtime_config() -> Self {
        Warning::new(
            WarningCode::IgnoredField,
            "runtime_config",
            "`runtime_config` is ignored: runtime configurations are only valid at runtime",
        )
    }
}

/// A warning with no code of its own (most are sentences about one method's options).
impl From<String> for Warning {
    fn from(message: String) -> Self {
        Warning { code: WarningCode::Other, field: None, message }
    }
}

impl From<&str> for Warning {
    fn from(message: &str) -> Self {
        message.to_string().into()
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}
