//! Choosing the fixed mask: the k flat indices of a weight [out, in] that train. FishMask
//! (Sung et al. 2021, §3.2) keeps the k entries with the largest Fisher information,
//! F̂ = 1/N Σᵢ (∇_θ log p(yᵢ | xᵢ))²; the baselines of its §4 keep the largest |θ| or a
//! random subset; PaFi keeps the smallest |θ|. We choose per weight (k = round(density ·
//! numel)) rather than over the whole model, so every tensor's shape follows from the config
//! and a file can be checked before loading.
use rand::rngs::StdRng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskType {
    /// Largest |W| (diff pruning's magnitude baseline).
    Magnitude,
    /// Smallest |W|: PaFi (Liao et al. 2023, "Parameter-Efficient Fine-Tuning without
    /// Introducing New Latency", §3.1) trains the least important weights by magnitude, a
    /// task-agnostic choice that needs no data.
    SmallestMagnitude,
    /// Largest empirical Fisher score (`estimate_fisher`).
    Fisher,
    /// Uniform without replacement, seeded.
    Random,
}

/// The k indices in 0..numel: the largest `scores` when given (ties go to the lower index,
/// NaN ranks last), else k distinct uniform draws from `rng`. Ascending.
pub fn choose_indices(scores: Option<&[f64]>, numel: usize, k: usize, rng: impl FnOnce() -> StdRng) -> Vec<usize> {
    let mut idx = match scores {
        Some(s) => top_k(s, k),
        None => rand::seq::index::sample(&mut rng(), numel, k).into_vec(),
    };
    idx.sort_unstable();
    idx
}

/// The positions of the k largest scores (unordered), deterministic.
fn top_k(scores: &[f64], k: usize) -> Vec<usize> {
    let key = |i: usize| if scores[i].is_nan() { f64::NEG_INFINITY } else { scores[i] };
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        // Larger score first, then lower index: a total order, so the selection is unique.
        idx.select_nth_unstable_by(k - 1, |&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        idx.truncate(k);
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn top_k_breaks_ties_by_index_and_ranks_nan_last() {
        let s = [1.0, 3.0, f64::NAN, 3.0, 2.0, 3.0];
        let pick = |k| choose_indices(Some(&s), s.len(), k, || unreachable!());
        assert_eq!(pick(2), vec![1, 3]);
        assert_eq!(pick(4), vec![1, 3, 4, 5]);
        assert_eq!(pick(6), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn random_is_seeded_and_distinct() {
        let draw = |seed| choose_indices(None, 1000, 37, || StdRng::seed_from_u64(seed));
        let a = draw(7);
        assert_eq!(a, draw(7));
        assert_ne!(a, draw(8));
        assert!(a.windows(2).all(|w| w[0] < w[1]) && a.len() == 37 && a[36] < 1000);
    }
}
