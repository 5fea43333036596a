//! LoRA's update of a linear's output, `result + scaling · u Bᵀ` with `u = x Aᵀ`, as one
//! op. The composite (`linear`, then `* scaling`, then `+`) makes three [.., out] tensors
//! per adapted linear, keeps them in the graph, and its backward pays a zero-filled
//! buffer plus an add for each; this op makes one, and its backward only the small
//! [.., r] and [out, r] products.
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::kernel::{contiguous, dispatch, fused_cpu, Real};

/// `result + scaling * u Bᵀ`, as [`super::composite::lora_add`]. `result`: [..., out];
/// `u`: [..., r] (the LoRA A output); `b`: [out, r]. Gradients flow to all three. Falls
/// back to the composite off the CPU, for dtypes other than f32/f64 and for other shapes.
pub fn lora_add(result: &Tensor, u: &Tensor, b: &Tensor, scaling: f64) -> Result<Tensor> {
    let fits = fused_cpu(&[result, u, b])
        && b.rank() == 2
        && u.rank() == result.rank()
        && u.rank() >= 1
        && u.dims()[..u.rank() - 1] == result.dims()[..result.rank() - 1]
        && u.dims().last() == Some(&b.dim(1)?)
        && result.dims().last() == Some(&b.dim(0)?);
    if !fits {
        return super::composite::lora_add(result, u, b, scaling);
    }
    result.apply_op3(&u.contiguous()?, b, LoraAdd { scaling })
}

struct LoraAdd {
    scaling: f64,
}

fn finish<T: Real>(scaling: f64, t: CpuStorage, (s1, l1): (&CpuStorage, &Layout)) -> Result<CpuStorage> {
    let mut t = T::cpu_storage_as_slice(&t)?.to_vec();
    let result = contiguous::<T>(s1, l1)?;
    let s = T::from_f64(scaling);
    // As the composite rounds: (u Bᵀ) * s first, then + result.
    for (t, &r) in t.iter_mut().zip(result.iter()) {
        *t = r + *t * s;
    }
    Ok(T::to_cpu_storage_owned(t))
}

impl CustomOp3 for LoraAdd {
    fn name(&self) -> &'static str {
        "peft-lora-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, r) = l3.shape().dims2()?;
        let m = l2.shape().elem_count() / r.max(1);
        if l1.shape().elem_count() != m * out {
            candle_core::bail!("lora_add: result {:?}, u {:?}, B {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let u2 = Layout::contiguous_with_offset((m, r), l2.start_offset());
        let bt = Layout::new(Shape::from((r, out)), vec![l3.stride()[1], l3.stride()[0]], l3.start_offset());
        let t = s2.matmul(s3, (1, m, out, r), &u2, &bt)?;
        let y = dispatch!("lora_add", s1, finish(self.scaling, t, (s1, l1)))?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        result: &Tensor,
        u: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out, r) = b.dims2()?;
        let g2 = grad.reshape(((), out))?;
        let gr = result.track_op().then(|| grad.clone());
        let gu = if u.track_op() { Some((g2.matmul(&b.detach())? * self.scaling)?.reshape(u.shape())?) } else { None };
        let gb = if b.track_op() { Some((g2.t()?.matmul(&u.detach().reshape(((), r))?)? * self.scaling)?) } else { None };
        Ok((gr, gu, gb))
    }
}
