//! The one table of floating-point dtype names: torch's name (what `config.json` writes as
//! `torch_dtype` and what the API reports), the short aliases users type (`bf16`, `half`),
//! the safetensors/ggml storage name, and the byte size. Every entry point (loading, saving,
//! the memory planner, the CLI's flags) reads names through it, so an alias accepted in one
//! place is accepted in all; the binding hands the table to TS (`dtypes()`).
use crate::error::{Error, Result};
use candle_core::DType;

pub struct DTypeName {
    /// torch's name: `float32`, `bfloat16`, ...
    pub name: &'static str,
    /// Other spellings accepted on input (torch's `half`/`double`, the short forms).
    pub aliases: &'static [&'static str],
    /// safetensors' and ggml's type name (`F32`, `BF16`, ...).
    pub storage: &'static str,
    pub bytes: usize,
    pub dtype: DType,
}

pub const DTYPES: &[DTypeName] = &[
    DTypeName { name: "float32", aliases: &["f32", "float"], storage: "F32", bytes: 4, dtype: DType::F32 },
    DTypeName { name: "float16", aliases: &["f16", "half"], storage: "F16", bytes: 2, dtype: DType::F16 },
    DTypeName { name: "bfloat16", aliases: &["bf16"], storage: "BF16", bytes: 2, dtype: DType::BF16 },
    DTypeName { name: "float64", aliases: &["f64", "double"], storage: "F64", bytes: 8, dtype: DType::F64 },
];

/// The entry for a name or alias (exact spelling, as torch's names are).
pub fn find(name: &str) -> Option<&'static DTypeName> {
    DTYPES.iter().find(|d| d.name == name || d.aliases.contains(&name))
}

/// `name` as a dtype; the error names `arg` and lists every accepted spelling.
pub fn parse(name: &str, arg: &str) -> Result<DType> {
    find(name).map(|d| d.dtype).ok_or_else(|| Error::arg(arg, expected(), format!("{name:?}")))
}

/// "float32 (f32, float), float16 (f16, half), ..." for error messages.
pub fn expected() -> String {
    let each: Vec<String> = DTYPES.iter().map(|d| format!("{} ({})", d.name, d.aliases.join(", "))).collect();
    format!("one of {}", each.join(", "))
}

/// torch's name for a float dtype; the integer dtypes by their own names.
pub fn name(d: DType) -> &'static str {
    match DTYPES.iter().find(|x| x.dtype == d) {
        Some(x) => x.name,
        None => match d {
            DType::I64 => "int64",
            DType::U32 => "uint32",
            DType::U8 => "uint8",
            _ => "other",
        },
    }
}
