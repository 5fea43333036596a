//! FAR, Freeze And Reconfigure (Vucetic et al. 2022, "Efficient Fine-Tuning of BERT Models on
//! the Edge", §III): only a subset of the feed-forward nodes ("learning nodes") trains; the
//! rest of each FFN stays at its pretrained weights. The subset is chosen by priming: the whole
//! FFN trains for a few steps, then each node's score is the L1 norm of its weight change,
//! s_j = Σ_i |ΔW_gate[j, i]| + Σ_i |ΔW_up[j, i]| + Σ_o |ΔW_down[o, j]| (node j is row j of
//! gate/up and column j of down), and the top `trainable_ratio` of the nodes of each layer
//! keep training. Here the FFN weights train as masked deltas (`masked_delta.rs`): during
//! priming the mask is all ones; at `priming_steps` the Trainer runs `select_nodes`, which masks
//! every other node's rows and columns and resets their change to 0 (frozen nodes keep the
//! pretrained weights, as the paper's reconfigured FFN). The kept nodes keep what priming taught
//! them. Merges as W + ΔW ⊙ M. Our own `peft_type` "FAR"; tensors `<mlp proj>.masked_delta.weight`
//! (trained) and `<mlp proj>.delta_mask.weight` (the node mask, a buffer).
use crate::error::{Error, Result};
use crate::model::CausalLm;
use crate::tuners::fields::{mergeable_plumbing, Fields};
use crate::tuners::masked_delta::{self, defaults, k_of, top_k_mask};
use crate::tuners::{AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig, Tuners};
use candle_core::{DType, Tensor};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

const FFN: &[&str] = &["gate_proj", "up_proj", "down_proj"];

#[derive(Debug, Clone)]
pub struct FarConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    /// The share of each layer's FFN nodes that keeps training after priming.
    pub trainable_ratio: f64,
    /// Optimizer steps of priming (the whole FFN trains) before the nodes are chosen.
    pub priming_steps: usize,
}

impl FarConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, warnings) =
            Fields::parse(value, "FAR", "FarConfig", defaults(json!({"trainable_ratio": 0.1, "priming_steps": 20})), source)?;
        f.no_modules_to_save()?;
        let trainable_ratio =
            f.num_in("trainable_ratio", |p| p > 0.0 && p <= 1.0, "a number in (0, 1]: the share of FFN nodes that trains")?;
        let priming_steps = f.positive("priming_steps", "the optimizer steps of priming before the nodes are chosen")?;
        Ok((FarConfig { trainable_ratio, priming_steps, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for FarConfig {
    mergeable_plumbing!("FAR", FFN);

    fn check_model(&mut self, _model: &CausalLm, targets: &[LinearInfo]) -> Result<Vec<crate::Warning>> {
        match targets.iter().find(|t| proj_of(&t.path).is_none()) {
            Some(t) => Err(self
                .fields
                .err("target_modules", &format!("only the FFN projections {FFN:?} (FAR trains FFN nodes); `{}` is not one", t.path))),
            None => Ok(Vec::new()),
        }
    }

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        masked_delta::create(t, bc, false)
    }
}

fn proj_of(path: &str) -> Option<&str> {
    let (mlp, name) = path.rsplit_once('.')?;
    FFN.contains(&name).then_some(mlp)
}

/// Node j's axis in a projection's weight: 0 for gate/up (rows), 1 for down (columns).
fn node_axis(path: &str) -> usize {
    usize::from(path.ends_with("down_proj"))
}

/// After `steps_done` optimizer steps: for every active FAR adapter whose priming ends now,
/// keeps the top nodes of each FFN by their L1 change (masks the others and resets their change).
/// Returns, per adapter chosen now, (nodes kept, nodes in all).
pub fn select_nodes(model: &CausalLm, tuners: &Tuners, steps_done: usize) -> Result<Vec<(String, usize, usize)>> {
    let mut out = Vec::new();
    let store = &model.store;
    for a in masked_delta::layers::<FarConfig>(tuners, "FAR's node selection")? {
        let c = a.config;
        if steps_done != c.priming_steps {
            continue;
        }
        // Node scores per FFN (the module path of the mlp).
        let mut by_mlp: BTreeMap<&str, Vec<(&str, &masked_delta::MaskedDeltaLayer)>> = BTreeMap::new();
        for (path, l) in &a.layers {
            let mlp = proj_of(path).ok_or_else(|| Error::Unsupported(format!("FAR: `{path}` is not an FFN projection")))?;
            by_mlp.entry(mlp).or_default().push((path, l));
        }
        let (mut kept, mut total) = (0, 0);
        for projs in by_mlp.values() {
            let mut scores: Option<Tensor> = None;
            for (path, l) in projs {
                let change = store.get(l.delta).value().abs()?.to_dtype(DType::F64)?.sum(1 - node_axis(path))?;
                scores = Some(match scores {
                    Some(s) if s.dims() != change.dims() => {
                        return Err(Error::Unsupported(format!(
                            "FAR: `{path}` has {} nodes, its FFN's other projections {}",
                            change.elem_count(),
                            s.elem_count()
                        )))
                    }
                    Some(s) => (s + change)?,
                    None => change,
                });
            }
            let Some(scores) = scores else { continue };
            let n = scores.elem_count();
            let nodes = top_k_mask(&scores, k_of(c.trainable_ratio, n), &scores)?;
            for (path, l) in projs {
                let d = store.get(l.delta).value();
                let m = if node_axis(path) == 0 { nodes.unsqueeze(1)? } else { nodes.unsqueeze(0)? };
                let m = m.to_dtype(d.dtype())?.broadcast_as(d.shape())?.contiguous()?;
                store.get(l.mask).set(&m)?;
                store.get(l.delta).set(&(d * &m)?)?;
            }
            kept += nodes.sum_all()?.to_vec0::<f64>()? as usize;
            total += n;
        }
        out.push((a.name.to_string(), kept, total));
    }
    Ok(out)
}
