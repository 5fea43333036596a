//! Choosing the next token from a row of logits, in transformers' order:
//! temperature, then top-k, then top-p, then a draw (or argmax when greedy).
use rand::rngs::StdRng;
use rand::Rng;

#[derive(Debug, Clone)]
pub struct SamplingOptions {
    pub do_sample: bool,
    pub temperature: f64,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions { do_sample: false, temperature: 1.0, top_k: 0, top_p: 1.0 }
    }
}

/// First index of the largest value, as `torch.argmax`.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

pub fn choose(logits: &[f32], opts: &SamplingOptions, rng: &mut StdRng) -> u32 {
    if !opts.do_sample {
        return argmax(logits);
    }
    let t = opts.temperature.max(1e-6);
    let mut scored: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &x)| (i, x as f64 / t)).collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1));
    if opts.top_k > 0 && opts.top_k < scored.len() {
        // Keep ties with the k-th value, as transformers' TopKLogitsWarper does.
        let kth = scored[opts.top_k - 1].1;
        scored.retain(|(_, s)| *s >= kth);
    }
    let max = scored[0].1;
    let mut probs: Vec<f64> = scored.iter().map(|(_, s)| (s - max).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if opts.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (at least one token).
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= opts.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        scored.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let mut u: f64 = rng.random();
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return scored[i].0 as u32;
        }
        u -= p;
    }
    scored[probs.len() - 1].0 as u32
}
