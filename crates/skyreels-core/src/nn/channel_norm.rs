//! The Wan VAE's `SiLU(F.normalize(x, dim=1)·√C·γ)` in one pass over the tensor, on the CPU.
//!
//! Composed from candle's ops it is seven full-size passes (square, sum, maximum, sqrt, divide,
//! scale, γ, then SiLU's exponential), each a fresh buffer of the activation's size: at 240×416
//! the decoder's last stage holds 150 MB per chunk, so that was a large share of the decode's
//! time and of its peak memory. Here one pass accumulates the squared norm per position (rows of
//! channels, so it vectorises along positions) and a second writes the output, with the same
//! exponential as [`super::activation`]'s GELU. The result differs from the composed ops by a
//! few units in the last place (the reciprocal is taken once per position).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::activation::{exp, map_vectorised, update_vectorised};
use crate::error::Result;

/// Positions per rayon task in the norm pass.
const POSITIONS: usize = 2048;

/// `SiLU(x / max(‖x‖₂ over axis 1, 1e-12) · scale · γ[c])` for an f32 CPU tensor `[B, C, …]`
/// without gradients; `None` where the caller must compose it from ops (other devices and
/// dtypes, or while training).
pub fn channel_norm_silu(x: &Tensor, gamma: &[f32], scale: f32) -> Result<Option<Tensor>> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 || x.track_op() || x.rank() < 2 {
        return Ok(None);
    }
    if x.dim(1)? != gamma.len() {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&ChannelNormSilu { gamma, scale })?))
}

struct ChannelNormSilu<'a> {
    gamma: &'a [f32],
    scale: f32,
}

#[inline(always)]
fn silu(v: f32) -> f32 {
    v / (1.0 + exp(-v))
}

impl CustomOp1 for ChannelNormSilu<'_> {
    fn name(&self) -> &'static str {
        "channel-norm-silu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else { candle_core::bail!("channel-norm-silu computes in f32 only") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("channel-norm-silu needs a contiguous input")
        };
        let input = &data[start..end];
        let dims = layout.shape().dims();
        let c = dims[1];
        let n = dims[2..].iter().product::<usize>();
        let mut out = vec![0f32; input.len()];
        let mut factor = vec![0f32; n];
        for (sample, out) in input.chunks_exact(c * n).zip(out.chunks_exact_mut(c * n)) {
            // 1 / max(‖x‖, ε) per position, summing channel rows so the loop runs along positions.
            factor.par_chunks_mut(POSITIONS).enumerate().for_each(|(block, factor)| {
                let p0 = block * POSITIONS;
                factor.fill(0.0);
                for row in sample.chunks_exact(n) {
                    accumulate_squares(&row[p0..p0 + factor.len()], factor);
                }
                for f in factor.iter_mut() {
                    *f = 1.0 / f.max(1e-24).sqrt();
                }
            });
            out.par_chunks_mut(n).zip(sample.par_chunks(n)).zip(self.gamma.par_iter()).for_each(|((o, x), &g)| {
                let k = self.scale * g;
                map_vectorised(x, &factor, o, |x, f| silu(x * f * k));
            });
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

fn accumulate_squares(row: &[f32], acc: &mut [f32]) {
    update_vectorised(acc, row, |a, x| a + x * x);
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn composed(x: &Tensor, gamma: &[f32], scale: f64) -> Tensor {
        let c = gamma.len();
        let mut shape = vec![1, c];
        shape.extend(std::iter::repeat_n(1, x.rank() - 2));
        let g = Tensor::new(gamma, &Device::Cpu).unwrap().reshape(shape).unwrap();
        let norm = x.sqr().unwrap().sum_keepdim(1).unwrap().maximum(1e-24).unwrap().sqrt().unwrap();
        (x.broadcast_div(&norm).unwrap() * scale).unwrap().broadcast_mul(&g).unwrap().silu().unwrap()
    }

    #[test]
    fn matches_the_composed_ops() {
        for dims in [vec![2, 5, 3, 7, 9], vec![1, 96, 2, 40, 61], vec![1, 3, 1]] {
            let c = dims[1];
            let x = Tensor::randn(0f32, 2.0, dims.as_slice(), &Device::Cpu).unwrap();
            let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 / c as f32).collect();
            let scale = (c as f64).sqrt();
            let ours = channel_norm_silu(&x, &gamma, scale as f32).unwrap().unwrap();
            let theirs = composed(&x, &gamma, scale);
            let diff = (&ours - &theirs).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            let norm = theirs.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!((diff / norm).sqrt() < 1e-6, "{dims:?}: relative L2 {}", (diff / norm).sqrt());
        }
    }

    #[test]
    fn an_all_zero_position_stays_zero() {
        let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let y = channel_norm_silu(&x, &[1.0; 4], 2.0).unwrap().unwrap();
        assert!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn declines_what_it_does_not_compute() {
        let x = Tensor::zeros((1, 4, 2), DType::BF16, &Device::Cpu).unwrap();
        assert!(channel_norm_silu(&x, &[1.0; 4], 2.0).unwrap().is_none());
        let x = Tensor::zeros((1, 4, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(channel_norm_silu(&x, &[1.0; 3], 2.0).unwrap().is_none());
    }
}
