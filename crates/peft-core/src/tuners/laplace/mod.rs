//! Laplace-LoRA (Yang, Robeyns, Wang & Aitchison 2024, "Bayesian Low-rank Adaptation for
//! Large Language Models", ICLR): a post-hoc Laplace approximation over the LoRA weights of a
//! trained adapter, for calibrated predictions. Not a layer: the adapter stays plain LoRA
//! (trained, saved and merged as LoRA); this module fits a Kronecker-factored Gaussian
//! posterior over its A and B matrices and predicts with it.
//! - `fit.rs`: K-FAC curvature over batches (`capture.rs` takes the per-token activations
//!   and output gradients; `kron.rs` accumulates the factors, low rank above a bound);
//! - `posterior.rs`: the posterior, samples, the marginal likelihood and the prior fit;
//! - `predict.rs`: the GLM (probit) and Monte Carlo predictives;
//! - `io.rs`: `laplace_state.safetensors` and `laplace_config.json`.
pub mod capture;
pub mod fit;
pub mod io;
pub mod kron;
pub mod posterior;
pub mod predict;

pub use fit::{Curvature, FitOptions, LaplaceFit};
pub use posterior::LaplacePosterior;
pub use predict::{predict, PredictMethod, PredictOptions, Prediction};
