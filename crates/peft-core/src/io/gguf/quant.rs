//! Which ggml type each tensor of an exported model is stored in. `f32`/`f16`/`bf16`/`q8_0`
//! follow `convert_hf_to_gguf.py` (one type throughout, 1-D tensors in f32); `q4_0` and
//! `q4_k_m` follow `llama-quantize` (llama.cpp `src/llama-quant.cpp`,
//! `llama_tensor_get_type_impl`, without `--pure`): the output head (or the tied token
//! embeddings) in Q6_K, and for Q4_K_M also attn_v / ffn_down in Q6_K on the layers
//! `use_more_bits` picks and a fused attn_qkv in Q5_K. Rows a block type cannot split fall
//! back the way `llama_tensor_get_type` does (Q4_K -> Q5_0, Q6_K -> Q8_0, ... -> F16).
use crate::error::{Error, Result};
use candle_core::quantized::GgmlDType;

/// The names `outtype` accepts, as llama.cpp spells them.
pub const OUTTYPE_NAMES: &str = "f32, f16, bf16, q8_0, q4_0 or q4_k_m";

/// A whole-model export type: one ggml type throughout (the converter's), or one of
/// `llama-quantize`'s mixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutType {
    Uniform(GgmlDType),
    /// llama-quantize's Q4_0: Q4_0 with the head in Q6_K.
    Q4_0,
    /// llama-quantize's Q4_K_M.
    Q4KM,
}

impl OutType {
    /// An export type by llama.cpp's name (`--outtype` of the converter, `llama-quantize`'s type).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "f32" => Self::Uniform(GgmlDType::F32),
            "f16" => Self::Uniform(GgmlDType::F16),
            "bf16" => Self::Uniform(GgmlDType::BF16),
            "q8_0" => Self::Uniform(GgmlDType::Q8_0),
            "q4_0" => Self::Q4_0,
            "q4_k_m" => Self::Q4KM,
            _ => return Err(Error::arg("outtype", OUTTYPE_NAMES, format!("\"{name}\""))),
        })
    }

    /// The default type of a 2-D tensor.
    fn base(self) -> GgmlDType {
        match self {
            Self::Uniform(t) => t,
            Self::Q4_0 => GgmlDType::Q4_0,
            Self::Q4KM => GgmlDType::Q4K,
        }
    }

    /// llama.cpp's `general.file_type` (`llama_ftype`); None where llama.cpp has none.
    pub fn file_type(self) -> Option<u32> {
        use GgmlDType::*;
        Some(match self {
            Self::Q4_0 => 2,
            Self::Q4KM => 15,
            Self::Uniform(t) => match t {
                F32 => 0,
                F16 => 1,
                Q4_0 => 2,
                Q4_1 => 3,
                Q8_0 => 7,
                Q5_0 => 8,
                Q5_1 => 9,
                Q2K => 10,
                Q3K => 11,
                Q4K => 14,
                Q5K => 16,
                Q6K => 18,
                BF16 => 32,
                Q8_1 | Q8K => return None,
            },
        })
    }

    /// Whether this is a llama-quantize type (the head gets more bits) rather than a converter one.
    fn quantizer_mix(self) -> bool {
        matches!(self, Self::Q4KM | Self::Q4_0)
    }
}

/// Where a tensor sits, for the choices that depend on it.
pub struct TensorRole<'a> {
    /// The GGUF name, e.g. `blk.3.attn_v.weight`.
    pub name: &'a str,
    /// GGUF dims in HF order (rows first); the row length is the last.
    pub dims: &'a [usize],
    pub layer: Option<usize>,
    pub n_layers: usize,
    /// The model has no `output.weight`: `token_embd` doubles as the head.
    pub tied_head: bool,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i as i64 - (n / 8) as i64).rem_euclid(3) == 2
}

/// The type tensor `role` is stored in under `out`.
pub fn tensor_type(out: OutType, role: &TensorRole) -> GgmlDType {
    use GgmlDType::*;
    if role.dims.len() < 2 {
        return F32;
    }
    let is = |stem: &str| role.name.ends_with(&format!("{stem}.weight"));
    let head = role.name == "output.weight" || (role.tied_head && role.name == "token_embd.weight");
    let more_bits = role.layer.is_some_and(|l| use_more_bits(l, role.n_layers));
    let wanted = match out {
        _ if head && out.quantizer_mix() => Q6K,
        OutType::Q4KM if (is("attn_v") || is("ffn_down")) && more_bits => Q6K,
        OutType::Q4KM if is("attn_qkv") => Q5K,
        _ => out.base(),
    };
    fallback(wanted, role.dims[role.dims.len() - 1])
}

/// llama.cpp's fallback for a row length the block size does not divide.
fn fallback(wanted: GgmlDType, row: usize) -> GgmlDType {
    use GgmlDType::*;
    let second = match wanted {
        Q2K | Q3K => Q4_0,
        Q4K => Q5_0,
        Q5K => Q5_1,
        Q6K | Q8K => Q8_0,
        q => q,
    };
    [wanted, second].into_iter().find(|t| row.is_multiple_of(t.block_size())).unwrap_or(F16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role<'a>(name: &'a str, dims: &'a [usize], layer: Option<usize>) -> TensorRole<'a> {
        TensorRole { name, dims, layer, n_layers: 16, tied_head: true }
    }

    #[test]
    fn q4_k_m_mix_follows_llama_quantize() {
        let q = OutType::Q4KM;
        assert_eq!(tensor_type(q, &role("token_embd.weight", &[1000, 2048], None)), GgmlDType::Q6K);
        assert_eq!(tensor_type(q, &role("blk.0.attn_v.weight", &[512, 2048], Some(0))), GgmlDType::Q6K);
        assert_eq!(tensor_type(q, &role("blk.3.attn_v.weight", &[512, 2048], Some(3))), GgmlDType::Q4K);
        assert_eq!(tensor_type(q, &role("blk.4.ffn_down.weight", &[2048, 8192], Some(4))), GgmlDType::Q6K);
        assert_eq!(tensor_type(q, &role("blk.5.attn_q.weight", &[2048, 576], Some(5))), GgmlDType::Q5_0);
        assert_eq!(tensor_type(q, &role("blk.5.attn_norm.weight", &[2048], Some(5))), GgmlDType::F32);
        assert_eq!(tensor_type(OutType::Q4_0, &role("token_embd.weight", &[1000, 576], None)), GgmlDType::Q8_0);
        assert_eq!(tensor_type(OutType::Uniform(GgmlDType::Q4_0), &role("token_embd.weight", &[1000, 576], None)), GgmlDType::Q4_0);
        assert_eq!(tensor_type(OutType::Uniform(GgmlDType::Q8_0), &role("token_embd.weight", &[1000, 48], None)), GgmlDType::F16);
    }
}
