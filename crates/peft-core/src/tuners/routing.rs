//! Mixed-batch inference: each row of a batch runs its own adapter, as PEFT's
//! `model(**inputs, adapter_names=[...])` (`_enable_peft_forward_hooks` in the tuner,
//! `_mixed_batch_forward` in each layer) and S-LoRA/Punica-style serving.
//!
//! The assignment travels in the hooks a forward pass runs with (`attach.rs`). Every hook site routes it the same way, so every
//! method works without knowing about it: for each distinct adapter in the batch that has a
//! layer at the site, that layer runs on the sub-batch of its rows (an `index_select`), the
//! other rows keep the base result, and the rows are put back in their order with one
//! gather. The active set plays no part (PEFT's `_mixed_batch_forward` ignores it); with the
//! adapters disabled every row gets the base model, as PEFT checks `disable_adapters` first.
use super::{AdapterLayer, Tuners, PROMPT_ENCODER};
use crate::error::{Error, Result};
use crate::model::{Ctx, Linear, Norm};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The name that gives a row the base model (PEFT's `"__base__"`).
pub const BASE_ROWS: &str = "__base__";

/// A validated per-row adapter assignment, built by `Tuners::route_rows`.
pub struct RowAdapters {
    names: Vec<String>,
    /// Distinct adapters other than `__base__`, in order of first appearance.
    groups: Vec<Group>,
    device: Device,
    /// Gathers that put rows back, by the set of groups that ran at a site (a bitmask):
    /// built once per set, as sites of one forward pass share few sets.
    layouts: Mutex<HashMap<u64, Arc<Layout>>>,
}

struct Group {
    adapter: String,
    rows: Vec<u32>,
    index: Tensor,
}

/// For one set of groups that ran: the rows left to the base result, and the gather from
/// [groups' rows in order, then the base rows] back to the batch order.
struct Layout {
    base_rows: Option<Tensor>,
    order: Tensor,
}

/// The rows a layer runs on: all of them, or a sub-batch.
pub struct Rows<'a> {
    index: Option<&'a Tensor>,
}

impl Rows<'_> {
    /// The sub-batch of `t` (rows on dim 0).
    pub fn select(&self, t: &Tensor) -> Result<Tensor> {
        Ok(match self.index {
            None => t.clone(),
            Some(i) => t.index_select(i, 0)?,
        })
    }
}

impl RowAdapters {
    /// Rows in the batch the assignment was made for.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// PEFT's length check: one name per row of the batch.
    pub fn check_batch(&self, batch: usize) -> Result<()> {
        if self.len() != batch {
            return Err(Error::arg(
                "adapterNames",
                format!("one adapter name per row of the batch ({batch})"),
                format!("{} names", self.len()),
            ));
        }
        Ok(())
    }

    fn layout(&self, ran: &[usize]) -> Result<Arc<Layout>> {
        let key = ran.iter().fold(0u64, |k, &g| k | 1u64.checked_shl(g as u32).unwrap_or(0));
        let cacheable = ran.iter().all(|&g| g < 64);
        if cacheable {
            if let Some(l) = self.layouts.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
                return Ok(l.clone());
            }
        }
        let mut stacked: Vec<u32> = ran.iter().flat_map(|&g| self.groups[g].rows.iter().copied()).collect();
        let base: Vec<u32> = (0..self.len() as u32).filter(|r| !stacked.contains(r)).collect();
        let base_rows = if base.is_empty() { None } else { Some(Tensor::new(base.as_slice(), &self.device)?) };
        stacked.extend(base);
        let mut order = vec![0u32; self.len()];
        for (pos, &row) in stacked.iter().enumerate() {
            order[row as usize] = pos as u32;
        }
        let layout = Arc::new(Layout { base_rows, order: Tensor::new(order.as_slice(), &self.device)? });
        if cacheable {
            self.layouts.lock().unwrap_or_else(|e| e.into_inner()).insert(key, layout.clone());
        }
        Ok(layout)
    }
}

impl Tuners {
    /// Validates a per-row assignment as PEFT does before a mixed-batch forward: every name
    /// is an attached adapter or `__base__` (any attached adapter, active or not), and no
    /// adapter is merged. Prompt-learning adapters (prompt tuning, p-tuning, prefix tuning)
    /// change the sequence itself, not one row's activations: they are refused (PEFT has no
    /// mixed-batch path for them; its prompt-learning forward does not handle `adapter_names`).
    /// Index tensors are made on `device`; the length is checked against the batch by the forward.
    pub fn route_rows(&self, names: &[String], device: &Device) -> Result<RowAdapters> {
        let mut unknown: Vec<&str> =
            names.iter().map(String::as_str).filter(|n| *n != BASE_ROWS && !self.adapters.iter().any(|a| a.name == *n)).collect();
        unknown.sort();
        unknown.dedup();
        if !unknown.is_empty() {
            let expected = format!("names of attached adapters ({}) or \"{BASE_ROWS}\"", self.names().join(", "));
            return Err(Error::arg("adapterNames", expected, format!("non-existing adapter(s): {}", unknown.join(", "))));
        }
        if self.is_merged() {
            return Err(Error::Unsupported(
                "adapterNames: cannot run adapters per row while adapters are merged into the base weights; unmerge first".into(),
            ));
        }
        let mut by_adapter: Vec<(&String, Vec<u32>)> = Vec::new();
        for (row, name) in names.iter().enumerate().filter(|(_, n)| *n != BASE_ROWS) {
            match by_adapter.iter_mut().find(|(a, _)| *a == name) {
                Some((_, rows)) => rows.push(row as u32),
                None => by_adapter.push((name, vec![row as u32])),
            }
        }
        let mut groups = Vec::with_capacity(by_adapter.len());
        for (adapter, rows) in by_adapter {
            if self.modules(adapter)?.iter().any(|m| m == PROMPT_ENCODER) {
                return Err(Error::Unsupported(format!(
                    "adapterNames: adapter `{adapter}` is a prompt-learning adapter ({}); per-row adapters work with adapters on layers, not with virtual tokens or prefixes",
                    self.config(adapter)?.peft_type()
                )));
            }
            groups.push(Group { adapter: adapter.clone(), index: Tensor::new(rows.as_slice(), device)?, rows });
        }
        Ok(RowAdapters { names: names.to_vec(), groups, device: device.clone(), layouts: Mutex::new(HashMap::new()) })
    }

    /// A site's output for a mixed batch: `base` (the output without adapters, for the whole
    /// batch) where a row's adapter has no layer at `path`, else what `run` returns for the
    /// layer and the rows of its adapter.
    pub(super) fn route(
        &self,
        rows: &RowAdapters,
        path: &str,
        base: Tensor,
        mut run: impl FnMut(&dyn AdapterLayer, &Rows) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if !self.enabled {
            return Ok(base);
        }
        let ran: Vec<(usize, &dyn AdapterLayer)> =
            rows.groups.iter().enumerate().filter_map(|(i, g)| layer_at(self, path, &g.adapter).map(|l| (i, l))).collect();
        match ran.as_slice() {
            [] => return Ok(base),
            // The whole batch on one adapter: no gather, as a plain forward.
            [(g, layer)] if rows.groups[*g].rows.len() == rows.len() => return run(*layer, &Rows { index: None }),
            _ => {}
        }
        let mut parts = Vec::with_capacity(ran.len() + 1);
        for (g, layer) in &ran {
            parts.push(run(*layer, &Rows { index: Some(&rows.groups[*g].index) })?.to_dtype(base.dtype())?);
        }
        let layout = rows.layout(&ran.iter().map(|(g, _)| *g).collect::<Vec<_>>())?;
        if let Some(b) = &layout.base_rows {
            parts.push(base.index_select(b, 0)?);
        }
        Ok(Tensor::cat(&parts, 0)?.index_select(&layout.order, 0)?)
    }

    /// `Tuners::linear_output` for a mixed batch. `base` is the base matmul of the untouched
    /// input (`linear_input` transforms nothing then); a layer that transforms its input
    /// (IA³ on feed-forward layers) gets the base matmul of its rows' transformed input.
    pub(super) fn route_linear(&self, rows: &RowAdapters, linear: &Linear, x: &Tensor, base: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let whole = base.clone();
        self.route(rows, &linear.path, base, |layer, r| {
            let xs = r.select(x)?;
            let start = match layer.transform_input(&xs, ctx)? {
                Some(t) => linear.base(&t, ctx)?,
                None => r.select(&whole)?,
            };
            layer.forward(linear, &xs, start, ctx)
        })
    }

    /// `Tuners::norm` for a mixed batch: each adapter's rows normalised with its weight
    /// (LN tuning) and through its output transform (SSF).
    pub(super) fn route_norm(&self, rows: &RowAdapters, norm: &Norm, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let weight = ctx.param(norm.weight);
        let base = norm.apply(x, &weight)?;
        self.route(rows, &norm.path, base, |layer, r| {
            let w = match layer.norm_weight(&weight, ctx)? {
                Some(w) => w.to_dtype(weight.dtype())?,
                None => weight.clone(),
            };
            layer.norm_output(norm.apply(&r.select(x)?, &w)?, ctx)
        })
    }

    /// `Tuners::sublayer` for a mixed batch (bottleneck and parallel adapters).
    pub(super) fn route_sublayer(&self, rows: &RowAdapters, path: &str, input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let whole = output.clone();
        self.route(rows, path, output, |layer, r| layer.sublayer(&r.select(input)?, r.select(&whole)?, ctx))
    }
}

fn layer_at<'t>(tuners: &'t Tuners, path: &str, adapter: &str) -> Option<&'t dyn AdapterLayer> {
    tuners.layers.get(path)?.iter().find(|l| l.adapter_name() == adapter).map(|l| l.as_ref())
}
