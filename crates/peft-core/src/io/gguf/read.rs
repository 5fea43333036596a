//! A bounds-checked GGUF (v2, v3) reader. Every count and length read from the file is
//! checked against the bytes that remain before anything is allocated, so a damaged or
//! hostile file gives `Error::Gguf` naming it: never a panic, never a huge allocation
//! (an allocation failure aborts the process, and Node with it). candle's
//! `gguf_file::Content::read` allocates whatever a length field says, hence this parser;
//! candle is used only to dequantize block data. Arrays are skipped while parsing and
//! decoded on demand, because a 1 GB array of u8 would otherwise become 8 GB of values.
use crate::error::{Error, Result};
use candle_core::quantized::GgmlDType;
use std::collections::HashMap;
use std::path::Path;

pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value. Arrays stay in the file: see the `get_*_array` getters.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    UInt(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array { elem_type: u32, len: usize, start: usize },
}

impl MetaValue {
    pub(super) fn kind(&self) -> String {
        match self {
            MetaValue::UInt(_) | MetaValue::Int(_) => "an integer".into(),
            MetaValue::F32(_) | MetaValue::F64(_) => "a float".into(),
            MetaValue::Bool(_) => "a bool".into(),
            MetaValue::String(_) => "a string".into(),
            MetaValue::Array { elem_type, len, .. } => format!("an array of {len} {}", type_name(*elem_type)),
        }
    }
}

/// One tensor's header entry. `dims` is in Hugging Face order (outermost first): GGUF
/// stores them innermost first. `offset` is absolute and `offset + size` lies inside the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub offset: usize,
    pub size: usize,
}

pub(crate) fn corrupt(path: &Path, message: impl Into<String>) -> Error {
    Error::Gguf { file: path.into(), message: message.into() }
}

/// ggml's type ids (ggml.h `ggml_type`); the ones candle can dequantize.
pub(crate) fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    use GgmlDType::*;
    Some(match id {
        0 => F32,
        1 => F16,
        2 => Q4_0,
        3 => Q4_1,
        6 => Q5_0,
        7 => Q5_1,
        8 => Q8_0,
        9 => Q8_1,
        10 => Q2K,
        11 => Q3K,
        12 => Q4K,
        13 => Q5K,
        14 => Q6K,
        15 => Q8K,
        30 => BF16,
        _ => return None,
    })
}

pub(crate) fn ggml_type_id(t: GgmlDType) -> u32 {
    (0..=30).find(|&id| ggml_dtype(id) == Some(t)).expect("every GgmlDType has an id")
}

fn ggml_type_name(id: u32) -> String {
    const NAMES: &[&str] = &[
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(id as usize).map_or_else(|| format!("unknown type {id}"), |n| format!("{n} (type {id})"))
}

fn type_name(t: u32) -> &'static str {
    const NAMES: &[&str] = &["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

/// Size in bytes of a fixed-size value type; None for strings and arrays (and unknown types).
fn fixed_size(t: u32) -> Option<usize> {
    match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(corrupt(
                self.path,
                format!("{what}: needs {n} bytes at byte {}, but only {} remain (truncated or corrupt file)", self.pos, self.remaining()),
            ));
        }
        let out = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }
    pub(super) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N as u64, what)?.try_into().expect("take returns N bytes"))
    }
    pub(super) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub(super) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub(super) fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let at = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt(self.path, format!("{what}: invalid UTF-8 in the string at byte {at}")))
    }
    pub(super) fn value(&mut self, t: u32, key: &str) -> Result<MetaValue> {
        Ok(match t {
            0 => MetaValue::UInt(self.array::<1>(key)?[0] as u64),
            1 => MetaValue::Int(i8::from_le_bytes(self.array(key)?) as i64),
            2 => MetaValue::UInt(u16::from_le_bytes(self.array(key)?) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.array(key)?) as i64),
            4 => MetaValue::UInt(self.u32(key)? as u64),
            5 => MetaValue::Int(i32::from_le_bytes(self.array(key)?) as i64),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => MetaValue::Bool(self.array::<1>(key)?[0] != 0),
            8 => MetaValue::String(self.string(key)?),
            10 => MetaValue::UInt(self.u64(key)?),
            11 => MetaValue::Int(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            9 => {
                let elem_type = self.u32(key)?;
                let len = self.u64(key)?;
                let start = self.pos;
                // The smallest encoding of one element bounds the count before we walk it.
                let min: u64 = match elem_type {
                    8 => 8,
                    9 => return Err(corrupt(self.path, format!("metadata `{key}`: nested arrays are not supported"))),
                    t => fixed_size(t)
                        .map(|n| n as u64)
                        .ok_or_else(|| corrupt(self.path, format!("metadata `{key}`: unknown array element type {t}")))?,
                };
                if len.checked_mul(min).is_none_or(|n| n > self.remaining() as u64) {
                    return Err(corrupt(
                        self.path,
                        format!(
                            "metadata `{key}`: array of {len} {} cannot fit in the {} bytes left in the file",
                            type_name(elem_type),
                            self.remaining()
                        ),
                    ));
                }
                if elem_type == 8 {
                    for _ in 0..len {
                        let n = self.u64(key)?;
                        self.take(n, key)?;
                    }
                } else {
                    self.take(len * min, key)?;
                }
                MetaValue::Array { elem_type, len: len as usize, start }
            }
            t => return Err(corrupt(self.path, format!("metadata `{key}`: unknown value type {t}"))),
        })
    }
}

pub(super) type Parsed = (u32, HashMap<String, MetaValue>, Vec<TensorInfo>);

pub(super) fn parse(buf: &[u8], path: &Path) -> Result<Parsed> {
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.take(4, "the GGUF magic")?;
    if magic != b"GGUF" {
        return Err(corrupt(path, format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")")));
    }
    let version = c.u32("the GGUF version")?;
    if !(2..=3).contains(&version) {
        return Err(corrupt(path, format!("GGUF version {version} is not supported (2 or 3; big-endian files are not supported)")));
    }
    let n_tensors = c.u64("the tensor count")?;
    let n_kv = c.u64("the metadata count")?;
    // Smallest encodings: a key-value is 8 (key length) + 4 (type) + 1 byte; a tensor info 8+4+4+8.
    if n_kv.saturating_mul(13).saturating_add(n_tensors.saturating_mul(24)) > c.remaining() as u64 {
        return Err(corrupt(
            path,
            format!(
                "header claims {n_tensors} tensors and {n_kv} metadata entries, more than the {} bytes of the file can hold",
                buf.len()
            ),
        ));
    }
    let mut metadata = HashMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key #{i}"))?;
        let t = c.u32(&key)?;
        let v = c.value(t, &key)?;
        if metadata.insert(key.clone(), v).is_some() {
            return Err(corrupt(path, format!("metadata key `{key}` appears twice")));
        }
    }
    let mut tensors = Vec::new();
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor #{i}"))?;
        let n_dims = c.u32(&name)?;
        if !(1..=4).contains(&n_dims) {
            return Err(corrupt(path, format!("tensor `{name}`: {n_dims} dimensions (ggml allows 1 to 4)")));
        }
        let mut dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<u64>>>()?;
        dims.reverse();
        let type_id = c.u32(&name)?;
        let offset = c.u64(&name)?;
        let dtype = ggml_dtype(type_id)
            .ok_or_else(|| corrupt(path, format!("tensor `{name}`: data type {} is not supported", ggml_type_name(type_id))))?;
        let (block, row) = (dtype.block_size() as u64, *dims.last().expect("1 to 4 dims"));
        let size = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|_| row % block == 0)
            .and_then(|elems| (elems / block).checked_mul(dtype.type_size() as u64));
        let Some(size) = size else {
            return Err(corrupt(path, format!("tensor `{name}`: shape {dims:?} is impossible for {dtype:?} (blocks of {block})")));
        };
        tensors.push((name, dtype, dims, offset, size));
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::UInt(a)) if a.is_power_of_two() => *a,
        Some(v) => return Err(corrupt(path, format!("general.alignment: expected a power of two, found {v:?}"))),
    };
    let data_start = (c.pos as u64).div_ceil(alignment).saturating_mul(alignment);
    let mut infos = Vec::with_capacity(tensors.len());
    let mut names = std::collections::HashSet::new();
    for (name, dtype, dims, offset, size) in tensors {
        if !names.insert(name.clone()) {
            return Err(corrupt(path, format!("tensor `{name}` appears twice")));
        }
        if offset % alignment != 0 {
            return Err(corrupt(path, format!("tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}")));
        }
        let start = data_start.saturating_add(offset);
        if start.saturating_add(size) > buf.len() as u64 {
            return Err(corrupt(
                path,
                format!(
                    "tensor `{name}`: data (bytes {start}..{}) extends past the end of the file ({} bytes)",
                    start.saturating_add(size),
                    buf.len()
                ),
            ));
        }
        let dims = dims.into_iter().map(|d| d as usize).collect();
        infos.push(TensorInfo { name, dtype, dims, offset: start as usize, size: size as usize });
    }
    reject_overlaps(&infos, path)?;
    Ok((version, metadata, infos))
}

/// Two tensors whose data ranges share bytes: writing one through the other (or reading a
/// file crafted so) corrupts both. llama.cpp's loader rejects such files; so do we, naming both.
fn reject_overlaps(infos: &[TensorInfo], path: &Path) -> Result<()> {
    let mut ranges: Vec<&TensorInfo> = infos.iter().filter(|t| t.size > 0).collect();
    ranges.sort_by_key(|t| t.offset);
    for pair in ranges.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.offset < a.offset + a.size {
            return Err(corrupt(
                path,
                format!(
                    "tensors `{}` (bytes {}..{}) and `{}` (bytes {}..{}) share data",
                    a.name,
                    a.offset,
                    a.offset + a.size,
                    b.name,
                    b.offset,
                    b.offset + b.size
                ),
            ));
        }
    }
    Ok(())
}
