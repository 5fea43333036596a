//! Gradient checkpointing (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
//! Cost"; transformers' `gradient_checkpointing_enable`, which wraps each decoder layer in
//! `torch.utils.checkpoint`). candle has none, so each decoder layer becomes one CustomOp
//! over its input x (and its key/value prefix, which prefix tuning computes outside the
//! layer): the forward runs the layer without a graph and keeps only x; the backward runs
//! the layer again on a fresh graph from x with the real parameters, backpropagates the
//! output gradient through it, returns dx (and the prefix's gradients) to the outer graph,
//! and puts the parameters' gradients into a side store that `Checkpointing::collect_into`
//! merges into the outer backward's `GradStore` (candle's ops can only return gradients for
//! their own inputs). Frozen weights enter detached, so only trainable parameters (full
//! fine-tuning or adapters) get one.
//!
//! Randomness is replayed, not re-seeded: the recompute starts from a clone of the
//! generator and of the shared draws (`Ctx::draw_once`, DyLoRA's rank) as they were when
//! the layer first ran, so dropout masks and ranks are the same draws, and a checkpointed
//! step draws exactly what an unchecked one does (same gradients, not just same law).
use super::decoder::{CausalLm, Ctx, Step};
use super::hooks::ModelHooks;
use super::params::ParamStore;
use crate::error::{Error, Result};
use crate::ops::precomputed::Precomputed;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor, Var};
use rand::rngs::StdRng;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Lends the model to a checkpointed layer's backward. That backward runs after the forward
/// has returned (in another call, often on another thread), so it cannot borrow the model:
/// its owner (the Node handle's lock, a test's `RwLock`) lends it for the recompute.
pub trait ModelAccess: Send + Sync {
    /// Calls `f` with the model and the hooks the forward ran with (None: the base model).
    fn with_model(&self, f: &mut dyn FnMut(&CausalLm, Option<&dyn ModelHooks>) -> Result<()>) -> Result<()>;
}

/// One forward's checkpointing: how to reach the model again, and the parameter gradients
/// the recomputes found, until `collect_into` takes them.
#[derive(Clone)]
pub struct Checkpointing {
    access: Arc<dyn ModelAccess>,
    grads: Arc<Mutex<GradStore>>,
}

impl Checkpointing {
    pub fn new(access: Arc<dyn ModelAccess>) -> Self {
        Checkpointing { access, grads: Arc::default() }
    }

    /// Adds the checkpointed layers' parameter gradients to `grads` (the outer backward's),
    /// summing where a parameter has both (shared VeRA matrices, tied weights). Call after
    /// every backward of a loss this forward produced.
    pub fn collect_into(&self, grads: &mut GradStore) -> Result<()> {
        let side = std::mem::take(&mut *self.grads.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(grads.extend(side)?)
    }

    fn deposit(&self, grads: GradStore) -> Result<()> {
        Ok(self.grads.lock().unwrap_or_else(|e| e.into_inner()).extend(grads)?)
    }
}

/// `loss.backward()`, with the checkpointed layers' parameter gradients merged in.
pub fn backward(loss: &Tensor, checkpoint: Option<&Checkpointing>) -> Result<GradStore> {
    let mut grads = loss.backward()?;
    if let Some(cp) = checkpoint {
        cp.collect_into(&mut grads)?;
    }
    Ok(grads)
}

/// The randomness a layer saw when it first ran.
#[derive(Clone)]
struct Replay {
    rng: StdRng,
    draws: HashMap<String, u64>,
}

impl Replay {
    fn capture(ctx: &Ctx) -> Self {
        let rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let draws = ctx.shared_draws.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Replay { rng, draws }
    }

    /// A context that draws what the captured one drew next.
    fn ctx<'a>(&self, store: &'a ParamStore, no_grad: bool, training: bool, hooks: Option<&'a dyn ModelHooks>) -> Ctx<'a> {
        let mut ctx = Ctx::new(store, no_grad);
        ctx.training = training;
        ctx.hooks = hooks;
        ctx.rng = Mutex::new(self.rng.clone());
        ctx.shared_draws = Mutex::new(self.draws.clone());
        ctx
    }
}

/// The per-call tensors a layer reads (RoPE tables, masks), owned for the recompute.
struct StepTensors {
    rope: (Tensor, Tensor),
    local_rope: Option<(Tensor, Tensor)>,
    bias: Tensor,
    sliding_bias: Option<Tensor>,
    prefix_spans: Vec<(String, usize)>,
}

impl StepTensors {
    fn of(step: &Step) -> Self {
        let (rope, local_rope) = (step.rope.clone(), step.local_rope.clone());
        StepTensors {
            rope,
            local_rope,
            bias: step.bias.clone(),
            sliding_bias: step.sliding_bias.clone(),
            prefix_spans: step.prefix_spans.clone(),
        }
    }

    fn step<'a>(&self, ctx: &'a Ctx<'a>) -> Step<'a> {
        let (rope, local_rope) = (self.rope.clone(), self.local_rope.clone());
        Step {
            ctx,
            rope,
            local_rope,
            bias: self.bias.clone(),
            sliding_bias: self.sliding_bias.clone(),
            prefix: None,
            prefix_spans: self.prefix_spans.clone(),
        }
    }
}

impl CausalLm {
    /// `block(layers[i], x)` as a checkpoint: same value, no graph inside.
    pub(super) fn checkpointed_block(
        &self,
        i: usize,
        x: &Tensor,
        step: &Step,
        prefix: Option<&(Tensor, Tensor)>,
        cp: &Checkpointing,
    ) -> Result<Tensor> {
        let ctx = step.ctx;
        let replay = Replay::capture(ctx);
        let run = replay.ctx(ctx.store, true, ctx.training, ctx.hooks);
        let detached = prefix.map(|(k, v)| (k.detach(), v.detach()));
        let y = self.block(&self.layers[i], &x.detach(), &StepTensors::of(step).step(&run), detached.as_ref(), None)?;
        // The pass goes on from where this layer left the generator, as without checkpointing.
        *ctx.rng.lock().unwrap_or_else(|e| e.into_inner()) = run.rng.into_inner().unwrap_or_else(|e| e.into_inner());
        *ctx.shared_draws.lock().unwrap_or_else(|e| e.into_inner()) = run.shared_draws.into_inner().unwrap_or_else(|e| e.into_inner());
        let op = LayerCheckpoint {
            layer: i,
            replay,
            training: ctx.training,
            step: StepTensors::of(step),
            input_grad: x.track_op(),
            checkpoint: cp.clone(),
            output: Precomputed::new(y),
        };
        // Recorded even when x tracks nothing (layer 0 under frozen embeddings): the layer's
        // own parameters need its backward. A tracked copy of x makes candle record it.
        let x = if x.track_op() { x.clone() } else { Var::from_tensor(x)?.as_tensor().clone() };
        Ok(match prefix {
            Some((k, v)) => x.apply_op3_arc(k, v, Arc::new(Box::new(op)))?,
            None => x.apply_op1(op)?,
        })
    }
}

struct LayerCheckpoint {
    layer: usize,
    replay: Replay,
    training: bool,
    step: StepTensors,
    /// Whether x tracked a gradient in the outer graph (else dx is not wanted).
    input_grad: bool,
    checkpoint: Checkpointing,
    output: Precomputed,
}

/// A fresh leaf for `t`: a `Var` (so the recompute's backward returns its gradient) when
/// the outer graph wants one, else a constant.
fn leaf(t: &Tensor, wanted: bool) -> Result<Tensor> {
    Ok(if wanted { Var::from_tensor(&t.detach())?.as_tensor().clone() } else { t.detach() })
}

impl LayerCheckpoint {
    /// Recomputes the layer from x (and its prefix) and backpropagates `grad` through it:
    /// (dx, dk, dv); the parameters' gradients go to the side store.
    fn recompute(&self, x: &Tensor, prefix: Option<(&Tensor, &Tensor)>, grad: &Tensor) -> Result<[Option<Tensor>; 3]> {
        let x = leaf(x, self.input_grad)?;
        let prefix = prefix.map(|(k, v)| Ok::<_, Error>((leaf(k, k.track_op())?, leaf(v, v.track_op())?))).transpose()?;
        let (mut y, mut params) = (None, Vec::new());
        self.checkpoint.access.with_model(&mut |lm, hooks| {
            params = lm.store.iter().filter(|(_, p)| p.requires_grad()).map(|(_, p)| p.value().clone()).collect();
            let layer = lm.layers.get(self.layer).ok_or_else(|| {
                Error::Unsupported(format!("checkpointed layer {}: the model now has {} layers", self.layer, lm.layers.len()))
            })?;
            let ctx = self.replay.ctx(&lm.store, false, self.training, hooks);
            y = Some(lm.block(layer, &x, &self.step.step(&ctx), prefix.as_ref(), None)?);
            Ok(())
        })?;
        let y = y.ok_or_else(|| Error::Unsupported("checkpointed layer: the model was not lent for the recompute".into()))?;
        if !y.track_op() {
            return Ok([None, None, None]);
        }
        // d/dθ Σ y·g is the vector-Jacobian product gᵀ ∂y/∂θ that candle's scalar backward gives.
        let mut grads = (y * grad.detach())?.sum_all()?.backward()?;
        let mut take = |t: &Tensor| grads.remove(t);
        let dx = take(&x);
        let (dk, dv) = prefix.as_ref().map_or((None, None), |(k, v)| (take(k), take(v)));
        // Only the parameters' gradients are kept: candle's store also holds gradients of the
        // graph's constant inputs (masks, RoPE tables), which nobody reads.
        let mut kept = GradStore::default();
        for p in &params {
            if let Some(g) = grads.remove(p) {
                kept.insert(p, g);
            }
        }
        self.checkpoint.deposit(kept)?;
        Ok([dx, dk, dv])
    }

    fn bwd_error(&self, e: Error) -> candle_core::Error {
        candle_core::Error::Msg(format!("gradient checkpointing, recompute of layer {}: {e}", self.layer))
    }
}

impl CustomOp1 for LayerCheckpoint {
    fn name(&self) -> &'static str {
        "checkpointed-decoder-layer"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _: &candle_core::CudaStorage, _: &Layout) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.output.cuda()
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let [dx, ..] = self.recompute(x, None, grad).map_err(|e| self.bwd_error(e))?;
        Ok(dx)
    }
}

impl CustomOp3 for LayerCheckpoint {
    fn name(&self) -> &'static str {
        "checkpointed-decoder-layer-with-prefix"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.output.cuda()
    }

    fn bwd(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [dx, dk, dv] = self.recompute(x, Some((k, v)), grad).map_err(|e| self.bwd_error(e))?;
        Ok((dx, dk, dv))
    }
}
