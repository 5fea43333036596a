//! The GGUF container: metadata values, the tensor directory, and tensor data encoded to
//! ggml types and streamed one tensor at a time into a temporary file that is renamed into
//! place, so memory stays at one tensor and a crash never leaves a partial file.
//! `model.rs` (whole models) and `lora.rs` (adapters) decide what goes in.
use super::read::{ggml_type_id, DEFAULT_ALIGNMENT};
use crate::error::{Error, Result};
use crate::io::safetensors::tensor_bytes;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::io::Write;
use std::path::Path;

pub(super) enum Val<'a> {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    Strs(&'a [String]),
    I32s(&'a [i32]),
    F32s(&'a [f32]),
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_kv(buf: &mut Vec<u8>, key: &str, v: &Val) {
    put_str(buf, key);
    let array_head = |buf: &mut Vec<u8>, elem_type: u32, len: usize| {
        buf.extend_from_slice(&9u32.to_le_bytes());
        buf.extend_from_slice(&elem_type.to_le_bytes());
        buf.extend_from_slice(&(len as u64).to_le_bytes());
    };
    match v {
        Val::U32(x) => buf.extend(4u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::F32(x) => buf.extend(6u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::Bool(x) => buf.extend(7u32.to_le_bytes().into_iter().chain([*x as u8])),
        Val::Str(s) => {
            buf.extend_from_slice(&8u32.to_le_bytes());
            put_str(buf, s);
        }
        Val::Strs(items) => {
            array_head(buf, 8, items.len());
            items.iter().for_each(|s| put_str(buf, s));
        }
        Val::I32s(items) => {
            array_head(buf, 5, items.len());
            items.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        }
        Val::F32s(items) => {
            array_head(buf, 6, items.len());
            items.iter().for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
        }
    }
}

/// One tensor's directory entry: GGUF name, dims in HF order (rows first), storage type.
pub(super) struct TensorEntry {
    pub name: String,
    pub dims: Vec<usize>,
    pub ty: GgmlDType,
}

/// A GGUF file of `kv` metadata and `tensors`, written through a temporary file renamed into
/// place. `produce(i)` gives tensor i (in llama.cpp's row order, `dims` shaped) when its turn
/// comes, so only one tensor is in memory at a time.
pub(super) fn write_gguf_file<K: AsRef<str>>(
    path: &Path,
    kv: &[(K, Val)],
    tensors: &[TensorEntry],
    mut produce: impl FnMut(usize) -> Result<Tensor>,
) -> Result<()> {
    let mut header = b"GGUF".to_vec();
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    kv.iter().for_each(|(k, v)| put_kv(&mut header, k.as_ref(), v));
    let mut offset = 0u64;
    let mut sizes = Vec::with_capacity(tensors.len());
    for TensorEntry { name, dims, ty } in tensors {
        if dims.last().is_some_and(|&row| !row.is_multiple_of(ty.block_size())) {
            return Err(Error::arg(
                "outtype",
                format!("a type whose block ({}) divides every row", ty.block_size()),
                format!("{ty:?} for `{name}` of shape {dims:?}"),
            ));
        }
        let size = (dims.iter().product::<usize>() / ty.block_size() * ty.type_size()) as u64;
        put_str(&mut header, name);
        header.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        dims.iter().rev().for_each(|&d| header.extend_from_slice(&(d as u64).to_le_bytes()));
        header.extend_from_slice(&ggml_type_id(*ty).to_le_bytes());
        header.extend_from_slice(&offset.to_le_bytes());
        sizes.push(size);
        offset += size.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    let pad = |len: u64| vec![0u8; (len.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT - len) as usize];
    header.extend(pad(header.len() as u64));
    let io = |e: std::io::Error| Error::io(path, e);
    write_streamed(path, |out| {
        out.write_all(&header).map_err(io)?;
        for (i, (entry, size)) in tensors.iter().zip(sizes).enumerate() {
            let t = produce(i)?;
            if t.dims() != entry.dims.as_slice() {
                return Err(Error::Unsupported(format!("`{}` came as shape {:?}, expected {:?}", entry.name, t.dims(), entry.dims)));
            }
            let bytes = encode(&t, entry.ty)?;
            if bytes.len() as u64 != size {
                return Err(Error::Unsupported(format!("`{}` encoded to {} bytes, expected {size}", entry.name, bytes.len())));
            }
            out.write_all(&bytes).map_err(io)?;
            out.write_all(&pad(size)).map_err(io)?;
        }
        Ok(())
    })
}

fn encode(t: &Tensor, ty: GgmlDType) -> Result<Vec<u8>> {
    let t = t.to_device(&Device::Cpu)?;
    Ok(match ty {
        GgmlDType::F32 => tensor_bytes(&t.to_dtype(DType::F32)?)?.1,
        GgmlDType::F16 => tensor_bytes(&t.to_dtype(DType::F16)?)?.1,
        GgmlDType::BF16 => tensor_bytes(&t.to_dtype(DType::BF16)?)?.1,
        q => QTensor::quantize(&t.to_dtype(DType::F32)?, q)?.data()?.into_owned(),
    })
}

/// Same tmp + fsync + rename pattern as `safetensors::write_atomic`, but streamed.
fn write_streamed(path: &Path, body: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>) -> Result<()> {
    if path.is_dir() {
        return Err(Error::arg("path", "a file path", format!("{} (a directory)", path.display())));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::io(path, e))?);
        body(&mut out)?;
        let file = out.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
