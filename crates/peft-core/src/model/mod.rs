//! The differentiable LLaMA, its parameters, KV cache and generation.
pub mod batch;
pub mod generate;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod load;
pub mod loss;
pub mod params;
pub mod rope;
pub mod save;
pub mod sampling;

pub use batch::Batch;
pub use kv_cache::KvCache;
pub use llama::{Ctx, Llama};
pub use load::LoadOptions;
pub use params::{ParamId, ParamStore, Parameter};
