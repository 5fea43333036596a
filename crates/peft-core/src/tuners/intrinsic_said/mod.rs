//! Intrinsic SAID (Aghajanyan et al. 2021, "Intrinsic Dimensionality Explains the Effectiveness
//! of Language Model Fine-Tuning", §3, eq. 2-3): fine-tuning in a random d-dimensional subspace,
//! θᵢ = θᵢ⁽⁰⁾ + λᵢ · P(θ⁽ᵈ⁾)ᵢ, with one trained vector θ⁽ᵈ⁾ ∈ ℝᵈ shared by every targeted
//! weight i, a trained scalar λᵢ per weight (SAID, "structure-aware"), and P the Fastfood
//! transform (Le et al. 2013) as in Li et al. 2018: for a weight of D entries, with L the
//! power of two ≥ max(D, d), P(θ) = the first D entries of H G Π H B [θ; 0] / (‖G‖·√L), H the
//! L×L Walsh-Hadamard matrix (applied in O(L log L), `fwht`), G a Gaussian diagonal, Π a random
//! permutation and B a random ±1 diagonal. P is fixed: drawn from `projection_seed` and the
//! module path, it is rebuilt from the config when the adapter loads (not saved). θ⁽ᵈ⁾ starts
//! at 0 (the base model) and λᵢ at 1. Merges as W + λᵢ P(θ⁽ᵈ⁾)ᵢ. Our own `peft_type`
//! "INTRINSIC_SAID"; tensors `base_model.said_theta` [d] (shared) and `<linear>.said_lambda.weight` [1].
use crate::error::{Error, Result};
use crate::model::{Ctx, Linear, ParamId, ParamStore};
use crate::tuners::fields::{mergeable_plumbing, Fields};
use crate::tuners::low_rank::merges_delta;
use crate::tuners::masked_delta::defaults;
use crate::tuners::sparse_mask::config::fnv1a;
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::Path;

/// The largest Fastfood size per weight (2²⁶ entries, 256 MiB per f32 buffer).
const MAX_L: usize = 1 << 26;

#[derive(Debug, Clone)]
pub struct IntrinsicSaidConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// d, the dimension of the trained subspace.
    pub intrinsic_dim: usize,
    pub projection_seed: u64,
}

impl IntrinsicSaidConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) = Fields::parse(
            value,
            "INTRINSIC_SAID",
            "IntrinsicSaidConfig",
            defaults(json!({"intrinsic_dim": 1000, "projection_seed": 0})),
            source,
        )?;
        f.no_modules_to_save()?;
        let intrinsic_dim = f.positive("intrinsic_dim", "the dimension d of the trained subspace")?;
        if intrinsic_dim > MAX_L {
            return Err(f.err("intrinsic_dim", &format!("at most {MAX_L}")));
        }
        let projection_seed = f.get("projection_seed").as_u64().ok_or_else(|| f.err("projection_seed", "a non-negative integer seed"))?;
        Ok((IntrinsicSaidConfig { intrinsic_dim, projection_seed, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for IntrinsicSaidConfig {
    mergeable_plumbing!("INTRINSIC_SAID", &["q_proj", "v_proj"]);

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let dev = bc.store.get(t.weight).value().device().clone();
        let (d, numel) = (self.intrinsic_dim, t.out_features * t.in_features);
        let l = numel.max(d).checked_next_power_of_two().filter(|&l| l <= MAX_L).ok_or_else(|| {
            Error::Unsupported(format!("INTRINSIC_SAID: `{}` has {numel} entries, more than the Fastfood size limit {MAX_L}", t.path))
        })?;
        // θ⁽ᵈ⁾ is created by the first layer, which alone lists it (saved, frozen and removed once).
        let theta_name = format!("base_model.said_theta.{}", bc.adapter);
        let (theta, owns_theta) = match bc.store.id(&theta_name) {
            Some(id) => (id, false),
            None => (bc.store.add(theta_name, Tensor::zeros(d, bc.dtype, &dev)?, false)?, true),
        };
        let lambda = bc.store.add(param_name(&t.path, "said_lambda", bc.adapter), Tensor::ones(1, bc.dtype, &dev)?, false)?;
        // The projection: from the seed and the path only, so loading rebuilds it.
        let mut rng = StdRng::seed_from_u64(self.projection_seed ^ fnv1a(&t.path));
        let signs: Vec<f64> = (0..l).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
        let mut perm: Vec<u32> = (0..l as u32).collect();
        perm.shuffle(&mut rng);
        let gauss: Vec<f64> = (0..l).map(|_| normal(&mut rng)).collect();
        let norm = gauss.iter().map(|g| g * g).sum::<f64>().sqrt() * (l as f64).sqrt();
        let f = |v: Vec<f64>| -> Result<Tensor> { Ok(Tensor::from_vec(v, l, &dev)?.to_dtype(bc.dtype)?) };
        Ok(Box::new(IntrinsicSaidLayer {
            adapter: bc.adapter.to_string(),
            theta,
            owns_theta,
            lambda,
            shape: (t.out_features, t.in_features),
            signs: f(signs)?,
            perm: Tensor::from_vec(perm, l, &dev)?,
            gauss: (f(gauss)? / norm)?,
        }))
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let (u, v): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
    (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
}

/// H x for x [L], L a power of two: log₂ L butterfly stages of adds and subtracts (autograd-friendly).
pub fn fwht(x: &Tensor) -> Result<Tensor> {
    let l = x.elem_count();
    let mut x = x.clone();
    let mut h = 1;
    while h < l {
        let y = x.reshape((l / (2 * h), 2, h))?;
        let (a, b) = (y.narrow(1, 0, 1)?, y.narrow(1, 1, 1)?);
        x = Tensor::cat(&[(&a + &b)?, (&a - &b)?], 1)?.reshape(l)?;
        h *= 2;
    }
    Ok(x)
}

#[derive(Debug)]
pub struct IntrinsicSaidLayer {
    pub adapter: String,
    pub theta: ParamId,
    pub owns_theta: bool,
    pub lambda: ParamId,
    pub shape: (usize, usize),
    /// B, Π and G / (‖G‖·√L), each [L].
    signs: Tensor,
    perm: Tensor,
    gauss: Tensor,
}

impl IntrinsicSaidLayer {
    /// λ · P(θ) as [out, in].
    fn project(&self, theta: &Tensor, lambda: &Tensor) -> Result<Tensor> {
        let (l, d) = (self.signs.elem_count(), theta.elem_count());
        let padded =
            if l > d { Tensor::cat(&[theta.clone(), Tensor::zeros(l - d, theta.dtype(), theta.device())?], 0)? } else { theta.clone() };
        let x = fwht(&(padded * &self.signs)?)?.index_select(&self.perm, 0)?;
        let x = fwht(&(x * &self.gauss)?)?;
        Ok(x.narrow(0, 0, self.shape.0 * self.shape.1)?.reshape(self.shape)?.broadcast_mul(lambda)?)
    }

    fn delta(&self, store: &ParamStore) -> Result<Tensor> {
        self.project(&store.get(self.theta).value(), &store.get(self.lambda).value())
    }
}

impl AdapterLayer for IntrinsicSaidLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        if self.owns_theta {
            vec![self.theta, self.lambda]
        } else {
            vec![self.lambda]
        }
    }

    /// `result + x (λ P(θ))ᵀ`.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let delta = self.project(&ctx.param(self.theta), &ctx.param(self.lambda))?;
        let (dt, out_dtype) = (delta.dtype(), result.dtype());
        let y = crate::model::linear::linear(&x.to_dtype(dt)?, &delta, None)?;
        Ok((result.to_dtype(dt)? + y)?.to_dtype(out_dtype)?)
    }

    merges_delta!();
}
