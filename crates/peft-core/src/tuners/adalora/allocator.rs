//! AdaLoRA's budget allocation and orthogonal regulariser, after PEFT 0.21
//! `adalora/layer.py` `RankAllocator` and `adalora/model.py` `AdaLoraModel.forward`,
//! `update_and_allocate`. Importance (paper eqs. 8–11, PEFT `update_ipt`,
//! `_element_score`, `_combine_ipt`): per element I = |w · ∂L/∂w|, smoothed
//! Ī ← β₁Ī + (1−β₁)I, uncertainty Ū ← β₂Ū + (1−β₂)|I − Ī|, score s = Ī·Ū; the score of
//! rank i of a module is s(Λᵢ) + mean_j s(Q_ij) + mean_k s(P_ki). Budget (eq. 12,
//! `budget_schedule`): b(t) = init until tinit, then
//! target + (init − target)·(1 − (t − tinit)/(T − tfinal − tinit))³ (floored), target after;
//! every deltaT steps the ranks whose score is at most the (init − b)-th smallest are masked
//! (Λᵢ = 0, `mask_to_budget`), and after T − tfinal the final mask is re-applied each step.
use super::{AdaLoraConfig, RankPattern};
use crate::error::{Error, Result};
use crate::model::Ctx;
use crate::model::{CausalLm, ParamId, ParamStore};
use crate::tuners::{param_dict_name, Tuners};
use candle_core::{DType, Tensor};
use std::collections::HashMap;

/// The triplet of one module: (module path, lora_A, lora_E, lora_B).
type Triplet = (String, ParamId, ParamId, ParamId);

#[derive(Debug, Clone, Default)]
struct Ema {
    ipt: Vec<f64>,
    unc: Vec<f64>,
}

pub struct RankAllocator {
    pub adapter: String,
    /// Modules by path, sorted (PEFT's sorted `name_set`).
    modules: Vec<Triplet>,
    pub init_bgt: usize,
    pub target_bgt: usize,
    ema: HashMap<ParamId, Ema>,
}

fn config(tuners: &Tuners, adapter: &str) -> Result<AdaLoraConfig> {
    let c = tuners.config(adapter)?.as_any().downcast_ref::<AdaLoraConfig>().cloned();
    c.ok_or_else(|| Error::arg("adapter", "an AdaLoRA adapter", adapter))
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

impl RankAllocator {
    /// `RankAllocator.__init__` / `_set_budget_scheduler`: init budget = Σ ranks, target = target_r · modules.
    pub fn new(tuners: &Tuners, model: &CausalLm, adapter: &str) -> Result<Self> {
        let c = config(tuners, adapter)?;
        let mut modules = Vec::new();
        for path in tuners.modules(adapter)? {
            let id = |attr: &str| {
                model
                    .store
                    .id(&param_dict_name(path, attr, adapter))
                    .ok_or_else(|| Error::arg("adapter", "an AdaLoRA adapter with lora_A/E/B", adapter))
            };
            modules.push((path.clone(), id("lora_A")?, id("lora_E")?, id("lora_B")?));
        }
        modules.sort_by(|a, b| a.0.cmp(&b.0));
        let init_bgt = modules.iter().map(|m| model.store.get(m.1).value().dim(0)).sum::<candle_core::Result<usize>>()?;
        let target_bgt = c.target_r * modules.len();
        if target_bgt >= init_bgt {
            return Err(c.fields.err(
                "target_r",
                &format!("less than the initial ranks' average ({init_bgt} ranks over {} modules): nothing to prune", modules.len()),
            ));
        }
        Ok(RankAllocator { adapter: adapter.into(), modules, init_bgt, target_bgt, ema: HashMap::new() })
    }

    /// `budget_schedule(step)`: (budget, whether to mask at this step).
    pub fn budget_schedule(&self, c: &AdaLoraConfig, step: u64) -> (usize, bool) {
        if step <= c.tinit {
            return (self.init_bgt, false);
        }
        if step > c.total_step - c.tfinal {
            return (self.target_bgt, true);
        }
        let mul = 1.0 - (step - c.tinit) as f64 / (c.total_step - c.tfinal - c.tinit) as f64;
        let span = self.init_bgt as f64 - self.target_bgt as f64;
        ((span * mul.powi(3) + self.target_bgt as f64) as usize, step.is_multiple_of(c.delta_t))
    }

    /// The modules scored: path and the ids of lora_A, lora_E, lora_B.
    pub fn triplets(&self) -> Vec<(&str, [ParamId; 3])> {
        self.modules.iter().map(|(p, a, e, b)| (p.as_str(), [*a, *e, *b])).collect()
    }

    pub fn reset_ipt(&mut self) {
        self.ema.clear();
    }

    /// `update_ipt`: the EMAs of every lora_A/E/B element, from the values and gradients
    /// in the store (call after backward, before the gradients are cleared).
    fn update_ipt(&mut self, c: &AdaLoraConfig, store: &ParamStore) -> Result<()> {
        for id in self.modules.iter().flat_map(|m| [m.1, m.2, m.3]) {
            let p = store.get(id);
            let g = p
                .grad
                .as_ref()
                .ok_or_else(|| Error::arg(&p.name, "a gradient: call update_and_allocate after backward and before zero_grad", "none"))?;
            let (w, g) = (host(&p.value())?, host(g)?);
            let e = self.ema.entry(id).or_insert_with(|| Ema { ipt: vec![0.0; w.len()], unc: vec![0.0; w.len()] });
            for i in 0..w.len() {
                let ipt = (w[i] * g[i]).abs();
                e.ipt[i] = c.beta1 * e.ipt[i] + (1.0 - c.beta1) * ipt;
                e.unc[i] = c.beta2 * e.unc[i] + (1.0 - c.beta2) * (ipt - e.ipt[i]).abs();
            }
        }
        Ok(())
    }

    /// Per module, the combined score of each rank (`mask_to_budget`'s `triplet_ipt`).
    pub fn rank_scores(&self, store: &ParamStore) -> Result<Vec<Vec<f64>>> {
        let score = |id: ParamId| -> Vec<f64> {
            self.ema.get(&id).map_or_else(Vec::new, |e| e.ipt.iter().zip(&e.unc).map(|(a, b)| a * b).collect())
        };
        let mut out = Vec::new();
        for (_, a, e, b) in &self.modules {
            let (r, inp) = store.get(*a).value().dims2()?;
            let outf = store.get(*b).value().dim(0)?;
            let (sa, se, sb) = (score(*a), score(*e), score(*b));
            if se.len() != r {
                return Err(Error::arg(
                    "RankAllocator",
                    "importance scores (run update_and_allocate on steps with gradients first)",
                    "none",
                ));
            }
            let row = (0..r).map(|i| {
                let qa = (0..inp).map(|j| sa[i * inp + j]).sum::<f64>() / inp as f64;
                let pb = (0..outf).map(|k| sb[k * r + i]).sum::<f64>() / outf as f64;
                se[i] + qa + pb
            });
            out.push(row.collect());
        }
        Ok(out)
    }

    /// `mask_to_budget`: zero Λᵢ for ranks scored at most the (init − budget)-th smallest.
    fn mask_to_budget(&self, store: &ParamStore, budget: usize) -> Result<RankPattern> {
        let scores = self.rank_scores(store)?;
        let mut all: Vec<f64> = scores.iter().flatten().copied().collect();
        all.sort_by(f64::total_cmp);
        let k = self.init_bgt.saturating_sub(budget);
        let threshold = if k == 0 { f64::NEG_INFINITY } else { all[k - 1] }; // torch.kthvalue(all, k)
        let masks: Vec<Vec<bool>> = scores.iter().map(|s| s.iter().map(|&x| x > threshold).collect()).collect();
        self.apply(store, &masks)?;
        Ok(self.modules.iter().zip(masks).map(|(m, keep)| (format!("{}.lora_E", m.0), keep)).collect())
    }

    fn apply(&self, store: &ParamStore, masks: &[Vec<bool>]) -> Result<()> {
        for ((_, _, e, _), keep) in self.modules.iter().zip(masks) {
            let p = store.get(*e);
            let v: Vec<f64> = host(&p.value())?.iter().zip(keep).map(|(x, &k)| if k { *x } else { 0.0 }).collect();
            p.set(&Tensor::from_vec(v, p.dims(), &p.device())?)?;
        }
        Ok(())
    }

    /// `AdaLoraModel.update_and_allocate(global_step)`: call every step after the optimizer
    /// step, before the gradients are cleared. Returns the budget when it applied one.
    pub fn update_and_allocate(&mut self, tuners: &mut Tuners, model: &CausalLm, step: u64) -> Result<Option<usize>> {
        let mut c = config(tuners, &self.adapter)?;
        let end = c.total_step - c.tfinal;
        if step > end {
            let rp = c
                .rank_pattern
                .clone()
                .ok_or_else(|| Error::arg("step", format!("a step <= {end} first (no allocation made yet)"), step))?;
            let masks = (self.modules.iter())
                .map(|m| {
                    c.module_pattern(&m.0, &self.adapter)
                        .map(<[bool]>::to_vec)
                        .ok_or_else(|| Error::arg("rank_pattern", format!("an entry for {}", m.0), format!("{} entries", rp.len())))
                })
                .collect::<Result<Vec<_>>>()?;
            self.apply(&model.store, &masks)?;
            return Ok(Some(self.target_bgt));
        }
        if step < end {
            self.update_ipt(&c, &model.store)?;
        }
        let (budget, mask) = self.budget_schedule(&c, step);
        if !(mask || step == end) {
            return Ok(None);
        }
        let pattern = self.mask_to_budget(&model.store, budget)?;
        c.set_rank_pattern(pattern);
        *tuners.config_mut(&self.adapter)? = Box::new(c);
        if step == end {
            self.reset_ipt();
        }
        Ok(Some(budget))
    }
}

/// `AdaLoraModel.forward`'s regulariser (paper eq. 4): orth_reg_weight · mean over every
/// lora_A (Q) and lora_B (P) of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F, to be added to the loss.
/// Differentiable in the adapter's parameters as `ctx` lets them enter the graph.
pub fn orth_regularization(model: &CausalLm, tuners: &Tuners, adapter: &str, ctx: &Ctx) -> Result<Tensor> {
    let c = config(tuners, adapter)?;
    let mut terms = Vec::new();
    for path in tuners.modules(adapter)? {
        for (attr, left) in [("lora_A", true), ("lora_B", false)] {
            let id = model
                .store
                .id(&param_dict_name(path, attr, adapter))
                .ok_or_else(|| Error::arg("adapter", "an AdaLoRA adapter", adapter))?;
            let p = ctx.param(id);
            let cov = if left { p.matmul(&p.t()?)? } else { p.t()?.matmul(&p)? };
            let n = cov.dim(0)?;
            let eye = Tensor::eye(n, cov.dtype(), cov.device())?;
            terms.push((cov - eye)?.sqr()?.sum_all()?.sqrt()?);
        }
    }
    let dev = &model.device;
    if terms.is_empty() {
        return Ok(Tensor::zeros((), model.dtype, dev)?);
    }
    let n = terms.len() as f64;
    Ok(((Tensor::stack(&terms, 0)?.sum_all()? / n)? * c.orth_reg_weight)?)
}
