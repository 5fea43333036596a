//! What methods do between optimizer steps, in one mechanism for all of them (as
//! `tuners/routing.rs` is one mechanism for every hook site): a training loop calls
//! `before_step` before a step's forward and `after_step` after the optimizer step (before the
//! gradients are cleared), whatever the methods are, and gets a `StepReport` of what ran. Each
//! method's procedure stays in its folder (`tuners/{adalora,sora,periodic_lora,far,lt_sft,
//! fish_dip}`); the tables below say which runs when, for the active adapters of its type.
use super::ModelState;
use crate::tuners::adalora::{AdaLoraConfig, RankAllocator};
use crate::tuners::sparse_mask::FisherBatch;
use crate::tuners::{far, fish_dip, lt_sft, periodic_lora, sora};
use crate::{Error, Result, Warning, WarningCode};

/// The step a procedure runs at, and what some need of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepContext {
    /// The optimizer step just taken, 0-based (PEFT's `global_step`): `step + 1` steps are done.
    pub step: u64,
    /// That step's learning rate (SoRA thresholds its gates by lr · sparse_lambda).
    pub lr: f64,
    /// Seeds what a procedure draws (PeriodicLoRA's restarted factors).
    pub seed: u64,
}

/// One adapter's entries a procedure kept (SoRA: gates; FAR: FFN nodes; LT-SFT, Fish-Dip:
/// weight entries), and its entries in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub adapter: String,
    pub kept: usize,
    pub total: usize,
}

/// What the procedures of one step did; empty where no method has a rule due.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// AdaLoRA: the rank budget its allocation applied (None: the schedule made none).
    pub adalora_budget: Option<usize>,
    /// SoRA: per adapter, the gates still non-zero after the proximal step (the kept rank).
    pub sora_ranks: Vec<Kept>,
    /// PeriodicLoRA: per adapter restarted, the stage that ended (1-based).
    pub periodic_stages: Vec<(String, usize)>,
    /// Parameters redrawn by a procedure (PeriodicLoRA's factors): the optimizer's state for
    /// them is stale and must be reset.
    pub reset_state: Vec<String>,
    /// FAR, LT-SFT, Fish-Dip: per adapter, its mask where a procedure rewrote it.
    pub mask_updates: Vec<Kept>,
}

type Procedure = fn(&mut ModelState, &StepContext, &mut StepReport) -> Result<()>;

/// After each optimizer step, in this order, each where an active adapter has its
/// `peft_type`. AdaLoRA first: it scores |w · ∂L/∂w| with the step's gradients and weights,
/// which the others may rewrite.
const AFTER_STEP: &[(&str, Procedure)] = &[
    ("ADALORA", adalora_allocation),
    ("SORA", sora_proximal_step),
    ("PERIODIC_LORA", periodic_lora_restart),
    ("FAR", far_node_selection),
    ("LT_SFT", lt_sft_lottery_step),
];

fn kept(v: Vec<(String, usize, usize)>) -> impl Iterator<Item = Kept> {
    v.into_iter().map(|(adapter, kept, total)| Kept { adapter, kept, total })
}

fn steps_done(ctx: &StepContext) -> usize {
    (ctx.step as usize).saturating_add(1)
}

fn adalora_allocation(m: &mut ModelState, ctx: &StepContext, r: &mut StepReport) -> Result<()> {
    r.adalora_budget = m.update_and_allocate(ctx.step)?;
    Ok(())
}

fn sora_proximal_step(m: &mut ModelState, ctx: &StepContext, r: &mut StepReport) -> Result<()> {
    r.sora_ranks.extend(kept(sora::proximal_step(&m.llama, &m.tuners, ctx.lr)?));
    Ok(())
}

fn periodic_lora_restart(m: &mut ModelState, ctx: &StepContext, r: &mut StepReport) -> Result<()> {
    for (adapter, stage, reset) in periodic_lora::restart(&m.llama, &m.tuners, steps_done(ctx), ctx.seed)? {
        r.periodic_stages.push((adapter, stage));
        r.reset_state.extend(reset);
    }
    Ok(())
}

fn far_node_selection(m: &mut ModelState, ctx: &StepContext, r: &mut StepReport) -> Result<()> {
    r.mask_updates.extend(kept(far::select_nodes(&m.llama, &m.tuners, steps_done(ctx))?));
    Ok(())
}

fn lt_sft_lottery_step(m: &mut ModelState, ctx: &StepContext, r: &mut StepReport) -> Result<()> {
    r.mask_updates.extend(kept(lt_sft::lottery_step(&m.llama, &m.tuners, steps_done(ctx))?));
    Ok(())
}

impl ModelState {
    /// Whether an active adapter is of method `peft_type`.
    fn has_active(&self, peft_type: &str) -> bool {
        self.tuners.active().iter().any(|n| self.tuners.config(n).is_ok_and(|c| c.peft_type() == peft_type))
    }

    /// Before the forward of step `step` (0-based): Fish-Dip's mask update from the Fisher
    /// scores on `batches` (the step's micro-batches), for each active Fish-Dip adapter due now.
    pub fn before_step(&self, step: u64, batches: &[FisherBatch]) -> Result<StepReport> {
        let mut report = StepReport::default();
        let step = step as usize;
        if self.has_active("FISH_DIP") && fish_dip::due(&self.tuners, step)? {
            report.mask_updates.extend(kept(fish_dip::update_masks(&self.llama, &self.tuners, step, batches)?));
        }
        Ok(report)
    }

    /// After the optimizer step `ctx.step`, before the gradients are cleared: every active
    /// method's procedure (`AFTER_STEP`, in its order). Nothing runs for methods without one.
    pub fn after_step(&mut self, ctx: &StepContext) -> Result<StepReport> {
        let mut report = StepReport::default();
        for (peft_type, procedure) in AFTER_STEP {
            if self.has_active(peft_type) {
                procedure(self, ctx, &mut report)?;
            }
        }
        Ok(report)
    }

    /// Before training `total_steps` optimizer steps: warnings about the active methods'
    /// schedules. AdaLoRA's `total_step` may differ from the run's steps, as in PEFT, but its
    /// final allocation is at total_step − tfinal, so a shorter run ends before it.
    pub fn check_schedule(&self, total_steps: u64) -> Vec<Warning> {
        let mut out = Vec::new();
        for name in self.tuners.active() {
            let Some(c) = self.tuners.config(name).ok().and_then(|c| c.as_any().downcast_ref::<AdaLoraConfig>()) else { continue };
            if c.total_step != total_steps {
                let (total, at) = (c.total_step, c.total_step.saturating_sub(c.tfinal));
                let message = format!(
                    "AdaLoRA total_step {total} differs from the Trainer's {total_steps} steps: the final rank allocation is at step {at}"
                );
                out.push(Warning::new(WarningCode::Other, "total_step", message));
            }
        }
        out
    }

    /// AdaLoRA's `update_and_allocate(global_step)` for the one active adapter, which must be
    /// AdaLoRA (PEFT allows one trainable AdaLoRA adapter). The allocator's importance EMAs
    /// live here, one per adapter name, rebuilt when that name no longer holds the adapter
    /// they scored.
    pub fn update_and_allocate(&mut self, global_step: u64) -> Result<Option<usize>> {
        let name = self.active_adalora()?;
        if !self.allocators.get(&name).is_some_and(|a| a.is_current(&self.llama)) {
            let fresh = RankAllocator::new(&self.tuners, &self.llama, &name)?;
            self.allocators.insert(name.clone(), fresh);
        }
        let alloc = self.allocators.get_mut(&name).ok_or_else(|| Error::arg("adapter", "an allocator", &name))?;
        alloc.update_and_allocate(&mut self.tuners, &self.llama, global_step)
    }

    fn active_adalora(&self) -> Result<String> {
        let active = self.tuners.active();
        let [name] = active else {
            return Err(Error::arg("active adapters", "exactly one active AdaLoRA adapter for updateAndAllocate", format!("{active:?}")));
        };
        let config = self.tuners.config(name)?;
        if config.as_any().downcast_ref::<AdaLoraConfig>().is_none() {
            let found = format!("`{name}` ({})", config.peft_type());
            return Err(Error::arg("active adapter", "an AdaLoRA adapter (updateAndAllocate is AdaLoRA's rank allocation)", found));
        }
        if self.tuners.is_merged() {
            return Err(Error::Unsupported("updateAndAllocate: the adapters are merged; unmerge them before training".into()));
        }
        Ok(name.clone())
    }
}
