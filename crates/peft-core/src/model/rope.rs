//! Rotary position embeddings: the inverse frequencies (default, linear, llama3 and LongRoPE
//! scaling, as transformers' `ROPE_INIT_FUNCTIONS`), and cos/sin tables for given positions.
//! transformers computes the frequencies, angles and cos/sin in f32 whatever the model
//! dtype (autocast disabled, `.float()`), so we do too: an f64 model then matches it.
use crate::config::{ModelConfig, RopeScaling};
use candle_core::{DType, Device, Result, Tensor};

pub struct Rope {
    inv_freq: Vec<f32>,
    /// LongRoPE (Phi-3.5, Phi-4-mini): the long factors' frequencies, used when a call's
    /// largest position reaches `original_max_position_embeddings` (transformers'
    /// `longrope_frequency_update`: `max(position_ids) + 1 > original_max`).
    long: Option<(Vec<f32>, usize)>,
    /// cos and sin are multiplied by this (LongRoPE's attention factor; 1 otherwise).
    attention_scaling: f32,
}

impl Rope {
    /// The rotary dims' frequencies of a config (`rotary_dim` = head_dim unless Phi-3's
    /// partial rotary factor says otherwise), with its scaling.
    pub fn new(cfg: &ModelConfig) -> Self {
        let mut rope = Self::plain(cfg.rope_theta, cfg.arch.rotary_dim);
        match &cfg.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => rope.inv_freq.iter_mut().for_each(|f| *f /= *factor as f32),
            // `_compute_longrope_parameters`: 1 / (ext_factor · base^(2i/d)) in f32.
            Some(RopeScaling::Longrope { short_factor, long_factor, original_max_position_embeddings, attention_factor }) => {
                let scaled = |ext: &[f64]| -> Vec<f32> {
                    let base = cfg.rope_theta as f32;
                    let d = cfg.arch.rotary_dim;
                    (0..d / 2).map(|i| 1.0 / (ext[i] as f32 * base.powf((2 * i) as f32 / d as f32))).collect()
                };
                rope.inv_freq = scaled(short_factor);
                rope.long = Some((scaled(long_factor), *original_max_position_embeddings));
                rope.attention_scaling = *attention_factor as f32;
            }
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
                let old = *original_max_position_embeddings as f64;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in rope.inv_freq.iter_mut() {
                    let f64_ = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / f64_;
                    *f = if wavelen > low_wavelen {
                        f64_ / factor
                    } else if wavelen < high_wavelen {
                        f64_
                    } else {
                        let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f64_ / factor + smooth * f64_
                    } as f32;
                }
            }
        }
        rope
    }

    /// Unscaled frequencies `1 / theta^(2i/d)` over `d` rotated dims.
    pub fn plain(theta: f64, d: usize) -> Self {
        let base = theta as f32;
        Rope { inv_freq: (0..d / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / d as f32)).collect(), long: None, attention_scaling: 1.0 }
    }

    /// LongRoPE's switch point (`original_max_position_embeddings`), None without long factors.
    pub fn long_from(&self) -> Option<usize> {
        self.long.as_ref().map(|(_, m)| *m)
    }

    /// cos and sin of shape [b, t, head_dim/2] for positions [b][t].
    pub fn cos_sin(&self, positions: &[Vec<i64>], dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let b = positions.len();
        let t = positions.first().map_or(0, Vec::len);
        let longest = positions.iter().flatten().copied().max().unwrap_or(0);
        let inv_freq = match &self.long {
            Some((long, original_max)) if longest + 1 > *original_max as i64 => long,
            _ => &self.inv_freq,
        };
        let half = inv_freq.len();
        let s = self.attention_scaling;
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in positions {
            for &p in row {
                for &f in inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos() * s);
                    sin.push(angle.sin() * s);
                }
            }
        }
        let cos = Tensor::from_vec(cos, (b, t, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (b, t, half), device)?.to_dtype(dtype)?;
        Ok((cos, sin))
    }
}
