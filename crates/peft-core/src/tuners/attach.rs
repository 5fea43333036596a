//! The adapters as the model sees them: `ModelHooks` implemented by `Tuners`, for a forward
//! pass on the active adapters, or on a per-row assignment (mixed batches, `routing.rs`)
//! carried in `Ctx::hook_state`.
use super::routing::RowAdapters;
use super::Tuners;
use crate::error::{Error, Result};
use crate::model::{Ctx, Linear, ModelHooks, Norm, Prompt, PromptInputs, PROMPT_ENCODER};
use candle_core::Tensor;

/// `Ctx::with_tuners(&tuners)`: a forward pass with the adapters attached.
pub trait WithTuners<'a> {
    fn with_tuners(self, tuners: &'a Tuners) -> Self;
    /// Row i runs adapter `rows.names()[i]` (from `Tuners::route_rows`).
    fn with_tuners_per_row(self, tuners: &'a Tuners, rows: RowAdapters) -> Self;
}

impl<'a> WithTuners<'a> for Ctx<'a> {
    fn with_tuners(self, tuners: &'a Tuners) -> Self {
        self.with_hooks(tuners, None)
    }

    fn with_tuners_per_row(self, tuners: &'a Tuners, rows: RowAdapters) -> Self {
        self.with_hooks(tuners, Some(Box::new(rows)))
    }
}

fn rows<'c>(ctx: &'c Ctx) -> Option<&'c RowAdapters> {
    ctx.hook_state.as_ref().and_then(|s| s.downcast_ref::<RowAdapters>())
}

impl ModelHooks for Tuners {
    fn begin_forward(&self, batch: usize, ctx: &Ctx) -> Result<()> {
        if let Some(rows) = rows(ctx) {
            rows.check_batch(batch)?;
            if ctx.training {
                return Err(Error::Unsupported(
                    "adapterNames: per-row adapters are for inference; the model is in training mode (call eval() first)".into(),
                ));
            }
        }
        Ok(())
    }

    fn linear(&self, linear: &Linear, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        if let Some(rows) = rows(ctx) {
            // each adapter's rows get their own input transform in `route_linear`
            return self.route_linear(rows, linear, x, linear.base(x, ctx)?, ctx);
        }
        let input = self.linear_input(linear, x, ctx)?;
        let base = linear.base(input.as_ref().unwrap_or(x), ctx)?;
        self.linear_output(linear, x, base, ctx)
    }

    fn changes_linear(&self, path: &str, ctx: &Ctx) -> bool {
        rows(ctx).is_some() || !self.running(path).is_empty()
    }

    fn norm(&self, norm: &Norm, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        match rows(ctx) {
            Some(rows) => self.route_norm(rows, norm, x, ctx),
            None => self.norm_running(norm, x, ctx),
        }
    }

    fn sublayer(&self, path: &str, input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        match rows(ctx) {
            Some(rows) => self.route_sublayer(rows, path, input, output, ctx),
            None => self.sublayer_running(path, input, output, ctx),
        }
    }

    fn input_embeddings(&self, x: Tensor, past: usize, ctx: &Ctx) -> Result<Tensor> {
        match rows(ctx) {
            Some(_) => Ok(x), // as `prompt`: prompt-site adapters do not run per row
            None => self.running(PROMPT_ENCODER).into_iter().try_fold(x, |x, layer| layer.input_embeddings(x, past, ctx)),
        }
    }

    fn prompt(&self, ctx: &Ctx, inputs: &PromptInputs) -> Result<Prompt> {
        match rows(ctx) {
            Some(_) => Ok(Prompt::default()), // `route_rows` refuses prompt-learning adapters per row
            None => self.prompt_running(ctx, inputs),
        }
    }

    fn virtual_hidden_below(&self, ctx: &Ctx) -> usize {
        match rows(ctx) {
            Some(_) => 0, // as `prompt`
            None => self.late_layer_running(),
        }
    }

    fn late_virtual_tokens(&self, layer: usize, inputs: &PromptInputs, ctx: &Ctx) -> Result<Option<Tensor>> {
        match rows(ctx) {
            Some(_) => Ok(None),
            None => self.late_tokens_running(layer, inputs, ctx),
        }
    }

    fn prefix_gates(&self, path: &str, spans: &[(String, usize)], x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        self.prefix_gates_running(path, spans, x, ctx)
    }
}
