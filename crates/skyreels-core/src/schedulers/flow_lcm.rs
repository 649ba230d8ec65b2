//! LCM-style flow sampling, what consistency-distilled models (CausVid and its kin) are sampled
//! with: every step predicts the clean sample `x₀ = x − σ_k·v` and re-noises it to the next
//! level with fresh noise, `x_{k+1} = (1 − σ_{k+1})·x₀ + σ_{k+1}·ε_k`; the last step returns `x₀`.

use candle_core::{DType, Tensor};

use super::{FlowSchedule, FlowScheduler};
use crate::error::{invalid_input, Result};

/// LCM sampler state for one sample (or one latent frame): the schedule and the fresh noise of
/// each re-noising step, drawn up front from the run's noise stream so that a run is
/// reproducible and resumable like any other.
#[derive(Debug, Clone)]
pub struct FlowLcm {
    schedule: FlowSchedule,
    step_index: usize,
    renoise: Vec<Tensor>,
}

impl FlowLcm {
    /// A sampler at step 0 of `schedule` with `renoise`, one draw of the sample's shape for each
    /// step but the last ([`FlowLcm::draws`]).
    pub fn new(schedule: FlowSchedule, renoise: Vec<Tensor>) -> Result<Self> {
        if renoise.len() != Self::draws(schedule.len()) {
            return Err(invalid_input!(
                "the LCM sampler needs {} noise draws for {} steps, got {}",
                Self::draws(schedule.len()),
                schedule.len(),
                renoise.len()
            ));
        }
        Ok(Self { schedule, step_index: 0, renoise })
    }

    /// Fresh noise draws a run of `steps` steps needs.
    pub fn draws(steps: usize) -> usize {
        steps.saturating_sub(1)
    }
}

impl FlowScheduler for FlowLcm {
    fn schedule(&self) -> &FlowSchedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step_index
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let k = self.step_index;
        let (sigma, next_sigma) = super::step_sigmas(&self.schedule, k)?;
        let (sigma, next_sigma) = (sigma as f64, next_sigma as f64);
        let x0 = (sample.to_dtype(DType::F32)? - model_output.to_dtype(DType::F32)?.affine(sigma, 0.0)?)?;
        let next = match self.renoise.get(k) {
            Some(eps) if next_sigma > 0.0 => {
                (x0.affine(1.0 - next_sigma, 0.0)? + eps.to_dtype(DType::F32)?.affine(next_sigma, 0.0)?)?
            }
            _ => x0,
        };
        self.step_index += 1;
        Ok(next.to_dtype(sample.dtype())?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::schedulers::SigmaGrid;

    #[test]
    fn an_exact_prediction_lands_on_the_clean_sample_renoised_with_the_drawn_noise() {
        let schedule = FlowSchedule::new(SigmaGrid::SkyReels, 4, 5.0).unwrap();
        let device = Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -1.0, 2.0], &device).unwrap();
        let eps = Tensor::new(&[1.0f32, 0.25, -0.5], &device).unwrap();
        let draws: Vec<Tensor> = (0..3).map(|i| eps.affine(1.0 + i as f64, 0.0).unwrap()).collect();
        let mut lcm = FlowLcm::new(schedule.clone(), draws.clone()).unwrap();
        let sigmas = schedule.sigmas().to_vec();
        let mut x =
            (x0.affine(1.0 - sigmas[0] as f64, 0.0).unwrap() + eps.affine(sigmas[0] as f64, 0.0).unwrap()).unwrap();
        let mut noise = eps.clone();
        for k in 0..4 {
            let v = (&noise - &x0).unwrap();
            x = lcm.step(&v, &x).unwrap();
            let s = sigmas[k + 1] as f64;
            let expected = if k < 3 {
                noise = draws[k].clone();
                (x0.affine(1.0 - s, 0.0).unwrap() + draws[k].affine(s, 0.0).unwrap()).unwrap()
            } else {
                x0.clone()
            };
            let diff = (&x - &expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "step {k}: off by {diff}");
        }
        assert!(lcm.step(&x, &x).is_err(), "a finished sampler refuses another step");
        assert!(FlowLcm::new(schedule, vec![]).is_err(), "missing draws are refused");
    }
}
