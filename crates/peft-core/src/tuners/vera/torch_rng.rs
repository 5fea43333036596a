//! torch's CPU generator, bit for bit, for VeRA's projections: `torch.Generator("cpu")
//! .manual_seed(k)` is an MT19937 (`ATen/core/MT19937RNGEngine.h`), and `Tensor.uniform_`
//! on a float32 tensor draws one 32-bit output per element in memory order and maps it as
//! `transformation::uniform_real` does: x = (v & (2²⁴−1)) · 2⁻²⁴, then x·(to−from) + from in
//! float, which torch's AVX2 kernels compute as one fused multiply-add. Checked against the
//! `vera` fixture's projections (written by PEFT 0.21 from `projection_prng_key` 11).

/// MT19937 as `at::mt19937` (seeded with `init_with_uint32`).
pub struct Mt19937 {
    state: [u32; 624],
    next: usize,
}

impl Mt19937 {
    pub fn new(seed: u64) -> Self {
        let mut state = [0u32; 624];
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..624 {
            state[j] = 1_812_433_253u32.wrapping_mul(state[j - 1] ^ (state[j - 1] >> 30)).wrapping_add(j as u32);
        }
        Mt19937 { state, next: 624 }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.next >= 624 {
            for k in 0..624 {
                let y = (self.state[k] & 0x8000_0000) | (self.state[(k + 1) % 624] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.state[k] = self.state[(k + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.next = 0;
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `tensor.uniform_(from, to, generator=self)` for `n` float32 elements.
    pub fn uniform_f32(&mut self, n: usize, from: f64, to: f64) -> Vec<f32> {
        let (from, to) = (from as f32, to as f32);
        let width = to - from;
        (0..n)
            .map(|_| {
                let x = (self.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32);
                x.mul_add(width, from)
            })
            .collect()
    }
}

/// VeRA's `_kaiming_init(shape, generator)` for a 2-D `[rows, cols]` tensor: uniform in
/// ±√3 · √2 / √fan_in with fan_in = cols.
pub fn kaiming_init(rows: usize, cols: usize, g: &mut Mt19937) -> Vec<f32> {
    let std = 2f64.sqrt() / (cols as f64).sqrt();
    let bound = 3f64.sqrt() * std;
    g.uniform_f32(rows * cols, -bound, bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_stream() {
        // The C++ std::mt19937 with default seed 5489 yields 3499211612 first, and its
        // 10000th output is 4123659995 (the standard's own check).
        let mut g = Mt19937::new(5489);
        assert_eq!(g.next_u32(), 3_499_211_612);
        let mut g = Mt19937::new(5489);
        let last = (0..10_000).map(|_| g.next_u32()).last().unwrap();
        assert_eq!(last, 4_123_659_995);
    }
}
