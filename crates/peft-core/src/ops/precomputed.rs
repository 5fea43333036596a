//! A CustomOp whose forward returns a value computed beforehand with ordinary tensor code
//! (without a graph), so that its `bwd` can be any tensor program: gradient checkpointing
//! (`model/checkpoint.rs`) recomputes a decoder layer there, the chunked cross-entropy
//! (`linear_cross_entropy.rs`) recomputes the logits one chunk at a time. The op's `fwd`
//! only copies the stored value out (candle's `fwd` must return a storage of its own).
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, Layout, Result, Shape, Storage, Tensor};
use std::sync::Mutex;

/// The value the forward computed, taken once by the op's `fwd`.
pub(crate) struct Precomputed(Mutex<Option<Tensor>>);

impl Precomputed {
    pub(crate) fn new(value: Tensor) -> Self {
        Precomputed(Mutex::new(Some(value)))
    }

    fn take(&self) -> Result<Tensor> {
        let value = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        value.ok_or_else(|| candle_core::Error::Msg("precomputed op: forward ran twice".into()))
    }

    pub(crate) fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cpu(s) => Ok((copy(s, layout)?, layout.shape().clone())),
            _ => candle_core::bail!("precomputed op: value not on the CPU"),
        }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn cuda(&self) -> Result<(candle_core::CudaStorage, Shape)> {
        let value = self.take()?;
        let (storage, layout) = value.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => Ok((copy(s, layout)?, layout.shape().clone())),
            _ => candle_core::bail!("precomputed op: value not on a CUDA device"),
        }
    }
}

/// A contiguous copy of the elements `layout` selects from `s`.
fn copy<S: BackendStorage>(s: &S, layout: &Layout) -> Result<S>
where
    S::Device: BackendDevice<Storage = S>,
{
    let mut out = s.device().zeros_impl(layout.shape(), s.dtype())?;
    s.copy_strided_src(&mut out, 0, layout)?;
    Ok(out)
}
