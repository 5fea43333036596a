//! The one place where core errors become JS errors (panics: see `job.rs`), and core
//! warnings JS objects.
use napi::{Error, Status};
use napi_derive::napi;

pub use napi::Result;

pub fn to_js(e: peft_core::Error) -> Error {
    let status = match e {
        peft_core::Error::InvalidArgument { .. } => Status::InvalidArg,
        peft_core::Error::Aborted => Status::Cancelled,
        _ => Status::GenericFailure,
    };
    Error::new(status, e.to_string())
}

pub fn closed(what: &str) -> Error {
    Error::new(Status::GenericFailure, format!("{what} has been disposed; it can no longer be used"))
}

pub fn invalid(name: &str, expected: &str, found: impl std::fmt::Display) -> Error {
    to_js(peft_core::Error::arg(name, expected, found))
}

/// PyTorch's "Trying to backward through the graph a second time", with the way out.
pub fn graph_freed() -> Error {
    Error::new(
        Status::GenericFailure,
        "backward: the graph of this loss was freed by the first backward(); pass { retainGraph: true } to the first call to backward twice",
    )
}

/// A core warning (`peft_core::Warning`) as JS sees it: `code` ("unknown_field",
/// "ignored_field", "non_finite" or "other"), the config key or tensor it is about, and the
/// sentence for people.
#[napi(object)]
pub struct NativeWarning {
    pub code: String,
    pub field: Option<String>,
    pub message: String,
}

pub fn to_js_warnings<W: Into<peft_core::Warning>>(warnings: Vec<W>) -> Vec<NativeWarning> {
    warnings
        .into_iter()
        .map(|w| {
            let w = w.into();
            NativeWarning { code: w.code.as_str().into(), field: w.field, message: w.message }
        })
        .collect()
}
