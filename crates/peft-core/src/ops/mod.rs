//! The model's hot ops. `composite` defines the semantics from differentiable candle
//! primitives; the functions re-exported here are what the model calls.
pub mod composite;

pub use composite::{cross_entropy_sum, rms_norm, rope, silu_mul, softmax_last_dim};
