//! A whole generation job: settings in, a committed video file out, resumable at every window.
//!
//! The run is a loop over windows (spec §8.3): each window is denoised, decoded as a stream and
//! appended to the output, which is then committed (a playable file) together with the state
//! needed to continue (`<output>.resume`) and the sidecar (`<output>.json`). Memory holds one
//! window at a time, whatever the length; [`Generation::resume`] continues after a crash and
//! produces the same bytes as an uninterrupted run.
//!
//! ```no_run
//! use skyreels_core::pipelines::generation::*;
//! # fn main() -> Result<(), GenerationError> {
//! let request = GenerationRequest {
//!     prompt: Some("a red kite over the sea".into()),
//!     output: Some("kite.mp4".into()),
//!     ..Default::default()
//! };
//! let job = Generation::new(&request, false)?;
//! let devices = Devices::open(&RunOptions::default())?;
//! let mut models = ModelCache::new(1);
//! let outcome = job.run(&mut models, &devices, &mut |event| println!("{event:?}"), &CancelToken::default())?;
//! println!("{} frames in {:.1} s", outcome.frames, outcome.seconds);
//! # Ok(()) }
//! ```

mod lock;
mod models;
mod settings;
mod state;
mod story;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde_json::json;

pub use lock::OutputLock;
pub use models::{Devices, LoadedModels, ModelCache, RunOptions};
pub use settings::{
    demo_model_dir, limits, v3_bucket_size, with_suffix, Defaults, GenerateParams, GenerationRequest, LoraSpec,
    ModelDefaults, Notice, Start, DEFAULT_NEGATIVE_PROMPT, MAX_REFERENCES, SHOT_FRAMES, TRANSITIONS,
};
pub use state::{write_atomically, ResumeInfo, ResumeState, STATE_VERSION};
pub use story::{load_story, Segment};

use crate::checkpoint::{resolve_pipeline, PipelineFiles, PipelineKind};
use crate::device::{DeviceInfo, DeviceMemoryMeter};
use crate::media::{
    create_writer, fit_to, letterbox, load_image, open_video, resume_writer, RgbFrame, VideoReader, VideoWriter,
};
use crate::models::ClipVisionEncoder;
use crate::pipelines::{
    elements_condition, encode_prompt, from_rgb_frames, generate_conditioned_window, image_condition,
    reference_latents, to_rgb_frames, DfVideo, ExtensionLayout, ImageConditioning, NoiseState, ReferenceConditioning,
    SeededNoise, TextConditioning, WindowConditioning, WindowDecoder, MAX_ELEMENTS,
};
use crate::pipelines::{CacheSetting, CacheStats, StepCache};
use crate::text::PromptTokenizer;
use crate::UmT5Encoder;

/// Why a generation could not be prepared or did not finish. Each is one sentence for the
/// user; the variant says whose problem it is (a front end maps them to exit codes or HTTP
/// statuses).
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The settings are invalid (a flag or field the user can fix).
    #[error("{0}")]
    Settings(String),
    /// An input file (image, video, story) is missing or unreadable.
    #[error("{0}")]
    Input(String),
    /// The output cannot be created, replaced or written.
    #[error("{0}")]
    Output(String),
    /// The model cannot be found, loaded, or does not fit together.
    #[error("{0}")]
    Model(String),
    /// The device cannot be opened or cannot hold the models.
    #[error("{0}")]
    Device(String),
    /// There is nothing to resume, or the resume state is unusable.
    #[error("{0}")]
    Resume(String),
    /// The run was cancelled through its [`CancelToken`]; what was committed stays resumable.
    #[error("the generation was cancelled")]
    Cancelled,
    /// Computing failed.
    #[error("{0}")]
    Engine(String),
}

impl GenerationError {
    /// The request field a settings or input error is about: the first `--flag` its sentence
    /// names, as the field is spelled in a [`GenerationRequest`] (`--base-frames` →
    /// `base_frames`), so that a form can show the sentence beside that field.
    pub fn setting(&self) -> Option<String> {
        let (Self::Settings(message) | Self::Input(message)) = self else { return None };
        let start = message.find("--")? + 2;
        let name: String = message[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
            .collect();
        let field = match name.as_str() {
            "" => return None,
            // Flags spelled unlike their field.
            "ref" => "references".to_string(),
            "ref-guidance" => "reference_guidance".to_string(),
            "lora" => "loras".to_string(),
            _ => name.replace('-', "_"),
        };
        Some(field)
    }
}

type Result<T> = std::result::Result<T, GenerationError>;

fn engine_error(e: impl std::fmt::Display) -> GenerationError {
    GenerationError::Engine(e.to_string())
}

/// Asks a running generation to stop at its next denoising step. Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Requests the stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a running generation reports, in order.
#[derive(Debug)]
pub enum Event<'a> {
    /// A setting was adjusted or a prompt truncated.
    Notice(&'a str),
    /// A stage before generation begins (encoding prompts, loading models).
    Stage(&'a str),
    /// Generation begins or resumes; counts are `None` for endless videos.
    Started {
        /// Windows of the whole video.
        windows: Option<usize>,
        /// Model rows (denoising steps over a window) of the whole video.
        total_rows: Option<usize>,
        /// Windows already done (when resuming).
        windows_done: usize,
        /// Model rows already done (when resuming).
        rows_done: usize,
    },
    /// One model row (a denoising step) of `window` finished.
    Step {
        /// Window index, from 0.
        window: usize,
        /// Rows of this window done.
        row: usize,
        /// Rows of this window.
        rows: usize,
    },
    /// A window was decoded and committed: the output plays up to here.
    WindowDone {
        /// Window index, from 0.
        window: usize,
        /// Frames this window added.
        new_frames: u64,
        /// Frames in the output now.
        frames: u64,
        /// The last frame written, for previews.
        last_frame: Option<&'a RgbFrame>,
    },
    /// The video is complete.
    Done(&'a GenerationOutcome),
}

/// A finished video.
#[derive(Debug, Clone)]
pub struct GenerationOutcome {
    /// The output file or folder.
    pub output: PathBuf,
    /// Frames in it.
    pub frames: u64,
    /// Generation seconds, summed over interrupted attempts.
    pub seconds: f64,
    /// Peak GPU memory in use; `None` on the CPU.
    pub peak_device_mib: Option<u64>,
    /// The step cache the run used.
    pub cache_setting: CacheSetting,
    /// Model calls and block passes made, and the passes the step cache skipped.
    pub cache: CacheStats,
}

/// A prepared generation: checked settings and readable inputs, ready to [`run`](Self::run).
pub struct Generation {
    /// Held from the checks to the end of the run.
    lock: OutputLock,
    params: GenerateParams,
    notices: Vec<Notice>,
    total_rows: Option<usize>,
    /// The sampling loop the model is for.
    kind: PipelineKind,
    begin: Begin,
}

/// How the run begins.
enum Begin {
    /// From nothing: the conditioning frames are already read and fitted.
    Fresh { start_frame: Option<RgbFrame>, end_frame: Option<RgbFrame>, references: Vec<RgbFrame> },
    /// From a saved state (tensors on the CPU until the run's device is known).
    Resume(Box<ResumeState>),
}

impl Generation {
    /// Checks `request` the way `skyreels generate` does — settings, every window's plan, the
    /// output (refused if it exists, unless `overwrite`), the input files — before anything
    /// heavy runs.
    pub fn new(request: &GenerationRequest, overwrite: bool) -> Result<Self> {
        let (params, notices) = GenerateParams::from_request(request)?;
        let kind = pipeline_kind(&params.model);
        check_pipeline_fits(&params, kind)?;
        if params.transition.is_some() {
            // Refused now rather than after the clip is copied.
            transformer_files(&params)?;
        }
        let total_rows = total_rows(&params, kind)?;
        check_output_is_free(&params, overwrite)?;
        let lock = OutputLock::acquire(&params.output)?;
        let start_frame = match &params.start {
            Start::Image(path) => Some(load_conditioning_image(path, &params)?),
            _ => None,
        };
        let end_frame = params.end_image.as_ref().map(|p| load_conditioning_image(p, &params)).transpose()?;
        if let Start::Extend(path) = &params.start {
            open_extension(path, &params)?;
        }
        let references = params.references.iter().map(|p| load_reference_image(p)).collect::<Result<_>>()?;
        let begin = Begin::Fresh { start_frame, end_frame, references };
        Ok(Self { lock, params, notices, total_rows, kind, begin })
    }

    /// Prepares to continue the interrupted run whose output is `output` (settings come from
    /// its saved state; the output may have been moved together with its companions).
    pub fn resume(output: &Path) -> Result<Self> {
        let state_path = with_suffix(output, ".resume");
        if !state_path.exists() {
            let done = with_suffix(output, ".json");
            return Err(GenerationError::Resume(if done.exists() && output.exists() {
                format!("{} is already complete (there is no resume state next to it)", output.display())
            } else {
                format!("there is no interrupted run to resume: {} does not exist", state_path.display())
            }));
        }
        let lock = OutputLock::acquire(output)?;
        let saved = ResumeState::load(&state_path, &Device::Cpu)?;
        crate::media::recover_unpublished(output, &saved.info.writer)
            .map_err(|e| GenerationError::Resume(strip_invalid_input(&e.to_string())))?;
        crate::media::verify_checkpoint(output, &saved.info.writer)
            .map_err(|e| GenerationError::Resume(strip_invalid_input(&e.to_string())))?;
        let params = GenerateParams { output: output.to_path_buf(), ..saved.info.params.clone() };
        let kind = pipeline_kind(&params.model);
        let total_rows = total_rows(&params, kind)?;
        Ok(Self { lock, params, notices: Vec::new(), total_rows, kind, begin: Begin::Resume(Box::new(saved)) })
    }

    /// Whether there is an interrupted run of `output` to resume.
    pub fn can_resume(output: &Path) -> bool {
        with_suffix(output, ".resume").is_file()
    }

    /// The completed settings (the seed drawn, the model's defaults applied).
    pub fn params(&self) -> &GenerateParams {
        &self.params
    }

    /// Adjustments made to the request (rounded frame counts, …).
    pub fn notices(&self) -> &[Notice] {
        &self.notices
    }

    /// Model rows of the whole video (`None` when endless).
    pub fn total_rows(&self) -> Option<usize> {
        self.total_rows
    }

    /// Runs to the end, reporting to `observer`; stops with [`GenerationError::Cancelled`] at
    /// the first step after `cancel` is set. Models come from (and stay in) `models`.
    pub fn run(
        self,
        models: &mut ModelCache,
        devices: &Devices,
        observer: &mut dyn FnMut(Event<'_>),
        cancel: &CancelToken,
    ) -> Result<GenerationOutcome> {
        for notice in &self.notices {
            observer(Event::Notice(notice));
        }
        let files = transformer_files(&self.params)?;
        let texts = encode_texts(&files, &self.params, devices, observer)?;
        observer(Event::Stage("loading the transformer and the VAE"));
        let loaded = models.get_or_load(&files, &self.params, devices)?;
        let sampling = match (&self.begin, self.kind) {
            (_, PipelineKind::DiffusionForcing) => Sampling::DiffusionForcing,
            (Begin::Fresh { start_frame: Some(frame), .. }, PipelineKind::ImageToVideo) => {
                Sampling::Single(Some(encode_first_frame(&files, &self.params, frame, loaded, observer)?))
            }
            (Begin::Fresh { references, .. }, PipelineKind::ReferenceToVideo) => {
                Sampling::References(encode_references(&self.params, references, loaded, observer)?)
            }
            (Begin::Fresh { references, .. }, PipelineKind::ElementsToVideo) => {
                Sampling::Single(Some(encode_elements(&files, &self.params, references, loaded, observer)?))
            }
            (_, PipelineKind::VideoExtension) => Sampling::Extension(match self.params.transition {
                Some(_) => ExtensionLayout::ShotSwitch,
                None => ExtensionLayout::SameShot,
            }),
            (Begin::Fresh { .. }, _) => Sampling::Single(None),
            // A resumed single-window run has committed its only window.
            (Begin::Resume(_), _) => Sampling::Finished,
        };
        let outcome = match self.begin {
            Begin::Fresh { start_frame, end_frame, .. } => fresh(
                &self.params,
                self.total_rows,
                loaded,
                (texts, sampling),
                (start_frame, end_frame),
                observer,
                cancel,
            ),
            Begin::Resume(saved) => {
                resumed(&self.params, self.total_rows, loaded, (texts, sampling), *saved, observer, cancel)
            }
        };
        models.trim();
        drop(self.lock);
        outcome
    }
}

/// Starts a new video at `params.output`.
fn fresh(
    params: &GenerateParams,
    total_rows: Option<usize>,
    models: &LoadedModels,
    (texts, sampling): (Vec<TextConditioning>, Sampling),
    (start_frame, end_frame): (Option<RgbFrame>, Option<RgbFrame>),
    observer: &mut dyn FnMut(Event<'_>),
    cancel: &CancelToken,
) -> Result<GenerationOutcome> {
    models.configure_attention(params)?;
    let encode = |frame: RgbFrame| -> Result<Tensor> {
        let video = from_rgb_frames(&[frame], &models.device).map_err(engine_error)?;
        models.vae.encode_latents(&video).map_err(engine_error)
    };
    // Diffusion forcing starts from the image's latent; the other pipelines condition on it.
    let image_latent = start_frame.filter(|_| sampling.is_diffusion_forcing()).map(encode).transpose()?;
    let end_latent = end_frame.map(encode).transpose()?;
    let extend_input = match &params.start {
        Start::Extend(path) => Some((path.clone(), open_extension(path, params)?)),
        _ => None,
    };
    // An old output stays in place (with its sidecar) until the new video commits its first
    // frames and is renamed over it; the resume state is replaced at the first save.
    let mut writer =
        create_writer(&params.output, params.width as u32, params.height as u32, params.sampler.fps as f64)
            .map_err(|e| GenerationError::Output(e.to_string()))?;
    let outcome = (|| {
        let mut decoder = WindowDecoder::new(&models.vae, params.continuation, params.overlap_history);
        let mut history = match extend_input {
            Some((path, reader)) => Some(copy_extension(&path, reader, params, writer.as_mut(), &mut decoder, models)?),
            None => None,
        };
        // A shot switch cuts away from the clip's last frames: they condition the new shot
        // instead of being continued.
        let context =
            if matches!(sampling, Sampling::Extension(ExtensionLayout::ShotSwitch)) { history.take() } else { None };
        let video = DfVideo::new(params.window_plan(), history).map_err(engine_error)?;
        let checkpoint = writer.commit().map_err(|e| GenerationError::Output(e.to_string()))?;
        let run = Run {
            params,
            models,
            texts,
            video,
            decoder,
            noise: SeededNoise::new(params.seed),
            image_latent,
            end_latent,
            context,
            sampling,
            rows_done: 0,
            seconds_before: 0.0,
            cache: StepCache::new(params.sampler.cache),
            memory: DeviceMemoryMeter::new(),
        };
        // A state is saved only once the output holds this run's frames: until then an old
        // output keeps its own state, and a kill leaves nothing of this run to resume.
        if checkpoint.frames > 0 {
            run.save(&checkpoint, 0.0)?;
            writer.publish().map_err(|e| GenerationError::Output(e.to_string()))?;
        }
        Ok(run)
    })();
    // On an error nothing worth keeping was produced: the unpublished file or folder goes with
    // the writer, and an old output stays.
    outcome?.generate(writer, total_rows, observer, cancel)
}

/// Continues the video at `params.output` from `saved`.
fn resumed(
    params: &GenerateParams,
    total_rows: Option<usize>,
    models: &LoadedModels,
    (texts, sampling): (Vec<TextConditioning>, Sampling),
    saved: ResumeState,
    observer: &mut dyn FnMut(Event<'_>),
    cancel: &CancelToken,
) -> Result<GenerationOutcome> {
    models.configure_attention(params)?;
    let saved = saved.to_device(&models.device)?;
    let output = &params.output;
    let writer =
        resume_writer(output, params.width as u32, params.height as u32, params.sampler.fps as f64, &saved.info.writer)
            .map_err(|e| GenerationError::Resume(e.to_string()))?;
    let video = DfVideo::resume(params.window_plan(), saved.info.progress, saved.history).map_err(engine_error)?;
    let decoder = WindowDecoder::resume(&models.vae, params.continuation, params.overlap_history, saved.decoder)
        .map_err(|e| GenerationError::Resume(e.to_string()))?;
    observer(Event::Notice(&format!(
        "resuming {} after window {} ({} frames kept)",
        output.display(),
        saved.info.progress.windows_done,
        saved.info.writer.frames
    )));
    let run = Run {
        params,
        models,
        texts,
        video,
        decoder,
        noise: SeededNoise::from_state(saved.info.noise),
        image_latent: saved.image_latent,
        end_latent: saved.end_latent,
        context: saved.context_latents,
        sampling,
        rows_done: saved.info.rows_done,
        seconds_before: saved.info.seconds,
        cache: StepCache::resumed(saved.info.params.sampler.cache, saved.info.cache),
        memory: DeviceMemoryMeter::new(),
    };
    run.generate(writer, total_rows, observer, cancel)
}

fn strip_invalid_input(message: &str) -> String {
    message.strip_prefix("invalid input: ").unwrap_or(message).to_string()
}

/// Encodes every distinct prompt of the story once, plus the negative prompt; the text
/// encoder is dropped before returning.
fn encode_texts(
    files: &crate::checkpoint::PipelineFiles,
    params: &GenerateParams,
    devices: &Devices,
    observer: &mut dyn FnMut(Event<'_>),
) -> Result<Vec<TextConditioning>> {
    observer(Event::Stage("encoding prompts"));
    let model_error = |what: &'static str| move |e: crate::Error| GenerationError::Model(format!("{what}: {e}"));
    let tokenizer = PromptTokenizer::load(&files.tokenizer).map_err(model_error("tokenizer"))?;
    let text_device = &devices.text_encoder;
    let encoder = UmT5Encoder::load(&files.text_encoder, text_device, models::text_encoder_dtype(files, text_device))
        .map_err(model_error("text encoder"))?;
    let device = &devices.compute;
    let mut encode = |prompt: &str| -> Result<Tensor> {
        let encoded = encode_prompt(&tokenizer, &encoder, prompt, params.text_length)
            .map_err(|e| GenerationError::Engine(format!("prompt: {e}")))?;
        if let Some(w) = &encoded.truncation_warning {
            observer(Event::Notice(w));
        }
        encoded.states.to_device(device).map_err(|e| GenerationError::Engine(format!("prompt: {e}")))
    };
    let negative = encode(&params.negative_prompt)?;
    // A story may come back to a prompt: encode each distinct one once (tensors share storage).
    let mut encoded: HashMap<&str, Tensor> = HashMap::new();
    let mut texts = Vec::new();
    for segment in &params.segments {
        let positive = match encoded.get(segment.prompt.as_str()) {
            Some(states) => states.clone(),
            None => {
                let states = encode(&segment.prompt)?;
                encoded.insert(&segment.prompt, states.clone());
                states
            }
        };
        texts.push(TextConditioning { positive, negative: negative.clone() });
    }
    Ok(texts)
}

/// Refuses outputs that would clobber something: an existing file or folder (unless
/// `overwrite`), one of the run's own inputs, or a folder holding anything but frames.
fn check_output_is_free(params: &GenerateParams, overwrite: bool) -> Result<()> {
    let refuse = |m: String| Err(GenerationError::Output(m));
    crate::media::VideoFormat::for_output(&params.output).map_err(|e| GenerationError::Settings(e.to_string()))?;
    let output = &params.output;
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return refuse(format!("the folder {} for the output does not exist", parent.display()));
        }
    }
    for input in params.input_paths() {
        if params.would_replace(input) {
            return refuse(format!(
                "the output would overwrite the input {}: choose another --output",
                input.display()
            ));
        }
    }
    if !output.exists() {
        return Ok(());
    }
    if !overwrite {
        return refuse(format!(
            "{} already exists: choose another --output, pass --overwrite, or --resume it",
            output.display()
        ));
    }
    if output.is_dir() && !holds_only_frames(output) {
        return refuse(format!(
            "{} is a folder with files other than frame_*.png; refusing to replace it",
            output.display()
        ));
    }
    Ok(())
}

fn holds_only_frames(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().all(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            // `.png.tmp`: a frame a killed run was writing.
            name.starts_with("frame_") && (name.ends_with(".png") || name.ends_with(".png.tmp"))
        })
    })
}

fn load_conditioning_image(path: &Path, params: &GenerateParams) -> Result<RgbFrame> {
    let image = load_image(path).map_err(|e| GenerationError::Input(e.to_string()))?;
    fit_to(&image, params.width as u32, params.height as u32).map_err(|e| GenerationError::Input(e.to_string()))
}

fn open_extension(path: &Path, params: &GenerateParams) -> Result<Box<dyn VideoReader>> {
    let reader = open_video(path).map_err(|e| GenerationError::Input(e.to_string()))?;
    if let Some(n) = reader.frame_count() {
        if n < params.overlap_history as u64 {
            return Err(clip_too_short(path, n, params.overlap_history));
        }
    }
    Ok(reader)
}

fn clip_too_short(path: &Path, frames: u64, overlap: usize) -> GenerationError {
    GenerationError::Input(format!(
        "{} has {frames} frames, fewer than the {overlap} frames of --overlap-history it must provide",
        path.display()
    ))
}

/// Copies the video being extended into the output (centre-cropped to the output's aspect and
/// resized, like conditioning images) and returns the latents of its last `overlap_history`
/// frames, the first window's history.
fn copy_extension(
    path: &Path,
    reader: Box<dyn VideoReader>,
    params: &GenerateParams,
    writer: &mut dyn VideoWriter,
    decoder: &mut WindowDecoder<'_>,
    models: &LoadedModels,
) -> Result<Tensor> {
    let keep = params.overlap_history;
    let mut tail: VecDeque<RgbFrame> = VecDeque::with_capacity(keep + 1);
    let mut count = 0u64;
    for frame in reader {
        let frame = frame.map_err(|e| GenerationError::Input(e.to_string()))?;
        let frame = fit_to(&frame, params.width as u32, params.height as u32)
            .map_err(|e| GenerationError::Input(e.to_string()))?;
        writer.append(std::slice::from_ref(&frame)).map_err(|e| GenerationError::Output(e.to_string()))?;
        tail.push_back(frame);
        if tail.len() > keep {
            tail.pop_front();
        }
        count += 1;
    }
    if tail.len() < keep {
        return Err(clip_too_short(path, count, keep));
    }
    let frames = from_rgb_frames(tail.make_contiguous(), &models.device).map_err(engine_error)?;
    decoder.start_from_frames(&frames).map_err(engine_error)
}

/// A run in progress: the video state plus everything saved after each window.
struct Run<'a> {
    params: &'a GenerateParams,
    models: &'a LoadedModels,
    /// One conditioning per story segment.
    texts: Vec<TextConditioning>,
    video: DfVideo,
    decoder: WindowDecoder<'a>,
    noise: SeededNoise,
    image_latent: Option<Tensor>,
    end_latent: Option<Tensor>,
    /// The clip's last frames a shot switch cuts from.
    context: Option<Tensor>,
    /// How windows are filled.
    sampling: Sampling,
    rows_done: usize,
    seconds_before: f64,
    /// The step cache every model call goes through (and its counts so far).
    cache: StepCache,
    memory: DeviceMemoryMeter,
}

impl Run<'_> {
    fn generate(
        mut self,
        mut writer: Box<dyn VideoWriter>,
        total_rows: Option<usize>,
        observer: &mut dyn FnMut(Event<'_>),
        cancel: &CancelToken,
    ) -> Result<GenerationOutcome> {
        let p = self.params;
        let windows = self.video.plan().window_count(p.initial_history());
        let started = Instant::now();
        if let Some(text) = self.texts.first() {
            let width = text.positive.dim(2).map_err(engine_error)?;
            models::check_text_width(&self.models.transformer.borrow(), width)?;
        }
        observer(Event::Started {
            windows,
            total_rows,
            windows_done: self.video.progress().windows_done,
            rows_done: self.rows_done,
        });
        let latent_size = (p.height / 8, p.width / 8);
        while let Some(next) = self.video.next_window(p.sampler.causal_block_size) {
            if cancel.is_cancelled() {
                return Err(GenerationError::Cancelled);
            }
            let text = &self.texts[p.segment_for_window(next.index)];
            let before = writer.frames_written();
            let mut rows_this_window = 0;
            let (memory, device) = (&mut self.memory, &self.models.device);
            let mut on_row = |row, rows| {
                rows_this_window += 1;
                memory.sample(device);
                observer(Event::Step { window: next.index, row, rows });
                if cancel.is_cancelled() {
                    return Err(crate::Error::Cancelled);
                }
                Ok(())
            };
            let model = self.models.transformer.borrow();
            let generated = match &self.sampling {
                Sampling::DiffusionForcing => self.video.generate_window(
                    &model,
                    latent_size,
                    self.image_latent.as_ref(),
                    self.end_latent.as_ref(),
                    text,
                    &p.sampler,
                    &mut self.noise,
                    &mut self.cache,
                    &mut on_row,
                ),
                Sampling::Single(_) | Sampling::References(_) | Sampling::Extension(_) => {
                    let conditioning = match &self.sampling {
                        Sampling::Single(Some(image)) => WindowConditioning::Image(image),
                        Sampling::References(references) => WindowConditioning::References(references),
                        Sampling::Extension(layout) => WindowConditioning::Extension(*layout, self.context.as_ref()),
                        _ => WindowConditioning::Text,
                    };
                    generate_conditioned_window(
                        &mut self.video,
                        &model,
                        latent_size,
                        conditioning,
                        text,
                        &p.sampler,
                        &mut self.noise,
                        &mut self.cache,
                        &mut on_row,
                    )
                }
                Sampling::Finished => {
                    Err(crate::error::invalid_input!("this one-window video was complete when it was resumed"))
                }
            };
            drop(model);
            let (spec, latents) = match generated {
                Ok(done) => done,
                Err(crate::Error::Cancelled) => return Err(GenerationError::Cancelled),
                Err(e) => return Err(engine_error(e)),
            };
            self.rows_done += rows_this_window;
            self.models.park_transformer(true)?;
            let mut last_frame = None;
            self.decoder
                .decode_window(&spec, &latents, &mut |frames| {
                    let rgb = to_rgb_frames(frames)?;
                    last_frame = rgb.last().cloned();
                    writer.append(&rgb)
                })
                .map_err(engine_error)?;
            self.models.park_transformer(false)?;
            if !spec.is_last {
                if let Some(history) = self.decoder.pixel_history_latents().map_err(engine_error)? {
                    self.video.set_history(history).map_err(engine_error)?;
                }
            }
            crash_point("decoded");
            let checkpoint = writer.commit().map_err(|e| GenerationError::Output(e.to_string()))?;
            crash_point("committed");
            let seconds = self.seconds_before + started.elapsed().as_secs_f64();
            self.save(&checkpoint, seconds)?;
            crash_point("saved");
            writer.publish().map_err(|e| GenerationError::Output(e.to_string()))?;
            crash_point("published");
            self.memory.sample(&self.models.device);
            write_sidecar(p, self.run_record(writer.frames_written(), seconds, false))?;
            crash_point("sidecar");
            observer(Event::WindowDone {
                window: spec.index,
                new_frames: writer.frames_written() - before,
                frames: writer.frames_written(),
                last_frame: last_frame.as_ref(),
            });
        }
        let frames = writer.frames_written();
        writer.finish().map_err(|e| GenerationError::Output(e.to_string()))?;
        crash_point("finished");
        let seconds = self.seconds_before + started.elapsed().as_secs_f64();
        write_sidecar(p, self.run_record(frames, seconds, true))?;
        crash_point("completed");
        let _ = std::fs::remove_file(p.state_path());
        let outcome = GenerationOutcome {
            output: p.output.clone(),
            frames,
            seconds,
            peak_device_mib: self.memory.peak_mib(),
            cache_setting: self.cache.setting(),
            cache: self.cache.stats(),
        };
        observer(Event::Done(&outcome));
        Ok(outcome)
    }

    fn run_record(&self, frames: u64, seconds: f64, complete: bool) -> RunRecord<'_> {
        RunRecord {
            frames,
            seconds,
            complete,
            device: &self.models.device_info,
            peak_device_mib: self.memory.peak_mib(),
            cache: (self.cache.setting(), self.cache.stats()),
        }
    }

    /// Saves the resume state after a commit; `seconds` is the generation time so far.
    fn save(&self, checkpoint: &crate::media::WriterCheckpoint, seconds: f64) -> Result<()> {
        let info = ResumeInfo {
            version: STATE_VERSION,
            params: self.params.clone(),
            progress: self.video.progress(),
            noise: self.noise.state(),
            writer: *checkpoint,
            rows_done: self.rows_done,
            seconds,
            cache: self.cache.stats(),
        };
        ResumeState {
            info,
            history: self.video.history().cloned(),
            image_latent: self.image_latent.clone(),
            end_latent: self.end_latent.clone(),
            context_latents: self.context.clone(),
            decoder: self.decoder.state().map_err(engine_error)?,
        }
        .save(&self.params.state_path())
    }
}

/// How a run fills its windows.
enum Sampling {
    /// Diffusion forcing, window after window.
    DiffusionForcing,
    /// One window with one noise level per step (T2V, or I2V with its conditioning).
    Single(Option<ImageConditioning>),
    /// One window composed from reference images (R2V).
    References(ReferenceConditioning),
    /// SkyReels-V3 video extension: windows continuing the clip, or one new shot.
    Extension(ExtensionLayout),
    /// A resumed one-window run: its only window is committed, nothing is left to sample.
    Finished,
}

impl Sampling {
    fn is_diffusion_forcing(&self) -> bool {
        matches!(self, Sampling::DiffusionForcing)
    }
}

/// The pipeline `model` is for; a model that cannot be found yet is taken as diffusion forcing
/// (the run itself then says what is missing).
fn pipeline_kind(model: &str) -> PipelineKind {
    resolve_pipeline(model).map_or(PipelineKind::DiffusionForcing, |files| files.kind)
}

/// Model rows of the whole video: diffusion forcing's plan, or the steps of the one window.
fn total_rows(params: &GenerateParams, kind: PipelineKind) -> Result<Option<usize>> {
    match kind {
        PipelineKind::DiffusionForcing => params.check_windows(),
        // Same-shot extension: diffusion forcing's windows, every one `steps` model rows.
        PipelineKind::VideoExtension if params.transition.is_none() => {
            params.check_windows()?;
            let windows = params.window_plan().window_count(params.initial_history());
            Ok(windows.map(|n| n.saturating_mul(params.sampler.steps)))
        }
        _ => Ok(Some(params.sampler.steps)),
    }
}

/// The model's files, the transformer being the shot-switching one when the run cuts to a new
/// shot.
fn transformer_files(params: &GenerateParams) -> Result<PipelineFiles> {
    let mut files = resolve_pipeline(&params.model).map_err(|e| GenerationError::Model(e.to_string()))?;
    if params.transition.is_some() {
        files.transformer = files.shot_transformer.clone().ok_or_else(|| {
            GenerationError::Model(format!(
                "{} has no shot_transformer/: this video-extension model cannot cut to a new shot",
                files.root.display()
            ))
        })?;
    }
    Ok(files)
}

/// Refuses what a single-window (T2V / I2V / R2V) model cannot do, and references given to a
/// model without reference input, naming the model kind that can.
fn check_pipeline_fits(params: &GenerateParams, kind: PipelineKind) -> Result<()> {
    let refuse = |message: String| Err(GenerationError::Settings(message));
    let (r2v, a2) = (PipelineKind::ReferenceToVideo, PipelineKind::ElementsToVideo);
    if !params.references.is_empty() && kind != r2v && kind != a2 {
        return refuse(format!("--ref needs a SkyReels-V3 {r2v} or a SkyReels-A2 {a2} model: this is a {kind} model"));
    }
    if (kind == r2v || kind == a2) && params.references.is_empty() {
        let most = if kind == a2 { MAX_ELEMENTS } else { MAX_REFERENCES };
        return refuse(format!("--ref is required: this {kind} model composes the video from 1 to {most} images"));
    }
    let v2v = PipelineKind::VideoExtension;
    if params.transition.is_some() && kind != v2v {
        return refuse(format!("--transition needs a SkyReels-V3 {v2v} model: this is a {kind} model"));
    }
    if kind == PipelineKind::DiffusionForcing {
        return Ok(());
    }
    if kind == v2v {
        return check_extension_fits(params, kind);
    }
    let df = "a diffusion-forcing (DF) model";
    if params.segments.len() > 1 {
        return refuse(format!("--story needs {df}: a {kind} model makes one shot"));
    }
    match (&params.start, kind) {
        (Start::Extend(_), _) => return refuse(format!("--extend needs {df}: a {kind} model cannot continue a video")),
        (Start::Image(_), PipelineKind::TextToVideo) => {
            return refuse(format!("--image needs an image-to-video (I2V) model or {df}: this is a {kind} model"))
        }
        (Start::Image(_), PipelineKind::ReferenceToVideo | PipelineKind::ElementsToVideo) => {
            return refuse(format!(
                "--image needs an image-to-video (I2V) model: give a {kind} model its images as --ref"
            ))
        }
        (Start::Text, PipelineKind::ImageToVideo) => {
            return refuse(format!("--image is required: an {kind} model starts from a first frame"))
        }
        _ => {}
    }
    if params.end_image.is_some() {
        return refuse(format!("--end-image needs {df}"));
    }
    match params.frames {
        None => return refuse(format!("--frames 0 (an endless video) needs {df}: a {kind} model makes one window")),
        Some(frames) if frames > params.base_frames => {
            return refuse(format!(
                "--frames {frames} is longer than one window (--base-frames {}): a {kind} model makes one window; \
                 use {df} for longer videos",
                params.base_frames
            ))
        }
        _ => {}
    }
    if params.sampler.ar_step > 0 {
        return refuse(format!("--ar-step needs {df}: a {kind} model denoises every frame together"));
    }
    let shown = 4 * params.references.len().saturating_sub(1) + 1;
    if kind == a2 && params.frames.is_some_and(|frames| frames < shown) {
        return refuse(format!(
            "--frames must be at least {shown} with {} elements: the condition video shows them first",
            params.references.len()
        ));
    }
    Ok(())
}

/// Refuses what a SkyReels-V3 video-extension model cannot do: it continues a clip (any number
/// of windows in the same shot, one new shot when cutting) from text alone.
fn check_extension_fits(params: &GenerateParams, kind: PipelineKind) -> Result<()> {
    let refuse = |message: String| Err(GenerationError::Settings(message));
    if !matches!(params.start, Start::Extend(_)) {
        let given = if matches!(params.start, Start::Image(_)) { "--image cannot start it; " } else { "" };
        return refuse(format!(
            "--extend is required: a {kind} model continues a clip ({given}give the clip with --extend)"
        ));
    }
    if params.end_image.is_some() {
        return refuse(format!("--end-image needs a diffusion-forcing (DF) model: a {kind} model has no end frame"));
    }
    if params.sampler.ar_step > 0 {
        return refuse(format!(
            "--ar-step needs a diffusion-forcing (DF) model: a {kind} model denoises new frames together"
        ));
    }
    if params.sampler.causal_block_size > 1 {
        return refuse(format!("--causal-block-size needs a diffusion-forcing (DF) model: this is a {kind} model"));
    }
    if params.transition.is_some() && params.frames.is_none() {
        return refuse(
            "--frames 0 (endless) cannot cut to a new shot: a shot switch makes one shot of 2 to 5 s".into(),
        );
    }
    Ok(())
}

/// The image-to-video conditioning of the first frame: its CLIP tokens (the original
/// `encode_video` preprocessing) and the 20-channel condition of the window.
fn encode_first_frame(
    files: &PipelineFiles,
    params: &GenerateParams,
    frame: &RgbFrame,
    models: &LoadedModels,
    observer: &mut dyn FnMut(Event<'_>),
) -> Result<ImageConditioning> {
    observer(Event::Stage("encoding the first frame"));
    let device = &models.device;
    let clip = load_clip(files, device)?;
    let image =
        from_rgb_frames(std::slice::from_ref(frame), device).and_then(|v| Ok(v.squeeze(2)?)).map_err(engine_error)?;
    let image_context = clip.encode_images(&image).map_err(engine_error)?;
    let frames =
        params.frames.ok_or_else(|| GenerationError::Settings("an image-to-video run needs --frames".into()))?;
    let condition = image_condition(&models.vae, &image, None, frames).map_err(engine_error)?;
    Ok(ImageConditioning { condition, image_context })
}

/// The model folder's CLIP vision tower on `device` (f32 on the CPU, bf16 on a GPU), loaded per
/// job: it runs once, before the transformer.
fn load_clip(files: &PipelineFiles, device: &Device) -> Result<ClipVisionEncoder> {
    let path = files.image_encoder.as_ref().ok_or_else(|| {
        GenerationError::Model(format!(
            "this {} model has no CLIP image encoder (image_encoder/ or models_clip_….pth)",
            files.kind
        ))
    })?;
    let dtype = if device.is_cpu() { candle_core::DType::F32 } else { candle_core::DType::BF16 };
    ClipVisionEncoder::load(path, device, dtype).map_err(|e| GenerationError::Model(format!("image encoder: {e}")))
}

/// Reads a reference or element image (fitted to the video when it is encoded).
fn load_reference_image(path: &Path) -> Result<RgbFrame> {
    load_image(path).map_err(|e| GenerationError::Input(format!("--ref {}", strip_invalid_input(&e.to_string()))))
}

/// `frame` letterboxed to `width × height` on white, as a `[1, 3, H, W]` tensor in [−1, 1].
fn letterboxed(frame: &RgbFrame, (width, height): (usize, usize), device: &Device) -> crate::Result<Tensor> {
    let fitted = letterbox(frame, width as u32, height as u32)?;
    Ok(from_rgb_frames(std::slice::from_ref(&fitted), device)?.squeeze(2)?)
}

/// Where the draws of the references' VAE posterior start in the seed's Philox stream: far
/// beyond anything a window draws, so the two never overlap and a seed still fixes the video.
const REFERENCE_NOISE_COUNTER: u64 = 1 << 62;

/// Reference-to-video's conditioning: the references' sampled latents, zero frames for the
/// missing slots.
fn encode_references(
    params: &GenerateParams,
    frames: &[RgbFrame],
    models: &LoadedModels,
    observer: &mut dyn FnMut(Event<'_>),
) -> Result<ReferenceConditioning> {
    observer(Event::Stage("encoding the reference images"));
    let size = (params.width, params.height);
    let images = frames
        .iter()
        .map(|frame| letterboxed(frame, size, &models.device))
        .collect::<crate::Result<Vec<_>>>()
        .map_err(engine_error)?;
    let mut noise = SeededNoise::from_state(NoiseState { seed: params.seed, counter: REFERENCE_NOISE_COUNTER });
    let latents = reference_latents(&models.vae, &images, &mut noise).map_err(engine_error)?;
    Ok(ReferenceConditioning { latents, image_guidance: params.reference_guidance })
}

/// SkyReels-A2's conditioning of 1–3 elements: the CLIP tokens of each (letterboxed to a
/// square on white, as upstream pads them to 512 × 512), concatenated; and the condition video
/// with the elements as its first frames (the first two letterboxed, the third — the
/// background — cropped to fill the frame), its posterior sampled from the seed's stream.
fn encode_elements(
    files: &PipelineFiles,
    params: &GenerateParams,
    frames: &[RgbFrame],
    models: &LoadedModels,
    observer: &mut dyn FnMut(Event<'_>),
) -> Result<ImageConditioning> {
    observer(Event::Stage("encoding the elements"));
    let device = &models.device;
    let clip = load_clip(files, device)?;
    let encode = || -> crate::Result<ImageConditioning> {
        let mut tokens = Vec::with_capacity(frames.len());
        let mut pixels = Vec::with_capacity(frames.len());
        for (i, frame) in frames.iter().enumerate() {
            tokens.push(clip.encode_images(&letterboxed(frame, (512, 512), device)?)?);
            pixels.push(if i < 2 {
                letterboxed(frame, (params.width, params.height), device)?
            } else {
                let filled = fit_to(frame, params.width as u32, params.height as u32)?;
                from_rgb_frames(std::slice::from_ref(&filled), device)?.squeeze(2)?
            });
        }
        let frames = params.frames.unwrap_or(params.base_frames);
        let mut noise = SeededNoise::from_state(NoiseState { seed: params.seed, counter: REFERENCE_NOISE_COUNTER });
        let condition = elements_condition(&models.vae, &pixels, frames, Some(&mut noise))?;
        Ok(ImageConditioning { condition, image_context: Tensor::cat(&tokens, 1)? })
    };
    encode().map_err(engine_error)
}

/// Test hook for crash safety: with `SKYREELS_TEST_ABORT_AT=<point>:<n>` the process aborts the
/// `n`-th time a run reaches `point` — `decoded` (frames appended, not committed), `committed`
/// (before the resume state is saved), `saved` (before a new file is published), `published`
/// (before the sidecar), `sidecar`, `finished`
/// (before the final sidecar), `completed` (before the state is removed) — exactly as a crash
/// there would. Unset, it costs one lookup per run.
fn crash_point(point: &str) {
    use std::sync::atomic::AtomicUsize;
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static REACHED: AtomicUsize = AtomicUsize::new(0);
    let target = TARGET.get_or_init(|| {
        let value = std::env::var("SKYREELS_TEST_ABORT_AT").ok()?;
        let (name, n) = value.split_once(':')?;
        Some((name.to_string(), n.parse().ok()?))
    });
    if let Some((name, n)) = target {
        if name == point && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            std::process::abort();
        }
    }
}

/// What the sidecar says about a run besides its settings.
struct RunRecord<'a> {
    frames: u64,
    seconds: f64,
    complete: bool,
    device: &'a DeviceInfo,
    /// Peak GPU memory in use (device-wide, sampled after every step); `None` on the CPU.
    peak_device_mib: Option<u64>,
    cache: (CacheSetting, CacheStats),
}

/// Writes `<output>.json`: every setting, the seed, the model, the device and the timing.
fn write_sidecar(params: &GenerateParams, run: RunRecord<'_>) -> Result<()> {
    let RunRecord { frames, seconds, complete, device, peak_device_mib, cache } = run;
    let value = json!({
        "generator": format!("skyreels-rs {}", env!("CARGO_PKG_VERSION")),
        "complete": complete,
        "frames": frames,
        "seconds": seconds,
        "frames_per_second_generated": frames as f64 / seconds.max(1e-9),
        "device": device,
        "peak_device_memory_mib": peak_device_mib,
        "peak_rss_mib": crate::memory::peak_rss_mib(),
        "transformer": json!({
            "cache": cache.0,
            "model_calls": cache.1.model_calls,
            "block_passes": cache.1.block_passes,
            "skipped_block_passes": cache.1.skipped,
            "skipped_fraction": cache.1.skipped_fraction(),
        }),
        "reproduce": "skyreels generate with the settings below (same seed and model give the same video)",
        "settings": params,
    });
    let text = serde_json::to_string_pretty(&value).map_err(|e| GenerationError::Output(e.to_string()))?;
    write_atomically(&params.sidecar_path(), text.as_bytes())
}
