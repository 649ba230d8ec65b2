//! `y = x·Wᵀ + b` over the last dimension, with weights held in a storage format of their own.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Weights;
use crate::error::{invalid_input, Result};

/// How a model's large matrices are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// In the load dtype (f32 or bf16).
    #[default]
    Native,
    /// FP8 e4m3 values with one f32 scale per output row (`max |w_row| / 448`), widened to the
    /// compute dtype one layer at a time: half of bf16's memory, no change in speed.
    Fp8,
}

impl std::str::FromStr for WeightFormat {
    type Err = crate::Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "native" => Ok(Self::Native),
            "fp8" | "e4m3" => Ok(Self::Fp8),
            _ => Err(invalid_input!("weight format `{text}` is not one of native, fp8")),
        }
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Fp8 => "fp8",
        })
    }
}

/// The largest finite FP8 e4m3 value.
const E4M3_MAX: f64 = 448.0;

/// A weight matrix `[out, in]` as it is held.
#[derive(Debug, Clone)]
enum Matrix {
    Dense(Tensor),
    Fp8 {
        values: Tensor,
        row_scales: Tensor,
    },
    /// ggml blocks from a GGUF file (Q8_0, Q4_K, …), dequantised per use.
    Quantized(Arc<QTensor>),
}

/// A dense layer. Weights may be held in bf16 or FP8 to save memory and are widened to the
/// input's dtype when it differs (f32 arithmetic with bf16-held weights), unless the layer is
/// set to multiply in bf16 ([`set_bf16_products`](Self::set_bf16_products)).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Matrix,
    bias: Option<Tensor>,
    /// Updates applied beside the weight rather than merged into it (LoRA adapters a server
    /// switches per job).
    adapters: Vec<Adapter>,
    /// Multiply bf16 weights by f32 inputs in bf16 arithmetic (see `set_bf16_products`).
    bf16_products: bool,
}

/// An update of a layer kept beside its weight: `y += s·(x·Aᵀ)·Bᵀ + x·Dᵀ + d`.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// `A` `[rank, in]`, `B` `[out, rank]` and the scale `s` (strength × α / rank).
    pub low_rank: Option<(Tensor, Tensor, f64)>,
    /// A full-weight update `D` `[out, in]`, already scaled.
    pub weight: Option<Tensor>,
    /// A bias update `d` `[out]`, already scaled.
    pub bias: Option<Tensor>,
}

impl Adapter {
    fn to_device(&self, device: &Device) -> Result<Self> {
        let low_rank = match &self.low_rank {
            Some((a, b, s)) => Some((a.to_device(device)?, b.to_device(device)?, *s)),
            None => None,
        };
        let move_to = |t: &Option<Tensor>| t.as_ref().map(|t| t.to_device(device)).transpose();
        Ok(Self { low_rank, weight: move_to(&self.weight)?, bias: move_to(&self.bias)? })
    }

    /// `y + update(x)` for `x` `[rows, in]`, `y` `[rows, out]`.
    fn apply(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let mut y = y;
        if let Some((a, b, scale)) = &self.low_rank {
            let inner = x.matmul(&a.to_dtype(dtype)?.t()?)?;
            y = (y + inner.matmul(&b.to_dtype(dtype)?.t()?)?.affine(*scale, 0.0)?)?;
        }
        if let Some(d) = &self.weight {
            y = (y + x.matmul(&d.to_dtype(dtype)?.t()?)?)?;
        }
        if let Some(d) = &self.bias {
            y = y.broadcast_add(&d.to_dtype(dtype)?)?;
        }
        Ok(y)
    }
}

impl Linear {
    /// Builds a layer from a `[out, in]` weight and optional `[out]` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight: Matrix::Dense(weight), bias, adapters: Vec::new(), bf16_products: false }
    }

    /// With bf16 weights on the CPU, multiplies f32 inputs in bf16 arithmetic too: the input
    /// rounded to bf16, f32 sums (a GPU's bf16 GEMM; the CPU's bf16 kernel where it has one).
    /// A bf16 input always multiplies so; other weights ignore it.
    pub fn set_bf16_products(&mut self, on: bool) {
        self.bf16_products = on;
    }

    /// Replaces the updates applied beside the weight (none restores the layer as loaded).
    pub fn set_adapters(&mut self, adapters: Vec<Adapter>) {
        self.adapters = adapters;
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        match &self.weight {
            Matrix::Dense(w) => w.elem_count() / w.dims()[0],
            Matrix::Fp8 { values, .. } => values.elem_count() / values.dims()[0],
            Matrix::Quantized(blocks) => blocks.shape().elem_count() / blocks.shape().dims()[0],
        }
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
        Self::load_as(store, prefix, [in_dim, out_dim], dtype, WeightFormat::Native, device)
    }

    /// [`load`](Self::load) with the weight held in `format` (the bias stays in `dtype`). FP8
    /// weights are quantised on the CPU, so the device never holds them at full precision; a
    /// weight the store holds quantised (GGUF) stays in its blocks whatever `format` says.
    pub fn load_as(
        store: &dyn Weights,
        prefix: &str,
        [in_dim, out_dim]: [usize; 2],
        dtype: DType,
        format: WeightFormat,
        device: &Device,
    ) -> Result<Self> {
        let name = format!("{prefix}.weight");
        let shape = [out_dim, in_dim];
        let weight = match (format, store.quantized(&name, &shape, device)) {
            // Already quantised (GGUF): kept as stored, whatever the format asked for.
            (_, Some(blocks)) => Matrix::Quantized(Arc::new(blocks?)),
            (WeightFormat::Native, None) => Matrix::Dense(store.tensor(&name, &shape, dtype, device)?),
            (WeightFormat::Fp8, None) => {
                let full = store.tensor(&name, &shape, DType::F32, &Device::Cpu)?;
                let (values, row_scales) = quantize_fp8(&full)?;
                Matrix::Fp8 { values: values.to_device(device)?, row_scales: row_scales.to_device(device)? }
            }
        };
        let bias = store.tensor(&format!("{prefix}.bias"), &[out_dim], dtype, device)?;
        Ok(Self { weight, bias: Some(bias), adapters: Vec::new(), bf16_products: false })
    }

    /// The same layer with its tensors on `device` (a copy; quantised blocks are copied as
    /// stored).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let weight = match &self.weight {
            Matrix::Dense(w) => Matrix::Dense(w.to_device(device)?),
            Matrix::Fp8 { values, row_scales } => {
                Matrix::Fp8 { values: values.to_device(device)?, row_scales: row_scales.to_device(device)? }
            }
            Matrix::Quantized(blocks) => {
                let dims = blocks.shape().dims().to_vec();
                let moved = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    blocks.dtype(),
                    &blocks.data()?,
                    dims,
                    device,
                )?;
                Matrix::Quantized(Arc::new(moved))
            }
        };
        let bias = self.bias.as_ref().map(|b| b.to_device(device)).transpose()?;
        let adapters = self.adapters.iter().map(|a| a.to_device(device)).collect::<Result<_>>()?;
        Ok(Self { weight, bias, adapters, bf16_products: self.bf16_products })
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        match &self.weight {
            Matrix::Dense(w) => w.dims()[0],
            Matrix::Fp8 { values, .. } => values.dims()[0],
            Matrix::Quantized(blocks) => blocks.shape().dims()[0],
        }
    }

    /// The dtype of this layer's product operands under inputs of `input`: bf16 when it holds
    /// bf16 weights and multiplies in bf16 ([`set_bf16_products`](Self::set_bf16_products)),
    /// else the input's. The attention that follows a projection multiplies in the same
    /// arithmetic.
    pub fn products_dtype(&self, input: DType) -> DType {
        match &self.weight {
            Matrix::Dense(w) if w.dtype() == DType::BF16 && self.bf16_products => DType::BF16,
            _ => input,
        }
    }

    /// The weight `[out, in]` in `dtype` (FP8 weights widened and scaled).
    pub fn weight_as(&self, dtype: DType) -> Result<Tensor> {
        Ok(match &self.weight {
            Matrix::Dense(w) => w.to_dtype(dtype)?,
            Matrix::Fp8 { values, row_scales } => {
                values.to_dtype(dtype)?.broadcast_mul(&row_scales.to_dtype(dtype)?)?
            }
            Matrix::Quantized(blocks) => blocks.dequantize(&blocks.device())?.to_dtype(dtype)?,
        })
    }

    /// Whether `x·wᵀ` is a bf16 product on the CPU: bf16 weights under bf16 inputs, or under f32
    /// inputs when the layer is set to.
    fn bf16_arithmetic(&self, x: &Tensor, w: &Tensor) -> bool {
        let bf16_input = x.dtype() == DType::BF16 || (x.dtype() == DType::F32 && self.bf16_products);
        x.device().is_cpu() && w.dtype() == DType::BF16 && bf16_input
    }

    /// Applies the layer to `[..., in]`, returning `[..., out]` in the input's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (lead, in_dim) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, in_dim[0]))?;
        let (mut y, bias_added) = match &self.weight {
            Matrix::Dense(w) if self.bf16_arithmetic(&x2, w) => bf16_product(&x2, w, self.bias.as_ref())?,
            _ => (x2.matmul(&self.weight_as(x.dtype())?.t()?)?, false),
        };
        if let Some(bias) = self.bias.as_ref().filter(|_| !bias_added) {
            let bias = bias.to_dtype(x.dtype())?;
            y = if super::fused::applies(&y) {
                y.apply_op2(&bias, super::fused::BiasAdd)?
            } else {
                y.broadcast_add(&bias)?
            };
        }
        for adapter in &self.adapters {
            y = adapter.apply(&x2, y)?;
        }
        let mut out_shape = lead.to_vec();
        out_shape.push(self.out_dim());
        Ok(y.reshape(out_shape)?)
    }
}

/// `down(gelu_tanh(up(x)))`: a transformer's feed-forward. Where both layers multiply an f32
/// `x` in bf16 on the CPU's bf16 kernel (dense bf16 weights, no adapters, no gradients), the
/// hidden activations get GELU and their rounding to bf16 inside the first product, block by
/// block while in cache, and the second product reads them where they lie: the values of the
/// composition (the second product rounds its input to bf16 anyway) without writing, rereading
/// and rounding the f32 activations, the widest tensor of a block. Elsewhere the composition.
pub fn gelu_feed_forward(x: &Tensor, up: &Linear, down: &Linear) -> Result<Tensor> {
    let fused = match (&up.weight, &down.weight) {
        (Matrix::Dense(w_up), Matrix::Dense(w_down))
            if x.dtype() == DType::F32
                && !x.track_op()
                && up.adapters.is_empty()
                && down.adapters.is_empty()
                && up.bf16_arithmetic(x, w_up)
                && down.bf16_arithmetic(x, w_down)
                && super::gemm_bf16::engine().is_some() =>
        {
            Some((w_up, w_down))
        }
        _ => None,
    };
    let Some((w_up, w_down)) = fused else {
        return down.forward(&super::gelu_tanh(&up.forward(x)?)?);
    };
    let dims = x.dims().to_vec();
    let (lead, in_dim) = dims.split_at(dims.len() - 1);
    let x2 = x.reshape((lead.iter().product::<usize>(), in_dim[0]))?.contiguous()?;
    let hidden = kernel_product(&x2, w_up, up.bias.as_ref(), super::gemm_bf16::MatmulWt::GeluBf16)?;
    let y = kernel_product(&hidden, w_down, down.bias.as_ref(), super::gemm_bf16::MatmulWt::Sums)?;
    let mut out_shape = lead.to_vec();
    out_shape.push(down.out_dim());
    Ok(y.reshape(out_shape)?)
}

/// `op` on contiguous `x` `[m, k]`, bf16 `w` `[n, k]` and the bias as its starting sums.
fn kernel_product(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, op: super::gemm_bf16::MatmulWt) -> Result<Tensor> {
    let w = w.contiguous()?;
    Ok(match bias {
        Some(bias) => x.apply_op3_no_bwd(&w, &bias.contiguous()?, &op)?,
        None => x.apply_op2_no_bwd(&w, &op)?,
    })
}

/// `x·wᵀ` with both operands in bf16 and f32 sums, in `x`'s dtype: the arithmetic of a GPU's
/// bf16 GEMM, on the CPU's bf16 kernel where it has one (`nn::gemm_bf16`), which also adds
/// `bias` (the `bool` says so). Elsewhere an f32 `x` is rounded to bf16 and both are widened,
/// which gives the same products (exact in f32) summed in another order; a bf16 `x` keeps
/// candle's bf16 product.
fn bf16_product(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, bool)> {
    if super::gemm_bf16::engine().is_some() {
        let y = kernel_product(&x.contiguous()?, w, bias, super::gemm_bf16::MatmulWt::Sums)?;
        return Ok((y.to_dtype(x.dtype())?, true));
    }
    let y = match x.dtype() {
        DType::F32 => x.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.matmul(&w.to_dtype(DType::F32)?.t()?)?,
        _ => x.matmul(&w.t()?)?,
    };
    Ok((y, false))
}

/// `[out, in]` → FP8 e4m3 values and f32 scales `[out, 1]`, each row scaled so its largest
/// magnitude maps to e4m3's largest finite value (an all-zero row gets scale 1).
pub fn quantize_fp8(weight: &Tensor) -> Result<(Tensor, Tensor)> {
    let weight = weight.to_dtype(DType::F32)?;
    let row_max = weight.abs()?.max_keepdim(D::Minus1)?;
    let row_max = row_max.to_vec2::<f32>()?;
    let scales: Vec<f32> = row_max
        .iter()
        .map(|r| if r[0] > 0.0 && r[0].is_finite() { (r[0] as f64 / E4M3_MAX) as f32 } else { 1.0 })
        .collect();
    let scales = Tensor::from_vec(scales, (row_max.len(), 1), weight.device())?;
    let values = weight.broadcast_div(&scales)?.clamp(-E4M3_MAX, E4M3_MAX)?.to_dtype(DType::F8E4M3)?;
    Ok((values, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// e4m3 keeps 3 mantissa bits: each weight is off by at most 2⁻⁴ of its magnitude (plus the
    /// subnormal step near zero), and a layer's output by about 2–3% relative L2.
    #[test]
    fn fp8_weights_round_within_e4m3_precision() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (24, 40), &dev).unwrap();
        let w = Tensor::cat(&[w, Tensor::zeros((1, 40), DType::F32, &dev).unwrap()], 0).unwrap();
        let (values, scales) = quantize_fp8(&w).unwrap();
        assert_eq!(values.dtype(), DType::F8E4M3);
        assert_eq!(scales.dims(), [25, 1]);
        let layer = Linear {
            weight: Matrix::Fp8 { values, row_scales: scales },
            bias: None,
            adapters: Vec::new(),
            bf16_products: false,
        };
        let back = layer.weight_as(DType::F32).unwrap();
        let (w_v, back_v) = (w.to_vec2::<f32>().unwrap(), back.to_vec2::<f32>().unwrap());
        for (row, back_row) in w_v.iter().zip(&back_v) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in row.iter().zip(back_row) {
                assert!((a - b).abs() <= a.abs() / 16.0 + max / 448.0 * 2f32.powi(-6), "{a} -> {b}");
            }
        }
        assert!(back_v[24].iter().all(|&v| v == 0.0), "a zero row stays zero");
        let x = Tensor::randn(0f32, 1.0, (7, 40), &dev).unwrap();
        let exact = x.matmul(&w.t().unwrap()).unwrap();
        let ours = layer.forward(&x).unwrap();
        let err = ((&ours - &exact).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
            / exact.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
        .sqrt();
        assert!(err < 0.04, "fp8 layer output: relative error {err}");
        assert_eq!("FP8".parse::<WeightFormat>().unwrap(), WeightFormat::Fp8);
        assert!("int4".parse::<WeightFormat>().is_err());
    }

    /// bf16 weights under f32 activations: widened by default; set to bf16 products, the input
    /// is rounded to bf16 and the products summed in f32, whichever kernel this CPU runs; the
    /// bias is added in f32.
    #[test]
    fn bf16_weights_multiply_in_bf16_arithmetic() {
        let dev = Device::Cpu;
        for &(rows, inner, out) in &[(5, 9, 3), (130, 96, 70)] {
            let w = Tensor::randn(0f32, 0.2, (out, inner), &dev).unwrap().to_dtype(DType::BF16).unwrap();
            let b = Tensor::randn(0f32, 1.0, out, &dev).unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, rows, inner), &dev).unwrap();
            let mut layer = Linear::new(w.clone(), Some(b.clone()));
            // By default an f32 input keeps f32 arithmetic: the weight is widened.
            let widened = layer.forward(&x).unwrap();
            let f32_layer = Linear::new(w.to_dtype(DType::F32).unwrap(), Some(b.clone()));
            let unrounded = f32_layer.forward(&x).unwrap();
            assert_eq!(widened.to_vec3::<f32>().unwrap(), unrounded.to_vec3::<f32>().unwrap());
            layer.set_bf16_products(true);
            let ours = layer.forward(&x).unwrap();
            assert_eq!(ours.dims(), [2, rows, out]);
            assert_eq!(ours.dtype(), DType::F32);
            let x_rounded = x.to_dtype(DType::BF16).unwrap().to_dtype(DType::F64).unwrap();
            let exact = x_rounded
                .broadcast_matmul(&w.to_dtype(DType::F64).unwrap().t().unwrap())
                .unwrap()
                .broadcast_add(&b.to_dtype(DType::F64).unwrap())
                .unwrap();
            let diff = (ours.to_dtype(DType::F64).unwrap() - &exact).unwrap();
            let err = (diff.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()
                / exact.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap())
            .sqrt();
            assert!(err < 1e-6, "{rows}×{inner}×{out}: relative error {err}");
            // The f32 weights' product differs by the input's rounding, about 2⁻⁹ relative.
            let gap = (&unrounded - &ours).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(gap > 0.0, "an f32 input must be rounded to bf16");
        }
    }

    /// The fused feed-forward gives the composition's values bit for bit: hidden widths whose
    /// bf16 rows the second product reads in place (a multiple of 32) and ones it copies, rows
    /// short of a tile, with and without biases; and it falls back to the composition where
    /// it does not apply (f32 products, adapters).
    #[test]
    fn gelu_feed_forward_equals_the_composition() {
        let dev = Device::Cpu;
        if crate::nn::gemm_bf16::engine().is_none() {
            eprintln!("this CPU has no bf16 kernel: the fused feed-forward is the composition here");
        }
        for (case, &(rows, dim, hidden)) in [(5, 24, 64), (70, 40, 96), (33, 48, 90), (200, 64, 256)].iter().enumerate()
        {
            let x = Tensor::randn(0f32, 1.0, (2, rows, dim), &dev).unwrap();
            let weight = |out: usize, inner: usize| {
                Tensor::randn(0f32, 0.3, (out, inner), &dev).unwrap().to_dtype(DType::BF16).unwrap()
            };
            let bias = |n: usize| (case % 2 == 0).then(|| Tensor::randn(0f32, 0.5, n, &dev).unwrap());
            let mut up = Linear::new(weight(hidden, dim), bias(hidden));
            let mut down = Linear::new(weight(dim, hidden), bias(dim));
            for bf16_products in [false, true] {
                up.set_bf16_products(bf16_products);
                down.set_bf16_products(bf16_products);
                let composed = down.forward(&crate::nn::gelu_tanh(&up.forward(&x).unwrap()).unwrap()).unwrap();
                let fused = gelu_feed_forward(&x, &up, &down).unwrap();
                assert_eq!(fused.dims(), [2, rows, dim]);
                assert_eq!(fused.dtype(), DType::F32);
                assert_eq!(
                    fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    composed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    "{rows}×{dim}×{hidden}, bf16 products {bf16_products}"
                );
            }
            let adapter = Adapter {
                low_rank: None,
                weight: Some(Tensor::randn(0f32, 0.1, (hidden, dim), &dev).unwrap()),
                bias: None,
            };
            up.set_adapters(vec![adapter]);
            let composed = down.forward(&crate::nn::gelu_tanh(&up.forward(&x).unwrap()).unwrap()).unwrap();
            let fused = gelu_feed_forward(&x, &up, &down).unwrap();
            assert_eq!(
                fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                composed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "with an adapter"
            );
        }
    }
}
