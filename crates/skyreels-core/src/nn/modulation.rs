//! The DiT's adaptive LayerNorm: per-frame shift, scale and gate from the timestep embedding.
//!
//! `x [B, L, D]` holds `G` frame groups of `L/G` tokens; each modulation vector is
//! `[B, G, 1, D]` (f32), one per sample and frame group, so diffusion forcing's per-frame noise
//! levels modulate each frame's tokens on their own. On the CPU in f32 both ops are one fused
//! pass with a fused backward ([`super::fused`]); elsewhere they are composed from candle's
//! broadcasts.

use candle_core::{DType, Tensor};

use super::fused::{self, GatedResidual, NormAffine};
use super::norm::layer_norm;
use crate::error::Result;

/// `LayerNorm(x)·(1 + scale) + shift` per frame group (no affine of its own), in f32.
pub fn modulated_layer_norm(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let one_plus_scale = (scale + 1.0)?;
    if fused::applies(x) {
        let (mul, add) = (as_vectors(&one_plus_scale)?, as_vectors(shift)?);
        return Ok(x.contiguous()?.apply_op3(&mul, &add, NormAffine { eps: eps as f32 })?);
    }
    per_frame(&layer_norm(x, eps)?, &one_plus_scale, |x, s| x.broadcast_mul(s)?.broadcast_add(shift))
}

/// `x + y·gate` per frame group, computed in f32 and returned in `x`'s dtype.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if fused::applies(x) && fused::applies(y) {
        return Ok(x.contiguous()?.apply_op3(&y.contiguous()?, &as_vectors(gate)?, GatedResidual)?);
    }
    let scaled = per_frame(&y.to_dtype(DType::F32)?, gate, |y, g| y.broadcast_mul(g))?;
    Ok((x.to_dtype(DType::F32)? + scaled)?.to_dtype(x.dtype())?)
}

/// `[B, G, 1, D]` → contiguous f32 `[B, G, D]`.
fn as_vectors(m: &Tensor) -> Result<Tensor> {
    let (b, g, _, d) = m.dims4()?;
    Ok(m.to_dtype(DType::F32)?.reshape((b, g, d))?.contiguous()?)
}

/// Applies `f(x grouped [B, G, L/G, D], m)` and restores `x`'s shape.
fn per_frame(x: &Tensor, m: &Tensor, f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    let groups = m.dims()[1];
    let grouped = x.reshape((b, groups, l / groups, d))?;
    Ok(f(&grouped, m)?.reshape((b, l, d))?)
}
