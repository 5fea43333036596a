//! Mixed-batch inference from JS (`adapterNames`, PEFT's `adapter_names=`): the forward
//! context with each row's adapter, refused in training mode as PEFT refuses it (checked
//! here because generation runs without a graph, where the core's `Ctx` is never in training).
use crate::model::ModelState;
use peft_core::model::Ctx;
use peft_core::{Error, Result};

/// `m.ctx(no_grad, seed)`, with the rows routed to `adapter_names` when given.
pub fn ctx_with_rows<'m>(m: &'m ModelState, no_grad: bool, seed: Option<u64>, adapter_names: Option<&[String]>) -> Result<Ctx<'m>> {
    let ctx = m.ctx(no_grad, seed);
    let Some(names) = adapter_names else { return Ok(ctx) };
    if m.training {
        return Err(Error::Unsupported("adapterNames: per-row adapters are for inference; the model is in training mode (call eval() first)".into()));
    }
    Ok(ctx.with_rows(m.tuners.route_rows(names, &m.llama.device)?))
}
