//! safetensors files: single files, sharded checkpoints (`model.safetensors.index.json`),
//! and atomic writes. Headers and offsets are validated by the `safetensors` crate before
//! any tensor is built, so a damaged file gives an error naming it, never a crash.
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype as StDtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Tensors by name, with the file each came from (for error messages).
#[derive(Default)]
pub struct WeightMap {
    pub tensors: HashMap<String, Tensor>,
    /// Weights kept in their storage type (see `LoadOptions::quantized`), by the same names.
    pub quantized: HashMap<String, std::sync::Arc<crate::model::QWeight>>,
    pub files: HashMap<String, PathBuf>,
}

impl WeightMap {
    pub fn take(&mut self, name: &str, source: &Path) -> Result<(Tensor, PathBuf)> {
        let tensor = self.tensors.remove(name).ok_or_else(|| Error::MissingWeight { file: source.into(), name: name.into() })?;
        let file = self.files.remove(name).unwrap_or_else(|| source.into());
        Ok((tensor, file))
    }
}

/// Every tensor of one file, converted to `dtype` (floating tensors only; integer tensors keep theirs).
pub fn load_file(path: &Path, dtype: Option<DType>, device: &Device) -> Result<HashMap<String, Tensor>> {
    let file = super::open_file(path, "a safetensors file")?;
    // SAFETY: the map is read-only and dropped before this function returns; tensors are copied out.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| corrupt(path, e))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let t = view_to_tensor(&view, path, &name, device)?;
        let t = match dtype {
            Some(d) if t.dtype().is_float() && t.dtype() != d => t.to_dtype(d)?,
            _ => t,
        };
        out.insert(name, t);
    }
    Ok(out)
}

fn view_to_tensor(view: &TensorView, path: &Path, name: &str, device: &Device) -> Result<Tensor> {
    let dtype = match view.dtype() {
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::BF16,
        StDtype::F64 => DType::F64,
        StDtype::I64 => DType::I64,
        StDtype::U32 => DType::U32,
        StDtype::U8 => DType::U8,
        StDtype::I32 => DType::I32,
        other => return Err(Error::WeightDtype { file: path.into(), name: name.into(), found: format!("{other:?}") }),
    };
    Ok(Tensor::from_raw_buffer(view.data(), dtype, view.shape(), device)?)
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Safetensors { file: path.into(), message: e.to_string() }
}

/// A checkpoint directory: `model.safetensors`, or the shards named by `model.safetensors.index.json`.
pub fn load_checkpoint_dir(dir: &Path, dtype: Option<DType>, device: &Device) -> Result<WeightMap> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        shard_files(&index)?
    } else if single.exists() {
        vec![single]
    } else {
        return Err(Error::MissingFile { path: single, what: "model weights (model.safetensors or model.safetensors.index.json)".into() });
    };
    let mut map = WeightMap::default();
    for file in files {
        for (name, t) in load_file(&file, dtype, device)? {
            map.files.insert(name.clone(), file.clone());
            map.tensors.insert(name, t);
        }
    }
    Ok(map)
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json { path: index.into(), message: e.to_string() })?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::InvalidConfig {
        file: index.into(),
        key: "weight_map".into(),
        expected: "an object of tensor name to shard file".into(),
        found: "nothing".into(),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, f) in map {
        let f = f.as_str().ok_or_else(|| Error::InvalidConfig {
            file: index.into(),
            key: format!("weight_map.{name}"),
            expected: "a file name".into(),
            found: f.to_string(),
        })?;
        let p = dir.join(f);
        if !files.contains(&p) {
            if !p.exists() {
                return Err(Error::MissingFile { path: p, what: format!("the shard listed for `{name}` in {}", index.display()) });
            }
            files.push(p);
        }
    }
    Ok(files)
}

/// Raw little-endian bytes and safetensors dtype of a tensor.
pub fn tensor_bytes(t: &Tensor) -> Result<(StDtype, Vec<u8>)> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => (StDtype::F32, t.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::F64 => (StDtype::F64, t.to_vec1::<f64>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::F16 => (StDtype::F16, t.to_vec1::<half::f16>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::BF16 => (StDtype::BF16, t.to_vec1::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::I64 => (StDtype::I64, t.to_vec1::<i64>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::U32 => (StDtype::U32, t.to_vec1::<u32>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
        DType::U8 => (StDtype::U8, t.to_vec1::<u8>()?),
        other => return Err(Error::Unsupported(format!("saving dtype {other:?} to safetensors"))),
    })
}

/// Writes tensors (sorted by name, as torch does) to `path` atomically: a temporary
/// file in the same folder, synced, then renamed over the target.
pub fn save_file(tensors: &[(String, Tensor)], metadata: Option<BTreeMap<String, String>>, path: &Path) -> Result<()> {
    let mut owned: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (dt, bytes) = tensor_bytes(t)?;
        owned.push((name.clone(), dt, t.dims().to_vec(), bytes));
    }
    owned.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, dt, shape, bytes)| Ok((n.clone(), TensorView::new(*dt, shape.clone(), bytes).map_err(|e| corrupt(path, e))?)))
        .collect::<Result<_>>()?;
    let meta: Option<HashMap<String, String>> = metadata.map(|m| m.into_iter().collect());
    let bytes = safetensors::serialize(views, meta).map_err(|e| corrupt(path, e))?;
    write_atomic(path, &bytes)
}

/// Write to `.<name>.tmp-<pid>-<n>` in the same directory, fsync, then rename into place,
/// so a crash never leaves a half-written file under the real name (`n` keeps concurrent
/// writes of one process apart).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.is_dir() {
        return Err(Error::arg("path", "a file path", format!("{} (a directory)", path.display())));
    }
    let tmp = super::folder::unique_sibling(path, "tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// The tensor `name` of one file, its shape passed to `check` before anything is copied
/// (so a wrong-sized tensor is refused without allocating it). Missing: an error naming the file.
pub fn load_one(path: &Path, name: &str, check: impl FnOnce(&[usize]) -> Result<()>, device: &Device) -> Result<Tensor> {
    let file = super::open_file(path, "a safetensors file")?;
    // SAFETY: the map is read-only and dropped before this function returns; the tensor is copied out.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| corrupt(path, e))?;
    let view = st.tensor(name).map_err(|_| corrupt(path, format!("no tensor `{name}` (found: {})", st.names().join(", "))))?;
    check(view.shape())?;
    view_to_tensor(&view, path, name, device)
}
