//! `skyreels generate`: diffusion-forcing video generation from the command line.
//!
//! The run is a loop over windows (spec §8.3): each window is denoised, decoded as a stream and
//! appended to the output, which is then committed (a playable file) together with the state
//! needed to continue (`<output>.resume`) and the sidecar (`<output>.json`). Memory holds one
//! window at a time, whatever `--frames` is; `--resume <output>` continues after a crash.

mod params;
mod progress;
mod state;
mod story;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Args;
use serde_json::json;
use skyreels_core::checkpoint::{resolve_pipeline, PipelineFiles};
use skyreels_core::device::{DeviceChoice, DeviceInfo, DeviceMemoryMeter, Offload};
use skyreels_core::media::{create_writer, fit_to, load_image, open_video, resume_writer, RgbFrame, VideoWriter};
use skyreels_core::nn::WeightFormat;
use skyreels_core::pipelines::{
    encode_prompt, from_rgb_frames, to_rgb_frames, DfVideo, SeededNoise, TextConditioning, WindowDecoder,
    WindowDecoderState,
};
use skyreels_core::text::PromptTokenizer;
use skyreels_core::{UmT5Encoder, WanTransformer3d, WanVae};

pub use params::{demo_model_dir, with_suffix};
use params::{GenerateParams, Start};
pub use progress::ProgressMode;
use progress::Reporter;
pub use state::write_atomically;
use state::{ResumeInfo, ResumeState};
use story::{load_story, Segment};

/// Flags of `skyreels generate` (named after the reference CLI where it has one).
#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Model: an original SkyReels-V2 directory, a diffusers directory, or a hub id in the local
    /// Hugging Face cache (e.g. Skywork/SkyReels-V2-DF-1.3B-540P). Default: the built-in demo
    /// model (`models/skyreels-demo`, or $SKYREELS_DEMO_MODEL).
    #[arg(long)]
    pub model: Option<String>,
    /// What the video shows.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// Story mode: a JSON list of prompts, `{"segments": [{"prompt", "windows"}]}`, or a text file
    /// with one prompt per line; each segment drives the next window(s) of the same video.
    #[arg(long, conflicts_with = "prompt")]
    pub story: Option<PathBuf>,
    /// Negative prompt for guidance (default: the model's, else the original SkyReels-V2 one).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Image-to-video: the first frame.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The last frame the video must reach.
    #[arg(long)]
    pub end_image: Option<PathBuf>,
    /// Extend this video (MP4/GIF/PNG folder): its last --overlap-history frames start the new
    /// part, and all of its frames are kept in the output.
    #[arg(long)]
    pub extend: Option<PathBuf>,
    /// Output: .mp4 (H.264), .gif, or a folder (PNG frames).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Replace an existing output instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue an interrupted run of this output (settings come from its saved state).
    #[arg(long, value_name = "OUTPUT", conflicts_with_all = [
        "prompt", "story", "output", "model", "negative_prompt", "image", "end_image", "extend", "frames",
        "seed", "overwrite", "continuation", "causal_attention", "base_frames", "overlap_history", "height",
        "width", "fps", "steps", "shift", "guidance", "ar_step", "causal_block_size", "addnoise_condition",
        "sigma_grid", "dtype", "weights", "vae_dtype", "text_length",
    ])]
    pub resume: Option<PathBuf>,
    /// Video frames (4k+1; counts the overlap when extending); 0 or `inf` runs until interrupted.
    #[arg(long)]
    pub frames: Option<String>,
    /// Frames generated together in one window. [default: the model's, else 97]
    #[arg(long)]
    pub base_frames: Option<usize>,
    /// Frames shared by consecutive windows. [default: the model's, else 17]
    #[arg(long)]
    pub overlap_history: Option<usize>,
    /// Height in pixels (multiple of 16). [default: the model's, else 544]
    #[arg(long)]
    pub height: Option<usize>,
    /// Width in pixels (multiple of 16). [default: the model's, else 960]
    #[arg(long)]
    pub width: Option<usize>,
    /// Frame rate of the output (and of the fps embedding: 16 or other). [default: the model's, else 24]
    #[arg(long)]
    pub fps: Option<u32>,
    /// Denoising steps per frame. [default: the model's, else 30]
    #[arg(long)]
    pub steps: Option<usize>,
    /// Flow shift of the sigma schedule. [default: the model's, else 8.0]
    #[arg(long)]
    pub shift: Option<f64>,
    /// Classifier-free guidance scale (1 turns guidance off). [default: the model's, else 6.0]
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Random seed (random when omitted; always recorded in the sidecar).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps each causal block trails the previous one (0 = synchronous diffusion forcing).
    #[arg(long, default_value_t = 0)]
    pub ar_step: usize,
    /// Latent frames per causal block (5 is recommended with --ar-step > 0).
    #[arg(long, default_value_t = 1)]
    pub causal_block_size: usize,
    /// Noise level given to the clean overlap frames (20 recommended for long videos).
    #[arg(long, default_value_t = 0)]
    pub addnoise_condition: u32,
    /// How windows are joined: `latent` (no colour drift) or `pixel` (the original's re-encode).
    #[arg(long, default_value = "latent")]
    pub continuation: String,
    /// Sigma grid: `skyreels` (original code) or `diffusers`.
    #[arg(long, default_value = "skyreels")]
    pub sigma_grid: String,
    /// Block-causal attention in asynchronous mode (diffusers always does this; the released
    /// weights were not trained for it).
    #[arg(long)]
    pub causal_attention: bool,
    /// Transformer precision: auto (bf16 on a GPU; on the CPU f32 up to 2B parameters, else
    /// bf16-held weights computed in f32), f32, bf16.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// The VAE's precision: f32 (default) or bf16 (half the decoder's memory; 3e-2 relative
    /// error on the test VAE).
    #[arg(long, default_value = "f32")]
    pub vae_dtype: String,
    /// How the transformer's attention and FFN matrices are held: native (the --dtype) or fp8
    /// (e4m3 with a scale per row: half of bf16's memory, widened one layer at a time).
    #[arg(long, default_value = "native", value_parser = crate::device::parse::<WeightFormat>)]
    pub weights: WeightFormat,
    /// Where to compute: auto (a GPU when this binary has GPU support and one is present, else
    /// the CPU), cpu, cuda, cuda:N, metal. Also applies when resuming.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    pub device: DeviceChoice,
    /// Keep the transformer off the GPU to save memory: none; model (parked in host memory
    /// while the VAE decodes); blocks (in host memory, each block copied to the GPU as it runs).
    /// Same output, slower. Also applies when resuming.
    #[arg(long, default_value = "none", value_parser = crate::device::parse::<Offload>)]
    pub offload: Offload,
    /// Where the text encoder runs (default: --device). `cpu` keeps umT5-XXL's 11 GB off the GPU.
    #[arg(long, value_parser = crate::device::parse::<DeviceChoice>)]
    pub text_encoder_device: Option<DeviceChoice>,
    /// Tokens per prompt.
    #[arg(long, hide = true)]
    pub text_length: Option<usize>,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Print nothing but errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `skyreels generate`.
pub fn run(args: GenerateArgs) -> Result<(), String> {
    let mut reporter = Reporter::new(args.progress, args.quiet);
    let devices = Devices::open(&args)?;
    if let Some(output) = &args.resume {
        return resume(output, &devices, &mut reporter);
    }
    let segments = match (&args.story, &args.prompt) {
        (Some(story), _) => load_story(story)?,
        (None, Some(prompt)) => vec![Segment { prompt: prompt.clone(), windows: 1 }],
        (None, None) => return Err("--prompt (or --story) is required: say what the video should show".into()),
    };
    let (params, notices) = GenerateParams::from_args(&args, segments)?;
    for n in &notices {
        reporter.notice(n);
    }
    let total_rows = params.check_windows()?;
    check_output_is_free(&params, args.overwrite, args.story.as_deref())?;
    let files = resolve_pipeline(&params.model).map_err(|e| e.to_string())?;
    let start_frame = match &params.start {
        Start::Image(path) => Some(load_conditioning_image(path, &params)?),
        _ => None,
    };
    let end_frame = params.end_image.as_ref().map(|p| load_conditioning_image(p, &params)).transpose()?;
    let extend_input = match &params.start {
        Start::Extend(path) => Some((path.clone(), open_extension(path, &params)?)),
        _ => None,
    };

    let engine = Engine::load(&files, &params, &devices, &reporter)?;
    let image_latent = start_frame.map(|f| engine.encode_frames(&[f])).transpose()?;
    let end_latent = end_frame.map(|f| engine.encode_frames(&[f])).transpose()?;

    // Only now, with the models loaded and the inputs read, is an old output replaced.
    let _ = std::fs::remove_file(params.state_path());
    let _ = std::fs::remove_file(params.sidecar_path());
    let mut writer =
        create_writer(&params.output, params.width as u32, params.height as u32, params.sampler.fps as f64)
            .map_err(|e| e.to_string())?;
    let outcome = (|| {
        let mut decoder = WindowDecoder::new(&engine.vae, params.continuation, params.overlap_history);
        let history = match extend_input {
            Some((path, reader)) => {
                Some(copy_extension(&path, reader, &params, writer.as_mut(), &mut decoder, &engine)?)
            }
            None => None,
        };
        let video = DfVideo::new(params.window_plan(), history).map_err(|e| e.to_string())?;
        let checkpoint = writer.commit().map_err(|e| e.to_string())?;
        let noise = SeededNoise::new(params.seed);
        let run = Run {
            params: &params,
            engine: &engine,
            video,
            decoder,
            noise,
            image_latent,
            end_latent,
            rows_done: 0,
            seconds_before: 0.0,
            memory: DeviceMemoryMeter::new(),
        };
        run.save(&checkpoint, 0.0)?;
        Ok::<_, String>(run)
    })();
    let run = match outcome {
        Ok(run) => run,
        Err(e) => {
            // Nothing worth keeping was produced: leave no half-made output behind.
            drop(writer);
            remove_output(&params);
            return Err(e);
        }
    };
    run.generate(writer, total_rows, &mut reporter)
}

/// Continues the run whose output is `output`.
fn resume(output: &Path, devices: &Devices, reporter: &mut Reporter) -> Result<(), String> {
    let state_path = params::with_suffix(output, ".resume");
    if !state_path.exists() {
        let done = params::with_suffix(output, ".json");
        return Err(if done.exists() && output.exists() {
            format!("{} is already complete (there is no resume state next to it)", output.display())
        } else {
            format!("there is no interrupted run to resume: {} does not exist", state_path.display())
        });
    }
    let saved = ResumeState::load(&state_path, &devices.compute)?;
    // The output may have been moved with its state since; everything follows the given path.
    let params = GenerateParams { output: output.to_path_buf(), ..saved.info.params.clone() };
    let total_rows = params.check_windows()?;
    let files = resolve_pipeline(&params.model).map_err(|e| e.to_string())?;
    let engine = Engine::load(&files, &params, devices, reporter)?;
    let writer =
        resume_writer(output, params.width as u32, params.height as u32, params.sampler.fps as f64, &saved.info.writer)
            .map_err(|e| e.to_string())?;
    let video = DfVideo::resume(params.window_plan(), saved.info.progress, saved.history).map_err(|e| e.to_string())?;
    let decoder = WindowDecoder::resume(&engine.vae, params.continuation, params.overlap_history, saved.decoder)
        .map_err(|e| e.to_string())?;
    reporter.notice(&format!(
        "resuming {} after window {} ({} frames kept)",
        output.display(),
        saved.info.progress.windows_done,
        saved.info.writer.frames
    ));
    let run = Run {
        params: &params,
        engine: &engine,
        video,
        decoder,
        noise: SeededNoise::from_state(saved.info.noise),
        image_latent: saved.image_latent,
        end_latent: saved.end_latent,
        rows_done: saved.info.rows_done,
        seconds_before: saved.info.seconds,
        memory: DeviceMemoryMeter::new(),
    };
    run.generate(writer, total_rows, reporter)
}

/// Refuses outputs that would clobber something: an existing file or folder (unless
/// `--overwrite`), one of the run's own inputs, or a folder holding anything but frames.
fn check_output_is_free(params: &GenerateParams, overwrite: bool, story: Option<&Path>) -> Result<(), String> {
    skyreels_core::media::VideoFormat::for_output(&params.output).map_err(|e| e.to_string())?;
    let output = &params.output;
    if let Some(parent) = output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(format!("the folder {} for the output does not exist", parent.display()));
        }
    }
    let companions = [output.clone(), params.sidecar_path(), params.state_path()];
    for input in params.input_paths().into_iter().chain(story) {
        if companions.iter().any(|c| same_file(c, input)) {
            return Err(format!("the output would overwrite the input {}: choose another --output", input.display()));
        }
    }
    if !output.exists() {
        return Ok(());
    }
    if !overwrite {
        return Err(format!(
            "{} already exists: choose another --output, pass --overwrite, or --resume it",
            output.display()
        ));
    }
    if output.is_dir() && !holds_only_frames(output) {
        return Err(format!(
            "{} is a folder with files other than frame_*.png; refusing to replace it",
            output.display()
        ));
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn holds_only_frames(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().all(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("frame_") && name.ends_with(".png")
        })
    })
}

/// Removes an output and its companions (used when a run fails before producing anything).
fn remove_output(params: &GenerateParams) {
    let out = &params.output;
    let _ = if out.is_dir() { std::fs::remove_dir_all(out) } else { std::fs::remove_file(out) };
    let _ = std::fs::remove_file(params.state_path());
    let _ = std::fs::remove_file(params.sidecar_path());
}

fn load_conditioning_image(path: &Path, params: &GenerateParams) -> Result<RgbFrame, String> {
    let image = load_image(path).map_err(|e| e.to_string())?;
    fit_to(&image, params.width as u32, params.height as u32).map_err(|e| e.to_string())
}

fn open_extension(path: &Path, params: &GenerateParams) -> Result<Box<dyn skyreels_core::media::VideoReader>, String> {
    let reader = open_video(path).map_err(|e| e.to_string())?;
    if let Some(n) = reader.frame_count() {
        if n < params.overlap_history as u64 {
            return Err(clip_too_short(path, n, params.overlap_history));
        }
    }
    Ok(reader)
}

fn clip_too_short(path: &Path, frames: u64, overlap: usize) -> String {
    format!(
        "{} has {frames} frames, fewer than the {overlap} frames of --overlap-history it must provide",
        path.display()
    )
}

/// Copies the video being extended into the output (centre-cropped to the output's aspect and
/// resized, like conditioning images) and returns the latents of its last `overlap_history`
/// frames, the first window's history.
fn copy_extension(
    path: &Path,
    reader: Box<dyn skyreels_core::media::VideoReader>,
    params: &GenerateParams,
    writer: &mut dyn VideoWriter,
    decoder: &mut WindowDecoder<'_>,
    engine: &Engine,
) -> Result<Tensor, String> {
    let keep = params.overlap_history;
    let mut tail: std::collections::VecDeque<RgbFrame> = std::collections::VecDeque::with_capacity(keep + 1);
    let mut count = 0u64;
    for frame in reader {
        let frame = frame.map_err(|e| e.to_string())?;
        let frame = fit_to(&frame, params.width as u32, params.height as u32).map_err(|e| e.to_string())?;
        writer.append(std::slice::from_ref(&frame)).map_err(|e| e.to_string())?;
        tail.push_back(frame);
        if tail.len() > keep {
            tail.pop_front();
        }
        count += 1;
    }
    if tail.len() < keep {
        return Err(clip_too_short(path, count, keep));
    }
    let frames = from_rgb_frames(tail.make_contiguous(), &engine.device).map_err(|e| e.to_string())?;
    decoder.start_from_frames(&frames).map_err(|e| e.to_string())
}

/// The devices of a run, opened (and so checked) before any work.
struct Devices {
    compute: Device,
    info: DeviceInfo,
    text_encoder: Device,
    offload: Offload,
}

impl Devices {
    fn open(args: &GenerateArgs) -> Result<Self, String> {
        let (compute, info) = crate::device::open(args.device)?;
        let text_encoder = match args.text_encoder_device {
            Some(choice) if choice != args.device => crate::device::open(choice)?.0,
            _ => compute.clone(),
        };
        if args.offload != Offload::None && compute.is_cpu() {
            return Err(format!(
                "--offload {} moves the transformer between host and GPU memory, but this run computes on the CPU",
                args.offload
            ));
        }
        Ok(Self { compute, info, text_encoder, offload: args.offload })
    }
}

/// The loaded models and encoded prompts.
struct Engine {
    device: Device,
    device_info: DeviceInfo,
    offload: Offload,
    /// Mutable only to be parked in host memory around decodes (`--offload model`).
    transformer: RefCell<WanTransformer3d>,
    vae: WanVae,
    /// One conditioning per story segment.
    texts: Vec<TextConditioning>,
}

impl Engine {
    fn load(
        files: &PipelineFiles,
        params: &GenerateParams,
        devices: &Devices,
        reporter: &Reporter,
    ) -> Result<Self, String> {
        let device = devices.compute.clone();
        fn err(what: &'static str) -> impl Fn(skyreels_core::Error) -> String {
            move |e| format!("{what}: {e}")
        }
        reporter.stage("encoding prompts");
        let texts = {
            let tokenizer = PromptTokenizer::load(&files.tokenizer).map_err(err("tokenizer"))?;
            let text_device = &devices.text_encoder;
            let encoder = UmT5Encoder::load(&files.text_encoder, text_device, text_encoder_dtype(files, text_device))
                .map_err(err("text encoder"))?;
            let encode = |prompt: &str| {
                let encoded = encode_prompt(&tokenizer, &encoder, prompt, params.text_length).map_err(err("prompt"))?;
                if let Some(w) = encoded.truncation_warning {
                    reporter.notice(&w);
                }
                encoded.states.to_device(&device).map_err(|e| format!("prompt: {e}"))
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
            texts
            // The text encoder (11 GB for umT5-XXL in bf16) is dropped here, before the DiT loads.
        };
        reporter.stage("loading the transformer and the VAE");
        let dtype = transformer_dtype(files, &params.dtype, &device)?;
        ensure_models_fit(files, params, (dtype, &device), devices.offload)?;
        // Streamed blocks are loaded into host memory: the GPU never holds them all.
        let load_on = if devices.offload == Offload::Blocks { Device::Cpu } else { device.clone() };
        let mut transformer = match &files.transformer_gguf {
            Some(gguf) => WanTransformer3d::load_gguf(gguf, &files.transformer, &load_on, dtype),
            None => WanTransformer3d::load_as(&files.transformer, &load_on, dtype, params.weights),
        }
        .map_err(err("transformer"))?;
        if devices.offload == Offload::Blocks {
            transformer.keep_blocks_on(Some(&Device::Cpu)).map_err(err("transformer"))?;
            transformer.move_to(&device).map_err(err("transformer"))?;
            // Loaded on the host, it would otherwise keep the CPU's f32 arithmetic.
            transformer.set_compute_dtype(dtype);
        }
        let vae_dtype = if params.vae_dtype == "bf16" { DType::BF16 } else { DType::F32 };
        let vae = WanVae::load_as(&files.vae, &device, vae_dtype).map_err(err("VAE"))?;
        check_compatible(&transformer, &vae, &texts[0])?;
        if params.causal_attention {
            transformer.set_causal_block_size(params.sampler.causal_block_size).map_err(|e| e.to_string())?;
        }
        Ok(Self {
            device,
            device_info: devices.info.clone(),
            offload: devices.offload,
            transformer: RefCell::new(transformer),
            vae,
            texts,
        })
    }

    /// With `--offload model`, moves the transformer to host memory (`parked`) or back to the
    /// GPU around a decode; otherwise does nothing.
    fn park_transformer(&self, parked: bool) -> Result<(), String> {
        if self.offload != Offload::Model {
            return Ok(());
        }
        let target = if parked { Device::Cpu } else { self.device.clone() };
        self.transformer.borrow_mut().move_to(&target).map_err(|e| format!("transformer: {e}"))
    }

    /// Normalised latents of one or more frames (`4k + 1` of them).
    fn encode_frames(&self, frames: &[RgbFrame]) -> Result<Tensor, String> {
        let video = from_rgb_frames(frames, &self.device).map_err(|e| e.to_string())?;
        self.vae.encode_latents(&video).map_err(|e| e.to_string())
    }
}

fn text_encoder_dtype(files: &PipelineFiles, device: &Device) -> DType {
    // umT5-XXL (5.7B parameters) does not fit 24 GB in f32; small encoders stay exact in f32.
    // On a GPU the weights are held in bf16 (activations stay f32: it runs once per prompt).
    let bytes = dir_size(&files.text_encoder);
    if bytes > 4 << 30 || !device.is_cpu() {
        DType::BF16
    } else {
        DType::F32
    }
}

fn transformer_dtype(files: &PipelineFiles, flag: &str, device: &Device) -> Result<DType, String> {
    Ok(match flag {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        _ if !device.is_cpu() => DType::BF16,
        _ if transformer_parameters(files)? > 2_000_000_000 => DType::BF16,
        _ => DType::F32,
    })
}

/// Scalar parameters of the transformer, read from the file headers.
fn transformer_parameters(files: &PipelineFiles) -> Result<u64, String> {
    use skyreels_core::checkpoint::{Component, GgufFile, WeightStore};
    let count = match &files.transformer_gguf {
        Some(gguf) => GgufFile::open(gguf).map(|g| g.parameter_count()),
        None => WeightStore::open(&files.transformer, Component::Transformer).map(|s| s.parameter_count()),
    };
    count.map(|n| n as u64).map_err(|e| format!("transformer: {e}"))
}

/// Refuses before loading when what the GPU must hold at once — per `offload`: the
/// transformer's weights (all, or two blocks), the VAE, and the larger of their working sets —
/// exceeds its free memory (nothing to check on the CPU).
fn ensure_models_fit(
    files: &PipelineFiles,
    params: &GenerateParams,
    (dtype, device): (DType, &Device),
    offload: Offload,
) -> Result<(), String> {
    use skyreels_core::checkpoint::{Component, WeightStore};
    use skyreels_core::memory::{ensure_fits, transformer_footprint, vae_decode_footprint};
    if device.is_cpu() {
        return Ok(());
    }
    let store =
        WeightStore::open(&files.transformer, Component::Transformer).map_err(|e| format!("transformer: {e}"))?;
    let config = skyreels_core::TransformerConfig::load(&files.transformer, &store).map_err(|e| e.to_string())?;
    let tokens = params.window_plan().window * (params.height / 16) * (params.width / 16);
    let held = (dtype, params.weights, dtype);
    let dit = transformer_footprint(&config, store.parameter_count() as u64, tokens as u64, held);
    let vae = vae_decode_footprint(params.height, params.width);
    let block_weights = dit.weights / config.num_layers.max(1) as u64;
    let needed = match offload {
        Offload::None => dit.weights + vae.weights + dit.working.max(vae.working),
        Offload::Model => (dit.weights + dit.working).max(vae.working) + vae.weights,
        // Two blocks: the one running and the copy of the next being made.
        Offload::Blocks => 2 * block_weights + vae.weights + dit.working.max(vae.working),
    };
    let hint = match (offload, params.weights) {
        (Offload::None, _) => "pass --offload blocks (or --offload model, or --weights fp8)",
        (_, WeightFormat::Native) => "pass --weights fp8 as well, or a smaller --height/--width",
        _ => "use a smaller --height/--width or --base-frames, or a GPU with more memory",
    };
    ensure_fits(device, "the transformer and the VAE", needed, hint).map_err(|e| e.to_string())
}

fn dir_size(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries.flatten().map(|e| dir_size(&e.path())).sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

fn check_compatible(transformer: &WanTransformer3d, vae: &WanVae, text: &TextConditioning) -> Result<(), String> {
    let c = transformer.config();
    if c.image_dim.is_some() {
        return Err("this is an image-to-video model with a CLIP branch; generate runs diffusion-forcing (DF) and text-to-video checkpoints".into());
    }
    if c.in_channels != vae.config().z_dim {
        return Err(format!(
            "the transformer takes {} latent channels but the VAE makes {}",
            c.in_channels,
            vae.config().z_dim
        ));
    }
    let text_dim = text.positive.dim(2).map_err(|e| e.to_string())?;
    if c.text_dim != text_dim {
        return Err(format!(
            "the transformer expects text states of width {} but the text encoder makes {text_dim}",
            c.text_dim
        ));
    }
    Ok(())
}

/// A run in progress: the video state plus everything saved after each window.
struct Run<'a> {
    params: &'a GenerateParams,
    engine: &'a Engine,
    video: DfVideo,
    decoder: WindowDecoder<'a>,
    noise: SeededNoise,
    image_latent: Option<Tensor>,
    end_latent: Option<Tensor>,
    rows_done: usize,
    seconds_before: f64,
    memory: DeviceMemoryMeter,
}

impl Run<'_> {
    fn generate(
        mut self,
        mut writer: Box<dyn VideoWriter>,
        total_rows: Option<usize>,
        reporter: &mut Reporter,
    ) -> Result<(), String> {
        let p = self.params;
        let plan = self.video.plan();
        let windows = plan.window_count(p.initial_history());
        let started = Instant::now();
        reporter.start(windows, total_rows, self.video.progress().windows_done, self.rows_done);
        let latent_size = (p.height / 8, p.width / 8);
        while let Some(next) = self.video.next_window(p.sampler.causal_block_size) {
            let text = &self.engine.texts[p.segment_for_window(next.index)];
            let before = writer.frames_written();
            let mut rows_this_window = 0;
            let (memory, device) = (&mut self.memory, &self.engine.device);
            let (spec, latents) = self
                .video
                .generate_window(
                    &self.engine.transformer.borrow(),
                    latent_size,
                    self.image_latent.as_ref(),
                    self.end_latent.as_ref(),
                    text,
                    &p.sampler,
                    &mut self.noise,
                    &mut |row, rows| {
                        rows_this_window += 1;
                        memory.sample(device);
                        reporter.row(next.index, row, rows);
                    },
                )
                .map_err(|e| e.to_string())?;
            self.rows_done += rows_this_window;
            self.engine.park_transformer(true)?;
            self.decoder
                .decode_window(&spec, &latents, &mut |frames| writer.append(&to_rgb_frames(frames)?))
                .map_err(|e| e.to_string())?;
            self.engine.park_transformer(false)?;
            if !spec.is_last {
                if let Some(history) = self.decoder.pixel_history_latents().map_err(|e| e.to_string())? {
                    self.video.set_history(history).map_err(|e| e.to_string())?;
                }
            }
            let checkpoint = writer.commit().map_err(|e| e.to_string())?;
            let seconds = self.seconds_before + started.elapsed().as_secs_f64();
            self.save(&checkpoint, seconds)?;
            self.memory.sample(&self.engine.device);
            write_sidecar(p, self.run_record(writer.frames_written(), seconds, false))?;
            reporter.window_done(spec.index, writer.frames_written() - before, writer.frames_written());
        }
        let frames = writer.frames_written();
        writer.finish().map_err(|e| e.to_string())?;
        let seconds = self.seconds_before + started.elapsed().as_secs_f64();
        write_sidecar(p, self.run_record(frames, seconds, true))?;
        let _ = std::fs::remove_file(p.state_path());
        reporter.done(&p.output.display().to_string(), frames, seconds);
        Ok(())
    }

    fn run_record(&self, frames: u64, seconds: f64, complete: bool) -> RunRecord<'_> {
        RunRecord {
            frames,
            seconds,
            complete,
            device: &self.engine.device_info,
            peak_device_mib: self.memory.peak_mib(),
        }
    }

    /// Saves the resume state after a commit; `seconds` is the generation time so far.
    fn save(&self, checkpoint: &skyreels_core::media::WriterCheckpoint, seconds: f64) -> Result<(), String> {
        let decoder: WindowDecoderState = self.decoder.state().map_err(|e| e.to_string())?;
        let info = ResumeInfo {
            version: state::STATE_VERSION,
            params: self.params.clone(),
            progress: self.video.progress(),
            noise: self.noise.state(),
            writer: *checkpoint,
            rows_done: self.rows_done,
            seconds,
        };
        ResumeState {
            info,
            history: self.video.history().cloned(),
            image_latent: self.image_latent.clone(),
            end_latent: self.end_latent.clone(),
            decoder,
        }
        .save(&self.params.state_path())
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
}

/// Writes `<output>.json`: every setting, the seed, the model, the device and the timing.
fn write_sidecar(params: &GenerateParams, run: RunRecord<'_>) -> Result<(), String> {
    let RunRecord { frames, seconds, complete, device, peak_device_mib } = run;
    let value = json!({
        "generator": format!("skyreels-rs {}", env!("CARGO_PKG_VERSION")),
        "complete": complete,
        "frames": frames,
        "seconds": seconds,
        "frames_per_second_generated": frames as f64 / seconds.max(1e-9),
        "device": device,
        "peak_device_memory_mib": peak_device_mib,
        "peak_rss_mib": crate::bench::peak_rss_mib(),
        "reproduce": "skyreels generate with the settings below (same seed and model give the same video)",
        "settings": params,
    });
    let text = serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?;
    write_atomically(&params.sidecar_path(), text.as_bytes())
}
