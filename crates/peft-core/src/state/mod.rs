//! One loaded model with everything a session keeps beside it: the adapters, the tokenizer,
//! training mode, AdaLoRA's allocators and the last auxiliary losses. The forward with its
//! loss composition lives here, and the methods' procedures between optimizer steps in
//! `steps.rs`, so a binding only converts arguments (the Node binding holds one `ModelState`
//! per `LlamaModel`).
mod steps;

use crate::model::{loss, Batch, CausalLm, Checkpointing, Ctx, ParamStore};
use crate::tokenizer::Tokenizer;
use crate::tuners::adalora::RankAllocator;
use crate::tuners::aux_loss::training_loss;
use crate::tuners::{Tuners, WithTuners};
use crate::{Error, Result};
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
pub use steps::{Kept, StepContext, StepReport};

pub struct ModelState {
    pub llama: CausalLm,
    pub tokenizer: Option<Tokenizer>,
    pub tuners: Tuners,
    /// What the model was loaded from: adapters record it as `base_model_name_or_path`.
    pub source: String,
    /// PyTorch's `model.train()`: adapter dropout applies only then.
    pub training: bool,
    /// Seeds each training forward's dropout differently, reproducibly.
    pub forward_count: AtomicU64,
    /// AdaLoRA's importance EMAs, per adapter, between `update_and_allocate` calls.
    pub allocators: HashMap<String, RankAllocator>,
    /// transformers' `gradient_checkpointing_enable()`: forwards that build a graph keep only
    /// each decoder layer's input and recompute the layer in the backward.
    pub gradient_checkpointing: bool,
    /// The auxiliary loss terms (MixLoRA's load balancing) of the last training forward, by name.
    pub last_aux_losses: Mutex<BTreeMap<String, f64>>,
}

/// What one forward computes: logits unless only the loss was asked for, and the loss
/// (with every method's terms) when labels were given.
pub struct ForwardResult {
    pub logits: Option<Tensor>,
    pub loss: Option<Tensor>,
}

impl ModelState {
    pub fn new(llama: CausalLm, tokenizer: Option<Tokenizer>, source: String) -> Self {
        ModelState {
            llama,
            tokenizer,
            tuners: Tuners::new(),
            source,
            training: false,
            forward_count: AtomicU64::new(0),
            allocators: HashMap::new(),
            gradient_checkpointing: false,
            last_aux_losses: Mutex::default(),
        }
    }

    /// The forward context: the attached adapters, and dropout in training mode, seeded by
    /// `seed` or else by a per-model counter.
    pub fn ctx(&self, no_grad: bool, seed: Option<u64>) -> Ctx<'_> {
        self.ctx_without_adapters(no_grad, seed).with_tuners(&self.tuners)
    }

    /// `ctx` with nothing attached yet (mixed batches attach the adapters per row).
    pub fn ctx_without_adapters(&self, no_grad: bool, seed: Option<u64>) -> Ctx<'_> {
        let ctx = Ctx::new(&self.llama.store, no_grad);
        if self.training && !no_grad {
            ctx.training(seed.unwrap_or_else(|| self.forward_count.fetch_add(1, Ordering::Relaxed)))
        } else {
            ctx
        }
    }

    /// `ctx`, with the rows routed to `adapter_names` when given (PEFT's `adapter_names=`),
    /// refused in training mode as PEFT refuses it (checked here because generation runs
    /// without a graph, where the `Ctx` is never in training).
    pub fn ctx_with_rows(&self, no_grad: bool, seed: Option<u64>, adapter_names: Option<&[String]>) -> Result<Ctx<'_>> {
        let Some(names) = adapter_names else { return Ok(self.ctx(no_grad, seed)) };
        if self.training {
            return Err(Error::Unsupported(
                "adapterNames: per-row adapters are for inference; the model is in training mode (call eval() first)".into(),
            ));
        }
        let rows = self.tuners.route_rows(names, &self.llama.device)?;
        Ok(self.ctx_without_adapters(no_grad, seed).with_tuners_per_row(&self.tuners, rows))
    }

    pub fn store_mut(&mut self) -> &mut ParamStore {
        &mut self.llama.store
    }

    /// Logits and the mean causal-LM loss of `input`; the loss includes every method's own
    /// terms (AdaLoRA's regulariser, MixLoRA's balance, recorded in `last_aux_losses` when
    /// training). `return_logits` false (labels needed): the loss alone, chunk by chunk
    /// (`CausalLm::loss_sum`), never building the [b, t, vocab] logits.
    pub fn forward(&self, input: &Batch, labels: Option<&[Vec<i64>]>, ctx: &Ctx, return_logits: bool) -> Result<ForwardResult> {
        // AdaMix's consistency loss compares two routed passes' predictions: logits are needed then.
        let consistency = ctx.training && labels.is_some() && crate::tuners::adamix::consistency::weight(&self.tuners) > 0.0;
        let (logits, loss) = match labels {
            Some(l) if !return_logits && !consistency => {
                let (sum, count) = self.llama.loss_sum(input, ctx, l)?;
                (None, Some((sum / count as f64)?))
            }
            l => {
                let logits = self.llama.forward(input, ctx, None, false)?;
                if consistency {
                    crate::tuners::adamix::consistency::add_consistency_loss(&self.llama, &self.tuners, input, ctx, &logits)?;
                }
                let loss = l.map(|l| loss::causal_lm_loss(&logits, l)).transpose()?;
                (Some(logits).filter(|_| return_logits || labels.is_none()), loss)
            }
        };
        let loss = match loss {
            Some(l) => {
                let (l, aux) = training_loss(l, &self.llama, &self.tuners, ctx)?;
                if ctx.training {
                    *self.last_aux_losses.lock().unwrap_or_else(|e| e.into_inner()) = aux;
                }
                Some(l)
            }
            None => None,
        };
        Ok(ForwardResult { logits, loss })
    }

    /// The forward context of a training forward, with gradient checkpointing when it is on
    /// (`checkpointing` gives the model back to the recomputation).
    pub fn training_ctx(
        &self,
        seed: Option<u64>,
        adapter_names: Option<&[String]>,
        checkpointing: impl FnOnce() -> Checkpointing,
    ) -> Result<(Ctx<'_>, Option<Checkpointing>)> {
        let mut ctx = self.ctx_with_rows(false, seed, adapter_names)?;
        let checkpoint = self.gradient_checkpointing.then(checkpointing);
        if let Some(cp) = &checkpoint {
            ctx = ctx.with_checkpointing(cp.clone());
        }
        Ok((ctx, checkpoint))
    }
}
