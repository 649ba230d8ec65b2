//! The settings of one generation: a [`GenerationRequest`] (what a user asks for, every field
//! optional where the model or SkyReels-V2 has a default) checked and completed into
//! [`GenerateParams`] before anything heavy runs, and saved with the video (sidecar and resume
//! state) so the video can be reproduced.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::story::Segment;
use super::GenerationError;
use crate::checkpoint::PipelineKind;
use crate::nn::WeightFormat;
use crate::pipelines::{Continuation, DfSettings, WindowPlan, WindowSpec};
use crate::SigmaGrid;

type Result<T> = std::result::Result<T, GenerationError>;

/// What a user asks for: the flags of `skyreels generate`, or the body of an API job. `None`
/// takes the model's recommendation (its `skyreels.json`), else the SkyReels-V2 default.
/// Messages about bad values name the command-line flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationRequest {
    /// Model directory or hub id; `None` is the built-in demo model.
    pub model: Option<String>,
    /// What the video shows (exclusive with `story`).
    pub prompt: Option<String>,
    /// Story mode: one prompt per segment, each lasting some windows.
    pub story: Option<Vec<Segment>>,
    /// Negative prompt for guidance.
    pub negative_prompt: Option<String>,
    /// Image-to-video: the first frame.
    pub image: Option<PathBuf>,
    /// Reference-to-video: up to four images of the characters, objects or scene to compose.
    pub references: Vec<PathBuf>,
    /// Reference-to-video: the image guidance scale (used with `guidance` above 1).
    pub reference_guidance: Option<f64>,
    /// LoRA adapters merged into the transformer: `FILE` or `FILE:STRENGTH` (strength 1 when
    /// left out).
    pub loras: Vec<String>,
    /// The last frame the video must reach.
    pub end_image: Option<PathBuf>,
    /// A video to extend.
    pub extend: Option<PathBuf>,
    /// Video extension with SkyReels-V3: cut to a new shot (`zoom-in-cut`, `zoom-out-cut`, or
    /// `cut` for one the prompt describes) instead of continuing the same one.
    pub transition: Option<String>,
    /// The output file (.mp4, .gif) or folder (PNG frames).
    pub output: Option<PathBuf>,
    /// Video frames (4k+1); `Some(0)` runs until interrupted.
    pub frames: Option<usize>,
    /// Frames generated together in one window.
    pub base_frames: Option<usize>,
    /// Frames shared by consecutive windows.
    pub overlap_history: Option<usize>,
    /// Height in pixels (multiple of 16).
    pub height: Option<usize>,
    /// Width in pixels (multiple of 16).
    pub width: Option<usize>,
    /// Frame rate of the output and of the fps embedding.
    pub fps: Option<u32>,
    /// Denoising steps per frame.
    pub steps: Option<usize>,
    /// Flow shift of the sigma schedule.
    pub shift: Option<f64>,
    /// Classifier-free guidance scale.
    pub guidance: Option<f64>,
    /// Random seed (drawn when `None`, and recorded).
    pub seed: Option<u64>,
    /// Steps each causal block trails the previous one.
    pub ar_step: usize,
    /// Latent frames per causal block.
    pub causal_block_size: usize,
    /// Noise level given to the clean overlap frames.
    pub addnoise_condition: u32,
    /// How windows are joined: `latent` or `pixel`.
    pub continuation: Option<String>,
    /// Sigma grid: `skyreels` or `diffusers`.
    pub sigma_grid: Option<String>,
    /// Solver: `unipc`, `euler` (for step-distilled models and LoRAs) or `lcm`.
    pub sampler: Option<String>,
    /// Step cache: `off`, `teacache[:THRESHOLD]` or `frames[:THRESHOLD]`.
    pub cache: Option<String>,
    /// Block-causal attention in asynchronous mode.
    pub causal_attention: bool,
    /// Transformer precision: `auto`, `f32`, `bf16`.
    pub dtype: String,
    /// The VAE's precision: `f32` or `bf16`.
    pub vae_dtype: String,
    /// How the transformer's block matrices are held.
    pub weights: WeightFormat,
    /// Tokens per prompt.
    pub text_length: Option<usize>,
}

impl Default for GenerationRequest {
    fn default() -> Self {
        Self {
            model: None,
            prompt: None,
            story: None,
            negative_prompt: None,
            image: None,
            references: Vec::new(),
            reference_guidance: None,
            loras: Vec::new(),
            end_image: None,
            extend: None,
            transition: None,
            output: None,
            frames: None,
            base_frames: None,
            overlap_history: None,
            height: None,
            width: None,
            fps: None,
            steps: None,
            shift: None,
            guidance: None,
            seed: None,
            ar_step: 0,
            causal_block_size: 1,
            addnoise_condition: 0,
            continuation: None,
            sigma_grid: None,
            sampler: None,
            cache: None,
            causal_attention: false,
            dtype: "auto".into(),
            vae_dtype: "f32".into(),
            weights: WeightFormat::Native,
            text_length: None,
        }
    }
}

/// The original SkyReels-V2 CLI's negative prompt (`generate_video_df.py`).
pub const DEFAULT_NEGATIVE_PROMPT: &str = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";

/// Where the first window's clean prefix comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    /// Text only.
    Text,
    /// The first frame is this image.
    Image(PathBuf),
    /// Continue this video; its frames are copied to the output first.
    Extend(PathBuf),
}

/// Everything that determines the output video.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    /// `--model` as given (directory or hub id).
    pub model: String,
    /// One prompt per story segment (a single segment without `--story`).
    pub segments: Vec<Segment>,
    /// The negative prompt for classifier-free guidance.
    pub negative_prompt: String,
    /// Prefix source.
    pub start: Start,
    /// Image the video must end on.
    pub end_image: Option<PathBuf>,
    /// Reference images a reference-to-video model composes the video from.
    #[serde(default)]
    pub references: Vec<PathBuf>,
    /// The image guidance scale of reference-to-video.
    #[serde(default = "one")]
    pub reference_guidance: f64,
    /// LoRA adapters merged into the transformer.
    #[serde(default)]
    pub loras: Vec<LoraSpec>,
    /// SkyReels-V3 video extension cutting to a new shot: the transition tag the prompt starts
    /// with (`[ZOOM_IN_CUT]`, …; empty for a cut the prompt describes). `None` continues the
    /// same shot.
    #[serde(default)]
    pub transition: Option<String>,
    /// Output size in pixels.
    pub width: usize,
    /// Output size in pixels.
    pub height: usize,
    /// Video frames (4k + 1; counts the overlap when extending); `None` = until interrupted.
    pub frames: Option<usize>,
    /// Frames of one window (4k + 1).
    pub base_frames: usize,
    /// Frames shared by consecutive windows (4k + 1).
    pub overlap_history: usize,
    /// How windows are joined.
    pub continuation: Continuation,
    /// Sampler settings.
    pub sampler: DfSettings,
    /// Use the block-causal attention mask in asynchronous mode (as diffusers does).
    pub causal_attention: bool,
    /// The user's seed.
    pub seed: u64,
    /// Tokens per prompt (padded/truncated).
    pub text_length: usize,
    /// Transformer weight dtype: `auto`, `f32` or `bf16`.
    pub dtype: String,
    /// How the transformer's block matrices are held (states written before FP8 existed are native).
    #[serde(default)]
    pub weights: WeightFormat,
    /// The VAE's precision: `f32` or `bf16` (states written before it existed are f32).
    #[serde(default = "f32_name")]
    pub vae_dtype: String,
    /// The output file or folder.
    pub output: PathBuf,
}

/// A LoRA file and the strength it is merged at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// The adapter file (absolute when it was found, so `--resume` works from anywhere).
    pub path: PathBuf,
    /// 1 applies it as trained; 0.5 half; negative values subtract it.
    pub strength: f64,
}

impl LoraSpec {
    /// `FILE` or `FILE:STRENGTH`. A file whose own name ends in `:…` is taken whole when it exists.
    pub fn parse(spec: &str) -> Result<Self> {
        let whole = Path::new(spec);
        let (path, strength) = match spec.rsplit_once(':') {
            Some((file, strength)) if !whole.exists() && !file.is_empty() => {
                let value = strength.trim().parse::<f64>().ok().filter(|s| s.is_finite()).ok_or_else(|| {
                    bad(format!("--lora {spec}: the strength `{strength}` is not a number (write FILE:0.8)"))
                })?;
                (PathBuf::from(file), value)
            }
            _ => (whole.to_path_buf(), 1.0),
        };
        if !path.is_file() {
            return Err(GenerationError::Input(format!("--lora {}: there is no such file", path.display())));
        }
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        Ok(Self { path, strength })
    }
}

/// The sampling the first adapter that declares one asks for (its settings apply where no flag
/// is given), with a notice saying so.
fn distilled_sampling(loras: &[LoraSpec], notices: &mut Vec<Notice>) -> Result<crate::checkpoint::DistilledSampling> {
    for lora in loras {
        let declared = crate::checkpoint::declared_sampling(&lora.path)
            .map_err(|e| GenerationError::Input(format!("--lora {}", strip_invalid(&e.to_string()))))?;
        if let Some(declared) = declared {
            let mut said = Vec::new();
            if let Some(steps) = declared.steps {
                said.push(format!("{steps} steps"));
            }
            if let Some(guidance) = declared.guidance {
                said.push(format!("guidance {guidance}"));
            }
            if let Some(sampler) = &declared.sampler {
                said.push(format!("the {sampler} sampler"));
            }
            if let Some(shift) = declared.shift {
                said.push(format!("shift {shift}"));
            }
            notices.push(format!(
                "the LoRA {} is distilled for {}: used where no flag says otherwise",
                lora.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                said.join(", ")
            ));
            return Ok(declared);
        }
    }
    Ok(Default::default())
}

fn f32_name() -> String {
    "f32".into()
}

fn one() -> f64 {
    1.0
}

/// Generation settings a model folder recommends in its `skyreels.json`
/// (`{"generation_defaults": {...}}`); flags override them, and the SkyReels-V2 defaults fill
/// whatever neither gives.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDefaults {
    /// `--height`.
    pub height: Option<usize>,
    /// `--width`.
    pub width: Option<usize>,
    /// `--fps`.
    pub fps: Option<u32>,
    /// `--frames` when neither it nor a story sets the length.
    pub frames: Option<usize>,
    /// `--base-frames`.
    pub base_frames: Option<usize>,
    /// `--overlap-history`.
    pub overlap_history: Option<usize>,
    /// `--steps`.
    pub steps: Option<usize>,
    /// `--shift`.
    pub shift: Option<f64>,
    /// `--guidance`.
    pub guidance: Option<f64>,
    /// Tokens per prompt the text encoder was trained with.
    pub text_length: Option<usize>,
    /// `--negative-prompt`.
    pub negative_prompt: Option<String>,
    /// `--sigma-grid`.
    pub sigma_grid: Option<String>,
    /// `--continuation`.
    pub continuation: Option<String>,
    /// `--sampler` (a step-distilled model says `euler`, with `steps` and `guidance` 1).
    pub sampler: Option<String>,
    /// LoRA adapters every run of the model gets, before any `--lora`: `FILE[:STRENGTH]`,
    /// relative to the model folder.
    pub loras: Option<Vec<String>>,
}

impl ModelDefaults {
    /// Reads `<model>/skyreels.json` when the model is a folder that has one.
    pub fn of_model(model: &str) -> Result<Self> {
        let path = Path::new(model).join("skyreels.json");
        if !path.exists() {
            // A folder model without the file, or a hub id (not a folder at all).
            return Ok(Self::default());
        }
        let text = crate::checkpoint::read_text(&path).map_err(|e| GenerationError::Model(e.to_string()))?;
        #[derive(serde::Deserialize)]
        struct File {
            generation_defaults: Option<ModelDefaults>,
        }
        let file: File = serde_json::from_str(&text)
            .map_err(|e| GenerationError::Model(format!("{} is not valid: {e}", path.display())))?;
        Ok(file.generation_defaults.unwrap_or_default())
    }

    /// These recommendations completed with the defaults of the model's pipeline: the values a
    /// request that sets nothing gets (what a front end shows in its empty form). SkyReels-V2's
    /// for its models; SkyReels-V3's for reference-to-video, whose distilled model runs 8 steps
    /// at shift 5 without guidance on diffusers' sigma grid, 5 s at 24 fps, 720P (the size then
    /// follows the first reference's aspect ratio, [`v3_bucket_size`]).
    pub fn resolve(self, kind: PipelineKind) -> Defaults {
        let (r2v, v2v) = (kind == PipelineKind::ReferenceToVideo, kind == PipelineKind::VideoExtension);
        let v3 = r2v || v2v;
        if kind == PipelineKind::ElementsToVideo {
            return self.resolve_elements_to_video();
        }
        // V2V: 25 clean frames (7 latents) then 33 new latents, 5.5 s a window (upstream's chunk).
        let frames = if r2v {
            121
        } else if v2v {
            157
        } else {
            97
        };
        Defaults {
            height: self.height.unwrap_or(if v3 { 720 } else { 544 }),
            width: self.width.unwrap_or(if v3 { 1280 } else { 960 }),
            fps: self.fps.unwrap_or(24),
            frames: self.frames.unwrap_or(frames),
            base_frames: self.base_frames.unwrap_or(frames),
            overlap_history: self.overlap_history.unwrap_or(if v2v { 25 } else { 17 }),
            steps: self.steps.unwrap_or(if v3 { 8 } else { 30 }),
            shift: self.shift.unwrap_or(if r2v { 5.0 } else { 8.0 }),
            guidance: self.guidance.unwrap_or(if v3 { 1.0 } else { 6.0 }),
            text_length: self.text_length.unwrap_or(512),
            negative_prompt: self.negative_prompt.unwrap_or_else(|| {
                if v3 {
                    String::new()
                } else {
                    DEFAULT_NEGATIVE_PROMPT.to_string()
                }
            }),
            sigma_grid: self.sigma_grid.unwrap_or_else(|| if r2v { "diffusers" } else { "skyreels" }.to_string()),
            // V2V re-encodes the last decoded frames as the next prefix, as upstream does.
            continuation: self.continuation.unwrap_or_else(|| if v2v { "pixel" } else { "latent" }.to_string()),
            sampler: self.sampler.unwrap_or_else(|| "unipc".to_string()),
        }
    }
}

impl ModelDefaults {
    /// SkyReels-A2's released settings (`infer.py`): 81 frames at 480 × 832, 50 steps,
    /// guidance 5, diffusers' grid at shift 8, Wan's English negative prompt; 16 fps, the rate
    /// Wan-based models are trained at.
    fn resolve_elements_to_video(self) -> Defaults {
        Defaults {
            height: self.height.unwrap_or(480),
            width: self.width.unwrap_or(832),
            fps: self.fps.unwrap_or(16),
            frames: self.frames.unwrap_or(81),
            base_frames: self.base_frames.unwrap_or(81),
            overlap_history: self.overlap_history.unwrap_or(17),
            steps: self.steps.unwrap_or(50),
            shift: self.shift.unwrap_or(8.0),
            guidance: self.guidance.unwrap_or(5.0),
            text_length: self.text_length.unwrap_or(512),
            negative_prompt: self.negative_prompt.unwrap_or_else(|| A2_NEGATIVE_PROMPT.to_string()),
            sigma_grid: self.sigma_grid.unwrap_or_else(|| "diffusers".to_string()),
            continuation: self.continuation.unwrap_or_else(|| "latent".to_string()),
            sampler: self.sampler.unwrap_or_else(|| "unipc".to_string()),
        }
    }
}

/// SkyReels-A2's negative prompt (`infer.py`, Wan's English one).
pub const A2_NEGATIVE_PROMPT: &str = "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three legs, many people in the background, walking backwards";

/// The settings a model runs with when a request leaves them out ([`ModelDefaults::resolve`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Defaults {
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// Frames per second.
    pub fps: u32,
    /// Video frames.
    pub frames: usize,
    /// Frames per window.
    pub base_frames: usize,
    /// Frames shared by consecutive windows.
    pub overlap_history: usize,
    /// Denoising steps.
    pub steps: usize,
    /// Flow shift.
    pub shift: f64,
    /// Guidance scale (1 turns guidance off).
    pub guidance: f64,
    /// Tokens per prompt.
    pub text_length: usize,
    /// Negative prompt.
    pub negative_prompt: String,
    /// Sigma grid: `skyreels` or `diffusers`.
    pub sigma_grid: String,
    /// How windows are joined: `latent` or `pixel`.
    pub continuation: String,
    /// Solver: `unipc`, `euler` or `lcm`.
    pub sampler: String,
}

/// The shots SkyReels-V3's shot-switching model makes: 24·d + 1 frames for d = 2…5 s.
pub const SHOT_FRAMES: [usize; 4] = [49, 73, 97, 121];

/// `--transition` names and the tag each puts before the prompt: the two tags SkyReels-V3
/// documents, and `cut` for any other cut (reverse shot, multi-angle, cut away), which the prompt
/// describes in words as upstream advises.
pub const TRANSITIONS: &[(&str, &str)] =
    &[("zoom-in-cut", "[ZOOM_IN_CUT]"), ("zoom-out-cut", "[ZOOM_OUT_CUT]"), ("cut", "")];

/// A `[TAG]` the prompt starts with (capitals and underscores), as SkyReels-V3 writes transitions.
fn leading_tag(prompt: &str) -> Option<&str> {
    let rest = prompt.trim_start().strip_prefix('[')?;
    let end = rest.find(']')?;
    let tag = &rest[..end];
    (!tag.is_empty() && tag.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .then(|| &prompt.trim_start()[..end + 2])
}

/// The shot switch a request asks for: `--transition` (its tag put before the prompt), or a tag
/// the prompt starts with when the model is a SkyReels-V3 extension model.
fn shot_transition(args: &GenerationRequest, kind: PipelineKind, segments: &mut [Segment]) -> Result<Option<String>> {
    let Some(name) = &args.transition else {
        let tag = segments.first().and_then(|s| leading_tag(&s.prompt));
        return Ok(tag.filter(|_| kind == PipelineKind::VideoExtension).map(str::to_string));
    };
    let Some(&(_, tag)) = TRANSITIONS.iter().find(|(known, _)| *known == name.replace('_', "-")) else {
        return Err(bad(format!(
            "--transition `{name}` is not a transition: use zoom-in-cut, zoom-out-cut, or cut (a cut the prompt describes)"
        )));
    };
    if segments.len() > 1 {
        return Err(bad("--transition cuts to one new shot: give it a --prompt, not a --story"));
    }
    if let Some(existing) = leading_tag(&segments[0].prompt) {
        return Err(bad(format!("--transition was given and the prompt already starts with {existing}: keep one")));
    }
    if !tag.is_empty() {
        segments[0].prompt = format!("{tag} {}", segments[0].prompt.trim_start());
    }
    Ok(Some(tag.to_string()))
}

fn strip_invalid(message: &str) -> String {
    message.strip_prefix("invalid input: ").unwrap_or(message).to_string()
}

/// Reference images a reference-to-video model takes (SkyReels-V3's `MAX_ALLOWED_REF_IMG_LENGTH`).
pub const MAX_REFERENCES: usize = 4;

/// SkyReels-V3's size buckets, `(height / width, height, width)` per resolution class
/// (`skyreels_v3/config.py`, `ASPECT_RATIO_CONFIG`).
#[rustfmt::skip]
const BUCKETS_480P: &[(f64, usize, usize)] = &[
    (0.38, 392, 1046), (0.43, 420, 980), (0.48, 444, 925), (0.50, 452, 904), (0.53, 466, 880), (0.54, 470, 870),
    (0.56, 480, 854), (0.62, 506, 810), (0.67, 522, 784), (0.75, 554, 738), (1.00, 640, 640), (1.33, 740, 555),
    (1.50, 784, 522), (1.78, 854, 480), (1.89, 880, 466), (2.00, 906, 454), (2.08, 924, 444),
];
#[rustfmt::skip]
const BUCKETS_540P: &[(f64, usize, usize)] = &[
    (0.34, 416, 1216), (0.38, 464, 1216), (0.40, 464, 1152), (0.43, 496, 1152), (0.48, 496, 1024),
    (0.50, 512, 1024), (0.53, 512, 960), (0.57, 544, 960), (0.60, 544, 912), (0.63, 576, 912), (0.67, 576, 864),
    (0.72, 624, 864), (0.75, 624, 832), (0.79, 656, 832), (0.84, 656, 784), (0.92, 720, 784), (1.00, 720, 720),
    (1.09, 784, 720), (1.26, 784, 624), (1.33, 832, 624), (1.40, 832, 592), (1.49, 880, 592), (1.62, 880, 544),
    (1.78, 960, 544), (1.88, 960, 512), (2.00, 1024, 512), (2.13, 1024, 480),
];
#[rustfmt::skip]
const BUCKETS_720P: &[(f64, usize, usize)] = &[
    (0.38, 588, 1568), (0.43, 628, 1466), (0.48, 666, 1388), (0.50, 678, 1356), (0.53, 698, 1318), (0.54, 706, 1306),
    (0.56, 720, 1280), (0.62, 758, 1212), (0.67, 784, 1176), (0.75, 832, 1110), (1.00, 960, 960), (1.33, 1108, 832),
    (1.50, 1176, 784), (1.78, 1280, 720), (1.89, 1320, 698), (2.00, 1358, 680), (2.08, 1386, 666),
];

/// The `(width, height)` SkyReels-V3 gives a run whose first reference (reference-to-video) or
/// extended clip (video extension) is `width × height`: the bucket of the class (480P, 540P or 720P, the one nearest
/// `class_height`) whose height/width ratio is nearest the image's, floored to multiples of 16.
pub fn v3_bucket_size(width: u32, height: u32, class_height: usize) -> (usize, usize) {
    let table = match class_height {
        0..=510 => BUCKETS_480P,
        511..=630 => BUCKETS_540P,
        _ => BUCKETS_720P,
    };
    let ratio = f64::from(height) / f64::from(width.max(1));
    // The first of equally near buckets, as Python's `min` picks.
    let &(_, h, w) = table
        .iter()
        .min_by(|a, b| (a.0 - ratio).abs().total_cmp(&(b.0 - ratio).abs()))
        .expect("the bucket tables are not empty");
    (w / 16 * 16, h / 16 * 16)
}

/// The built-in demo model's folder: `$SKYREELS_DEMO_MODEL`, else `models/skyreels-demo` of the
/// source tree this binary was built from.
pub fn demo_model_dir() -> PathBuf {
    match std::env::var_os("SKYREELS_DEMO_MODEL") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/skyreels-demo"),
    }
}

/// The largest values a generation accepts: beyond them a setting is a mistake (or would wrap
/// or exhaust memory), and is refused with a sentence before anything runs.
pub mod limits {
    /// Pixels on either side (the largest H.264 level supports 4096).
    pub const MAX_SIDE: usize = 4096;
    /// Frames of a finite video (about 11.5 hours at 24 fps); longer runs are endless runs.
    pub const MAX_FRAMES: usize = 1_000_000;
    /// Frames of one window, and of the overlap.
    pub const MAX_WINDOW_FRAMES: usize = 1025;
    /// Denoising steps, and the asynchronous step offset.
    pub const MAX_STEPS: usize = 1000;
    /// Frames per second.
    pub const MAX_FPS: u32 = 240;
    /// Tokens per prompt (umT5 was trained with 512).
    pub const MAX_TEXT_LENGTH: usize = 4096;
}

/// The numeric settings checked together.
struct Ranges {
    height: usize,
    width: usize,
    fps: u32,
    steps: usize,
    shift: f64,
    guidance: f64,
    text_length: usize,
}

/// Range-checks every number, whether it came from a flag, a job or the model's `skyreels.json`.
fn check_ranges(r: Ranges) -> Result<()> {
    for (name, v) in [("--height", r.height), ("--width", r.width)] {
        if v == 0 || v % 16 != 0 {
            return Err(bad(format!(
                "{name} {v} must be a positive multiple of 16 (the VAE downsamples by 8, the transformer patches by 2)"
            )));
        }
        check_at_most(name, v, limits::MAX_SIDE)?;
    }
    if r.fps == 0 || r.fps > limits::MAX_FPS {
        return Err(bad(format!("--fps {} must be between 1 and {}", r.fps, limits::MAX_FPS)));
    }
    if r.steps == 0 {
        return Err(bad("--steps must be at least 1"));
    }
    check_at_most("--steps", r.steps, limits::MAX_STEPS)?;
    if r.text_length == 0 {
        return Err(bad("--text-length must be at least 1"));
    }
    check_at_most("--text-length", r.text_length, limits::MAX_TEXT_LENGTH)?;
    if !r.shift.is_finite() || r.shift <= 0.0 {
        return Err(bad(format!("--shift {} must be a positive number", r.shift)));
    }
    if !r.guidance.is_finite() || r.guidance < 0.0 {
        return Err(bad(format!("--guidance {} must be a number of at least 0 (1 turns guidance off)", r.guidance)));
    }
    Ok(())
}

fn check_at_most(name: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        return Err(bad(format!("{name} {value} is more than the largest accepted, {max}")));
    }
    Ok(())
}

/// A message for the user about a value that was adjusted.
pub type Notice = String;

fn bad(message: impl Into<String>) -> GenerationError {
    GenerationError::Settings(message.into())
}

/// Rounds a frame count up to the next `4k + 1`, with a notice when it changes.
fn round_frames(name: &str, n: usize, notices: &mut Vec<Notice>) -> usize {
    let rounded = if n <= 1 { 1 } else { (n - 1).div_ceil(4).saturating_mul(4).saturating_add(1) };
    if rounded != n {
        notices.push(format!("{name} {n} is not of the form 4k+1; using {rounded}"));
    }
    rounded
}

/// Video frames of a story that lasts exactly the windows its segments ask for.
fn story_frames(segments: &[Segment], start: &Start, base_frames: usize, overlap_history: usize) -> Result<usize> {
    let too_long = || bad("the story asks for more windows than can be counted");
    let windows = segments.iter().try_fold(0usize, |n, s| n.checked_add(s.windows)).ok_or_else(too_long)?;
    let (b, o) = (latent(base_frames), latent(overlap_history));
    let total = match start {
        Start::Extend(_) => windows.checked_mul(b - o).and_then(|n| n.checked_add(o)),
        _ => (windows - 1).checked_mul(b - o).and_then(|n| n.checked_add(b)),
    };
    total.and_then(|t| (t - 1).checked_mul(4)).map(|f| f + 1).ok_or_else(too_long)
}

fn latent(frames: usize) -> usize {
    (frames - 1) / 4 + 1
}

impl GenerateParams {
    /// Checks and completes a request; every problem is one sentence naming the flag.
    pub fn from_request(args: &GenerationRequest) -> Result<(Self, Vec<Notice>)> {
        let mut notices = Vec::new();
        let segments = match (&args.story, &args.prompt) {
            (Some(_), Some(_)) => return Err(bad("give --prompt or --story, not both")),
            (Some(story), None) => super::story::check(story.clone()).map_err(|e| bad(format!("the story {e}")))?,
            (None, Some(prompt)) if !prompt.trim().is_empty() => vec![Segment { prompt: prompt.clone(), windows: 1 }],
            (None, _) => return Err(bad("--prompt (or --story) is required: say what the video should show")),
        };
        let model = match &args.model {
            Some(model) => model.clone(),
            None => {
                let demo = demo_model_dir();
                if !demo.join("model_index.json").is_file() {
                    return Err(GenerationError::Model(format!(
                        "no --model given and the built-in demo model is not at {} (set SKYREELS_DEMO_MODEL or pass --model)",
                        demo.display()
                    )));
                }
                demo.to_string_lossy().to_string()
            }
        };
        // A folder is recorded by its absolute path so that --resume works from anywhere.
        let model = std::fs::canonicalize(&model).map_or(model, |p| p.to_string_lossy().to_string());
        let output = args.output.clone().ok_or_else(|| bad("--output is required (e.g. -o video.mp4)"))?;
        let kind = super::pipeline_kind(&model);
        let mut recommended = ModelDefaults::of_model(&model)?;
        let sized_by_model = recommended.height.is_some() || recommended.width.is_some();
        let model_loras = recommended.loras.take().unwrap_or_default();
        let loras = model_loras
            .iter()
            .map(|spec| LoraSpec::parse(&Path::new(&model).join(spec).to_string_lossy()))
            .chain(args.loras.iter().map(|spec| LoraSpec::parse(spec)))
            .collect::<Result<Vec<_>>>()?;
        let d = recommended.resolve(kind);
        let (most, what) = match kind {
            PipelineKind::ElementsToVideo => {
                (crate::pipelines::MAX_ELEMENTS, "elements-to-video takes at most 3 element")
            }
            _ => (MAX_REFERENCES, "reference-to-video takes at most 4 reference"),
        };
        if args.references.len() > most {
            return Err(bad(format!("--ref was given {} times: {what} images", args.references.len())));
        }
        let (height, width) = match (args.height, args.width, args.references.first(), &args.extend) {
            // SkyReels-V3 takes the size from the first reference, or from the clip it extends.
            (None, None, Some(first), _) if kind == PipelineKind::ReferenceToVideo && !sized_by_model => {
                let (w, h) = ::image::image_dimensions(first).map_err(|e| {
                    GenerationError::Input(format!("--ref {} is not a readable image: {e}", first.display()))
                })?;
                let (w, h) = v3_bucket_size(w, h, d.height);
                (h, w)
            }
            (None, None, _, Some(clip)) if kind == PipelineKind::VideoExtension && !sized_by_model => {
                let reader = crate::media::open_video(clip)
                    .map_err(|e| GenerationError::Input(format!("--extend {}", strip_invalid(&e.to_string()))))?;
                let (w, h) = v3_bucket_size(reader.width(), reader.height(), d.height);
                (h, w)
            }
            (height, width, _, _) => (height.unwrap_or(d.height), width.unwrap_or(d.width)),
        };
        let distilled = distilled_sampling(&loras, &mut notices)?;
        let fps = args.fps.unwrap_or(d.fps);
        let steps = args.steps.or(distilled.steps).unwrap_or(d.steps);
        let shift = args.shift.or(distilled.shift).unwrap_or(d.shift);
        let guidance = args.guidance.or(distilled.guidance).unwrap_or(d.guidance);
        let text_length = args.text_length.unwrap_or(d.text_length);
        check_ranges(Ranges { height, width, fps, steps, shift, guidance, text_length })?;
        check_at_most("--ar-step", args.ar_step, limits::MAX_STEPS)?;
        check_at_most("--causal-block-size", args.causal_block_size, limits::MAX_WINDOW_FRAMES)?;
        if args.addnoise_condition >= 1000 {
            return Err(bad(format!("--addnoise-condition {} must be a timestep below 1000", args.addnoise_condition)));
        }
        let start = match (&args.image, &args.extend) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "--image and --extend cannot be combined: an extended video starts from its own frames",
                ))
            }
            (Some(image), None) => Start::Image(image.clone()),
            (None, Some(video)) => Start::Extend(video.clone()),
            (None, None) => Start::Text,
        };
        let mut segments = segments;
        let transition = shot_transition(args, kind, &mut segments)?;
        let mut base_frames = args.base_frames.unwrap_or(d.base_frames);
        let mut overlap_history = args.overlap_history.unwrap_or(d.overlap_history);
        let mut default_frames = d.frames;
        if transition.is_some() {
            // A new shot of 2–5 s cut from the clip's last 8d − 7 frames (upstream's table).
            let frames = args.frames.unwrap_or(SHOT_FRAMES[SHOT_FRAMES.len() - 1]);
            if !SHOT_FRAMES.contains(&frames) {
                return Err(bad(format!(
                    "--frames {frames} is not a shot the shot-switching model makes: use 49, 73, 97 or 121 \
                     (2 to 5 s at 24 fps)"
                )));
            }
            let seconds = (frames - 1) / 24;
            (base_frames, overlap_history, default_frames) = (frames, 8 * seconds - 7, frames);
        }
        check_at_most("--base-frames", base_frames, limits::MAX_WINDOW_FRAMES)?;
        check_at_most("--overlap-history", overlap_history, limits::MAX_WINDOW_FRAMES)?;
        let base_frames = round_frames("--base-frames", base_frames, &mut notices);
        let overlap_history = round_frames("--overlap-history", overlap_history, &mut notices);
        if overlap_history >= base_frames {
            return Err(bad(format!(
                "--overlap-history {overlap_history} must be shorter than --base-frames {base_frames}"
            )));
        }
        if args.causal_block_size == 0 {
            return Err(bad("--causal-block-size must be at least 1"));
        }
        if args.addnoise_condition > 60 {
            notices.push(format!(
                "--addnoise-condition {} is high; the authors advise at most 50",
                args.addnoise_condition
            ));
        }
        if let Some(frames) = args.frames.filter(|&f| f > limits::MAX_FRAMES) {
            return Err(bad(format!(
                "--frames {frames} is more than {} (about 11 hours at 24 fps): use 0 or inf for an endless video",
                limits::MAX_FRAMES
            )));
        }
        let frames = match args.frames {
            Some(0) => None,
            Some(n) => Some(round_frames("--frames", n, &mut notices)),
            // A story without --frames lasts exactly as many windows as its segments ask for.
            None if args.story.is_some() => Some(story_frames(&segments, &start, base_frames, overlap_history)?),
            None => Some(default_frames),
        };
        // A story's windows or a model's default can make the length too, unchecked above.
        if let Some(frames) = frames.filter(|&f| f > limits::MAX_FRAMES) {
            return Err(bad(format!(
                "the video would have {frames} frames, more than {}: shorten the story or pass --frames",
                limits::MAX_FRAMES
            )));
        }
        if frames.is_none() && args.end_image.is_some() {
            return Err(bad("--end-image needs a finite --frames: an endless video has no last frame"));
        }
        let sigma_grid: SigmaGrid = args
            .sigma_grid
            .as_deref()
            .unwrap_or(&d.sigma_grid)
            .parse()
            .map_err(|e: crate::Error| bad(e.to_string()))?;
        let sampler: crate::Sampler = args
            .sampler
            .as_deref()
            .or(distilled.sampler.as_deref())
            .unwrap_or(&d.sampler)
            .parse()
            .map_err(|e: crate::Error| bad(e.to_string()))?;
        let cache: crate::pipelines::CacheSetting =
            args.cache.as_deref().unwrap_or("off").parse().map_err(|e: crate::Error| bad(e.to_string()))?;
        let reference_guidance = args.reference_guidance.unwrap_or(1.0);
        if !reference_guidance.is_finite() || reference_guidance < 0.0 {
            return Err(bad(format!("--ref-guidance {reference_guidance} must be a number of at least 0")));
        }
        let continuation: Continuation = args
            .continuation
            .as_deref()
            .unwrap_or(&d.continuation)
            .parse()
            .map_err(|e: crate::Error| bad(e.to_string()))?;
        if !["f32", "bf16"].contains(&args.vae_dtype.as_str()) {
            return Err(bad(format!("--vae-dtype `{}` is not one of f32, bf16", args.vae_dtype)));
        }
        if !["auto", "f32", "bf16"].contains(&args.dtype.as_str()) {
            return Err(bad(format!("--dtype `{}` is not one of auto, f32, bf16", args.dtype)));
        }
        let params = Self {
            model,
            segments,
            negative_prompt: args.negative_prompt.clone().unwrap_or(d.negative_prompt),
            start,
            end_image: args.end_image.clone(),
            references: args.references.clone(),
            reference_guidance,
            loras,
            transition,
            width,
            height,
            frames,
            base_frames,
            overlap_history,
            continuation,
            sampler: DfSettings {
                steps,
                shift,
                sigma_grid,
                guidance_scale: guidance,
                ar_step: args.ar_step,
                causal_block_size: args.causal_block_size,
                addnoise_condition: args.addnoise_condition,
                fps,
                sampler,
                cache,
            },
            causal_attention: args.causal_attention,
            seed: args.seed.unwrap_or_else(random_seed),
            text_length,
            dtype: args.dtype.clone(),
            weights: args.weights,
            vae_dtype: args.vae_dtype.clone(),
            output,
        };
        Ok((params, notices))
    }

    /// The window plan in latent frames. A video no longer than one window is a single window.
    pub fn window_plan(&self) -> WindowPlan {
        let total = self.frames.map(latent);
        let window = latent(self.base_frames);
        match total {
            Some(t) if t <= window => WindowPlan { window: t, overlap: latent(self.overlap_history).min(t - 1), total },
            _ => WindowPlan { window, overlap: latent(self.overlap_history), total },
        }
    }

    /// Latent frames available to the first window as history (a shot switch's prefix
    /// conditions the new shot instead of continuing it).
    pub fn initial_history(&self) -> usize {
        match self.start {
            Start::Extend(_) if self.transition.is_none() => latent(self.overlap_history),
            _ => 0,
        }
    }

    /// Checks every window against the sampler settings before anything runs; returns the
    /// model rows of the whole video (`None` when endless).
    pub fn check_windows(&self) -> Result<Option<usize>> {
        let plan = self.window_plan();
        plan.validate().map_err(|e| bad(e.to_string()))?;
        let image_prefix = usize::from(matches!(self.start, Start::Image(_)));
        if image_prefix > 0 && self.sampler.causal_block_size > 1 {
            return Err(bad(format!(
                "--image gives a 1-frame clean prefix, which does not fill a causal block of {}: use --causal-block-size 1",
                self.sampler.causal_block_size
            )));
        }
        if let (Start::Extend(_), Some(total)) = (&self.start, plan.total) {
            if total <= latent(self.overlap_history) {
                return Err(bad(format!(
                    "--frames {} leaves nothing to generate after the {}-frame overlap when extending",
                    self.frames.unwrap_or(0),
                    self.overlap_history
                )));
            }
        }
        if self.end_image.is_some() && self.causal_attention && self.sampler.causal_block_size > 1 {
            // The end frame is one extra latent, which a block-causal mask cannot place.
            return Err(bad("--end-image cannot be combined with --causal-attention and a causal block size above 1"));
        }
        let check = |w: &WindowSpec| -> Result<usize> {
            let prefix = if w.index == 0 && w.history == 0 { image_prefix } else { w.prefix };
            self.sampler.rows_per_window(w.frames, prefix).map_err(|e| {
                bad(format!(
                    "window {} ({} latent frames) cannot be planned: {}",
                    w.index + 1,
                    w.frames,
                    strip_prefix(&e.to_string())
                ))
            })
        };
        let block = self.sampler.causal_block_size;
        if plan.total.is_none() {
            // Endless: the first two windows cover every distinct shape.
            for w in plan.windows(self.initial_history(), block).take(2) {
                check(&w)?;
            }
            return Ok(None);
        }
        let mut rows = 0usize;
        for (w, count) in plan.window_shapes(self.initial_history(), block) {
            rows = rows.saturating_add(check(&w)?.saturating_mul(count));
        }
        Ok(Some(rows))
    }

    /// The prompt index used by window `index` (the last segment continues to the end).
    pub fn segment_for_window(&self, index: usize) -> usize {
        let mut end = 0;
        for (i, s) in self.segments.iter().enumerate() {
            end += s.windows;
            if index < end {
                return i;
            }
        }
        self.segments.len() - 1
    }

    /// The files this run reads, which its output must never replace.
    pub fn input_paths(&self) -> Vec<&Path> {
        let start = match &self.start {
            Start::Image(p) | Start::Extend(p) => Some(p.as_path()),
            Start::Text => None,
        };
        start
            .into_iter()
            .chain(self.end_image.as_deref())
            .chain(self.references.iter().map(PathBuf::as_path))
            .chain(self.loras.iter().map(|l| l.path.as_path()))
            .collect()
    }

    /// Whether writing the output or its companions would replace `input`.
    pub fn would_replace(&self, input: &Path) -> bool {
        [self.output.clone(), self.sidecar_path(), self.state_path()].iter().any(|c| same_file(c, input))
    }

    /// Where the resume state of this output lives.
    pub fn state_path(&self) -> PathBuf {
        with_suffix(&self.output, ".resume")
    }

    /// Where the sidecar JSON of this output lives.
    pub fn sidecar_path(&self) -> PathBuf {
        with_suffix(&self.output, ".json")
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn strip_prefix(message: &str) -> &str {
    message.strip_prefix("invalid diffusion-forcing schedule: ").unwrap_or(message)
}

/// `video.mp4` → `video.mp4<suffix>`; a folder `frames/` → `frames<suffix>` beside it.
pub fn with_suffix(output: &Path, suffix: &str) -> PathBuf {
    let trimmed = output.to_string_lossy().trim_end_matches(['/', '\\']).to_string();
    PathBuf::from(format!("{trimmed}{suffix}"))
}

/// A seed from the clock and the process's hash keys; kept below 2⁵³ so that every JSON reader
/// reads it back exactly, JavaScript's doubles included (a seed shown in a page must reproduce).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish() >> 11
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(edit: impl FnOnce(&mut GenerationRequest)) -> Result<(GenerateParams, Vec<Notice>)> {
        let mut request = GenerationRequest {
            model: Some("m".into()),
            prompt: Some("p".into()),
            output: Some("out.mp4".into()),
            ..Default::default()
        };
        edit(&mut request);
        GenerateParams::from_request(&request)
    }

    #[test]
    fn frames_are_rounded_up_to_4k_plus_1() {
        let (p, notices) = params(|r| r.frames = Some(120)).unwrap();
        assert_eq!(p.frames, Some(121));
        assert_eq!(notices, ["--frames 120 is not of the form 4k+1; using 121"]);
        assert_eq!(params(|r| r.frames = Some(0)).unwrap().0.frames, None);
    }

    #[test]
    fn sizes_must_be_multiples_of_16() {
        assert!(params(|r| r.height = Some(540)).unwrap_err().to_string().contains("multiple of 16"));
        assert!(params(|r| r.width = Some(0)).is_err());
    }

    #[test]
    fn drawn_seeds_are_exact_in_javascript() {
        for _ in 0..100 {
            assert!(random_seed() < 1 << 53);
        }
    }

    #[test]
    fn errors_name_the_field_they_are_about() {
        let setting = |edit: fn(&mut GenerationRequest)| params(edit).unwrap_err().setting();
        assert_eq!(setting(|r| r.height = Some(540)).as_deref(), Some("height"));
        assert_eq!(setting(|r| r.overlap_history = Some(97)).as_deref(), Some("overlap_history"));
        assert_eq!(setting(|r| r.prompt = None).as_deref(), Some("prompt"));
        assert_eq!(setting(|r| r.vae_dtype = "f16".into()).as_deref(), Some("vae_dtype"));
        let (p, _) = params(|r| r.frames = Some(97)).unwrap();
        assert_eq!(p.frames, Some(ModelDefaults::default().resolve(PipelineKind::DiffusionForcing).frames));
    }

    #[test]
    fn v3_sizes_follow_skyreels_v3_buckets() {
        // 16:9 landscape → the 0.56 bucket of each class.
        assert_eq!(v3_bucket_size(1920, 1080, 720), (1280, 720));
        assert_eq!(v3_bucket_size(1920, 1080, 544), (960, 544));
        assert_eq!(v3_bucket_size(1920, 1080, 480), (848, 480));
        // 720P 0.53 → 698 × 1318, floored to multiples of 16.
        assert_eq!(v3_bucket_size(1318, 698, 720), (1312, 688));
        // Portrait and square.
        assert_eq!(v3_bucket_size(1080, 1920, 720), (720, 1280));
        assert_eq!(v3_bucket_size(500, 500, 480), (640, 640));
    }

    #[test]
    fn a_fifth_reference_is_refused_naming_its_field() {
        let err = params(|r| r.references = vec!["a.png".into(); 5]).unwrap_err();
        assert_eq!(err.to_string(), "--ref was given 5 times: reference-to-video takes at most 4 reference images");
        assert_eq!(err.setting().as_deref(), Some("references"));
    }

    #[test]
    fn every_window_is_checked_before_generation() {
        let blocks = |r: &mut GenerationRequest, frames| {
            r.frames = Some(frames);
            r.ar_step = 5;
            r.causal_block_size = 5;
        };
        // 257 frames, windows of 97 overlapping by 17, blocks of 5: [25, 25, 25] latents, all fine.
        let (p, _) = params(|r| blocks(r, 257)).unwrap();
        assert_eq!(p.check_windows().unwrap(), Some(50 + 2 * 45));
        // 105 frames: windows [25, 12] — 12 latents do not fill blocks of 5.
        let (p, _) = params(|r| blocks(r, 105)).unwrap();
        let err = p.check_windows().unwrap_err().to_string();
        assert!(err.contains("window 2") && err.contains("multiple of the causal block size"), "{err}");
        let (p, _) = params(|r| {
            blocks(r, 97);
            r.image = Some("x.png".into());
        })
        .unwrap();
        assert!(p.check_windows().unwrap_err().to_string().contains("--causal-block-size 1"));
        let (p, _) = params(|r| r.frames = Some(0)).unwrap();
        assert_eq!(p.check_windows().unwrap(), None);
    }

    #[test]
    fn stories_without_frames_last_as_many_windows_as_they_ask_for() {
        let (p, _) = params(|r| {
            r.prompt = None;
            r.story =
                Some(vec![Segment { prompt: "a".into(), windows: 2 }, Segment { prompt: "b".into(), windows: 1 }]);
            r.base_frames = Some(13);
            r.overlap_history = Some(5);
        })
        .unwrap();
        assert_eq!(p.frames, Some(29));
        assert_eq!((0..4).map(|w| p.segment_for_window(w)).collect::<Vec<_>>(), [0, 0, 1, 1]);
    }

    #[test]
    fn bad_numbers_and_missing_prompts_are_refused() {
        assert!(params(|r| r.prompt = None).unwrap_err().to_string().contains("--prompt"));
        assert!(params(|r| r.shift = Some(f64::NAN)).is_err());
        assert!(params(|r| r.guidance = Some(-1.0)).is_err());
        assert!(params(|r| r.story = Some(vec![])).is_err());
        let endless_story = |r: &mut GenerationRequest| {
            r.prompt = None;
            r.story = Some(vec![Segment { prompt: "a".into(), windows: 1 << 40 }]);
        };
        assert!(params(endless_story).unwrap_err().to_string().contains("shorten the story"));
    }

    #[test]
    fn companions_sit_next_to_the_output() {
        assert_eq!(with_suffix(Path::new("v/a.mp4"), ".resume"), PathBuf::from("v/a.mp4.resume"));
        assert_eq!(with_suffix(Path::new("frames/"), ".json"), PathBuf::from("frames.json"));
    }
}
