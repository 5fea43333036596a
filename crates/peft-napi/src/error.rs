//! The one place where core errors become JS errors (panics: see `job.rs`).
use napi::{Error, Status};

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
