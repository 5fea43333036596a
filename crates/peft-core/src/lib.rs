//! peft-core: the numerics of peft-node. Pure Rust on candle; no Node here.
pub mod config;
pub mod dtype;
pub mod error;
pub mod io;
pub mod model;
pub mod ops;
pub mod optim;
pub mod state;
pub mod threads;
pub mod tokenizer;
pub mod tuners;
pub mod warning;

pub use config::ModelConfig;
pub use error::{Error, Result};
pub use warning::{Warning, WarningCode};
