//! An opened GGUF file: its parsed header, typed access to the metadata, and tensors
//! dequantized with candle. The map stays open so that arrays and tensor data are read on demand.
use super::read::{corrupt, parse, Cursor, MetaValue, TensorInfo};
use crate::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    map: memmap2::Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = crate::io::open_file(path, "a GGUF file")?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(corrupt(path, "empty file"));
        }
        // SAFETY: read-only map; the header is validated against its length before any access.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (version, metadata, tensors) = parse(&map, path)?;
        Ok(GgufFile { path: path.into(), version, metadata, tensors, map })
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor as stored (GGUF row order, quantized blocks).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.offset..info.offset + info.size]
    }

    /// Drops a tensor's mapped pages from this process once its bytes were copied out: they
    /// count in RSS beside the copy otherwise, and an 8B model's load would peak at twice its
    /// size. The file is mapped read-only, so a later read faults the bytes back in unchanged.
    pub fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        {
            const PAGE: usize = 4096;
            let start = info.offset.div_ceil(PAGE) * PAGE;
            let end = (info.offset + info.size) / PAGE * PAGE;
            if end > start {
                // SAFETY: a read-only file mapping: MADV_DONTNEED discards clean pages, which the
                // next access reads from the file again (nothing is lost); no reference into
                // these bytes is held here. A refused advice (another page size) is harmless.
                let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
        #[cfg(not(unix))]
        let _ = info;
    }

    /// A tensor dequantized to `dtype`, in the stored row order.
    pub fn tensor(&self, info: &TensorInfo, dtype: DType, device: &Device) -> Result<Tensor> {
        let bytes = self.tensor_bytes(info);
        let ctx = |e: candle_core::Error| corrupt(&self.path, format!("tensor `{}`: {e}", info.name));
        let t = match info.dtype {
            GgmlDType::F32 => Tensor::from_raw_buffer(bytes, DType::F32, &info.dims, device),
            GgmlDType::F16 => Tensor::from_raw_buffer(bytes, DType::F16, &info.dims, device),
            GgmlDType::BF16 => Tensor::from_raw_buffer(bytes, DType::BF16, &info.dims, device),
            q => with_aligned(bytes, |b| {
                let storage = QStorage::from_data(Cow::Borrowed(b), &Device::Cpu, q)?;
                QTensor::new(storage, info.dims.as_slice())?.dequantize(device)
            }),
        };
        t.and_then(|t| t.to_dtype(dtype)).map_err(ctx)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    fn mismatch(&self, key: &str, expected: &str, v: &MetaValue) -> Error {
        corrupt(&self.path, format!("metadata `{key}`: expected {expected}, found {}", v.kind()))
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::UInt(v)) => Ok(Some(*v)),
            Some(MetaValue::Int(v)) if *v >= 0 => Ok(Some(*v as u64)),
            Some(v) => Err(self.mismatch(key, "a non-negative integer", v)),
        }
    }

    /// Floats as f64. An f32 goes through its shortest decimal form, so that `1e-5` written
    /// as f32 reads back as the `1e-5` a config.json holds rather than 9.99999974e-6.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::F32(v)) => Ok(Some(v.to_string().parse().unwrap_or(*v as f64))),
            Some(MetaValue::F64(v)) => Ok(Some(*v)),
            Some(MetaValue::UInt(v)) => Ok(Some(*v as f64)),
            Some(MetaValue::Int(v)) => Ok(Some(*v as f64)),
            Some(v) => Err(self.mismatch(key, "a number", v)),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.mismatch(key, "a string", v)),
        }
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.mismatch(key, "a bool", v)),
        }
    }

    /// Decodes an array (validated while parsing) with `decode(element type, cursor)`.
    fn get_array<T>(
        &self,
        key: &str,
        expected: &str,
        ok: fn(u32) -> bool,
        decode: impl Fn(u32, &mut Cursor) -> Result<T>,
    ) -> Result<Option<Vec<T>>> {
        let (elem_type, len, start) = match self.get(key) {
            None => return Ok(None),
            Some(MetaValue::Array { elem_type, len, start }) if ok(*elem_type) => (*elem_type, *len, *start),
            Some(v) => return Err(self.mismatch(key, expected, v)),
        };
        let mut cur = Cursor { buf: &self.map, pos: start, path: &self.path };
        (0..len).map(|_| decode(elem_type, &mut cur)).collect::<Result<Vec<T>>>().map(Some)
    }

    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.get_array(key, "an array of strings", |t| t == 8, |_, c| c.string(key))
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.get_array(key, "an array of f32", |t| t == 6, |_, c| Ok(f32::from_le_bytes(c.array(key)?)))
    }

    /// Integer arrays of any width whose values fit in i32 (token types are i32 in llama.cpp).
    pub fn get_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let is_int = |t: u32| matches!(t, 0..=5 | 10 | 11);
        self.get_array(key, "an array of integers", is_int, |t, c| {
            let v = match c.value(t, key)? {
                MetaValue::UInt(v) => i64::try_from(v).unwrap_or(i64::MAX),
                MetaValue::Int(v) => v,
                _ => unreachable!("integer element types decode to integers"),
            };
            i32::try_from(v).map_err(|_| corrupt(c.path, format!("metadata `{key}`: value {v} does not fit in i32")))
        })
    }
}

/// Calls `f` on `bytes` at an 8-byte-aligned address: candle views quantized blocks in
/// place and asserts their alignment, which a file with a small `general.alignment` may break.
fn with_aligned<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if (bytes.as_ptr() as usize).is_multiple_of(8) {
        return f(bytes);
    }
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    // SAFETY: the byte view covers only memory owned by `words`, and u8 has no alignment needs.
    let view = unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, bytes.len()) };
    view.copy_from_slice(bytes);
    f(view)
}
