//! MAM adapter, `MAM_ADAPTER` (our own `peft_type`, PEFT's file conventions): He et al.
//! 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning", §4.4
//! ("Mix-And-Match adapter"): prefix tuning at the attention (their l = 30 prefix vectors,
//! Li & Liang's P_K, P_V) plus a scaled parallel adapter beside the FFN (eq. 9 with
//! r = 512, s = 4). Built from the two existing layers, unchanged: the prefix layer of
//! `prefix_tuning` at the prompt site and the parallel `bottleneck` layer at each MLP.
//!
//! Files: `adapter_config.json` holds the prefix fields (`num_virtual_tokens`,
//! `prefix_projection`, `encoder_hidden_size`, and the sizes filled from the model) and the
//! adapter's (`bottleneck_size`, `non_linearity`, `scaling`, `init_weights`);
//! `adapter_model.safetensors` holds `prompt_embeddings` (the prefix, PEFT's key for
//! prompt-learning encoders) and `base_model.model.model.layers.{i}.mlp.adapter_{down,up}.{weight,bias}`.
pub mod config;

pub use config::MamAdapterConfig;
