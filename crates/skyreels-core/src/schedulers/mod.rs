//! Flow-matching samplers: the sigma grids, multistep UniPC (the SkyReels default) and Euler.
//!
//! Flow convention (spec §6): `x_σ = (1 − σ)·x₀ + σ·ε`, the model predicts `v = ε − x₀`, and the
//! model is fed the integer timestep `⌊1000·σ⌋`. Each scheduler instance holds only its own small
//! state, so diffusion forcing can keep one per latent frame.

mod flow_euler;
mod flow_unipc;
mod sigmas;

pub use flow_euler::FlowEuler;
pub use flow_unipc::FlowUniPc;
pub use sigmas::{FlowSchedule, SigmaGrid};

use candle_core::Tensor;

use crate::error::Result;

/// A sampler that walks one sample along a [`FlowSchedule`], one model evaluation per step.
pub trait FlowScheduler {
    /// The schedule being followed.
    fn schedule(&self) -> &FlowSchedule;
    /// How many steps have been taken so far.
    fn step_index(&self) -> usize;
    /// Advances `sample` (noise level `σ_k`) to `σ_{k+1}` given the model's flow prediction.
    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor>;
    /// The timestep to feed the model at the current step, `None` once finished.
    fn current_timestep(&self) -> Option<i64> {
        self.schedule().timesteps().get(self.step_index()).copied()
    }
}
