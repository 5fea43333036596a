//! Mixed-batch inference from JS (`adapterNames`, PEFT's `adapter_names=`): the forward
//! context with each row's adapter, refused in training mode as PEFT refuses it (checked
//! here because generation runs without a graph, where the core's `Ctx` is never in training).
use crate::model::ModelState;
use peft_core::model::Ctx;
use peft_core::tuners::WithTuners;
use peft_core::{Error, Result};

/// `m.ctx(no_grad, seed)`, with the rows routed to `adapter_names` when given.
pub fn ctx_with_rows<'m>(m: &'m ModelState, no_grad: bool, seed: Option<u64>, adapter_names: Option<&[String]>) -> Result<Ctx<'m>> {
    let Some(names) = adapter_names else { return Ok(m.ctx(no_grad, seed)) };
    if m.training {
        return Err(Error::Unsupported("adapterNames: per-row adapters are for inference; the model is in training mode (call eval() first)".into()));
    }
    let rows = m.tuners.route_rows(names, &m.llama.device)?;
    Ok(m.ctx_without_adapters(no_grad, seed).with_tuners_per_row(&m.tuners, rows))
}
