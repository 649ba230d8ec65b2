//! `y = x·Wᵀ + b` over the last dimension, with weights held in a storage dtype of their own.

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::Weights;
use crate::error::Result;

/// A dense layer. Weights may be held in bf16 to halve memory and are cast to the input's dtype
/// when it differs (the CPU computes in f32).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// Builds a layer from a `[out, in]` weight and optional `[out]` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Loads `{prefix}.weight` `[out, in]` and `{prefix}.bias` `[out]`.
    pub fn load(
        store: &dyn Weights,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let weight = store.tensor(&format!("{prefix}.weight"), &[out_dim, in_dim], dtype, device)?;
        let bias = store.tensor(&format!("{prefix}.bias"), &[out_dim], dtype, device)?;
        Ok(Self { weight, bias: Some(bias) })
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Applies the layer to `[..., in]`, returning `[..., out]` in the input's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (lead, in_dim) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let weight = self.weight.to_dtype(x.dtype())?;
        let x2 = x.reshape((rows, in_dim[0]))?;
        let mut y = x2.matmul(&weight.t()?)?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.to_dtype(x.dtype())?)?;
        }
        let mut out_shape = lead.to_vec();
        out_shape.push(self.out_dim());
        Ok(y.reshape(out_shape)?)
    }
}
