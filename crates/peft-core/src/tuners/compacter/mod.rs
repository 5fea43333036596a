//! Compacter (Mahabadi et al. 2021, "Compacter: Efficient Low-Rank Hypercomplex Adapter
//! Layers", §3, eqs. 3-5): a Houlsby adapter y = h + s·U(f(D(h))) whose down- and up-projections
//! are parameterized hypercomplex multiplication (PHM) layers, W = Σᵢ₌₁ⁿ Aᵢ ⊗ Bᵢ (eq. 3), with
//! the n×n "slow" matrices Aᵢ shared by every adapter layer and the "fast" matrices low-rank,
//! Bᵢ = sᵢ tᵢᵀ of rank `phm_rank` (eq. 5). We share one set of Aᵢ between the down- and
//! up-projections of all layers. The widths must be multiples of n (`phm_dim`).
//!
//! Placement, width, non-linearity, scaling and layers are the serial bottleneck adapter's
//! fields (`bottleneck/config.rs`); the adapter sits after a nonlinearity, so it cannot merge.
//! Our own `peft_type` "COMPACTER". Tensors: `base_model.compacter_rule` [n, n, n] (the Aᵢ),
//! and at each sublayer `compacter_down_s` [n, k/n, rank], `compacter_down_t` [n, rank, d/n],
//! `compacter_down_bias` [k], `compacter_up_s` [n, d/n, rank], `compacter_up_t` [n, rank, k/n],
//! `compacter_up_bias` [d] (d hidden, k bottleneck). Init (ours: the paper gives none): Aᵢ
//! uniform ±1/√n, fast factors Kaiming-uniform, biases 0, and the up-projection's sᵢ = 0 so that
//! the adapter starts as the identity.
use crate::error::{Error, Result};
use crate::model::linear::linear;
use crate::model::{CausalLm, Ctx, ParamId};
use crate::tuners::bottleneck::config::{name, BottleneckConfig, Placement};
use crate::tuners::bottleneck::Activation;
use crate::tuners::fields::{config_plumbing, Fields};
use crate::tuners::hooks::HookSite;
use crate::tuners::init::{kaiming_uniform, uniform};
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct CompacterConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// The bottleneck fields (serial placement).
    pub adapter: BottleneckConfig,
    pub phm_dim: usize,
    pub phm_rank: usize,
}

impl CompacterConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let defaults = json!({"bottleneck_size": 16, "non_linearity": "gelu", "scaling": 1.0, "sublayers": ["self_attn", "mlp"],
            "layers_to_transform": null, "init_weights": true, "modules_to_save": null, "phm_dim": 4, "phm_rank": 1});
        let (fields, warnings) = Fields::parse(value, "COMPACTER", "CompacterConfig", defaults, source)?;
        let phm_dim = fields.positive("phm_dim", "n, the number of Kronecker summands")?;
        if phm_dim > 64 {
            return Err(fields.err("phm_dim", "at most 64"));
        }
        let phm_rank = fields.positive("phm_rank", "the rank of each fast matrix")?;
        let adapter = BottleneckConfig::from_fields(fields.clone(), Placement::Serial)?;
        if adapter.bottleneck_size % phm_dim != 0 {
            return Err(fields.err("bottleneck_size", &format!("a multiple of phm_dim ({phm_dim})")));
        }
        Ok((CompacterConfig { fields, targets: TargetSpec::default(), adapter, phm_dim, phm_rank }, warnings))
    }
}

impl TunerConfig for CompacterConfig {
    config_plumbing!();

    fn peft_type(&self) -> &'static str {
        "COMPACTER"
    }

    fn can_merge(&self) -> bool {
        false
    }

    fn check_model(&mut self, model: &CausalLm, _targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        let d = model.config.hidden_size;
        if !d.is_multiple_of(self.phm_dim) || self.phm_rank > d / self.phm_dim {
            return Err(self.fields.err("phm_dim", &format!("a divisor of the hidden size {d} (with phm_rank at most hidden / phm_dim)")));
        }
        Ok(Vec::new())
    }

    fn hook_sites(&self, model: &CausalLm) -> Result<Option<Vec<HookSite>>> {
        self.adapter.sites(model).map(Some)
    }

    fn create_linear(&self, t: &LinearInfo, _bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        Err(Error::Unsupported(format!("Compacter attaches to sublayers, not the linear `{}`", t.path)))
    }

    fn create_hook(&self, site: &HookSite, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let HookSite::Sublayer { path, hidden, .. } = site else {
            return Err(Error::Unsupported(format!("Compacter attaches to sublayers, not `{}`", site.path())));
        };
        let device = bc.store.iter().next().map(|(_, p)| p.value().device().clone()).unwrap_or(Device::Cpu);
        let (n, r, dt) = (self.phm_dim, self.phm_rank, bc.dtype);
        let (d, k) = (*hidden, self.adapter.bottleneck_size);
        // The shared rule: created by the first layer, which alone lists it among its parameters
        // (so that it is saved, frozen and removed once); the others only use it.
        let rule_name = format!("base_model.compacter_rule.{}", bc.adapter);
        let (rule, owns_rule) = match bc.store.id(&rule_name) {
            Some(id) => (id, false),
            None => {
                let a = uniform(n * n * n, 1.0 / (n as f64).sqrt(), bc.rng, dt, &device)?.reshape((n, n, n))?;
                (bc.store.add(rule_name, a, false)?, true)
            }
        };
        let factor = |rows: usize, cols: usize, rng: &mut rand::rngs::StdRng| -> Result<Tensor> {
            Ok(kaiming_uniform(n * rows, cols, rng, dt, &device)?.reshape((n, rows, cols))?)
        };
        let down_s = factor(k / n, r, bc.rng)?;
        let down_t = factor(r, d / n, bc.rng)?;
        let up_s = if self.adapter.init_weights { Tensor::zeros((n, d / n, r), dt, &device)? } else { factor(d / n, r, bc.rng)? };
        let up_t = factor(r, k / n, bc.rng)?;
        let a = bc.adapter;
        let mut add = |attr: &str, t: Tensor| bc.store.add(name(path, attr, a, "weight"), t, false);
        let down = [
            add("compacter_down_s", down_s)?,
            add("compacter_down_t", down_t)?,
            add("compacter_down_bias", Tensor::zeros(k, dt, &device)?)?,
        ];
        let up = [add("compacter_up_s", up_s)?, add("compacter_up_t", up_t)?, add("compacter_up_bias", Tensor::zeros(d, dt, &device)?)?];
        Ok(Box::new(CompacterLayer {
            adapter: a.to_string(),
            rule,
            owns_rule,
            down,
            up,
            activation: self.adapter.activation,
            scaling: self.adapter.scaling,
        }))
    }
}

#[derive(Debug)]
pub struct CompacterLayer {
    pub adapter: String,
    pub rule: ParamId,
    pub owns_rule: bool,
    /// (s, t, bias) of the down- and up-projection.
    pub down: [ParamId; 3],
    pub up: [ParamId; 3],
    pub activation: Activation,
    pub scaling: f64,
}

/// W = Σᵢ Aᵢ ⊗ (sᵢ tᵢ) (eqs. 3, 5): A [n, n, n], s [n, p, r], t [n, r, q] → [n·p, n·q], with
/// W[a·p + c, b·q + e] = Σᵢ A[i, a, b] · B[i, c, e].
pub fn phm_weight(a: &Tensor, s: &Tensor, t: &Tensor) -> Result<Tensor> {
    let n = a.dim(0)?;
    let b = s.matmul(t)?; // [n, p, q]
    let (p, q) = (b.dim(1)?, b.dim(2)?);
    let w = a.reshape((n, n * n))?.t()?.matmul(&b.reshape((n, p * q))?)?; // [(a, b), (c, e)]
    Ok(w.reshape((n, n, p, q))?.permute((0, 2, 1, 3))?.contiguous()?.reshape((n * p, n * q))?)
}

impl AdapterLayer for CompacterLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        let mut p: Vec<ParamId> = if self.owns_rule { vec![self.rule] } else { Vec::new() };
        p.extend(self.down);
        p.extend(self.up);
        p
    }

    /// `h + s · (f(h W_Dᵀ + b_D) W_Uᵀ + b_U)` on the sublayer output h (serial, as Houlsby's).
    fn sublayer(&self, _input: &Tensor, output: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let a = ctx.param(self.rule);
        let p = |ids: &[ParamId; 3]| ids.map(|id| ctx.param(id));
        let ([ds, dt_, db], [us, ut, ub]) = (p(&self.down), p(&self.up));
        let (wd, wu) = (phm_weight(&a, &ds, &dt_)?, phm_weight(&a, &us, &ut)?);
        let h = output.to_dtype(a.dtype())?;
        let z = self.activation.apply(&linear(&h, &wd, Some(&db))?)?;
        let y = (linear(&z, &wu, Some(&ub))? * self.scaling)?;
        Ok((h + y)?.to_dtype(output.dtype())?)
    }
}
