//! The differentiable LLaMA, its parameters, KV cache and generation.
