//! The synthetic film world: clips sampled from a seed, rendered frame by frame, captioned.
//!
//! A clip is a [`ClipSpec`]: 1–3 [`Subject`]s (shape × colour × size, an action, a start
//! position) over a [`Background`], filmed in one or two [`Shot`]s (shot type and camera motion;
//! a second shot is a hard cut). [`sample_clip`] draws one deterministically from a seed,
//! [`render_frame`] draws any frame of it, [`ClipSpec::caption`] describes it in structured form
//! and [`ClipSpec::prompt`] fuses that into the prompt the model is trained on.
//!
//! World coordinates: the wide shot shows the unit square `[0, 1]²`, y pointing down.

mod attributes;
mod caption;
mod parse;
mod raster;

use serde::{Deserialize, Serialize};

pub use attributes::{Action, CameraMotion, Colour, Pattern, Shape, ShotType, Size};
pub use caption::{Caption, SubjectCaption};
pub use parse::PromptError;
pub(crate) use raster::inside;
pub use raster::{render_frame, subject_coverage};

/// One thing on screen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subject {
    /// Outline.
    pub shape: Shape,
    /// Fill colour.
    pub colour: Colour,
    /// Size class.
    pub size: Size,
    /// What it does over the clip.
    pub action: Action,
    /// Centre at the start, in world units.
    pub start: [f32; 2],
}

/// The backdrop, painted in world coordinates so camera motion shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Background {
    /// Pattern kind.
    pub pattern: Pattern,
    /// First (or only) colour.
    pub primary: Colour,
    /// Second colour (unused when flat).
    pub secondary: Colour,
    /// Offset of the checkerboard's or stripes' pattern, in world units (within one period), so
    /// no frame's texture is the same in every clip and can be memorised per frame.
    #[serde(default)]
    pub phase: [f32; 2],
}

/// One continuous camera take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shot {
    /// Framing.
    pub shot_type: ShotType,
    /// Camera move over the shot.
    pub camera: CameraMotion,
    /// Frames in this shot.
    pub frames: usize,
}

/// A whole clip: everything needed to render and caption it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipSpec {
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// Frames per second (16, as the DF-1.3B fps embedding expects for the demo).
    pub fps: u32,
    /// Subjects, drawn back to front.
    pub subjects: Vec<Subject>,
    /// Backdrop.
    pub background: Background,
    /// Takes, in order; more than one means hard cuts.
    pub shots: Vec<Shot>,
    /// Which prompt template phrases this clip (see [`ClipSpec::prompt`]).
    pub template: usize,
}

impl ClipSpec {
    /// Total frames.
    pub fn frames(&self) -> usize {
        self.shots.iter().map(|s| s.frames).sum()
    }
}

/// Settings of clip sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Frame size in pixels.
    pub width: u32,
    /// Frame size in pixels.
    pub height: u32,
    /// Frames per clip.
    pub frames: usize,
    /// Frames per second.
    pub fps: u32,
    /// Most subjects per clip (1–3).
    pub max_subjects: usize,
    /// Probability that a clip has a hard cut.
    pub cut_probability: f32,
    /// Combinations kept out of training.
    pub hold_out: HoldOut,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            width: 64,
            height: 64,
            frames: 33,
            fps: 16,
            max_subjects: 3,
            cut_probability: 0.15,
            hold_out: HoldOut::default(),
        }
    }
}

/// Attribute combinations that never appear in training clips, to measure generalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldOut {
    /// (colour, shape) pairs no training subject has.
    pub colour_shape: Vec<(Colour, Shape)>,
    /// (action, camera motion) pairs no training clip's first subject and first shot have.
    pub action_camera: Vec<(Action, CameraMotion)>,
}

impl Default for HoldOut {
    fn default() -> Self {
        Self {
            colour_shape: vec![
                (Colour::Red, Shape::Triangle),
                (Colour::Green, Shape::Circle),
                (Colour::Blue, Shape::Square),
                (Colour::Yellow, Shape::Star),
                (Colour::Purple, Shape::Diamond),
            ],
            action_camera: vec![
                (Action::MoveRight, CameraMotion::PanLeft),
                (Action::MoveUp, CameraMotion::ZoomIn),
                (Action::Spin, CameraMotion::TiltDown),
            ],
        }
    }
}

/// Which part of the world to sample from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Clips without any held-out combination.
    Train,
    /// Clips whose first subject and first shot show a held-out combination.
    HeldOut,
}

impl HoldOut {
    fn is_held_out_subject(&self, s: &Subject) -> bool {
        self.colour_shape.contains(&(s.colour, s.shape))
    }

    /// Whether a clip contains any held-out combination.
    pub fn touches(&self, clip: &ClipSpec) -> bool {
        let first_pair = clip.subjects.first().zip(clip.shots.first()).map(|(s, shot)| (s.action, shot.camera));
        clip.subjects.iter().any(|s| self.is_held_out_subject(s))
            || first_pair.is_some_and(|pair| self.action_camera.contains(&pair))
    }

    /// Whether the clip's first subject or first shot is a held-out combination.
    fn leads_with(&self, clip: &ClipSpec) -> bool {
        let first = &clip.subjects[0];
        self.is_held_out_subject(first) || self.action_camera.contains(&(first.action, clip.shots[0].camera))
    }
}

/// SplitMix64: tiny, fast and good enough to draw scene attributes reproducibly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// A generator continuing from a saved [`state`](Self::state).
    pub fn from_state(state: u64) -> Self {
        Self(state)
    }

    /// The generator's whole state, to save with a checkpoint.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// Uniform integer in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A uniformly chosen element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Draws the clip for `seed` from `split` of the world. Deterministic: the same seed and config
/// always give the same clip.
pub fn sample_clip(seed: u64, config: &WorldConfig, split: Split) -> ClipSpec {
    // Rejection sampling over sub-seeds keeps every clip a pure function of (seed, config, split).
    let mut attempt = 0u64;
    loop {
        let clip = draw_clip(&mut Rng::new(seed ^ attempt.wrapping_mul(0xA076_1D64_78BD_642F)), config);
        let wanted = match split {
            Split::Train => !config.hold_out.touches(&clip),
            Split::HeldOut => config.hold_out.leads_with(&clip),
        };
        if wanted {
            return clip;
        }
        attempt += 1;
    }
}

fn draw_clip(rng: &mut Rng, config: &WorldConfig) -> ClipSpec {
    let count = 1 + rng.below(config.max_subjects.clamp(1, 3));
    let background = draw_background(rng);
    let subject_colours: Vec<Colour> =
        Colour::SUBJECT.iter().copied().filter(|c| *c != background.primary && *c != background.secondary).collect();
    let mut subjects: Vec<Subject> = Vec::with_capacity(count);
    while subjects.len() < count {
        let s = draw_subject(rng, &subject_colours, subjects.len(), count);
        // Two subjects that look alike could not be told apart by a caption or a judge.
        if !subjects.iter().any(|o| o.colour == s.colour && o.shape == s.shape) {
            subjects.push(s);
        }
    }
    let first = Shot { shot_type: rng.pick(ShotType::ALL), camera: rng.pick(CameraMotion::ALL), frames: config.frames };
    let shots = if config.frames >= 8 && rng.unit() < config.cut_probability {
        let cut = config.frames / 2;
        let second = Shot {
            shot_type: rng.pick(ShotType::ALL),
            camera: rng.pick(CameraMotion::ALL),
            frames: config.frames - cut,
        };
        vec![Shot { frames: cut, ..first }, second]
    } else {
        vec![first]
    };
    ClipSpec {
        width: config.width,
        height: config.height,
        fps: config.fps,
        subjects,
        background,
        shots,
        template: rng.below(caption::TEMPLATES),
    }
}

fn draw_background(rng: &mut Rng) -> Background {
    let palette = [Colour::Blue, Colour::Black, Colour::Gray, Colour::White, Colour::Green, Colour::Purple];
    let primary = rng.pick(&palette);
    let mut secondary = rng.pick(&palette);
    while secondary == primary {
        secondary = rng.pick(&palette);
    }
    let pattern = rng.pick(Pattern::ALL);
    let period = raster::TEXTURE_REPEAT;
    Background { pattern, primary, secondary, phase: [rng.unit() * period, rng.unit() * period] }
}

fn draw_subject(rng: &mut Rng, colours: &[Colour], index: usize, count: usize) -> Subject {
    let (shape, colour, size, action) =
        (rng.pick(Shape::ALL), rng.pick(colours), rng.pick(Size::ALL), rng.pick(Action::ALL));
    Subject { shape, colour, size, action, start: layout_start(action, index, count) }
}

/// Where subject `index` of `count` starts. The layout is fixed by the caption, not drawn: each
/// subject's path is centred in its own horizontal band (one subject: the frame's centre), so a
/// prompt names one video up to the initial noise. A tiny model can learn that mapping; with
/// positions drawn at random it has to pick one itself, and the demo-sized DiTs never learned to
/// commit and drew only the backdrop (README, "The sixth round").
pub(crate) fn layout_start(action: Action, index: usize, count: usize) -> [f32; 2] {
    let anchor = [0.5, (index as f32 + 0.5) / count as f32];
    let [dx, dy] = raster::travel(action);
    [anchor[0] - dx / 2.0, anchor[1] - dy / 2.0]
}

#[cfg(test)]
mod tests;
