//! LayerNorm and RMSNorm over the last dimension, computed in f32.
//!
//! On the CPU (and whenever gradients flow) the norms are composed from primitives, with a
//! two-pass variance, exactly as the reference computes them. On a GPU they go through candle's
//! fused kernels, which read the tensor once instead of five to eight times. The fused LayerNorm
//! takes its variance in one pass (`E[x²] − mean²` in f32), which loses bits when the mean is
//! large against the spread (3e-5 relative at mean/std ≈ 13): far below bf16's rounding, not
//! below f32's exactness rule, so it serves bf16/f16 inputs and f32 keeps the two-pass form.
//! Both formulations run on the CPU too, so the GPU ones are tested there against the exact ones.

use candle_core::{DType, Device, Tensor, D};

use crate::checkpoint::Weights;
use crate::error::Result;

/// Normalises `x` over its last dimension to zero mean and unit variance (no affine), in f32.
///
/// Two passes (centre, then variance of the centred values) so that large residual-stream
/// means do not cost precision, matching `torch.nn.functional.layer_norm`.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if uses_fused_kernels(x) && x.dtype() != DType::F32 {
        return layer_norm_fused(x, eps);
    }
    let x = x.to_dtype(DType::F32)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred.broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// [`layer_norm`] through candle's fused kernel (one-pass variance), in f32: the GPU execution.
pub fn layer_norm_fused(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    let dim = x.dim(D::Minus1)?;
    let ones = Tensor::ones(dim, DType::F32, x.device())?;
    let zeros = Tensor::zeros(dim, DType::F32, x.device())?;
    Ok(candle_nn::ops::layer_norm(&x, &ones, &zeros, eps as f32)?)
}

/// Fused kernels are for inference on a GPU: the CPU keeps the reference's arithmetic, and the
/// fused kernels have no backward pass.
fn uses_fused_kernels(x: &Tensor) -> bool {
    !x.device().is_cpu() && !x.track_op()
}

/// LayerNorm with an optional affine weight and bias (always f32).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm without parameters.
    pub fn plain(eps: f64) -> Self {
        Self { weight: None, bias: None, eps }
    }

    /// Loads `{prefix}.weight` and `{prefix}.bias` of shape `[dim]`.
    pub fn load(store: &dyn Weights, prefix: &str, dim: usize, eps: f64, device: &Device) -> Result<Self> {
        let weight = store.tensor(&format!("{prefix}.weight"), &[dim], DType::F32, device)?;
        let bias = store.tensor(&format!("{prefix}.bias"), &[dim], DType::F32, device)?;
        Ok(Self { weight: Some(weight), bias: Some(bias), eps })
    }

    /// The same norm with its parameters on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let moved = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_device(device)).transpose();
        Ok(Self { weight: moved(&self.weight)?, bias: moved(&self.bias)?, eps: self.eps })
    }

    /// Normalises `x` over the last dimension; the result is f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (true, Some(w), Some(b)) = (super::fused::applies(x), &self.weight, &self.bias) {
            // One fused pass (and one backward) on the CPU: x as one sample of rows, the
            // weight and bias as one group's vectors.
            let dim = x.dim(D::Minus1)?;
            let rows = x.elem_count() / dim.max(1);
            let (mul, add) = (w.reshape((1, 1, dim))?, b.reshape((1, 1, dim))?);
            let y = x.contiguous()?.reshape((1, rows, dim))?.apply_op3(
                &mul,
                &add,
                super::fused::NormAffine { eps: self.eps as f32 },
            )?;
            return Ok(y.reshape(x.shape())?);
        }
        let mut y = layer_norm(x, self.eps)?;
        if let Some(w) = &self.weight {
            y = y.broadcast_mul(w)?;
        }
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        Ok(y)
    }
}

/// `x · rsqrt(mean(x²) + eps) · w` over the last dimension, computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `{prefix}.weight` of shape `[dim]`.
    pub fn load(store: &dyn Weights, prefix: &str, dim: usize, eps: f64, device: &Device) -> Result<Self> {
        let weight = store.tensor(&format!("{prefix}.weight"), &[dim], DType::F32, device)?;
        Ok(Self { weight, eps })
    }

    /// The same norm with its weight on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self { weight: self.weight.to_device(device)?, eps: self.eps })
    }

    /// Normalises `x`; the result is f32 (the reference keeps it f32 until attention).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if uses_fused_kernels(x) && !self.weight.track_op() {
            return self.forward_fused(x);
        }
        if super::fused::applies(x) && self.weight.dtype() == DType::F32 {
            return Ok(x.contiguous()?.apply_op2(&self.weight, super::fused::RmsNormOp { eps: self.eps as f32 })?);
        }
        let x = x.to_dtype(DType::F32)?;
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv_rms)?.broadcast_mul(&self.weight)?)
    }

    /// [`forward`](Self::forward) through candle's fused kernel, in f32: the GPU execution.
    pub fn forward_fused(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        Ok(candle_nn::ops::rms_norm(&x, &self.weight, self.eps as f32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
        let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        let norm = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
        (diff / norm).sqrt()
    }

    /// The fused formulations the GPU runs equal the exact ones, also on a residual stream with
    /// a large mean (where the one-pass variance loses bits) and on bf16 input.
    #[test]
    fn fused_norms_match_the_exact_ones() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 7, 96), &dev).unwrap();
        let shifted = (&x * 3.0).unwrap().affine(1.0, 40.0).unwrap();
        for (what, input, tol) in [("plain", &x, 1e-6), ("mean 40 / std 3", &shifted, 1e-4)] {
            let exact = layer_norm(input, 1e-6).unwrap();
            let fused = layer_norm_fused(input, 1e-6).unwrap();
            let err = rel_l2(&fused, &exact);
            assert!(err < tol, "layer norm, {what}: {err:.2e}");
        }
        let bf16 = x.to_dtype(DType::BF16).unwrap();
        let err = rel_l2(&layer_norm_fused(&bf16, 1e-6).unwrap(), &layer_norm(&bf16, 1e-6).unwrap());
        assert!(err < 1e-6, "layer norm of bf16 input: {err:.2e}");
        let norm = RmsNorm { weight: Tensor::randn(1f32, 0.1, 96, &dev).unwrap(), eps: 1e-6 };
        let err = rel_l2(&norm.forward_fused(&x).unwrap(), &norm.forward(&x).unwrap());
        assert!(err < 1e-6, "rms norm: {err:.2e}");
        assert_eq!(norm.forward_fused(&bf16).unwrap().dtype(), DType::F32);
    }
}
