//! Step caching (`--cache`): a model call whose input has barely moved since the last call that
//! ran the transformer's blocks skips them and adds the residual `out − in` that call produced.
//! Embeddings and the head always run, so the prediction still follows the current timestep.
//!
//! Two policies decide when to reuse:
//!
//! * **TeaCache** (spec §10.1), as upstream runs it with `--use_ret_steps`: the relative L1
//!   change of the time modulation between consecutive calls, rescaled by a polynomial fitted
//!   to the released models, is accumulated; the blocks run when the sum reaches the threshold
//!   (and on the first five calls). Upstream counts calls across the conditional and
//!   unconditional passes and wraps its counter at the step count, so its warm-up recurs half
//!   way; here every guidance pass has its own state and the warm-up is the first five steps of
//!   a window; the polynomial's negative values (it dips below zero for tiny changes) count as
//!   zero, so threshold 0 skips nothing. On diffusion forcing the modulation of finished and not-yet-started frames never
//!   changes, which dilutes the mean and makes it skip where it should not: the maintainers
//!   disable it for DF models.
//! * **Frames**, made for diffusion forcing: the first block always runs, and its response (the
//!   residual it adds) is compared, per latent frame, with its response at the call that last
//!   ran the rest — the model's own reaction to the new latents and noise levels, not a proxy
//!   fitted to one checkpoint. Only the frames the scheduler updates after this call count: the
//!   clean prefix (re-noised on every row with `addnoise_condition`), finished frames and
//!   frames still waiting at full noise are ignored, since their prediction is thrown away. The
//!   remaining blocks are skipped only while the most-moved of the counted frames has moved
//!   less than the threshold (relative L1).
//!
//! Both are exact when off and deterministic when on. Their state lives within one window and
//! is rebuilt from scratch at the next, so a run resumed at a window boundary (how resume works)
//! makes the same decisions as one that was never interrupted.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{invalid_input, Result};
use crate::models::{BlockCache, BlockProbe, TransformerConfig};
use crate::{TransformerInput, WanTransformer3d};

/// Which step cache a run uses, with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum CacheSetting {
    /// Every call runs every block.
    #[default]
    Off,
    /// TeaCache with this accumulated-change threshold.
    TeaCache(f64),
    /// The diffusion-forcing frame cache with this per-frame distance threshold.
    Frames(f64),
}

impl CacheSetting {
    /// TeaCache's threshold when none is given (upstream's `--teacache_thresh` default).
    pub const TEACACHE_DEFAULT: f64 = 0.2;
    /// The frame cache's threshold when none is given.
    pub const FRAMES_DEFAULT: f64 = 0.1;

    /// Whether a cache is on.
    pub fn is_on(&self) -> bool {
        !matches!(self, CacheSetting::Off)
    }
}

impl fmt::Display for CacheSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheSetting::Off => write!(f, "off"),
            CacheSetting::TeaCache(t) => write!(f, "teacache:{t}"),
            CacheSetting::Frames(t) => write!(f, "frames:{t}"),
        }
    }
}

impl FromStr for CacheSetting {
    type Err = crate::Error;

    /// `off`, `teacache[:THRESHOLD]` or `frames[:THRESHOLD]`, the threshold from 0 to 1.
    fn from_str(text: &str) -> Result<Self> {
        let (name, threshold) = match text.split_once(':') {
            Some((name, value)) => (name, Some(value)),
            None => (text, None),
        };
        let parse_threshold = |default: f64| -> Result<f64> {
            let Some(value) = threshold else { return Ok(default) };
            match value.trim().parse::<f64>() {
                Ok(t) if (0.0..=1.0).contains(&t) => Ok(t),
                _ => Err(invalid_input!(
                    "the cache threshold must be a number from 0 to 1 (as in teacache:{default}), got '{value}'"
                )),
            }
        };
        match (name.trim(), threshold.is_some()) {
            ("off", false) => Ok(CacheSetting::Off),
            ("teacache", _) => Ok(CacheSetting::TeaCache(parse_threshold(Self::TEACACHE_DEFAULT)?)),
            ("frames", _) => Ok(CacheSetting::Frames(parse_threshold(Self::FRAMES_DEFAULT)?)),
            _ => Err(invalid_input!("unknown cache '{text}': use off, teacache[:THRESHOLD] or frames[:THRESHOLD]")),
        }
    }
}

impl Serialize for CacheSetting {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CacheSetting {
    fn deserialize<De: Deserializer<'de>>(d: De) -> std::result::Result<Self, De::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// How many model calls and block passes a run made and how many passes a cache skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Transformer calls (guidance passes counted one each).
    #[serde(default)]
    pub model_calls: u64,
    /// Block passes the model calls would have made without a cache (calls × blocks).
    pub block_passes: u64,
    /// Of those, the passes a cache replaced by a remembered residual.
    pub skipped: u64,
}

impl CacheStats {
    /// The skipped share of the block passes, from 0 to 1.
    pub fn skipped_fraction(&self) -> f64 {
        if self.block_passes == 0 {
            0.0
        } else {
            self.skipped as f64 / self.block_passes as f64
        }
    }
}

/// A run's step cache: its setting, the state of each guidance pass within the current window,
/// and the counts so far. Pipelines call [`start_window`](Self::start_window) and
/// [`start_step`](Self::start_step) and make every model call through
/// [`forward`](Self::forward); the n-th call of a step is the n-th guidance pass.
#[derive(Debug)]
pub struct StepCache {
    setting: CacheSetting,
    passes: Vec<PassState>,
    call: usize,
    active: Option<Vec<bool>>,
    stats: CacheStats,
}

impl StepCache {
    /// A cache with `setting`, counting from zero.
    pub fn new(setting: CacheSetting) -> Self {
        Self::resumed(setting, CacheStats::default())
    }

    /// No cache: every call runs every block (the counts are still kept).
    pub fn off() -> Self {
        Self::new(CacheSetting::Off)
    }

    /// A cache continuing a run that had made `stats` so far.
    pub fn resumed(setting: CacheSetting, stats: CacheStats) -> Self {
        Self { setting, passes: Vec::new(), call: 0, active: None, stats }
    }

    /// The setting.
    pub fn setting(&self) -> CacheSetting {
        self.setting
    }

    /// Block passes made and skipped so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Forgets everything remembered: a new window's tokens have nothing to do with the last.
    pub fn start_window(&mut self) {
        self.passes.clear();
        self.call = 0;
        self.active = None;
    }

    /// Begins a solver step (a planner row). `active` marks, per latent frame of the model
    /// input, whether the scheduler uses that frame's prediction; `None` = all of them.
    pub fn start_step(&mut self, active: Option<Vec<bool>>) {
        self.call = 0;
        self.active = active;
    }

    /// One model call, the blocks possibly replaced by a remembered residual.
    pub fn forward(&mut self, model: &WanTransformer3d, input: &TransformerInput<'_>) -> Result<Tensor> {
        let blocks = model.num_blocks() as u64;
        self.stats.model_calls += 1;
        self.stats.block_passes += blocks;
        if !self.setting.is_on() {
            return model.forward(input);
        }
        if self.passes.len() <= self.call {
            self.passes.push(PassState::default());
        }
        let mut decider = Decider {
            setting: self.setting,
            config: model.config(),
            active: self.active.as_deref(),
            state: &mut self.passes[self.call],
            reused: false,
        };
        let out = model.forward_cached(input, &mut decider)?;
        if decider.reused {
            // The blocks that ran before the decision were not skipped.
            self.stats.skipped += blocks - decider.leading_blocks().min(model.num_blocks()) as u64;
        }
        self.call += 1;
        Ok(out)
    }
}

/// What one guidance pass remembers within a window.
#[derive(Debug, Default)]
struct PassState {
    /// Calls made in this window.
    calls: usize,
    /// The residual of the last call that ran the blocks.
    residual: Option<Tensor>,
    /// TeaCache: the previous call's modulation and the change accumulated since the blocks ran.
    previous_modulation: Option<Tensor>,
    accumulated: f64,
    /// Frames: the first block's residual at the call that last ran the rest.
    reference_response: Option<Tensor>,
}

/// Blocks the frame cache always runs to measure the model's response.
const FRAMES_LEADING_BLOCKS: usize = 1;

/// Calls TeaCache skips none of at the start of a window (upstream's `ret_steps`, per pass).
const TEACACHE_WARMUP_CALLS: usize = 5;

/// Decides one call and keeps the state up to date.
struct Decider<'a> {
    setting: CacheSetting,
    config: &'a TransformerConfig,
    active: Option<&'a [bool]>,
    state: &'a mut PassState,
    reused: bool,
}

impl BlockCache for Decider<'_> {
    fn leading_blocks(&self) -> usize {
        match self.setting {
            CacheSetting::Frames(_) => FRAMES_LEADING_BLOCKS,
            _ => 0,
        }
    }

    fn reuse(&mut self, probe: &BlockProbe<'_>) -> Result<Option<Tensor>> {
        let residual = self.state.residual.as_ref().filter(|r| r.dims() == probe.tokens.dims()).cloned();
        let reuse = match self.setting {
            CacheSetting::Off => false,
            CacheSetting::TeaCache(threshold) => self.teacache(probe, threshold, residual.is_some())?,
            CacheSetting::Frames(threshold) => self.frames(probe, threshold, residual.is_some())?,
        };
        self.state.calls += 1;
        self.reused = reuse;
        Ok(if reuse { residual } else { None })
    }

    fn remember(&mut self, residual: Tensor) -> Result<()> {
        self.state.residual = Some(residual);
        Ok(())
    }
}

impl Decider<'_> {
    /// Accumulates the rescaled change of the modulation; reuses while the sum is below
    /// `threshold`.
    fn teacache(&mut self, probe: &BlockProbe<'_>, threshold: f64, have_residual: bool) -> Result<bool> {
        let modulation = probe.modulation.clone();
        let previous = self.state.previous_modulation.replace(modulation.clone());
        let change = match previous {
            Some(previous) if previous.dims() == modulation.dims() => relative_l1(&modulation, &previous)?,
            _ => None,
        };
        let warm = self.state.calls >= TEACACHE_WARMUP_CALLS;
        if let (true, true, Some(change)) = (warm, have_residual, change) {
            let tokens_per_frame = probe.tokens.dim(1)? / probe.frames()?;
            // The fitted polynomial dips below zero for tiny changes; a negative distance would
            // let threshold 0 skip, so it counts as none.
            self.state.accumulated += teacache_polynomial(self.config, tokens_per_frame, change).max(0.0);
            if self.state.accumulated < threshold {
                return Ok(true);
            }
        }
        self.state.accumulated = 0.0;
        Ok(false)
    }

    /// Reuses while the first block's response to every frame the scheduler will use has moved
    /// less than `threshold` since the rest last ran.
    fn frames(&mut self, probe: &BlockProbe<'_>, threshold: f64, have_residual: bool) -> Result<bool> {
        // A model without blocks has no response to compare: it never reuses.
        let Some(response) = probe.leading_residual.cloned() else { return Ok(false) };
        let reference = self.state.reference_response.as_ref().filter(|r| r.dims() == response.dims());
        if let (true, Some(reference)) = (have_residual, reference) {
            let distances = per_frame_relative_l1(&response, reference, probe.frames()?)?;
            let frames = distances.len();
            let used = |f: usize| match self.active {
                Some(active) if active.len() == frames => active[f],
                // Frames folded by a temporal patch: a column is used when any of its frames is.
                Some(active) if active.len() % frames == 0 => {
                    let step = active.len() / frames;
                    active[f * step..(f + 1) * step].iter().any(|&a| a)
                }
                _ => true,
            };
            let farthest = (0..frames).filter(|&f| used(f)).map(|f| distances[f]).fold(0.0, f64::max);
            if farthest < threshold {
                return Ok(true);
            }
        }
        self.state.reference_response = Some(response);
        Ok(false)
    }
}

/// `mean|a − b| / mean|b|` over everything, `None` when `b` is all zeros.
fn relative_l1(a: &Tensor, b: &Tensor) -> Result<Option<f64>> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let difference = (a - &b)?.abs()?.sum_all()?.to_scalar::<f32>()? as f64;
    let scale = b.abs()?.sum_all()?.to_scalar::<f32>()? as f64;
    Ok((scale > 0.0).then(|| difference / scale))
}

/// The relative L1 distance of each latent frame column of `[B, frames·n, D]` tensors (the
/// largest over the batch), infinite for a frame whose reference is all zeros.
fn per_frame_relative_l1(input: &Tensor, reference: &Tensor, frames: usize) -> Result<Vec<f64>> {
    let batch = input.dim(0)?;
    let grouped = |t: &Tensor| t.reshape((batch, frames, ()));
    let difference = (grouped(input)? - grouped(reference)?)?.abs()?.sum(D::Minus1)?;
    let scale = grouped(reference)?.abs()?.sum(D::Minus1)?;
    let difference = difference.to_vec2::<f32>()?;
    let scale = scale.to_vec2::<f32>()?;
    Ok((0..frames)
        .map(|f| {
            (0..batch)
                .map(|b| if scale[b][f] > 0.0 { (difference[b][f] / scale[b][f]) as f64 } else { f64::INFINITY })
                .fold(0.0, f64::max)
        })
        .collect())
}

/// TeaCache's rescaling `c0·z⁴ + c1·z³ + c2·z² + c3·z + c4` of a relative modulation change,
/// with upstream's `--use_ret_steps` coefficients for the model's size (image-to-video models:
/// the 720P fit for frames of at least 720P's 3,600 tokens, the 540P fit below).
fn teacache_polynomial(config: &TransformerConfig, tokens_per_frame: usize, z: f64) -> f64 {
    const T2V_1_3B: [f64; 5] = [-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02];
    const T2V_14B: [f64; 5] = [-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01];
    const I2V_540P: [f64; 5] = [2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01];
    const I2V_720P: [f64; 5] = [8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02];
    let c = match (config.image_dim.is_some(), config.dim() >= 5120) {
        (true, _) if tokens_per_frame >= 3600 => I2V_720P,
        (true, _) => I2V_540P,
        (false, true) => T2V_14B,
        (false, false) => T2V_1_3B,
    };
    c.iter().fold(0.0, |acc, &ci| acc * z + ci)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_print_and_refuse_out_of_range_thresholds() {
        assert_eq!("off".parse::<CacheSetting>().unwrap(), CacheSetting::Off);
        assert_eq!("teacache".parse::<CacheSetting>().unwrap(), CacheSetting::TeaCache(0.2));
        assert_eq!("frames:0.05".parse::<CacheSetting>().unwrap(), CacheSetting::Frames(0.05));
        assert_eq!("frames:0".parse::<CacheSetting>().unwrap(), CacheSetting::Frames(0.0));
        for setting in [CacheSetting::Off, CacheSetting::TeaCache(0.3), CacheSetting::Frames(0.125)] {
            assert_eq!(setting.to_string().parse::<CacheSetting>().unwrap(), setting);
        }
        for bad in ["teacache:1.5", "frames:-0.1", "frames:fast", "frames:NaN", "teacache:"] {
            let e = bad.parse::<CacheSetting>().unwrap_err().to_string();
            assert!(e.contains("from 0 to 1"), "{bad}: {e}");
        }
        let e = "deepcache".parse::<CacheSetting>().unwrap_err().to_string();
        assert!(e.contains("unknown cache 'deepcache'"), "{e}");
        assert!("off:0.2".parse::<CacheSetting>().is_err());
    }

    #[test]
    fn teacache_polynomial_is_highest_power_first() {
        let config = TransformerConfig::preset("df-1.3b").unwrap();
        let z: f64 = 0.01;
        let expected = -5.21862437e+04 * z.powi(4) + 9.23041404e+03 * z.powi(3) - 5.28275948e+02 * z.powi(2)
            + 1.36987616e+01 * z
            - 4.99875664e-02;
        assert!((teacache_polynomial(&config, 2040, z) - expected).abs() < 1e-12);
    }
}
