//! Where a generation's randomness comes from.
//!
//! The pipeline never calls a global RNG: every Gaussian draw (the fresh noise of a window, the
//! noise that softens a clean prefix) goes through a [`NoiseSource`]. [`SeededNoise`] is the
//! reproducible default; tests plug in a source that replays the draws recorded from PyTorch.
//!
//! [`SeededNoise`] is counter-based (Philox-4×32-10, the generator of cuRAND and JAX), so its
//! whole state is `(seed, position)`: saving two integers after a window is enough to resume a
//! run bit-identically, and the stream does not depend on how draws are split into tensors of
//! different shapes beyond their order and sizes.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// A stream of standard-normal draws, consumed in order.
pub trait NoiseSource {
    /// Draws a tensor of i.i.d. N(0, 1) values (f32) of `shape` on `device`.
    fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor>;
}

/// The resumable state of a [`SeededNoise`]: the seed and how many blocks of four values have
/// been consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseState {
    /// The user's seed (the Philox key).
    pub seed: u64,
    /// Philox counter of the next unused block of four values.
    pub counter: u64,
}

/// Reproducible Gaussian noise from a seed (Philox-4×32-10 + Box–Muller).
#[derive(Debug, Clone)]
pub struct SeededNoise {
    state: NoiseState,
}

impl SeededNoise {
    /// A fresh stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: NoiseState { seed, counter: 0 } }
    }

    /// Continues a stream from a saved state.
    pub fn from_state(state: NoiseState) -> Self {
        Self { state }
    }

    /// The state to save for resuming after the draws made so far.
    pub fn state(&self) -> NoiseState {
        self.state
    }

    /// The next `n` standard-normal values. Each draw starts on a fresh block of four, so a
    /// draw's values depend only on the state before it.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n.next_multiple_of(4));
        while out.len() < n {
            let c = self.state.counter;
            let k = self.state.seed;
            let words = philox4x32([c as u32, (c >> 32) as u32, 0, 0], [k as u32, (k >> 32) as u32]);
            self.state.counter += 1;
            let (a, b) = box_muller(words[0], words[1]);
            let (c, d) = box_muller(words[2], words[3]);
            out.extend_from_slice(&[a, b, c, d]);
        }
        out.truncate(n);
        out
    }
}

impl NoiseSource for SeededNoise {
    fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(self.normals(n), shape, device)?)
    }
}

/// Two independent N(0, 1) values from two uniform words (computed in f64 so the result does not
/// depend on the platform's f32 `ln`/`cos` rounding more than necessary).
fn box_muller(u: u32, v: u32) -> (f32, f32) {
    // (0, 1]: never 0, so the logarithm is finite.
    let u1 = (u as f64 + 1.0) / 4_294_967_296.0;
    let u2 = v as f64 / 4_294_967_296.0;
    let radius = (-2.0 * u1.ln()).sqrt();
    let angle = std::f64::consts::TAU * u2;
    ((radius * angle.cos()) as f32, (radius * angle.sin()) as f32)
}

/// Philox-4×32 with 10 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    const M0: u64 = 0xD251_1F53;
    const M1: u64 = 0xCD9E_8D57;
    const W0: u32 = 0x9E37_79B9;
    const W1: u32 = 0xBB67_AE85;
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = M0 * c[0] as u64;
        let p1 = M1 * c[2] as u64;
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_published_known_answers() {
        // Random123 kat_vectors, philox4x32_10.
        assert_eq!(philox4x32([0; 4], [0; 2]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(philox4x32([u32::MAX; 4], [u32::MAX; 2]), [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        assert_eq!(
            philox4x32([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn seeded_noise_is_standard_normal_and_resumable() {
        let mut a = SeededNoise::new(42);
        let first = a.normals(3);
        let saved = a.state();
        let rest = a.normals(200_000);
        let mut b = SeededNoise::from_state(saved);
        assert_eq!(b.normals(200_000), rest);
        assert_eq!(saved.counter, 1, "a draw consumes whole blocks of four");
        assert_ne!(first, SeededNoise::new(43).normals(3));
        let n = rest.len() as f64;
        let mean = rest.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = rest.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
    }
}
