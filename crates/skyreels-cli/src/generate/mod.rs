//! `skyreels generate`: diffusion-forcing video generation from the command line, a thin
//! front end over the engine's [`Generation`] job (which the server runs too).
//!
//! Memory holds one window at a time, whatever `--frames` is; every window is committed with
//! its resume state, so `--resume <output>` continues after a crash with identical bytes.

mod progress;

use std::path::PathBuf;

use clap::Args;
use skyreels_core::nn::WeightFormat;
use skyreels_core::pipelines::generation::{
    load_story, Devices, Event, Generation, GenerationError, GenerationRequest, ModelCache,
};

pub use progress::ProgressMode;
use progress::Reporter;
pub use skyreels_core::pipelines::generation::{demo_model_dir, with_suffix, write_atomically};

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
    /// A reference image for a reference-to-video (SkyReels-V3-R2V) model: a character, an
    /// object or a scene to keep consistent; give it up to 4 times. Each is fitted inside the
    /// frame on white; without --width/--height the size follows the first one's aspect ratio.
    #[arg(long = "ref", value_name = "IMAGE")]
    pub references: Vec<PathBuf>,
    /// Image guidance of reference-to-video, used when --guidance is above 1. [default: 1.0]
    #[arg(long)]
    pub ref_guidance: Option<f64>,
    /// A LoRA adapter merged into the transformer, FILE or FILE:STRENGTH (1 = as trained);
    /// repeat for several. Reads the diffusers/PEFT, kohya and ComfyUI/LightX2V layouts.
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]")]
    pub loras: Vec<String>,
    /// Extend this video (MP4/GIF/PNG folder): its last --overlap-history frames start the new
    /// part, and all of its frames are kept in the output.
    #[arg(long)]
    pub extend: Option<PathBuf>,
    /// With a SkyReels-V3 video-extension model and --extend: cut to a new shot instead of
    /// continuing the same one — zoom-in-cut, zoom-out-cut, or cut (any other cut, which the
    /// prompt describes). A prompt starting with a tag such as [ZOOM_IN_CUT] does the same.
    #[arg(long)]
    pub transition: Option<String>,
    /// Output: .mp4 (H.264), .gif, or a folder (PNG frames).
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Replace an existing output instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
    /// Continue an interrupted run of this output (settings come from its saved state).
    #[arg(long, value_name = "OUTPUT", conflicts_with_all = [
        "prompt", "story", "output", "model", "negative_prompt", "image", "end_image", "references", "ref_guidance", "loras",
        "extend", "transition", "frames",
        "seed", "overwrite", "continuation", "causal_attention", "base_frames", "overlap_history", "height",
        "width", "fps", "steps", "shift", "guidance", "ar_step", "causal_block_size", "addnoise_condition",
        "sigma_grid", "sampler", "cache", "dtype", "weights", "vae_dtype", "text_length",
    ])]
    pub resume: Option<PathBuf>,
    /// Video frames (4k+1; counts the overlap when extending); 0 or `inf` runs until interrupted.
    #[arg(long)]
    pub frames: Option<String>,
    /// Frames generated together in one window. [default: the model's, else 97; 121 for R2V]
    #[arg(long)]
    pub base_frames: Option<usize>,
    /// Frames shared by consecutive windows. [default: the model's, else 17]
    #[arg(long)]
    pub overlap_history: Option<usize>,
    /// Height in pixels (multiple of 16). [default: the model's, else 544; R2V: from the first --ref]
    #[arg(long)]
    pub height: Option<usize>,
    /// Width in pixels (multiple of 16). [default: the model's, else 960; R2V: from the first --ref]
    #[arg(long)]
    pub width: Option<usize>,
    /// Frame rate of the output (and of the fps embedding: 16 or other). [default: the model's, else 24]
    #[arg(long)]
    pub fps: Option<u32>,
    /// Denoising steps per frame. [default: the model's, else 30; 8 for R2V]
    #[arg(long)]
    pub steps: Option<usize>,
    /// Flow shift of the sigma schedule. [default: the model's, else 8.0; 5.0 for R2V]
    #[arg(long)]
    pub shift: Option<f64>,
    /// Classifier-free guidance scale (1 turns guidance off). [default: the model's, else 6.0; 1.0 for R2V]
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
    /// [default: the model's: pixel for SkyReels-V3 video extension, else latent]
    #[arg(long)]
    pub continuation: Option<String>,
    /// Sigma grid: `skyreels` (original code) or `diffusers`. [default: the model's: diffusers
    /// for reference-to-video, else skyreels]
    #[arg(long)]
    pub sigma_grid: Option<String>,
    /// Solver: unipc (every SkyReels release), euler (what step-distilled models and LoRAs,
    /// such as 4-step ones, are made for) or lcm (re-noises every step, for consistency-
    /// distilled diffusion-forcing models). [default: the model's, else unipc]
    #[arg(long)]
    pub sampler: Option<String>,
    /// Step cache: off, teacache[:THRESHOLD] (upstream's TeaCache, default 0.2) or
    /// frames[:THRESHOLD] (made for diffusion forcing, default 0.1). A call whose input moved
    /// less than the threshold reuses the blocks' last residual; 0 skips nothing. [default: off]
    #[arg(long)]
    pub cache: Option<String>,
    /// Block-causal attention in asynchronous mode (diffusers always does this; the released
    /// weights were not trained for it).
    #[arg(long)]
    pub causal_attention: bool,
    /// Transformer precision: auto (bf16 on a GPU; on the CPU f32 up to 2B parameters, else
    /// bf16), f32, bf16 (on the CPU: bf16 weights, matrix products of bf16 operands summed in
    /// f32, the rest in f32).
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
    #[command(flatten)]
    pub devices: crate::device::RunDeviceArgs,
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

/// Runs `skyreels generate`. Its errors keep their kind: bad settings exit with status 2.
pub fn run(args: GenerateArgs) -> Result<(), GenerationError> {
    let mut reporter = Reporter::new(args.progress, args.quiet);
    let devices = Devices::open(&args.devices.run_options())?;
    let job = match &args.resume {
        Some(output) => Generation::resume(output),
        None => prepare(&args),
    }?;
    let mut observer = |event: Event<'_>| reporter.event(&event);
    // One job per process: nothing to keep loaded afterwards.
    let mut models = ModelCache::new(0);
    job.run(&mut models, &devices, &mut observer, &Default::default()).map(|_| ())
}

/// Checks the flags into a job before anything heavy runs.
fn prepare(args: &GenerateArgs) -> Result<Generation, GenerationError> {
    let request = request_from_args(args)?;
    let job = Generation::new(&request, args.overwrite)?;
    if let Some(story) = &args.story {
        if job.params().would_replace(story) {
            return Err(GenerationError::Output(format!(
                "the output would overwrite the input {}: choose another --output",
                story.display()
            )));
        }
    }
    Ok(job)
}

/// The engine's request for these flags (the story file read, `--frames` parsed).
pub fn request_from_args(args: &GenerateArgs) -> Result<GenerationRequest, GenerationError> {
    let frames = match args.frames.as_deref().map(str::trim) {
        None => None,
        Some("0" | "inf" | "infinite") => Some(0),
        Some(s) => Some(s.parse::<usize>().map_err(|_| {
            GenerationError::Settings(format!(
                "--frames `{s}` is not a frame count (use a number, or 0/inf for endless)"
            ))
        })?),
    };
    let story = args.story.as_deref().map(load_story).transpose()?;
    Ok(GenerationRequest {
        model: args.model.clone(),
        prompt: args.prompt.clone(),
        story,
        negative_prompt: args.negative_prompt.clone(),
        image: args.image.clone(),
        end_image: args.end_image.clone(),
        references: args.references.clone(),
        reference_guidance: args.ref_guidance,
        loras: args.loras.clone(),
        extend: args.extend.clone(),
        transition: args.transition.clone(),
        output: args.output.clone(),
        frames,
        base_frames: args.base_frames,
        overlap_history: args.overlap_history,
        height: args.height,
        width: args.width,
        fps: args.fps,
        steps: args.steps,
        shift: args.shift,
        guidance: args.guidance,
        seed: args.seed,
        ar_step: args.ar_step,
        causal_block_size: args.causal_block_size,
        addnoise_condition: args.addnoise_condition,
        continuation: args.continuation.clone(),
        sigma_grid: args.sigma_grid.clone(),
        sampler: args.sampler.clone(),
        cache: args.cache.clone(),
        causal_attention: args.causal_attention,
        dtype: args.dtype.clone(),
        vae_dtype: args.vae_dtype.clone(),
        weights: args.weights,
        text_length: args.text_length,
    })
}
