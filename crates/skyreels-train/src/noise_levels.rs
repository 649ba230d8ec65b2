//! Diffusion-forcing noise levels for training (spec §12): every causal block of latent frames
//! gets its own noise level, non-decreasing along time (earlier frames are cleaner, as at
//! inference), mixed with plain full-sequence samples (one level for all frames) and with
//! clean-prefix samples (the conditioning an image, an extended clip or the previous window
//! provides at inference).

use serde::{Deserialize, Serialize};

use crate::world::Rng;

/// How training noise levels are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseLevelSampler {
    /// Probability of a full-sequence sample (all frames at one level).
    pub sync_probability: f32,
    /// Probability that a diffusion-forcing sample starts with clean blocks.
    pub prefix_probability: f32,
    /// Flow shift applied to uniform draws (`σ' = s·σ / (1 + (s−1)·σ)`), as the sampler uses.
    pub shift: f32,
}

impl Default for NoiseLevelSampler {
    fn default() -> Self {
        Self { sync_probability: 0.3, prefix_probability: 0.3, shift: 3.0 }
    }
}

/// Noise levels of one training sample.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseLevels {
    /// σ per latent frame, non-decreasing.
    pub sigmas: Vec<f32>,
    /// The model's timestep per frame, `⌊1000·σ⌋` capped at 999.
    pub timesteps: Vec<i64>,
    /// Leading clean frames (σ = 0): conditioning, left out of the loss.
    pub prefix: usize,
}

impl NoiseLevelSampler {
    /// Draws levels for `frames` latent frames in causal blocks of `block` frames.
    pub fn sample(&self, rng: &mut Rng, frames: usize, block: usize) -> NoiseLevels {
        let block = block.max(1);
        let blocks = frames.div_ceil(block);
        let mut per_block: Vec<f32> = if rng.unit() < self.sync_probability {
            vec![self.shifted(rng.unit()); blocks]
        } else {
            let mut draws: Vec<f32> = (0..blocks).map(|_| self.shifted(rng.unit())).collect();
            draws.sort_by(f32::total_cmp);
            draws
        };
        let mut prefix_blocks = 0;
        if blocks > 1 && rng.unit() < self.prefix_probability {
            prefix_blocks = 1 + rng.below(blocks - 1);
            per_block[..prefix_blocks].fill(0.0);
        }
        let sigmas: Vec<f32> = (0..frames).map(|f| per_block[f / block]).collect();
        let timesteps = sigmas.iter().map(|&s| ((s * 1000.0) as i64).min(999)).collect();
        NoiseLevels { sigmas, timesteps, prefix: (prefix_blocks * block).min(frames) }
    }

    fn shifted(&self, u: f32) -> f32 {
        let s = self.shift;
        s * u / (1.0 + (s - 1.0) * u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_non_decreasing_blockwise_with_clean_prefixes_and_sync_samples() {
        let sampler = NoiseLevelSampler::default();
        let mut rng = Rng::new(1);
        let (mut sync, mut with_prefix, n) = (0, 0, 4000);
        for _ in 0..n {
            let levels = sampler.sample(&mut rng, 13, 2);
            let s = &levels.sigmas;
            assert_eq!(s.len(), 13);
            assert!(s.windows(2).all(|w| w[0] <= w[1]), "{s:?}");
            assert!(s.chunks(2).all(|b| b.iter().all(|&x| x == b[0])), "one level per block: {s:?}");
            assert!(s[..levels.prefix].iter().all(|&x| x == 0.0));
            assert!(levels.prefix < 13 && levels.prefix % 2 == 0);
            assert!(levels.timesteps.iter().all(|&t| (0..1000).contains(&t)));
            sync += usize::from(levels.prefix == 0 && s.iter().all(|&x| x == s[0]));
            with_prefix += usize::from(levels.prefix > 0);
        }
        let frac = |k: usize| k as f64 / n as f64;
        assert!((frac(sync) - 0.3 * 0.7).abs() < 0.05, "sync fraction {}", frac(sync));
        assert!((frac(with_prefix) - 0.3).abs() < 0.05, "prefix fraction {}", frac(with_prefix));
    }
}
