//! One MixLoRA FFN: top-k routing, the experts on their tokens only, and the balance loss.
use super::FfnWeights;
use crate::error::Result;
use crate::model::layers::gated_activation;
use crate::model::linear::linear;
use crate::model::{Ctx, ParamId};
use crate::tuners::lora::layer::adapter_input;
use crate::tuners::AdapterLayer;
use candle_core::{DType, Tensor, D};

/// The name under which the balance loss is added to the training loss (and reported).
pub const BALANCE_LOSS: &str = "mixlora_balance";

#[derive(Debug)]
pub struct MixLoraLayer {
    pub adapter: String,
    /// W_r [E, hidden].
    pub router: ParamId,
    /// Per projection (gate, up, down): the experts' stacked A [E, r, in] and B [E, out, r].
    pub experts: [Option<(ParamId, ParamId)>; 3],
    pub ffn: FfnWeights,
    pub num_experts: usize,
    pub top_k: usize,
    pub scaling: f64,
    pub dropout: f64,
    pub aux_coef: f64,
    /// Adapted layers: each adds its share 1/num_layers of the mean balance loss.
    pub num_layers: usize,
}

/// Per token, the `k` experts with the largest logits (ties to the lower index) as a 0/1 mask [n·E].
pub fn top_k_mask(logits: &[f64], experts: usize, k: usize) -> Vec<f64> {
    let mut mask = vec![0.0; logits.len()];
    for (row, out) in logits.chunks(experts).zip(mask.chunks_mut(experts)) {
        let mut order: Vec<usize> = (0..experts).collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
        order[..k].iter().for_each(|&i| out[i] = 1.0);
    }
    mask
}

impl MixLoraLayer {
    /// Projection `k` of expert `e` on its tokens: the frozen rows `base` plus s·B_e A_e x.
    fn project(&self, k: usize, e: usize, x: &Tensor, base: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let Some((a, b)) = self.experts[k] else { return Ok(base) };
        let (a, b) = (ctx.param(a).get(e)?, ctx.param(b).get(e)?);
        let (xd, _) = adapter_input(x, a.dtype(), self.dropout, ctx)?;
        Ok((base + (linear(&linear(&xd, &a, None)?, &b, None)? * self.scaling)?)?)
    }

    /// The frozen weight of projection `k` ([rows, in]: a half of a fused gate_up) in `dt`.
    fn base_weight(&self, k: usize, ctx: &Ctx, dt: DType) -> Result<Tensor> {
        let p = self.ffn.proj[k];
        Ok(ctx.param(p.weight).narrow(0, p.offset, p.rows)?.to_dtype(dt)?)
    }

    /// L_aux = α · E · Σᵢ fᵢ Pᵢ (fᵢ: tokens routed to i over all tokens, a constant; Pᵢ: mean
    /// router probability, differentiable), this layer's share of the mean over layers.
    fn balance_loss(&self, probs: &Tensor, mask: &[f64], n: usize) -> Result<Tensor> {
        let e = self.num_experts;
        let f: Vec<f64> = (0..e).map(|i| mask.iter().skip(i).step_by(e).sum::<f64>() / n as f64).collect();
        let f = Tensor::from_vec(f, e, probs.device())?.to_dtype(probs.dtype())?;
        let p = probs.mean(0)?;
        Ok(((p * f)?.sum_all()? * (self.aux_coef * e as f64 / self.num_layers as f64))?)
    }
}

impl AdapterLayer for MixLoraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        let mut p = vec![self.router];
        self.experts.iter().flatten().for_each(|&(a, b)| p.extend([a, b]));
        p
    }

    /// Replaces the FFN's output with the routed mixture of its experts, computed from the
    /// FFN input: each expert runs only on the tokens routed to it (index_select), and its
    /// weighted output is scattered back (index_add).
    fn sublayer(&self, input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let router = ctx.param(self.router);
        let dt = router.dtype();
        let dims = input.dims().to_vec();
        let hidden = *dims.last().unwrap_or(&0);
        let n = input.elem_count() / hidden.max(1);
        let x = input.to_dtype(dt)?.reshape((n, hidden))?;
        let logits = linear(&x, &router, None)?; // [n, E]
        let probs = crate::ops::softmax_last_dim(&logits)?;
        let e = self.num_experts;
        let mask = top_k_mask(&logits.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?, e, self.top_k);
        let mask_t = Tensor::from_vec(mask.clone(), (n, e), x.device())?.to_dtype(dt)?;
        let kept = (&probs * mask_t)?;
        let weights = kept.broadcast_div(&kept.sum_keepdim(D::Minus1)?)?; // softmax over the top-k logits
        let gate_all = linear(&x, &self.base_weight(0, ctx, dt)?, None)?;
        let up_all = linear(&x, &self.base_weight(1, ctx, dt)?, None)?;
        let down = self.base_weight(2, ctx, dt)?;
        let mut out = Tensor::zeros((n, hidden), dt, x.device())?;
        for i in 0..e {
            let rows: Vec<u32> = (0..n).filter(|&t| mask[t * e + i] > 0.0).map(|t| t as u32).collect();
            if rows.is_empty() {
                continue;
            }
            let idx = Tensor::new(rows.as_slice(), x.device())?;
            let xi = x.index_select(&idx, 0)?;
            let gate = self.project(0, i, &xi, gate_all.index_select(&idx, 0)?, ctx)?;
            let up = self.project(1, i, &xi, up_all.index_select(&idx, 0)?, ctx)?;
            let h = gated_activation(self.ffn.act, &gate, &up)?;
            let y = self.project(2, i, &h, linear(&h, &down, None)?, ctx)?;
            let w = weights.index_select(&idx, 0)?.narrow(1, i, 1)?;
            out = out.index_add(&idx, &y.broadcast_mul(&w)?, 0)?;
        }
        if ctx.training && self.aux_coef > 0.0 {
            ctx.add_aux_loss(BALANCE_LOSS, self.balance_loss(&probs, &mask, n)?);
        }
        Ok(out.reshape(dims)?.to_dtype(output.dtype())?)
    }
}
