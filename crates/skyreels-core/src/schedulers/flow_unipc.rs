//! Multistep UniPC for flow matching (order 2, `bh2`, x₀-prediction, lower-order final step).
//!
//! The closed form of spec §6.2: each step first corrects the incoming sample with the new x₀
//! prediction (UniC, skipped at step 0), then predicts the next sample (UniP). Coefficients are
//! computed in f64 from the f32 sigmas; tensor arithmetic runs in f32.

use candle_core::{DType, Tensor};

use super::{FlowSchedule, FlowScheduler};
use crate::error::{invalid_input, Result};

/// Order of the multistep solver.
const SOLVER_ORDER: usize = 2;

/// Flow UniPC state for one sample (or one latent frame in diffusion forcing).
#[derive(Debug, Clone)]
pub struct FlowUniPc {
    schedule: FlowSchedule,
    step_index: usize,
    /// x₀ predictions of the last two steps: `[older, newer]`.
    x0_history: [Option<Tensor>; 2],
    /// The (corrected) sample that entered the previous step.
    last_sample: Option<Tensor>,
    /// Order used by the previous step's predictor (the corrector reuses it).
    last_order: usize,
    lower_order_steps: usize,
    /// Emulate a caller that writes each result into the buffer it passed as `sample`.
    in_place: bool,
}

/// Scalars of one UniPC update from σ_from to σ_to, with `h = λ(σ_to) − λ(σ_from)`.
struct Coefficients {
    /// `σ_to / σ_from`.
    sigma_ratio: f64,
    h: f64,
    /// `φ₁ = expm1(−h)`.
    phi_1: f64,
    /// `B(h)` of the bh2 variant.
    b_h: f64,
    /// `α_to = 1 − σ_to`.
    alpha_to: f64,
}

/// `λ(σ) = ln(1 − σ) − ln σ`, the half log-SNR of the flow path (+∞ at σ = 0).
fn lambda(sigma: f64) -> f64 {
    (1.0 - sigma).ln() - sigma.ln()
}

impl FlowUniPc {
    /// A fresh solver at step 0 of `schedule`.
    pub fn new(schedule: FlowSchedule) -> Self {
        Self {
            schedule,
            step_index: 0,
            x0_history: [None, None],
            last_sample: None,
            last_order: 0,
            lower_order_steps: 0,
            in_place: false,
        }
    }

    /// A solver that behaves as the diffusion-forcing pipelines of both references use it: they
    /// step every frame in place, `latents[:, j] = step(v, latents[:, j])`, and the solver keeps
    /// a *view* of the sample it was given when no correction replaced it (step 0). The write-back
    /// then turns that remembered sample into the step's own output, so the first correction
    /// (step 1) starts from the already-advanced sample. Matching the references' DF numerics
    /// needs the same (their per-step latents differ by ~3% relative L2 otherwise).
    pub fn in_place(schedule: FlowSchedule) -> Self {
        Self { in_place: true, ..Self::new(schedule) }
    }

    fn sigma(&self, i: usize) -> f64 {
        self.schedule.sigmas()[i] as f64
    }

    /// Coefficients of a bh2 update from step `from` to step `to`.
    fn coefficients(&self, from: usize, to: usize) -> Coefficients {
        let (s_from, s_to) = (self.sigma(from), self.sigma(to));
        let h = lambda(s_to) - lambda(s_from);
        let phi_1 = (-h).exp_m1();
        // bh2 uses B(h) = expm1(−h), which equals φ₁.
        Coefficients { sigma_ratio: s_to / s_from, h, phi_1, b_h: phi_1, alpha_to: 1.0 - s_to }
    }

    /// UniC: corrects `sample` (at σ_k) using the new x₀ prediction `x0_new` and the history.
    fn correct(&self, x0_new: &Tensor, sample_prev: &Tensor, k: usize) -> Result<Tensor> {
        let (Some(m0), order) = (&self.x0_history[1], self.last_order) else {
            return Err(invalid_input!("UniPC corrector called without history"));
        };
        let Coefficients { sigma_ratio, h, phi_1, b_h, alpha_to: alpha_t } = self.coefficients(k - 1, k);
        let hh = -h;
        let s_0 = self.sigma(k - 1);
        let base = lincomb(&[(sigma_ratio, sample_prev), (-alpha_t * phi_1, m0)])?;
        let d1_t = (x0_new - m0)?;
        let correction = if order == 2 {
            let m1 =
                self.x0_history[0].as_ref().ok_or_else(|| invalid_input!("UniPC order-2 corrector without history"))?;
            let r = (lambda(self.sigma(k - 2)) - lambda(s_0)) / h;
            let d1 = (m1 - m0)?.affine(1.0 / r, 0.0)?;
            let g1 = phi_1 / hh - 1.0;
            let g2 = g1 / hh - 0.5;
            let (b0, b1) = (g1 / b_h, 2.0 * g2 / b_h);
            // Solve [[1, 1], [r, 1]]·[ρ0, ρ1] = [b0, b1].
            let rho0 = (b0 - b1) / (1.0 - r);
            let rho1 = b0 - rho0;
            lincomb(&[(rho0, &d1), (rho1, &d1_t)])?
        } else {
            d1_t.affine(0.5, 0.0)?
        };
        Ok((base - correction.affine(alpha_t * b_h, 0.0)?)?)
    }

    /// UniP: moves `sample` from σ_k to σ_{k+1} with the current x₀ history and `order`.
    fn predict(&self, sample: &Tensor, k: usize, order: usize) -> Result<Tensor> {
        let m0 = self.x0_history[1].as_ref().ok_or_else(|| invalid_input!("UniPC predictor without history"))?;
        let Coefficients { sigma_ratio, h, phi_1, b_h, alpha_to: alpha_t } = self.coefficients(k, k + 1);
        let s_0 = self.sigma(k);
        let next = lincomb(&[(sigma_ratio, sample), (-alpha_t * phi_1, m0)])?;
        if order < 2 {
            return Ok(next);
        }
        let m1 =
            self.x0_history[0].as_ref().ok_or_else(|| invalid_input!("UniPC order-2 predictor without history"))?;
        let r = (lambda(self.sigma(k - 1)) - lambda(s_0)) / h;
        let d1 = (m1 - m0)?.affine(1.0 / r, 0.0)?;
        // ρ_p is fixed to 0.5 for order 2.
        Ok((next - d1.affine(alpha_t * b_h * 0.5, 0.0)?)?)
    }
}

impl FlowScheduler for FlowUniPc {
    fn schedule(&self) -> &FlowSchedule {
        &self.schedule
    }

    fn step_index(&self) -> usize {
        self.step_index
    }

    fn step(&mut self, model_output: &Tensor, sample: &Tensor) -> Result<Tensor> {
        let k = self.step_index;
        let steps = self.schedule.len();
        if k >= steps {
            return Err(invalid_input!("the scheduler already finished its {steps} steps"));
        }
        let out_dtype = sample.dtype();
        let sample = sample.to_dtype(DType::F32)?;
        let velocity = model_output.to_dtype(DType::F32)?;
        let x0 = (&sample - velocity.affine(self.sigma(k), 0.0)?)?;
        let (sample, corrected) = match (&self.last_sample, k) {
            (Some(prev), k) if k > 0 => (self.correct(&x0, prev, k)?, true),
            _ => (sample, false),
        };
        self.x0_history = [self.x0_history[1].take(), Some(x0)];
        let order = SOLVER_ORDER.min(steps - k).min(self.lower_order_steps + 1);
        let next = self.predict(&sample, k, order)?.to_dtype(out_dtype)?;
        self.last_sample = Some(if self.in_place && !corrected { next.to_dtype(DType::F32)? } else { sample });
        self.last_order = order;
        self.lower_order_steps = (self.lower_order_steps + 1).min(SOLVER_ORDER);
        self.step_index += 1;
        Ok(next)
    }
}

/// `Σ cᵢ·tᵢ` for same-shaped tensors.
fn lincomb(terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let mut acc = terms[0].1.affine(terms[0].0, 0.0)?;
    for (c, t) in &terms[1..] {
        acc = (acc + t.affine(*c, 0.0)?)?;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedulers::SigmaGrid;
    use candle_core::Device;

    /// With the exact flow of a fixed (x₀, ε) pair, every x₀ prediction is exact, so UniPC must
    /// land on x₀ whatever the grid, order or step count.
    #[test]
    fn exact_velocity_recovers_x0() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[0.5f32, -1.25, 2.0, 0.0], &dev)?;
        let eps = Tensor::new(&[1.0f32, 0.3, -0.7, 2.2], &dev)?;
        let v = (&eps - &x0)?;
        for steps in [1, 2, 3, 10] {
            let schedule = FlowSchedule::new(SigmaGrid::SkyReels, steps, 5.0)?;
            let s0 = schedule.sigmas()[0] as f64;
            let mut x = (x0.affine(1.0 - s0, 0.0)? + eps.affine(s0, 0.0)?)?;
            let mut solver = FlowUniPc::new(schedule);
            for _ in 0..steps {
                x = solver.step(&v, &x)?;
            }
            let err = (&x - &x0)?.abs()?.max(0)?.to_scalar::<f32>()?;
            assert!(err < 1e-5, "{steps} steps: max error {err}");
            assert!(solver.step(&v, &x).is_err(), "stepping past the end must fail");
        }
        Ok(())
    }
}
