//! The one place where core errors and panics become JS errors.
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

/// Runs `f` on a blocking worker thread so the event loop keeps turning; a panic in
/// the core becomes a rejected promise instead of killing the process.
pub async fn off_thread<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::new(Status::GenericFailure, format!("internal error (please report): {msg}")))
        }
        Err(e) => Err(Error::new(Status::GenericFailure, format!("task failed: {e}"))),
    }
}
