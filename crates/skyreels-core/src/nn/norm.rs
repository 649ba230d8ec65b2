//! LayerNorm and RMSNorm over the last dimension, computed in f32.

use candle_core::{DType, Device, Tensor, D};

use crate::checkpoint::Weights;
use crate::error::Result;

/// Normalises `x` over its last dimension to zero mean and unit variance (no affine), in f32.
///
/// Two passes (centre, then variance of the centred values) so that large residual-stream
/// means do not cost precision, matching `torch.nn.functional.layer_norm`.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred.broadcast_div(&(var + eps)?.sqrt()?)?)
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

    /// Normalises `x` over the last dimension; the result is f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
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

    /// Normalises `x`; the result is f32 (the reference keeps it f32 until attention).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let inv_rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv_rms)?.broadcast_mul(&self.weight)?)
    }
}
