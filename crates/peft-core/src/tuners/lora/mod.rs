//! LoRA (Hu et al.), rsLoRA scaling, DoRA as a variant; PEFT 0.21 numerics and files.
//! Several LoRA adapters combine into one with `Tuners::add_weighted_adapter` (PEFT's)
//! or `Tuners::compose_lorahub` (LoRAHub's element-wise composition).
mod combine;
pub mod config;
pub mod dora;
pub mod layer;
pub mod lorahub;
pub mod merge_utils;
pub mod model;
pub mod weighted;

pub use config::{LoraConfig, LoraInit};
pub use layer::LoraLayer;
pub use weighted::{WeightedOptions, COMBINATION_TYPES};
