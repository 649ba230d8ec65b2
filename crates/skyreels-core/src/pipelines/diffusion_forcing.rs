//! Diffusion-forcing generation (spec §8): one window at a time, each window a planner/scheduler
//! loop over the DiT with a clean prefix, windows chained by an overlap of latent frames.
//!
//! Everything here is counted in latent frames and works on latents only; decoding and writing
//! are the caller's (see [`super::continuation`]). The state between windows is small — the
//! overlap latents, the window index and the frame count here, plus the noise stream's position
//! and the decoder's recent latents outside — which is what makes infinite videos run in constant
//! memory and lets an interrupted run resume exactly.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::noise::NoiseSource;
use super::step_cache::{CacheSetting, StepCache};
use crate::error::{invalid_input, Result};
use crate::models::transformer::fps_index;
use crate::planner::{generate_timestep_matrix, PlanSettings};
use crate::schedulers::{FlowSchedule, FlowScheduler, Sampler, SigmaGrid};
use crate::{TransformerInput, WanTransformer3d};

/// Sampler settings shared by every window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DfSettings {
    /// Scheduler steps each frame goes through.
    pub steps: usize,
    /// Flow shift of the sigma schedule.
    pub shift: f64,
    /// Which reference's sigma grid to use.
    #[serde(with = "sigma_grid_name")]
    pub sigma_grid: SigmaGrid,
    /// Classifier-free guidance scale; at most 1 disables the unconditional pass.
    pub guidance_scale: f64,
    /// Steps each causal block trails its predecessor (0 = synchronous).
    pub ar_step: usize,
    /// Latent frames per causal block.
    pub causal_block_size: usize,
    /// Noise level (in timesteps, 0–1000) given to clean prefix frames in the model input; 0 keeps
    /// them exactly clean.
    pub addnoise_condition: u32,
    /// Frame rate the DF-1.3B fps embedding is told about (16 or anything else).
    pub fps: u32,
    /// The solver (settings saved before it existed used UniPC).
    #[serde(default)]
    pub sampler: Sampler,
    /// The step cache (settings saved before it existed had none).
    #[serde(default)]
    pub cache: CacheSetting,
}

mod sigma_grid_name {
    use super::SigmaGrid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(grid: &SigmaGrid, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match grid {
            SigmaGrid::SkyReels => "skyreels",
            SigmaGrid::Diffusers => "diffusers",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SigmaGrid, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl DfSettings {
    /// Whether each model call is paired with an unconditional one.
    pub fn uses_guidance(&self) -> bool {
        self.guidance_scale > 1.0
    }

    fn schedule(&self) -> Result<FlowSchedule> {
        FlowSchedule::new(self.sigma_grid, self.steps, self.shift)
    }

    /// How many model rows a window of `frames` latents with `prefix` clean frames takes.
    pub fn rows_per_window(&self, frames: usize, prefix: usize) -> Result<usize> {
        Ok(self.plan(&self.schedule()?, frames, prefix)?.rows())
    }

    fn plan(&self, schedule: &FlowSchedule, frames: usize, prefix: usize) -> Result<crate::TimestepMatrix> {
        generate_timestep_matrix(
            schedule.timesteps(),
            &PlanSettings {
                num_frames: frames,
                base_num_frames: None,
                ar_step: self.ar_step,
                num_pre_ready: prefix,
                causal_block_size: self.causal_block_size,
            },
        )
    }
}

/// Encoded prompt(s) for one window: `[1, L, text_dim]` each.
#[derive(Debug, Clone)]
pub struct TextConditioning {
    /// The prompt's text-encoder states.
    pub positive: Tensor,
    /// The negative prompt's states, used when guidance is on.
    pub negative: Tensor,
}

/// Denoises one window in place of its noise.
///
/// `latents` is `[1, C, f, h, w]`: `prefix` clean frames followed by pure noise. `end_latent`
/// (`[1, C, 1, h, w]`), when given, is appended as an always-clean last frame the model attends
/// to, and removed from the result. Every model call goes through `cache`. `on_row(row, rows)`
/// is called after every planner row; an error it returns (e.g.
/// [`Error::Cancelled`](crate::Error::Cancelled)) stops the window.
#[allow(clippy::too_many_arguments)]
pub fn denoise_window(
    model: &WanTransformer3d,
    latents: &Tensor,
    prefix: usize,
    end_latent: Option<&Tensor>,
    text: &TextConditioning,
    settings: &DfSettings,
    noise: &mut dyn NoiseSource,
    cache: &mut StepCache,
    on_row: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    let frames = latents.dim(2)?;
    let schedule = settings.schedule()?;
    let plan = settings.plan(&schedule, frames, prefix)?;
    let device = latents.device();
    let mut frame_latents: Vec<Tensor> =
        (0..frames).map(|j| latents.narrow(2, j, 1)).collect::<candle_core::Result<_>>()?;
    let mut solvers: Vec<Box<dyn FlowScheduler>> = Vec::with_capacity(frames);
    let frame_shape = frame_latents[0].dims().to_vec();
    for _ in 0..frames {
        let draws = (0..settings.sampler.noise_draws(settings.steps))
            .map(|_| noise.randn(&frame_shape, device))
            .collect::<Result<Vec<_>>>()?;
        solvers.push(settings.sampler.solver(schedule.clone(), true, draws)?);
    }
    // Timesteps and the fps index are small host values the transformer reads on the host (for
    // its sinusoids and checks): kept on the CPU they cost no device round trip per step.
    let fps = Tensor::new(&[fps_index(settings.fps)], &Device::Cpu)?;
    let rows = plan.rows();
    cache.start_window();
    for row in 0..rows {
        let interval = plan.valid_interval[row].clone();
        let mut used = plan.update_mask[row][interval.clone()].to_vec();
        let mut inputs: Vec<Tensor> = frame_latents[interval.clone()].to_vec();
        let mut timesteps: Vec<i64> = plan.timesteps[row][interval.clone()].to_vec();
        if settings.addnoise_condition > 0 && interval.start < prefix {
            soften_prefix(&mut inputs[..prefix - interval.start], settings.addnoise_condition, noise, device)?;
            timesteps[..prefix - interval.start].fill(settings.addnoise_condition as i64);
        }
        if let Some(end) = end_latent {
            inputs.push(end.clone());
            timesteps.push(0);
            used.push(false);
        }
        let x = Tensor::cat(&inputs, 2)?;
        let t = Tensor::from_vec(timesteps, (1, inputs.len()), &Device::Cpu)?;
        cache.start_step(Some(used));
        let velocity = guided_velocity(model, &x, &t, &fps, text, settings, cache)?;
        for j in interval.clone() {
            if plan.update_mask[row][j] {
                let v = velocity.narrow(2, j - interval.start, 1)?;
                frame_latents[j] = solvers[j].step(&v, &frame_latents[j])?;
            }
        }
        on_row(row + 1, rows)?;
    }
    Ok(Tensor::cat(&frame_latents, 2)?)
}

/// `x·(1 − a/1000) + ε·a/1000` on the model's copy of the clean prefix: the flow interpolation at
/// σ = a/1000, which makes the model treat the prefix as slightly noisy (less error-locked).
fn soften_prefix(prefix: &mut [Tensor], addnoise: u32, noise: &mut dyn NoiseSource, device: &Device) -> Result<()> {
    let factor = 0.001 * addnoise as f64;
    let joined = Tensor::cat(prefix, 2)?;
    let eps = noise.randn(joined.dims(), device)?;
    let softened = (joined.affine(1.0 - factor, 0.0)? + eps.affine(factor, 0.0)?)?;
    for (j, slot) in prefix.iter_mut().enumerate() {
        *slot = softened.narrow(2, j, 1)?;
    }
    Ok(())
}

/// The model's flow prediction with classifier-free guidance `u + g·(c − u)`.
fn guided_velocity(
    model: &WanTransformer3d,
    x: &Tensor,
    t: &Tensor,
    fps: &Tensor,
    text: &TextConditioning,
    settings: &DfSettings,
    cache: &mut StepCache,
) -> Result<Tensor> {
    let mut run = |context: &Tensor| {
        cache.forward(
            model,
            &TransformerInput {
                latents: x,
                timesteps: t,
                context,
                image_context: None,
                fps_index: Some(fps),
                frame_positions: None,
            },
        )
    };
    let conditional = run(&text.positive)?;
    if !settings.uses_guidance() {
        return Ok(conditional);
    }
    let unconditional = run(&text.negative)?;
    guide(&unconditional, &conditional, settings.guidance_scale)
}

/// Classifier-free guidance `u + g·(c − u)`.
pub(super) fn guide(unconditional: &Tensor, conditional: &Tensor, scale: f64) -> Result<Tensor> {
    Ok((unconditional + (conditional - unconditional)?.affine(scale, 0.0)?)?)
}

/// How a video is cut into windows, in latent frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowPlan {
    /// Latent frames in one window (`base_num_frames`).
    pub window: usize,
    /// Latent frames a window shares with the previous one (`overlap_history`).
    pub overlap: usize,
    /// Latent frames of the whole video, counting an extended video's overlap; `None` = endless.
    pub total: Option<usize>,
}

/// The shape of one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// 0-based window number.
    pub index: usize,
    /// Latent frames denoised together (prefix included).
    pub frames: usize,
    /// Leading frames carried over from the previous window (before block alignment).
    pub history: usize,
    /// Clean prefix frames the planner keeps fixed (history truncated to whole causal blocks, or
    /// the image latent).
    pub prefix: usize,
    /// Whether this is the final window of a finite video.
    pub is_last: bool,
}

impl WindowPlan {
    /// Checks the plan against the sampler settings.
    pub fn validate(&self) -> Result<()> {
        if self.window == 0 {
            return Err(invalid_input!("the window must hold at least one latent frame"));
        }
        if self.overlap >= self.window {
            return Err(invalid_input!(
                "the overlap ({} latent frames) must be shorter than the window ({} latent frames)",
                self.overlap,
                self.window
            ));
        }
        if self.total == Some(0) {
            return Err(invalid_input!("the video must have at least one latent frame"));
        }
        Ok(())
    }

    /// The window that starts when `produced` latent frames of the timeline exist (`history` of
    /// them are available as its prefix), or `None` when the video is complete.
    pub fn window_at(&self, index: usize, produced: usize, history: usize, block: usize) -> Option<WindowSpec> {
        let remaining = self.total.map(|t| t.saturating_sub(produced));
        if remaining == Some(0) {
            return None;
        }
        let frames = match remaining {
            Some(left) => (left + history).min(self.window),
            None => self.window,
        };
        let is_last = remaining.is_some_and(|left| left + history <= self.window);
        Some(WindowSpec { index, frames, history, prefix: history - history % block.max(1), is_last })
    }

    /// How many windows a finite plan has when the first window starts with `history` frames
    /// (`None` when endless). Computed, not counted, so it is instant for any length.
    pub fn window_count(&self, history: usize) -> Option<usize> {
        let total = self.total?;
        let first = total.min(self.window);
        Some(match total {
            t if t <= history => 0,
            t if t <= first => 1,
            t => 1 + (t - first).div_ceil(self.window - self.overlap),
        })
    }

    /// Every distinct window shape of a finite plan with how many windows have it: the first,
    /// the repeated middle one, the last. Enough to check or cost a video of any length.
    pub fn window_shapes(&self, history: usize, block: usize) -> Vec<(WindowSpec, usize)> {
        let count = self.window_count(history).unwrap_or(0);
        let mut shapes: Vec<(WindowSpec, usize)> =
            self.windows(history, block).take(2.min(count)).map(|w| (w, 1)).collect();
        if count > 2 {
            shapes[1].1 = count - 2;
            let step = self.window - self.overlap;
            let produced = self.window + (count - 2) * step;
            shapes.extend(self.window_at(count - 1, produced, self.overlap, block).map(|w| (w, 1)));
        }
        shapes
    }

    /// The windows in order, starting with `history` frames available to the first one (endless
    /// when the plan is). Lets a caller check every window before generating anything.
    pub fn windows(&self, history: usize, block: usize) -> impl Iterator<Item = WindowSpec> + '_ {
        let mut cursor = Some((0usize, history, history));
        std::iter::from_fn(move || {
            let (index, produced, history) = cursor?;
            let spec = self.window_at(index, produced, history, block);
            cursor = spec.map(|s| (index + 1, produced + s.frames - s.history, self.overlap.min(s.frames)));
            spec
        })
    }
}

/// The part of a running video's state that is not a tensor (saved for resuming).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DfProgress {
    /// Windows finished so far.
    pub windows_done: usize,
    /// Latent frames of the timeline so far (history frames of an extended video included).
    pub produced: usize,
}

/// A video being generated window by window.
#[derive(Debug, Clone)]
pub struct DfVideo {
    plan: WindowPlan,
    progress: DfProgress,
    /// Latents that seed the next window's prefix (the last `overlap` frames so far).
    history: Option<Tensor>,
}

impl DfVideo {
    /// A new video. `history` (`[1, C, n, h, w]`, n ≤ overlap) continues an existing clip — the
    /// last latents of the video being extended — and counts as already produced.
    pub fn new(plan: WindowPlan, history: Option<Tensor>) -> Result<Self> {
        plan.validate()?;
        let produced = match &history {
            Some(h) => h.dim(2)?,
            None => 0,
        };
        if produced > plan.overlap {
            return Err(invalid_input!(
                "the history of {produced} latent frames is longer than the overlap of {}",
                plan.overlap
            ));
        }
        Ok(Self { plan, progress: DfProgress { windows_done: 0, produced }, history })
    }

    /// Continues a saved video.
    pub fn resume(plan: WindowPlan, progress: DfProgress, history: Option<Tensor>) -> Result<Self> {
        plan.validate()?;
        Ok(Self { plan, progress, history })
    }

    /// The window plan.
    pub fn plan(&self) -> &WindowPlan {
        &self.plan
    }

    /// Windows finished and latent frames produced so far.
    pub fn progress(&self) -> DfProgress {
        self.progress
    }

    /// The latents the next window starts from.
    pub fn history(&self) -> Option<&Tensor> {
        self.history.as_ref()
    }

    /// Replaces the prefix of the next window (pixel continuation re-encodes decoded frames).
    pub fn set_history(&mut self, history: Tensor) -> Result<()> {
        if history.dim(2)? > self.plan.overlap {
            return Err(invalid_input!(
                "the history is longer than the overlap of {} latent frames",
                self.plan.overlap
            ));
        }
        self.history = Some(history);
        Ok(())
    }

    /// The next window, or `None` when a finite video is complete.
    pub fn next_window(&self, causal_block_size: usize) -> Option<WindowSpec> {
        let history = self.history.as_ref().map_or(0, |h| h.dims().get(2).copied().unwrap_or(0));
        self.plan.window_at(self.progress.windows_done, self.progress.produced, history, causal_block_size)
    }

    /// Generates the next window and returns all of its latents `[1, C, f, h, w]` (the carried
    /// history first; [`WindowSpec::history`] says how many frames that is).
    ///
    /// `image` is a clean first-frame latent used when there is no history (image-to-video);
    /// `end_latent` is applied only to the last window of a finite video.
    #[allow(clippy::too_many_arguments)]
    pub fn generate_window(
        &mut self,
        model: &WanTransformer3d,
        latent_size: (usize, usize),
        image: Option<&Tensor>,
        end_latent: Option<&Tensor>,
        text: &TextConditioning,
        settings: &DfSettings,
        noise: &mut dyn NoiseSource,
        cache: &mut StepCache,
        on_row: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<(WindowSpec, Tensor)> {
        let spec = self
            .next_window(settings.causal_block_size)
            .ok_or_else(|| invalid_input!("the video is already complete"))?;
        let channels = model.config().in_channels;
        let device = model.device();
        let (h, w) = latent_size;
        let mut latents = noise.randn(&[1, channels, spec.frames, h, w], device)?;
        let prefix_latents = match (&self.history, image) {
            (Some(history), _) => Some(history.narrow(2, 0, spec.prefix)?),
            (None, Some(image)) => Some(image.clone()),
            (None, None) => None,
        };
        let prefix = match &prefix_latents {
            Some(p) if p.dim(2)? > 0 => {
                let n = p.dim(2)?;
                latents = Tensor::cat(&[p.to_dtype(DType::F32)?, latents.narrow(2, n, spec.frames - n)?], 2)?;
                n
            }
            _ => 0,
        };
        let end = if spec.is_last { end_latent } else { None };
        let out = denoise_window(model, &latents, prefix, end, text, settings, noise, cache, on_row)?;
        self.record_window(&spec, &out)?;
        Ok((spec, out))
    }

    /// Counts `spec`'s window as done with latents `out` (its last `overlap` frames become the
    /// next window's prefix). [`generate_window`](Self::generate_window) does this itself; other
    /// samplers that fill a window call it.
    pub fn record_window(&mut self, spec: &WindowSpec, out: &Tensor) -> Result<()> {
        let keep = self.plan.overlap.min(spec.frames);
        self.history = Some(out.narrow(2, spec.frames - keep, keep)?);
        self.progress.windows_done += 1;
        self.progress.produced += spec.frames - spec.history;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(plan: &WindowPlan, history: usize, block: usize) -> Vec<(usize, usize)> {
        plan.windows(history, block).map(|w| (w.frames, w.prefix)).collect()
    }

    #[test]
    fn long_video_windows_match_the_reference_formulas() {
        // Spec §8.3: base 97 → 25 latents, overlap 17 → 5.
        let plan = |total| WindowPlan { window: 25, overlap: 5, total: Some(total) };
        assert_eq!(frames(&plan(65), 0, 1), vec![(25, 0), (25, 5), (25, 5)]); // 257 frames
        assert_eq!(frames(&plan(95), 0, 1), vec![(25, 0), (25, 5), (25, 5), (25, 5), (15, 5)]); // 377
        assert_eq!(plan(185).windows(0, 5).count(), 9); // 737
        assert_eq!(frames(&plan(60), 0, 5), vec![(25, 0), (25, 5), (20, 5)]); // 237
                                                                              // Extension (README: 120 frames → 30 latents) starts with the overlap already produced.
        assert_eq!(frames(&plan(30), 5, 1), vec![(25, 5), (10, 5)]);
        // A short video is one window of its own length.
        assert_eq!(frames(&plan(7), 0, 1), vec![(7, 0)]);
        let last: Vec<bool> = plan(65).windows(0, 1).map(|w| w.is_last).collect();
        assert_eq!(last, vec![false, false, true]);
    }

    #[test]
    fn counted_and_iterated_windows_agree() {
        for (window, overlap, total, history) in
            [(25, 5, 65, 0), (25, 5, 95, 0), (25, 5, 30, 5), (4, 2, 8, 0), (7, 3, 7, 0), (6, 1, 200, 1)]
        {
            let plan = WindowPlan { window, overlap, total: Some(total) };
            let all: Vec<WindowSpec> = plan.windows(history, 1).collect();
            assert_eq!(plan.window_count(history), Some(all.len()));
            let shapes = plan.window_shapes(history, 1);
            assert_eq!(shapes.iter().map(|(_, n)| n).sum::<usize>(), all.len());
            assert_eq!(shapes.first().map(|s| s.0), all.first().copied());
            assert_eq!(shapes.last().map(|s| s.0), all.last().copied());
        }
        let huge = WindowPlan { window: 25, overlap: 5, total: Some(1 << 40) };
        assert_eq!(huge.window_count(0), Some(1 + ((1usize << 40) - 25).div_ceil(20)));
        assert_eq!(huge.window_shapes(0, 5).len(), 3);
    }

    #[test]
    fn prefix_is_truncated_to_whole_blocks_and_endless_plans_do_not_end() {
        let plan = WindowPlan { window: 6, overlap: 3, total: None };
        let specs: Vec<WindowSpec> = plan.windows(0, 2).take(50).collect();
        assert_eq!(specs.len(), 50);
        assert!(specs[1..].iter().all(|w| w.frames == 6 && w.history == 3 && w.prefix == 2 && !w.is_last));
    }
}
