//! What K-FAC needs of every LoRA layer in one forward and backward pass: per token, the
//! layer input x [in] and the gradient g [out] of the loss with respect to the layer output.
//! The model's graph keeps no intermediate gradients, so each adapted linear's output gets a
//! zero `Var` added (a probe): its gradient is g, and the forward is unchanged.
use crate::error::{Error, Result};
use crate::model::{Batch, CausalLm, Ctx, Linear, ModelHooks, Norm, ParamId, ParamStore, Prompt, PromptInputs};
use crate::tuners::lora::LoraLayer;
use crate::tuners::Tuners;
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;
use std::sync::Mutex;

/// One LoRA layer of the adapter: `h = W x + s · B A x` (Hu et al. 2021, eq. 3).
#[derive(Debug, Clone)]
pub struct LoraSite {
    pub path: String,
    pub a: ParamId,
    pub b: ParamId,
    pub scaling: f64,
}

impl LoraSite {
    /// From a capture: lora_B's inputs s·A x and lora_A's output gradients s·Bᵀg, [n, r] (f64).
    pub fn inner(&self, store: &ParamStore, c: &Captured) -> Result<(Tensor, Tensor)> {
        let (a, b) = (store.get(self.a).value().to_dtype(DType::F64)?, store.get(self.b).value().to_dtype(DType::F64)?);
        Ok(((c.x.matmul(&a.t()?)? * self.scaling)?, (c.g.matmul(&b)? * self.scaling)?))
    }
}

/// The LoRA layers of `adapter`, in the order it targets them; an error naming the method
/// when the adapter is not plain LoRA (DoRA's magnitude is not a LoRA matrix either).
pub fn lora_sites(tuners: &Tuners, adapter: &str) -> Result<Vec<LoraSite>> {
    let method = tuners.config(adapter)?.peft_type();
    let not_lora = |why: &str| {
        Error::Unsupported(format!("Laplace-LoRA: adapter `{adapter}` is {why}; it needs a plain LoRA adapter (peft_type LORA)"))
    };
    let mut sites = Vec::new();
    for (path, layer) in tuners.layers_of(adapter)? {
        let lora = layer.as_any().and_then(|l| l.downcast_ref::<LoraLayer>()).ok_or_else(|| not_lora(&format!("a {method} adapter")))?;
        if lora.dora.is_some() {
            return Err(not_lora("a DoRA adapter"));
        }
        sites.push(LoraSite { path: path.to_string(), a: lora.a, b: lora.b, scaling: lora.scaling });
    }
    if sites.is_empty() {
        return Err(not_lora(&format!("a {method} adapter with no LoRA layers")));
    }
    Ok(sites)
}

/// An error unless `adapter` runs in the forward pass (active, enabled, unmerged): the curvature
/// and the predictive are of the model with it.
pub fn check_running(tuners: &Tuners, adapter: &str) -> Result<()> {
    if !tuners.active().iter().any(|a| a == adapter) || !tuners.is_enabled() || tuners.is_merged() {
        return Err(Error::Unsupported(format!("Laplace-LoRA: adapter `{adapter}` must be active, enabled and unmerged (setAdapter(\"{adapter}\"), enableAdapters(), unmergeAdapter())")));
    }
    Ok(())
}

/// `Tuners` as the model's hooks, with a probe added to the output of each site.
struct Probes<'a> {
    tuners: &'a Tuners,
    index: HashMap<&'a str, usize>,
    taken: Mutex<Vec<Option<(Tensor, Var)>>>,
}

impl ModelHooks for Probes<'_> {
    fn begin_forward(&self, batch: usize, ctx: &Ctx) -> crate::error::Result<()> {
        self.tuners.begin_forward(batch, ctx)
    }
    fn linear(&self, linear: &Linear, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let y = self.tuners.linear(linear, x, ctx)?;
        let Some(&i) = self.index.get(linear.path.as_str()) else { return Ok(y) };
        let probe = Var::zeros(y.shape(), y.dtype(), y.device())?;
        let out = (y + probe.as_tensor())?;
        self.taken.lock().unwrap_or_else(|e| e.into_inner())[i] = Some((x.detach(), probe));
        Ok(out)
    }
    fn changes_linear(&self, path: &str, ctx: &Ctx) -> bool {
        self.index.contains_key(path) || self.tuners.changes_linear(path, ctx)
    }
    fn norm(&self, norm: &Norm, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.tuners.norm(norm, x, ctx)
    }
    fn sublayer(&self, path: &str, input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        self.tuners.sublayer(path, input, output, ctx)
    }
    fn input_embeddings(&self, x: Tensor, past: usize, ctx: &Ctx) -> Result<Tensor> {
        self.tuners.input_embeddings(x, past, ctx)
    }
    fn prompt(&self, ctx: &Ctx, inputs: &PromptInputs) -> Result<Prompt> {
        self.tuners.prompt(ctx, inputs)
    }
    fn prefix_gates(&self, path: &str, spans: &[(String, usize)], x: &Tensor, ctx: &Ctx) -> Result<Option<Tensor>> {
        self.tuners.prefix_gates(path, spans, x, ctx)
    }
}

/// Per site, the counted tokens' inputs x [n, in] and output gradients g [n, out], in f64.
pub struct Captured {
    pub x: Tensor,
    pub g: Tensor,
}

/// A forward pass with probes: the logits [b, t, vocab], and each site's input and probe.
pub struct ProbedPass {
    pub logits: Tensor,
    taken: Vec<(Tensor, Var)>,
    /// Flat indices b·t of the tokens the attention mask keeps.
    keep: Tensor,
}

/// One forward of `batch` with the adapters (eval mode: no dropout), keeping the graph.
pub fn probed_forward(model: &CausalLm, tuners: &Tuners, sites: &[LoraSite], batch: &Batch) -> Result<ProbedPass> {
    let probes = Probes {
        tuners,
        index: sites.iter().enumerate().map(|(i, s)| (s.path.as_str(), i)).collect(),
        taken: Mutex::new(vec![None; sites.len()]),
    };
    let ctx = Ctx::new(&model.store, false).with_hooks(&probes, None);
    let logits = model.forward(batch, &ctx, None, false)?;
    let (b, t) = batch.dims();
    let kept = |i: usize| batch.attention_mask.as_ref().is_none_or(|m| m[i / t].get(m[i / t].len() - t + i % t) != Some(&0));
    let keep = Tensor::new((0..b * t).filter(|&i| kept(i)).map(|i| i as u32).collect::<Vec<_>>(), logits.device())?;
    let taken = probes.taken.into_inner().unwrap_or_else(|e| e.into_inner());
    let taken = sites
        .iter()
        .zip(taken)
        .map(|(site, t)| t.ok_or_else(|| Error::Unsupported(format!("Laplace-LoRA: the forward pass did not reach `{}`", site.path))))
        .collect::<Result<_>>()?;
    Ok(ProbedPass { logits, taken, keep })
}

impl ProbedPass {
    /// The backward of `loss` (a scalar of `logits`' graph): per site, x and g at the kept
    /// tokens. The graph stays, so several losses may be taken from one pass.
    pub fn captures(&self, loss: &Tensor) -> Result<Vec<Captured>> {
        let grads = loss.backward()?;
        let rows = |v: &Tensor| -> Result<Tensor> { Ok(v.flatten_to(1)?.index_select(&self.keep, 0)?.to_dtype(DType::F64)?) };
        self.taken
            .iter()
            .map(|(x, probe)| {
                let g = match grads.get(probe.as_tensor()) {
                    Some(g) => g.clone(),
                    None => probe.as_tensor().zeros_like()?,
                };
                Ok(Captured { x: rows(x)?, g: rows(&g)? })
            })
            .collect()
    }
}

/// `probed_forward`, then the captures of the loss that `loss` builds from the logits.
pub fn capture(
    model: &CausalLm,
    tuners: &Tuners,
    sites: &[LoraSite],
    batch: &Batch,
    loss: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Captured>> {
    let pass = probed_forward(model, tuners, sites, batch)?;
    pass.captures(&loss(&pass.logits)?)
}
