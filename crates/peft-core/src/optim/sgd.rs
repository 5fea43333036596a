//! SGD as `torch.optim.SGD`: weight decay added to the gradient, momentum with
//! dampening, optional Nesterov. The momentum buffer starts as the first gradient.
use super::{flat, state_dtype, state_tensor, value_and_grad, write_back};
use crate::error::Result;
use crate::model::Parameter;
use candle_core::Tensor;

#[derive(Debug, Clone, Copy)]
pub struct SgdHyper {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
}

/// `buf` is None before the first step with momentum; it is set here.
pub fn sgd_step(p: &Parameter, buf: &mut Option<Tensor>, h: &SgdHyper) -> Result<()> {
    let (mut w, mut g) = value_and_grad(p)?;
    let (lr, mom, damp, wd) = (h.lr, h.momentum, h.dampening, h.weight_decay);
    if wd != 0.0 {
        g.iter_mut().zip(&w).for_each(|(gi, wi)| *gi += wd * wi);
    }
    if mom != 0.0 {
        let mut b = match buf {
            Some(t) => {
                let mut b = flat(t)?;
                b.iter_mut().zip(&g).for_each(|(bi, gi)| *bi = mom * *bi + (1.0 - damp) * gi);
                b
            }
            None => g.clone(),
        };
        if h.nesterov {
            g.iter_mut().zip(&b).for_each(|(gi, bi)| *gi += mom * bi);
        } else {
            std::mem::swap(&mut g, &mut b);
            b = g.clone();
        }
        *buf = Some(state_tensor(b, &p.value(), state_dtype(p))?);
    }
    w.iter_mut().zip(&g).for_each(|(wi, gi)| *wi -= lr * gi);
    write_back(p, w)
}
