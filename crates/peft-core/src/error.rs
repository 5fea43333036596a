//! One error type for the core. Variants carry the file, key or argument at fault
//! and what was expected, so the Node layer can show a message a user can act on.
use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: file not found ({what})")]
    MissingFile { path: PathBuf, what: String },

    #[error("{path}: expected {what}, found a folder")]
    NotAFile { path: PathBuf, what: String },

    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },

    #[error("{file}: key `{key}`: expected {expected}, found {found}")]
    InvalidConfig { file: PathBuf, key: String, expected: String, found: String },

    #[error("{file}: unsupported model_type `{found}` (supported: {supported})")]
    UnsupportedModelType { file: PathBuf, found: String, supported: String },

    #[error("{file}: corrupted safetensors: {message}")]
    Safetensors { file: PathBuf, message: String },

    #[error("{file}: corrupted or unsupported GGUF: {message}")]
    Gguf { file: PathBuf, message: String },

    #[error("{file}: missing weight `{name}`")]
    MissingWeight { file: PathBuf, name: String },

    /// `because`: the config keys and values the expected shape comes from.
    #[error(
        "{file}: weight `{name}` has shape {found:?}, but the config implies {expected:?} ({because}): the config contradicts the weights"
    )]
    WeightShape { file: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize>, because: String },

    #[error("{file}: weight `{name}` has unsupported dtype {found} (expected f32, f16 or bf16)")]
    WeightDtype { file: PathBuf, name: String, found: String },

    #[error("argument `{name}`: expected {expected}, found {found}")]
    InvalidArgument { name: String, expected: String, found: String },

    #[error("{file}: tokenizer: {message}")]
    Tokenizer { file: PathBuf, message: String },

    #[error("chat template: {message}")]
    Template { message: String },

    #[error("adapter {file}: {message}")]
    Adapter { file: PathBuf, message: String },

    #[error("{0}")]
    Unsupported(String),

    #[error("operation aborted")]
    Aborted,

    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn arg(name: impl Into<String>, expected: impl Into<String>, found: impl ToString) -> Self {
        Error::InvalidArgument { name: name.into(), expected: expected.into(), found: found.to_string() }
    }
}
