//! The training loss with the methods' auxiliary terms, the route AdaLoRA's orthogonal
//! regulariser takes (`adalora::regularized_loss`): the cross-entropy, plus AdaLoRA's
//! regulariser, plus every term the layers recorded in this pass through `Ctx::add_aux_loss`
//! (MixLoRA's load-balancing loss), only in training mode. The terms' values are returned by
//! name, for the training metrics.
use super::adalora::regularized_loss;
use super::Tuners;
use crate::error::{Error, Result};
use crate::model::{CausalLm, Ctx};
use candle_core::{DType, Tensor};
use std::collections::BTreeMap;

/// Names of recorded values that are reported, not added to the loss: routing weights (MoLE's
/// mean gate per expert), averaged over the layers that recorded them.
pub const ROUTING_PREFIX: &str = "routing/";

/// Takes the `ROUTING_PREFIX` entries out of `terms`: each name's mean over its layers.
fn report_routing(terms: &mut Vec<(String, Tensor)>) -> Result<BTreeMap<String, f64>> {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (name, t) in terms.iter().filter(|(n, _)| n.starts_with(ROUTING_PREFIX)) {
        let e = sums.entry(name.clone()).or_insert((0.0, 0));
        e.0 += t.to_dtype(DType::F64)?.sum_all()?.to_vec0::<f64>()?;
        e.1 += 1;
    }
    terms.retain(|(n, _)| !n.starts_with(ROUTING_PREFIX));
    Ok(sums.into_iter().map(|(n, (s, c))| (n, s / c as f64)).collect())
}

/// `loss` + AdaLoRA's regulariser + the recorded auxiliary terms; and each auxiliary term's
/// value (summed over the layers that added it).
pub fn training_loss(loss: Tensor, model: &CausalLm, tuners: &Tuners, ctx: &Ctx) -> Result<(Tensor, BTreeMap<String, f64>)> {
    let mut loss = regularized_loss(loss, model, tuners, ctx)?;
    let mut terms = std::mem::take(&mut *ctx.aux_losses.lock().unwrap_or_else(|e| e.into_inner()));
    let mut values = report_routing(&mut terms)?;
    if terms.is_empty() {
        return Ok((loss, values));
    }
    if ctx.checkpoint.is_some() {
        // Checkpointed layers run their forward without a graph: the terms would carry no gradient.
        let names: Vec<&str> = terms.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Error::Unsupported(format!(
            "the auxiliary loss {names:?} (MixLoRA's load balancing, AdaMix's consistency) needs the graph that gradient checkpointing drops: \
             disable gradient checkpointing or set router_aux_loss_coef (MixLoRA) / consistency_weight (AdaMix) to 0"
        )));
    }
    for (name, term) in terms {
        let term = term.to_dtype(loss.dtype())?.reshape(loss.shape())?;
        *values.entry(name).or_insert(0.0) += term.to_dtype(DType::F64)?.sum_all()?.to_vec0::<f64>()?;
        loss = (loss + term)?;
    }
    Ok((loss, values))
}
