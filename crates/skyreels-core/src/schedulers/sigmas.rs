//! Timestep/sigma grids of the flow-matching samplers, bit-exact to both reference codes.

use std::sync::Arc;

use crate::error::{invalid_input, Result};

/// Which unshifted sigma grid to start from; the two reference implementations differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigmaGrid {
    /// The original SkyReels-V2 code: `linspace(σ_max, 0, N+1)[:-1]` with `σ_max = f32(0.999)`.
    #[default]
    SkyReels,
    /// diffusers' flow UniPC: `linspace(1, 1/1000, N+1)[:-1]`, first shifted sigma lowered by
    /// 1e-6 when it is exactly 1.
    Diffusers,
}

impl std::str::FromStr for SigmaGrid {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skyreels" | "original" => Ok(Self::SkyReels),
            "diffusers" => Ok(Self::Diffusers),
            other => Err(invalid_input!("unknown sigma grid `{other}`: use `skyreels` or `diffusers`")),
        }
    }
}

/// `N` model timesteps and `N + 1` sigmas (the last is 0) shared by any number of schedulers.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSchedule {
    timesteps: Arc<[i64]>,
    sigmas: Arc<[f32]>,
}

const TRAIN_STEPS: f64 = 1000.0;

impl FlowSchedule {
    /// The schedule of `steps` steps on `grid`, shifted by `shift` (`σ' = s·σ / (1 + (s−1)·σ)`).
    ///
    /// All arithmetic is done in f64 in the same order as numpy so the truncated integer
    /// timesteps agree exactly with the references.
    pub fn new(grid: SigmaGrid, steps: usize, shift: f64) -> Result<Self> {
        if steps == 0 {
            return Err(invalid_input!("the number of inference steps must be at least 1"));
        }
        if !(shift.is_finite() && shift > 0.0) {
            return Err(invalid_input!("the flow shift must be a positive number, got {shift}"));
        }
        let (start, stop) = match grid {
            // f32(1 − 0.001), as the reference stores its training sigmas in float32.
            SigmaGrid::SkyReels => ((1.0f64 - 0.001) as f32 as f64, 0.0),
            SigmaGrid::Diffusers => (1.0, 1.0 / TRAIN_STEPS),
        };
        let step = (stop - start) / steps as f64;
        let mut shifted: Vec<f64> =
            (0..steps).map(|i| i as f64 * step + start).map(|s| shift * s / (1.0 + (shift - 1.0) * s)).collect();
        if grid == SigmaGrid::Diffusers && (shifted[0] - 1.0).abs() < 1e-6 {
            shifted[0] -= 1e-6;
        }
        let timesteps: Vec<i64> = shifted.iter().map(|s| (s * TRAIN_STEPS) as i64).collect();
        let sigmas: Vec<f32> = shifted.iter().map(|&s| s as f32).chain(std::iter::once(0.0)).collect();
        Ok(Self { timesteps: timesteps.into(), sigmas: sigmas.into() })
    }

    /// Number of steps `N`.
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Always false: a schedule has at least one step.
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// The `N` integer timesteps fed to the model (`⌊1000·σ'⌋`).
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The `N + 1` noise levels, ending with 0.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skyreels_grid_matches_spec_table() {
        let s = FlowSchedule::new(SigmaGrid::SkyReels, 30, 8.0).unwrap();
        assert_eq!(&s.timesteps()[..6], &[999, 995, 991, 986, 980, 975]);
        assert_eq!(&s.timesteps()[25..], &[615, 551, 470, 363, 216]);
        assert_eq!(s.sigmas().len(), 31);
        assert_eq!(*s.sigmas().last().unwrap(), 0.0);
    }

    #[test]
    fn diffusers_grid_differs_where_documented() {
        let s = FlowSchedule::new(SigmaGrid::Diffusers, 30, 8.0).unwrap();
        assert_eq!(&s.timesteps()[..5], &[999, 995, 991, 986, 981]);
        assert_eq!(*s.timesteps().last().unwrap(), 221);
        assert!(s.sigmas()[0] < 1.0);
    }

    #[test]
    fn rejects_zero_steps_and_bad_shift() {
        assert!(FlowSchedule::new(SigmaGrid::SkyReels, 0, 8.0).is_err());
        assert!(FlowSchedule::new(SigmaGrid::SkyReels, 10, 0.0).is_err());
        assert!(FlowSchedule::new(SigmaGrid::SkyReels, 10, f64::NAN).is_err());
    }
}
