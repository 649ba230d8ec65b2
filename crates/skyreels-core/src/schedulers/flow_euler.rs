//! First-order flow-matching Euler: `x_{k+1} = x_k + (σ_{k+1} − σ_k)·v_k`.

use candle_core::{DType, Tensor};

use super::{FlowSchedule, FlowScheduler};
use crate::error::Result;

/// Euler sampler state for one sample (or one latent frame).
#[derive(Debug, Clone)]
pub struct FlowEuler {
    schedule: FlowSchedule,
    step_index: usize,
}

impl FlowEuler {
    /// A fresh sampler at step 0 of `schedule`.
    pub fn new(schedule: FlowSchedule) -> Self {
        Self { schedule, step_index: 0 }
    }
}

impl FlowScheduler for FlowEuler {
    fn schedule(&self) -> &FlowSchedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step_index
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let (sigma, next) = super::step_sigmas(&self.schedule, self.step_index)?;
        // The step size is an f32 difference, as in the reference.
        let dt = next - sigma;
        let next = (sample.to_dtype(DType::F32)? + model_output.to_dtype(DType::F32)?.affine(dt as f64, 0.0)?)?;
        self.step_index += 1;
        Ok(next.to_dtype(sample.dtype())?)
    }
}
