//! 3D rotary position embedding over (frame, row, column) of the patch grid.

use candle_core::{Device, Tensor};

use crate::error::{invalid_input, Result};

/// Rotary embedding that splits a head's dimension into a frame part and two spatial parts.
///
/// For head dim `d`: rows and columns get `2·(d/6)` dims each and frames the rest (44/42/42 for
/// d = 128). Each part rotates adjacent pairs `(x[2i], x[2i+1])` by `pos · θ^(−2i/n)`, with `n`
/// the part's own width. Positions count from 0 inside every model input.
#[derive(Debug, Clone)]
pub struct Rope3d {
    dims: [usize; 3],
    theta: f64,
    max_positions: usize,
}

impl Rope3d {
    /// The split used by SkyReels-V2 / Wan for `head_dim` (must be even), θ = 10000. Head dims
    /// below 6 leave the spatial parts empty, as in the reference.
    pub fn new(head_dim: usize, max_positions: usize) -> Result<Self> {
        let hw = 2 * (head_dim / 6);
        if !head_dim.is_multiple_of(2) || head_dim == 0 {
            return Err(invalid_input!("rotary embedding needs an even head dim, got {head_dim}"));
        }
        Ok(Self { dims: [head_dim - 2 * hw, hw, hw], theta: 10000.0, max_positions })
    }

    /// Widths of the (frame, row, column) parts.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// `(cos, sin)` tables of shape `[f·h·w, head_dim/2]` (f32) for a frame-major token grid.
    pub fn tables(&self, grid: [usize; 3], device: &Device) -> Result<(Tensor, Tensor)> {
        for (axis, &n) in ["frames", "rows", "columns"].iter().zip(grid.iter()) {
            if n > self.max_positions {
                return Err(invalid_input!(
                    "the patch grid has {n} {axis}, more than the {} positions the rotary table covers",
                    self.max_positions
                ));
            }
        }
        let frames: Vec<usize> = (0..grid[0]).collect();
        self.tables_at(&frames, grid[1], grid[2], device)
    }

    /// [`tables`](Self::tables) for frames at the given temporal positions (one per patch
    /// column, in token order) instead of 0, 1, …: SkyReels-V3 shot switching puts the clean
    /// prefix after the noisy frames at positions from 1024. The angles are computed, not read
    /// from a table, so any position is exact.
    pub fn tables_at(
        &self,
        frame_positions: &[usize],
        rows: usize,
        columns: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let axis_angles: Vec<Vec<f64>> = self.dims.iter().map(|&n| self.inverse_frequencies(n)).collect();
        let half: usize = self.dims.iter().sum::<usize>() / 2;
        let tokens = frame_positions.len() * rows * columns;
        let mut cos = Vec::with_capacity(tokens * half);
        let mut sin = Vec::with_capacity(tokens * half);
        for &f in frame_positions {
            for h in 0..rows {
                for w in 0..columns {
                    for (pos, freqs) in [f, h, w].into_iter().zip(&axis_angles) {
                        for &freq in freqs {
                            let angle = pos as f64 * freq;
                            cos.push(angle.cos() as f32);
                            sin.push(angle.sin() as f32);
                        }
                    }
                }
            }
        }
        Ok((Tensor::from_vec(cos, (tokens, half), device)?, Tensor::from_vec(sin, (tokens, half), device)?))
    }

    /// `θ^(−2i/n)` for i < n/2, in f64 like the reference.
    fn inverse_frequencies(&self, n: usize) -> Vec<f64> {
        (0..n / 2).map(|i| 1.0 / self.theta.powf((2 * i) as f64 / n as f64)).collect()
    }

    /// Rotates `x` `[batch, heads, tokens, head_dim]` with tables from [`Rope3d::tables`].
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        if x.track_op() {
            if super::fused::applies(x) {
                let op = super::fused::RotaryInterleaved { inverse: false };
                return Ok(x.contiguous()?.apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)?);
            }
            return Self::apply_differentiable(x, &cos, &sin);
        }
        Ok(candle_nn::rotary_emb::rope_i(&x.contiguous()?, &cos, &sin)?)
    }

    /// [`apply`](Self::apply) from differentiable primitives, for training (candle's fused
    /// rotary kernel has no backward pass): `(a, b) → (a·cos − b·sin, a·sin + b·cos)` per pair.
    fn apply_differentiable(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        let pairs = x.reshape((b, h, t, d / 2, 2))?;
        let (even, odd) = (pairs.narrow(4, 0, 1)?, pairs.narrow(4, 1, 1)?);
        let cos = cos.reshape((1, 1, t, d / 2, 1))?;
        let sin = sin.reshape((1, 1, t, d / 2, 1))?;
        let rotated_even = (even.broadcast_mul(&cos)? - odd.broadcast_mul(&sin)?)?;
        let rotated_odd = (even.broadcast_mul(&sin)? + odd.broadcast_mul(&cos)?)?;
        Ok(Tensor::cat(&[rotated_even, rotated_odd], 4)?.reshape((b, h, t, d))?)
    }
}
