//! The differentiable decoder of the LLaMA family, its parameters, KV cache and generation.
pub mod batch;
pub mod checkpoint;
pub mod decoder;
pub mod generate;
pub mod hooks;
pub mod kv_cache;
pub mod layers;
pub mod linear;
pub mod load;
pub mod loss;
pub mod modules;
pub mod params;
pub mod qweight;
pub mod rope;
pub mod sampling;
pub mod save;
pub mod shapes;

pub use batch::Batch;
pub use checkpoint::{Checkpointing, ModelAccess};
pub use decoder::{CausalLm, Ctx};
pub use hooks::{ModelHooks, Prompt, PromptInputs, PROMPT_ENCODER};
pub use kv_cache::KvCache;
pub use layers::{Linear, Norm};
pub use load::LoadOptions;
pub use modules::{Module, ModuleKind};
pub use params::{ParamId, ParamStore, Parameter};
pub use qweight::QWeight;
