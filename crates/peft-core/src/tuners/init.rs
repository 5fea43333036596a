//! Seeded random inits with torch's distributions (not torch's bit stream: a seed gives
//! reproducible results here, not the same numbers as `torch.manual_seed`).
use crate::error::Result;
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

/// `nn.init.kaiming_uniform_(w, a=sqrt(5))` for a `[out, in]` weight: gain sqrt(2 / (1 + a²))
/// = sqrt(1/3), bound = gain · sqrt(3 / fan_in) = 1 / sqrt(fan_in), fan_in = in.
pub fn kaiming_uniform(out: usize, inp: usize, rng: &mut StdRng, dtype: DType, device: &Device) -> Result<Tensor> {
    let bound = 1.0 / (inp as f64).sqrt();
    let v: Vec<f64> = (0..out * inp).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Tensor::from_vec(v, (out, inp), device)?.to_dtype(dtype)?)
}

/// `nn.init.normal_(w, std=std)` (Box-Muller).
pub fn normal(out: usize, inp: usize, std: f64, rng: &mut StdRng, dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f64> = (0..out * inp)
        .map(|_| {
            let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]: ln stays finite
            let u2: f64 = rng.random();
            std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    Ok(Tensor::from_vec(v, (out, inp), device)?.to_dtype(dtype)?)
}

/// Inverted dropout mask (`nn.Dropout(p)` in training): 0 with probability p, else 1/(1-p).
pub fn dropout_mask(shape: &[usize], p: f64, rng: &mut StdRng, dtype: DType, device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let keep = 1.0 / (1.0 - p);
    let v: Vec<f64> = (0..n).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep }).collect();
    Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
}

/// Uniform in (-bound, bound), 1-D (nn.Linear's bias init with bound 1/sqrt(fan_in)).
pub fn uniform(n: usize, bound: f64, rng: &mut StdRng, dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
    Ok(Tensor::from_vec(v, n, device)?.to_dtype(dtype)?)
}
