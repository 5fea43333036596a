//! `y = x Wᵀ (+ b)` with a backward that skips the weight gradient when the weight is
//! frozen. candle's own matmul backward always computes both operands' gradients, which
//! for a frozen base costs a full extra matmul per linear (and the whole vocab × hidden
//! product for `lm_head`). PyTorch skips it; so must we.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// `x`: [..., in]; `w`: [out, in]. Returns [..., out].
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let y = if x.device().is_cpu() || x.device().is_cuda() {
        // apply_op2 records the op only when x or w is tracked.
        x.contiguous()?.apply_op2(w, FrozenAwareMatmul)?
    } else {
        x.broadcast_matmul(&w.t()?)?
    };
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

struct FrozenAwareMatmul;

fn dims(x: &Layout, w: &Layout) -> Result<(usize, usize, usize, Shape)> {
    let (out, k) = w.shape().dims2()?;
    let xd = x.shape().dims();
    let kx = *xd.last().unwrap_or(&0);
    if kx != k {
        candle_core::bail!("linear: input has {kx} features, weight expects {k}");
    }
    let m = x.shape().elem_count() / k.max(1);
    let mut out_dims = xd.to_vec();
    *out_dims.last_mut().unwrap() = out;
    Ok((m, k, out, Shape::from(out_dims)))
}

fn fwd<S: BackendStorage>(x: &S, xl: &Layout, w: &S, wl: &Layout) -> Result<(S, Shape)> {
    let (m, k, n, shape) = dims(xl, wl)?;
    let x2 = Layout::contiguous_with_offset((m, k), xl.start_offset());
    let wt = Layout::new(Shape::from((k, n)), vec![wl.stride()[1], wl.stride()[0]], wl.start_offset());
    Ok((x.matmul(w, (1, m, n, k), &x2, &wt)?, shape))
}

impl CustomOp2 for FrozenAwareMatmul {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, xl: &Layout, w: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        fwd(x, xl, w, wl)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        w: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        fwd(x, xl, w, wl)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (out, k) = w.dims2()?;
        let g2 = grad.reshape(((), out))?;
        let gx = if x.track_op() { Some(g2.matmul(&w.detach())?.reshape(x.shape())?) } else { None };
        let gw = if w.track_op() { Some(g2.t()?.matmul(&x.detach().reshape(((), k))?)?) } else { None };
        Ok((gx, gw))
    }
}
