//! PEFT's `utils/merge_utils.py` on flat f64 task tensors (all of one shape): task
//! arithmetic, magnitude pruning, TIES (trim, elect sign, disjoint merge; Yadav et al. 2023)
//! and DARE (random drop and rescale; Yu et al. 2023). `add_weighted_adapter` runs them on
//! the LoRA factors or on the delta weights (`weighted.rs`).
use rand::rngs::StdRng;
use rand::Rng;

/// `majority_sign_method`: the elected sign of an entry is that of the sum of the task
/// values (`total`) or of their signs (`frequency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignMethod {
    Total,
    Frequency,
}

/// The merge applied to the task tensors (`task_arithmetic`, `ties`, `dare_linear`,
/// `dare_ties`, `magnitude_prune`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    TaskArithmetic,
    Ties,
    DareLinear,
    DareTies,
    MagnitudePrune,
}

impl Merge {
    /// Whether the merge prunes, and so needs a `density`.
    pub fn uses_density(self) -> bool {
        self != Merge::TaskArithmetic
    }

    /// Whether the merge elects signs, and so reads `majority_sign_method`.
    pub fn elects_sign(self) -> bool {
        matches!(self, Merge::Ties | Merge::DareTies)
    }
}

/// `magnitude_based_pruning`: keeps the `int(density · n)` entries of largest magnitude
/// (torch.topk; among equal magnitudes the earlier index wins here). `prune` skips
/// pruning at density ≥ 1.
pub fn magnitude_prune_tensor(t: &[f64], density: f64) -> Vec<f64> {
    if density >= 1.0 {
        return t.to_vec();
    }
    let k = (density * t.len() as f64) as usize;
    let mut order: Vec<usize> = (0..t.len()).collect();
    order.sort_by(|&i, &j| t[j].abs().total_cmp(&t[i].abs()).then(i.cmp(&j)));
    let mut out = vec![0.0; t.len()];
    for &i in &order[..k] {
        out[i] = t[i];
    }
    out
}

/// `random_pruning`: keeps each entry with probability `density` (a Bernoulli mask) and,
/// with `rescale`, divides the kept ones by `density` so the expectation is unchanged.
pub fn random_prune_tensor(t: &[f64], density: f64, rescale: bool, rng: &mut StdRng) -> Vec<f64> {
    if density >= 1.0 {
        return t.to_vec();
    }
    let scale = if rescale { 1.0 / density } else { 1.0 };
    t.iter().map(|&x| if rng.random::<f64>() < density { x * scale } else { 0.0 }).collect()
}

/// `calculate_majority_sign_mask`: entry j of task i is kept when its sign equals the
/// elected sign (+1 where the total is ≥ 0, else −1); zeros never match.
pub fn majority_sign_mask(tasks: &[Vec<f64>], method: SignMethod) -> Vec<Vec<bool>> {
    let n = tasks.first().map_or(0, Vec::len);
    let elected: Vec<f64> = (0..n)
        .map(|j| {
            let total: f64 = tasks.iter().map(|t| if method == SignMethod::Total { t[j] } else { sign(t[j]) }).sum();
            if total >= 0.0 {
                1.0
            } else {
                -1.0
            }
        })
        .collect();
    tasks.iter().map(|t| t.iter().zip(&elected).map(|(&x, &e)| sign(x) == e).collect()).collect()
}

/// `disjoint_merge`: the mean of the kept (weighted) values, 0 where none is kept.
pub fn disjoint_merge(weighted: &[Vec<f64>], mask: &[Vec<bool>]) -> Vec<f64> {
    let n = weighted.first().map_or(0, Vec::len);
    (0..n)
        .map(|j| {
            let (sum, count) = weighted.iter().zip(mask).filter(|(_, m)| m[j]).fold((0.0, 0.0), |(s, c), (w, _)| (s + w[j], c + 1.0));
            sum / f64::max(count, 1.0)
        })
        .collect()
}

/// One merge of `tasks` with `weights`; `rng` drives DARE's masks (one draw per entry,
/// task by task, in order).
pub fn merge(kind: Merge, tasks: &[Vec<f64>], weights: &[f64], density: f64, method: SignMethod, rng: &mut StdRng) -> Vec<f64> {
    let pruned: Vec<Vec<f64>> = match kind {
        Merge::TaskArithmetic => tasks.to_vec(),
        Merge::Ties | Merge::MagnitudePrune => tasks.iter().map(|t| magnitude_prune_tensor(t, density)).collect(),
        Merge::DareLinear | Merge::DareTies => tasks.iter().map(|t| random_prune_tensor(t, density, true, rng)).collect(),
    };
    // The sign is elected on the pruned, unweighted tensors; the merge uses the weighted ones.
    let mask = kind.elects_sign().then(|| majority_sign_mask(&pruned, method));
    let weighted: Vec<Vec<f64>> = pruned.iter().zip(weights).map(|(t, &w)| t.iter().map(|x| x * w).collect()).collect();
    match mask {
        Some(mask) => disjoint_merge(&weighted, &mask),
        None => {
            let n = weighted.first().map_or(0, Vec::len);
            (0..n).map(|j| weighted.iter().map(|t| t[j]).sum()).collect()
        }
    }
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// `torch.quantile(values, q)` with its default linear interpolation.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}
