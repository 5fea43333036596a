//! Rotary position embeddings: the inverse frequencies (default and llama3 scaling, as
//! transformers' `_compute_llama3_parameters`), and cos/sin tables for given positions.
//! transformers computes the frequencies, angles and cos/sin in f32 whatever the model
//! dtype (autocast disabled, `.float()`), so we do too: an f64 model then matches it.
use crate::config::LlamaConfig;
use candle_core::{DType, Device, Result, Tensor};

pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &LlamaConfig) -> Self {
        let d = cfg.head_dim;
        let base = cfg.rope_theta as f32;
        let mut inv_freq: Vec<f32> = (0..d / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / d as f32)).collect();
        if let Some(s) = &cfg.rope_scaling {
            let old = s.original_max_position_embeddings as f64;
            let low_wavelen = old / s.low_freq_factor;
            let high_wavelen = old / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let f64_ = *f as f64;
                let wavelen = 2.0 * std::f64::consts::PI / f64_;
                *f = if wavelen > low_wavelen {
                    f64_ / s.factor
                } else if wavelen < high_wavelen {
                    f64_
                } else {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f64_ / s.factor + smooth * f64_
                } as f32;
            }
        }
        Rope { inv_freq }
    }

    /// cos and sin of shape [b, t, head_dim/2] for positions [b][t].
    pub fn cos_sin(&self, positions: &[Vec<i64>], dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in positions {
            for &p in row {
                for &f in &self.inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, t, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (b, t, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}
