//! UniPELT, `UNIPELT` (our own `peft_type`, PEFT's file conventions): Mao et al. 2022,
//! "UniPELT: A Unified Framework for Parameter-Efficient Language Model Tuning", §3.2.
//! Three existing layers, each scaled by a learned gate G = σ(W_G x + b_G) (W_G: [1, d],
//! one scalar per token):
//!
//! - LoRA on W_q and W_v (`lora`): h = W₀x + G_L · s·B A x, G_L from the linear's input x;
//! - prefix tuning (`prefix_tuning`): P_K, P_V at every attention, multiplied by G_P, G_P
//!   from the attention's input x (the normed hidden state that feeds W_q, W_k, W_v);
//! - a serial bottleneck adapter after the FFN (`bottleneck`, Houlsby):
//!   h_F ← h_F + G_A · A(h_F), G_A from the adapter's input h_F (the FFN output).
//!
//! The official implementation (github.com/morningmoni/UniPELT: `lora_layers.py`
//! `LoRA_Linear.forward`, `modeling_bert.py` `BertSelfAttention.forward`,
//! `adapters/modeling.py` `Adapter.forward`) uses these same gate inputs and Linear(d, 1)
//! gates, but averages σ(W_G x) over the sequence into one gate per example (built for
//! BERT). Here the gate stays per token, as the paper's G = σ(W_G x) reads: in a causal
//! LM a sequence mean would let later tokens change earlier logits (a leak in training)
//! and change the gate as generation goes on. For the prefix this means query t sees
//! g_t·P_K and g_t·P_V (`model/llama.rs` multiplies the prefix columns' scores and
//! probabilities by g_t). The official LoRA gate replaces LoRA's scaling α/r; with the
//! default `lora_alpha` = `r` (s = 1) the two agree.
pub mod config;
pub mod gate;

pub use config::UniPeltConfig;
pub use gate::{Gate, GatedAdapter, GatedLora, PrefixGate};
