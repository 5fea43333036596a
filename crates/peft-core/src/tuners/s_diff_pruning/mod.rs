//! Structured diff pruning (Guo et al. 2021, "Parameter-Efficient Transfer Learning with Diff
//! Pruning", §3.2-3.3, eqs. 4-7): the task's weights are θ = W + δ, δ = z ⊙ w, with the mask z
//! relaxed to hard-concrete variables (Louizos et al. 2018) so that its L0 norm can be trained:
//! u ~ U(0, 1), s = σ((log u − log(1 − u) + log α)/β), s̄ = s(ζ − γ) + γ, z = min(1, max(0, s̄)),
//! and the penalty E‖δ‖₀ = Σ σ(log α − β log(−γ/ζ)) (eq. 5). The structured form (§3.3) shares
//! one gate among a group of entries, which makes whole groups of the delta vanish together;
//! here the groups are the rows of each targeted weight (one output unit each), and only the
//! group gates are kept (the paper also multiplies per-entry gates). Outside training z takes
//! its expectation-free value min(1, max(0, σ(log α)(ζ − γ) + γ)), as the paper's inference.
//! In training the layer adds λ · (expected share of non-zero rows) to the loss as the auxiliary
//! term `s_diff_pruning_l0` (λ = `l0_lambda`, summed over the targeted layers). Merges as
//! W + z ⊙ w. Our own `peft_type` "S_DIFF_PRUNING"; tensors `<linear>.diff_delta.weight`
//! [out, in] (w, init 0) and `<linear>.diff_log_alpha.weight` [out] (log α, init `init_log_alpha`).
use crate::error::Result;
use crate::model::{Ctx, Linear, ParamId, ParamStore};
use crate::tuners::fields::{mergeable_plumbing, Fields};
use crate::tuners::low_rank::merges_delta;
use crate::tuners::masked_delta::defaults;
use crate::tuners::sparse_mask::config::DEFAULT_TARGETS;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use rand::Rng;
use serde_json::{json, Value};
use std::path::Path;

/// The hard-concrete constants of Louizos et al. (2018) that diff pruning uses: temperature β
/// and the stretch interval (γ, ζ).
const BETA: f64 = 2.0 / 3.0;
const GAMMA: f64 = -0.1;
const ZETA: f64 = 1.1;
pub const L0_LOSS: &str = "s_diff_pruning_l0";

#[derive(Debug, Clone)]
pub struct SDiffPruningConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// λ, the weight of the expected-L0 penalty.
    pub l0_lambda: f64,
    /// log α at init: 1 puts each gate near 0.78 (inside (0, 1), where it gets a gradient).
    pub init_log_alpha: f64,
}

impl SDiffPruningConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) = Fields::parse(
            value,
            "S_DIFF_PRUNING",
            "SDiffPruningConfig",
            defaults(json!({"l0_lambda": 0.01, "init_log_alpha": 1.0})),
            source,
        )?;
        f.no_modules_to_save()?;
        let l0_lambda = f.num_in("l0_lambda", |x| x >= 0.0 && x.is_finite(), "a number >= 0 (the weight of the L0 penalty)")?;
        let init_log_alpha = f.num_in("init_log_alpha", |x| x.abs() <= 20.0, "a number in [-20, 20] (the gates' log α at init)")?;
        Ok((SDiffPruningConfig { l0_lambda, init_log_alpha, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for SDiffPruningConfig {
    mergeable_plumbing!("S_DIFF_PRUNING", DEFAULT_TARGETS);

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dev = bc.store.get(t.weight).value().device().clone();
        let w = bc.store.add(
            param_name(&t.path, "diff_delta", bc.adapter),
            Tensor::zeros((t.out_features, t.in_features), bc.dtype, &dev)?,
            false,
        )?;
        let log_alpha = (Tensor::ones(t.out_features, bc.dtype, &dev)? * self.init_log_alpha)?;
        let log_alpha = bc.store.add(param_name(&t.path, "diff_log_alpha", bc.adapter), log_alpha, false)?;
        Ok(Box::new(SDiffPruningLayer { adapter: bc.adapter.to_string(), w, log_alpha, l0_lambda: self.l0_lambda }))
    }
}

#[derive(Debug)]
pub struct SDiffPruningLayer {
    pub adapter: String,
    pub w: ParamId,
    pub log_alpha: ParamId,
    pub l0_lambda: f64,
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

/// min(1, max(0, s̄)) with a gradient inside (0, 1): 1 − relu(1 − relu(s̄)).
fn clamp01(x: &Tensor) -> Result<Tensor> {
    Ok(((x.relu()?.neg()? + 1.0)?.relu()?.neg()? + 1.0)?)
}

/// The gates z [out] at inference (eq. 7's deterministic form).
fn gates_eval(log_alpha: &Tensor) -> Result<Tensor> {
    clamp01(&((sigmoid(log_alpha)? * (ZETA - GAMMA))? + GAMMA)?)
}

impl SDiffPruningLayer {
    /// z ⊙ w with the inference gates.
    fn delta(&self, store: &ParamStore) -> Result<Tensor> {
        let z = gates_eval(&store.get(self.log_alpha).value())?;
        Ok(store.get(self.w).value().broadcast_mul(&z.unsqueeze(1)?)?)
    }
}

impl AdapterLayer for SDiffPruningLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.w, self.log_alpha]
    }

    /// `result + x (z ⊙ w)ᵀ`; training samples z from the hard concrete and records the L0 penalty.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (w, log_alpha) = (ctx.param(self.w), ctx.param(self.log_alpha));
        let z = if ctx.training {
            let n = log_alpha.elem_count();
            let u: Vec<f64> = {
                let mut rng = ctx.rng.lock().unwrap_or_else(|e| e.into_inner());
                (0..n).map(|_| rng.random_range(1e-6..1.0 - 1e-6)).collect()
            };
            let u = Tensor::from_vec(u, n, log_alpha.device())?.to_dtype(log_alpha.dtype())?;
            let logit = (u.log()? - (u.neg()? + 1.0)?.log()?)?;
            let s = sigmoid(&((logit + &log_alpha)? / BETA)?)?;
            let expected_l0 = sigmoid(&(&log_alpha - BETA * (-GAMMA / ZETA).ln())?)?.mean_all()?;
            ctx.add_aux_loss(L0_LOSS, (expected_l0 * self.l0_lambda)?);
            clamp01(&((s * (ZETA - GAMMA))? + GAMMA)?)?
        } else {
            gates_eval(&log_alpha)?
        };
        let delta = w.broadcast_mul(&z.unsqueeze(1)?)?;
        let (dt, out_dtype) = (delta.dtype(), result.dtype());
        let y = crate::model::linear::linear(&x.to_dtype(dt)?, &delta, None)?;
        Ok((result.to_dtype(dt)? + y)?.to_dtype(out_dtype)?)
    }

    merges_delta!();
}
