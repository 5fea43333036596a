//! The model's hot ops. `composite` defines the semantics from differentiable candle
//! primitives; the functions re-exported here are what the model calls: fused CPU
//! kernels (f32, f64) with a fused backward, falling back to `composite` for other
//! dtypes and devices. With the `cuda` feature, `cuda/` gives the same ops CUDA kernels
//! (f32, f64, bf16, f16; `kernels/peft_ops.cu`), so they do not fall back there, except
//! `gelu_mul` (no CUDA kernel yet: candle's `gelu` there).
mod attention;
pub mod composite;
mod cross_entropy;
#[cfg(feature = "cuda")]
mod cuda;
mod gelu_mul;
mod kernel;
mod linear_cross_entropy;
mod lora;
pub(crate) mod precomputed;
pub mod qdot;
mod qlinear;
mod rms_norm;
mod rope;
mod silu_mul;
mod softmax;
mod sparse;

pub use attention::{attention_probs, scaled_masked_softmax};
pub use cross_entropy::cross_entropy_sum;
pub use gelu_mul::{gelu_mul, gelu_mul_backward_slices, gelu_mul_slices};
pub use linear_cross_entropy::{default_chunk_rows, linear_cross_entropy_sum, qlinear_cross_entropy_sum};
pub use lora::lora_add;
pub use qlinear::{qlinear, qlinear_input_grad};
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use silu_mul::silu_mul;
pub use softmax::softmax_last_dim;
pub use sparse::{sparse_add, SPARSE_OP_MAX_DENSITY};
