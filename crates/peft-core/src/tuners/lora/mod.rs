//! LoRA (Hu et al.), rsLoRA scaling, DoRA as a variant; PEFT 0.21 numerics and files.
pub mod config;
pub mod dora;
pub mod layer;
pub mod model;

pub use config::{LoraConfig, LoraInit};
pub use layer::LoraLayer;
