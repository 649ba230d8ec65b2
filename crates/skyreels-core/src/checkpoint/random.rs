//! Random weights of any requested shape, for benchmarks and smoke tests of real-size configs.

use std::cell::Cell;

use candle_core::{DType, Device, Tensor};

use super::Weights;
use crate::error::Result;

/// Hands out deterministic pseudo-random tensors: norm weights near 1, everything else small,
/// so activations stay in a realistic range through many layers.
#[derive(Debug)]
pub struct RandomWeights {
    state: Cell<u64>,
}

impl RandomWeights {
    /// A source seeded with `seed`; the same seed and call order give the same weights.
    pub fn new(seed: u64) -> Self {
        Self { state: Cell::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1) }
    }

    /// xorshift64*: fast and good enough for weight noise.
    fn next_unit(&self) -> f32 {
        let mut x = self.state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state.set(x);
        let bits = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

impl Weights for RandomWeights {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let fan_in = if shape.len() >= 2 { shape[1..].iter().product::<usize>() } else { shape[0] };
        let is_norm_weight = name.contains("norm") && name.ends_with("weight");
        let scale = if name.ends_with("bias") { 0.02 } else { (3.0 / fan_in.max(1) as f32).sqrt() };
        let data: Vec<f32> = (0..n)
            .map(|_| {
                let u = self.next_unit();
                if is_norm_weight {
                    1.0 + 0.1 * u
                } else {
                    scale * u
                }
            })
            .collect();
        Ok(Tensor::from_vec(data, shape, device)?.to_dtype(dtype)?)
    }
}
