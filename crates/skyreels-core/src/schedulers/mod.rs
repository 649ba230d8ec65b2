//! Flow-matching samplers: the sigma grids, multistep UniPC (the SkyReels default), Euler and
//! LCM-style re-noising.
//!
//! Flow convention (spec §6): `x_σ = (1 − σ)·x₀ + σ·ε`, the model predicts `v = ε − x₀`, and the
//! model is fed the integer timestep `⌊1000·σ⌋`. Each scheduler instance holds only its own small
//! state, so diffusion forcing can keep one per latent frame.

mod flow_euler;
mod flow_lcm;
mod flow_unipc;
mod sigmas;

pub use flow_euler::FlowEuler;
pub use flow_lcm::FlowLcm;
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

/// `(σ_k, σ_{k+1})` of step `k`, or the error a finished sampler gives.
fn step_sigmas(schedule: &FlowSchedule, k: usize) -> Result<(f32, f32)> {
    match schedule.sigmas().get(k..k + 2) {
        Some(&[sigma, next]) => Ok((sigma, next)),
        _ => Err(crate::error::invalid_input!("the scheduler already finished its {} steps", schedule.len())),
    }
}

/// Which solver walks the schedule: the names `--sampler` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Sampler {
    /// Second-order multistep UniPC (bh2, x₀ prediction): every SkyReels release's solver.
    #[default]
    #[serde(rename = "unipc")]
    UniPc,
    /// First-order Euler: what step-distilled models (4–8 steps) are trained to be sampled with.
    #[serde(rename = "euler")]
    Euler,
    /// LCM-style: predict the clean sample, re-noise it to the next level with fresh noise
    /// (consistency-distilled models such as CausVid).
    #[serde(rename = "lcm")]
    Lcm,
}

impl Sampler {
    /// Fresh noise draws (each of the sample's shape) a solver of this kind needs for
    /// `steps` steps: LCM re-noises after every step but the last, the others need none.
    pub fn noise_draws(self, steps: usize) -> usize {
        match self {
            Sampler::Lcm => FlowLcm::draws(steps),
            Sampler::UniPc | Sampler::Euler => 0,
        }
    }

    /// A solver of this kind at step 0 of `schedule`; `in_place` selects UniPC's variant that
    /// diffusion forcing's per-frame solvers use (see [`FlowUniPc::in_place`]); `noise` holds
    /// the [`noise_draws`](Self::noise_draws) it needs.
    pub fn solver(self, schedule: FlowSchedule, in_place: bool, noise: Vec<Tensor>) -> Result<Box<dyn FlowScheduler>> {
        Ok(match (self, in_place) {
            (Sampler::UniPc, true) => Box::new(FlowUniPc::in_place(schedule)),
            (Sampler::UniPc, false) => Box::new(FlowUniPc::new(schedule)),
            (Sampler::Euler, _) => Box::new(FlowEuler::new(schedule)),
            (Sampler::Lcm, _) => Box::new(FlowLcm::new(schedule, noise)?),
        })
    }
}

impl std::str::FromStr for Sampler {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "unipc" => Ok(Sampler::UniPc),
            "euler" => Ok(Sampler::Euler),
            "lcm" => Ok(Sampler::Lcm),
            other => Err(crate::error::invalid_input!("unknown sampler `{other}`: use `unipc`, `euler` or `lcm`")),
        }
    }
}

impl std::fmt::Display for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sampler::UniPc => "unipc",
            Sampler::Euler => "euler",
            Sampler::Lcm => "lcm",
        })
    }
}
