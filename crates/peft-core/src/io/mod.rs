//! Reading and writing checkpoints: safetensors (single or sharded), GGUF, adapter files
//! (PEFT's, and mlx-lm's converted to and from them).
pub mod adapter;
pub mod folder;
pub mod gguf;
pub mod mlx;
pub mod safetensors;

/// Opens a file to read or map. A folder under a file's name (`model.safetensors/`) is named as
/// such: mapping one fails with "No such device (os error 19)", which says nothing useful.
pub(crate) fn open_file(path: &std::path::Path, what: &str) -> crate::error::Result<std::fs::File> {
    if path.is_dir() {
        return Err(crate::error::Error::NotAFile { path: path.into(), what: what.into() });
    }
    std::fs::File::open(path).map_err(|e| crate::error::Error::io(path, e))
}
