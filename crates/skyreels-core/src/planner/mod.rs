//! The diffusion-forcing planner: which latent frame sits at which noise level in every model call.
//!
//! Spec §8.1. Frames are grouped into causal blocks; block 0 advances one step per row, and
//! with `ar_step > 0` every later block trails its predecessor by `ar_step` steps (the
//! "pyramid" of asynchronous diffusion forcing), or starts as soon as its predecessor is done.
//! Clean prefix blocks (an image, the overlap of the previous window) are never updated.
//! Unlike the reference, settings it would silently mishandle (frames dropped at the tail,
//! a prefix that is not whole blocks) are errors that say what to change.

use std::ops::Range;

use crate::error::{Error, Result};

/// Settings of one diffusion-forcing window, counted in latent frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSettings {
    /// Latent frames in the sequence (prefix included).
    pub num_frames: usize,
    /// Frames the model sees at once (`None` = all of them); a smaller base slides a window.
    pub base_num_frames: Option<usize>,
    /// Steps a block trails its predecessor; 0 = synchronous (all frames share one level).
    pub ar_step: usize,
    /// Leading frames that are already clean (timestep 0, never updated).
    pub num_pre_ready: usize,
    /// Frames per causal block.
    pub causal_block_size: usize,
}

/// The schedule: one row per model call, one column per latent frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestepMatrix {
    /// Timestep fed to the model for each frame (999 = not started, 0 = finished or prefix).
    pub timesteps: Vec<Vec<i64>>,
    /// Position in the extended template `[999, t₀ … t_{N−1}, 0]` for each frame.
    pub step_index: Vec<Vec<usize>>,
    /// Whether the frame's scheduler steps after this call.
    pub update_mask: Vec<Vec<bool>>,
    /// Frames given to the model in this call (the sliding window; all frames when no base is set).
    pub valid_interval: Vec<Range<usize>>,
}

impl TimestepMatrix {
    /// Number of model calls.
    pub fn rows(&self) -> usize {
        self.timesteps.len()
    }
}

fn invalid(msg: String) -> Error {
    Error::InvalidSchedule(msg)
}

/// Builds the diffusion-forcing timestep matrix for `step_template` (the scheduler's `N`
/// timesteps, noisiest first).
///
/// Row count is `N + (blocks − prefix_blocks − 1)·min(ar_step, N)` (just `N` when synchronous).
pub fn generate_timestep_matrix(step_template: &[i64], settings: &PlanSettings) -> Result<TimestepMatrix> {
    let s = settings;
    let steps = step_template.len();
    let block = s.causal_block_size;
    validate(steps, s)?;
    let blocks = s.num_frames / block;
    let base_blocks = s.base_num_frames.map_or(blocks, |b| (b / block).min(blocks));
    let prefix_blocks = s.num_pre_ready / block;
    if base_blocks < prefix_blocks {
        // The reference would then update frames outside the window the model sees.
        return Err(invalid(format!(
            "the model window of {} latent frames must be at least as long as the clean prefix of {} frames",
            base_blocks * block,
            s.num_pre_ready
        )));
    }
    if base_blocks < blocks {
        let min_ar = steps.div_ceil(base_blocks);
        if s.ar_step < min_ar {
            return Err(invalid(format!(
                "a {}-frame model window sliding over {} frames needs ar_step >= {min_ar} (got {}): raise ar_step, \
                 use fewer inference steps or a larger base window",
                base_blocks * block,
                s.num_frames,
                s.ar_step
            )));
        }
    }

    // Template index: 0 = not started (t = 999), 1..=N = step i−1, N+1 = done (t = 0).
    let done = steps + 1;
    let template_at = |i: usize| match i {
        0 => 999,
        i if i == done => 0,
        i => step_template[i - 1],
    };
    let mut previous = vec![0usize; blocks];
    previous[..prefix_blocks].fill(done);
    let mut block_rows: Vec<(Vec<usize>, Vec<bool>)> = Vec::new();
    while previous.iter().any(|&i| i < steps) {
        let mut row = vec![0usize; blocks];
        for b in 0..blocks {
            row[b] = if b == 0 || previous[b - 1] >= steps {
                (previous[b] + 1).min(done)
            } else {
                row[b - 1].saturating_sub(s.ar_step)
            };
        }
        let update = row.iter().zip(&previous).map(|(&new, &old)| new != old && new != done).collect();
        previous.clone_from(&row);
        block_rows.push((row, update));
    }

    let mut matrix =
        TimestepMatrix { timesteps: vec![], step_index: vec![], update_mask: vec![], valid_interval: vec![] };
    let mut window_end = base_blocks;
    for (row, update) in block_rows {
        if window_end < blocks && update[window_end] {
            window_end += 1;
        }
        let expand = |v: &[usize]| v.iter().flat_map(|&x| std::iter::repeat_n(x, block)).collect::<Vec<_>>();
        let index = expand(&row);
        matrix.timesteps.push(index.iter().map(|&i| template_at(i)).collect());
        matrix.step_index.push(index);
        matrix.update_mask.push(update.iter().flat_map(|&u| std::iter::repeat_n(u, block)).collect());
        matrix.valid_interval.push(window_end.saturating_sub(base_blocks) * block..window_end * block);
    }
    Ok(matrix)
}

fn validate(steps: usize, s: &PlanSettings) -> Result<()> {
    let block = s.causal_block_size;
    if steps == 0 {
        return Err(invalid("the step template is empty: use at least one inference step".into()));
    }
    if block == 0 {
        return Err(invalid("the causal block size must be at least 1".into()));
    }
    if s.num_frames == 0 {
        return Err(invalid("there are no latent frames to generate".into()));
    }
    if !s.num_frames.is_multiple_of(block) {
        let lower = s.num_frames / block * block;
        return Err(invalid(format!(
            "{} latent frames are not a multiple of the causal block size {block}: use {} latent frames \
             ({} video frames){}, or causal block size 1",
            s.num_frames,
            lower + block,
            4 * (lower + block) - 3,
            if lower > 0 { format!(" or {lower} ({} video frames)", 4 * lower - 3) } else { String::new() }
        )));
    }
    if let Some(base) = s.base_num_frames {
        if base == 0 || (base % block != 0 && base < s.num_frames) {
            return Err(invalid(format!(
                "the base window of {base} latent frames must be a positive multiple of the causal block size {block}"
            )));
        }
    }
    if !s.num_pre_ready.is_multiple_of(block) {
        return Err(invalid(format!(
            "the clean prefix of {} latent frames does not fill whole causal blocks of {block}: pad the prefix to \
             {} frames or use causal block size 1",
            s.num_pre_ready,
            s.num_pre_ready.div_ceil(block) * block
        )));
    }
    if s.num_pre_ready >= s.num_frames {
        return Err(invalid(format!(
            "the clean prefix ({} latent frames) covers the whole sequence of {}: there is nothing to generate",
            s.num_pre_ready, s.num_frames
        )));
    }
    Ok(())
}
