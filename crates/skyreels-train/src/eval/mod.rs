//! `skyreels eval`: scoring videos of the film world against their prompts with the automatic
//! [`judge`], over a prompt set of held-out attribute combinations, plus the long-horizon
//! [`StabilityMeter`].
//!
//! The prompt set is single-subject, single-shot clips drawn from the held-out split, so each
//! prompt names exactly one colour, shape, size, action and camera move to check.

pub mod judge;

use serde::Serialize;
use skyreels_core::media::RgbFrame;

use crate::world::{sample_clip, Action, CameraMotion, ClipSpec, Colour, Pattern, Shape, Split, WorldConfig};
use judge::{background_colours, blobs, brightness, palette_colour, Reading};

/// The evaluation prompts: `count` held-out clips with one subject and one shot.
pub fn held_out_prompts(world: &WorldConfig, count: usize) -> Vec<ClipSpec> {
    prompt_set(world, Split::HeldOut, count)
}

/// `count` clips with one subject and one shot from `split`. On [`Split::Train`] they are
/// combinations the model was trained on, drawn with other seeds than any training clip, so
/// the gap between the two splits' scores is what the model fails to compose, not to draw.
pub fn prompt_set(world: &WorldConfig, split: Split, count: usize) -> Vec<ClipSpec> {
    let world = WorldConfig { max_subjects: 1, cut_probability: 0.0, ..world.clone() };
    let first_seed: u64 = match split {
        Split::HeldOut => 0xE7A1_0000,
        Split::Train => 0x5EE7_0000,
    };
    (0..count as u64).map(|i| sample_clip(first_seed + i, &world, split)).collect()
}

/// Hits out of judged cases for one attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Cases the judge read as prompted.
    pub hits: usize,
    /// Cases judged.
    pub total: usize,
}

impl Tally {
    fn add(&mut self, hit: bool) {
        self.hits += hit as usize;
        self.total += 1;
    }

    /// Share of hits in percent (0 when nothing was judged).
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / self.total as f64
        }
    }
}

/// Prompt adherence and temporal consistency over a prompt set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Scores {
    /// Subject colour.
    pub colour: Tally,
    /// Subject shape.
    pub shape: Tally,
    /// Subject size class.
    pub size: Tally,
    /// Subject action, all nine kinds, over prompts where the camera's own motion can be undone
    /// (a static camera, or a checkerboard backdrop); a spinning circle looks still, so it is
    /// not judged.
    pub action: Tally,
    /// Direction of travel, over prompts whose subject moves left, right, up or down.
    pub direction: Tally,
    /// Camera move, over prompts with a checkerboard backdrop: on a flat one no move can be
    /// seen, and diagonal stripes and gradients look the same panned or tilted.
    pub camera: Tally,
    /// Mean share of frames in which the subject keeps its identity.
    pub identity: f64,
    /// Mean frame-to-frame brightness change (0–255).
    pub flicker: f64,
    /// Clips scored.
    pub clips: usize,
}

impl Scores {
    /// Adds one clip's reading, judged against the clip it was prompted with.
    pub fn add(&mut self, clip: &ClipSpec, reading: &Reading) {
        let subject = &clip.subjects[0];
        let shot = &clip.shots[0];
        self.colour.add(reading.colour == Some(subject.colour));
        self.shape.add(reading.shape == Some(subject.shape));
        self.size.add(reading.size == Some(subject.size));
        let camera_recoverable = shot.camera == CameraMotion::Static || clip.background.pattern == Pattern::Checkerboard;
        if camera_recoverable && !(subject.action == Action::Spin && subject.shape == Shape::Circle) {
            self.action.add(reading.action == Some(subject.action));
        }
        if matches!(subject.action, Action::MoveLeft | Action::MoveRight | Action::MoveUp | Action::MoveDown) {
            self.direction.add(reading.action == Some(subject.action));
        }
        if clip.background.pattern == Pattern::Checkerboard {
            self.camera.add(reading.camera == Some(shot.camera));
        }
        let n = self.clips as f64;
        self.identity = (self.identity * n + reading.identity as f64) / (n + 1.0);
        self.flicker = (self.flicker * n + reading.flicker as f64) / (n + 1.0);
        self.clips += 1;
    }
}

/// Stability figures of one window of a long video.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowStats {
    /// First frame of the window.
    pub start: usize,
    /// Frames in the window.
    pub frames: usize,
    /// Share of frames in which the subject's colour is seen as a blob.
    pub subject_present: f64,
    /// Mean brightness (0–255).
    pub brightness: f64,
    /// Distance of the window's mean colour from the first window's (RGB, 0–255).
    pub colour_drift: f64,
    /// Share of border pixels showing one of the first window's backdrop colours.
    pub background_match: f64,
}

/// Long-horizon stability of one long video, measured window by window as frames stream in
/// (memory stays that of one window, whatever the length).
pub struct StabilityMeter {
    window: usize,
    subject: Option<Colour>,
    background: Option<Vec<Colour>>,
    pending: Vec<RgbFrame>,
    first_mean: Option<[f64; 3]>,
    windows: Vec<WindowStats>,
    seen: usize,
}

impl StabilityMeter {
    /// A meter with windows of `window` frames following a subject of colour `subject` (by
    /// default the dominant subject colour of the first window).
    pub fn new(window: usize, subject: Option<Colour>) -> Self {
        Self {
            window: window.max(1),
            subject,
            background: None,
            pending: Vec::new(),
            first_mean: None,
            windows: Vec::new(),
            seen: 0,
        }
    }

    /// Feeds the next frame.
    pub fn push(&mut self, frame: RgbFrame) {
        self.pending.push(frame);
        if self.pending.len() == self.window {
            self.close_window();
        }
    }

    /// The subject colour followed (known once the first window is closed).
    pub fn subject(&self) -> Option<Colour> {
        self.subject
    }

    /// Closes the last partial window and returns every window's figures.
    pub fn finish(mut self) -> Vec<WindowStats> {
        if !self.pending.is_empty() {
            self.close_window();
        }
        self.windows
    }

    fn close_window(&mut self) {
        let frames = std::mem::take(&mut self.pending);
        let background = self.background.get_or_insert_with(|| background_colours(&frames)).clone();
        let found: Vec<Vec<judge::Blob>> = frames.iter().map(|f| blobs(f, &background)).collect();
        if self.subject.is_none() {
            let first = &frames[0];
            self.subject = judge::dominant_colour(&found, (first.width as usize, first.height as usize));
        }
        let present = found.iter().filter(|b| b.iter().any(|b| Some(b.colour) == self.subject)).count();
        let mean = mean_colour(&frames);
        let first = *self.first_mean.get_or_insert(mean);
        let drift = (0..3).map(|c| (mean[c] - first[c]).powi(2)).sum::<f64>().sqrt();
        let match_share = frames.iter().map(|f| border_match(f, &background)).sum::<f64>() / frames.len() as f64;
        self.windows.push(WindowStats {
            start: self.seen,
            frames: frames.len(),
            subject_present: present as f64 / frames.len() as f64,
            brightness: frames.iter().map(|f| brightness(f) as f64).sum::<f64>() / frames.len() as f64,
            colour_drift: drift,
            background_match: match_share,
        });
        self.seen += frames.len();
    }
}

/// Whether a long video stayed stable: in every window the subject is seen in at least half the
/// frames, brightness is within 25 of the first window, the mean colour drifted less than 25,
/// and the backdrop still matches at least 60% as well as at the start.
pub fn is_stable(windows: &[WindowStats]) -> bool {
    let Some(first) = windows.first() else { return false };
    windows.iter().all(|w| {
        w.subject_present >= 0.5
            && (w.brightness - first.brightness).abs() <= 25.0
            && w.colour_drift < 25.0
            && w.background_match >= 0.6 * first.background_match
    })
}

fn mean_colour(frames: &[RgbFrame]) -> [f64; 3] {
    let mut sum = [0f64; 3];
    let mut n = 0f64;
    for frame in frames {
        for p in frame.data.chunks_exact(3) {
            for c in 0..3 {
                sum[c] += p[c] as f64;
            }
            n += 1.0;
        }
    }
    sum.map(|s| s / n.max(1.0))
}

fn border_match(frame: &RgbFrame, background: &[Colour]) -> f64 {
    let (mut hits, mut total) = (0usize, 0usize);
    for rgb in judge::border_pixels(frame) {
        total += 1;
        hits += palette_colour(rgb).is_some_and(|c| background.contains(&c)) as usize;
    }
    hits as f64 / total.max(1) as f64
}

#[cfg(test)]
mod tests;
