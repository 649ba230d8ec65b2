//! The sinusoidal timestep code fed to the time-embedding MLP.

use candle_core::{Device, Tensor};

use crate::error::{invalid_input, Result};

/// `[cos(t·ω_j) …, sin(t·ω_j) …]` with `ω_j = 10000^(−j/(dim/2))`, j < dim/2, for every value
/// of `timesteps` (any shape, any numeric dtype). Returns `[n, dim]` f32, computed in f64 first
/// as both the original code and diffusers do.
pub fn timestep_sinusoid(timesteps: &Tensor, dim: usize, device: &Device) -> Result<Tensor> {
    if !dim.is_multiple_of(2) {
        return Err(invalid_input!("the time-embedding width must be even, got {dim}"));
    }
    let half = dim / 2;
    let values = timesteps.flatten_all()?.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let mut data = Vec::with_capacity(values.len() * dim);
    for &t in &values {
        let args: Vec<f64> = (0..half).map(|j| t * (1.0 / 10000f64.powf(j as f64 / half as f64))).collect();
        data.extend(args.iter().map(|a| a.cos() as f32));
        data.extend(args.iter().map(|a| a.sin() as f32));
    }
    Ok(Tensor::from_vec(data, (values.len(), dim), device)?)
}
