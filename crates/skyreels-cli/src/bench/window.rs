//! `skyreels bench window`: one diffusion-forcing window end to end with random weights (a
//! released transformer configuration and the full Wan2.1 VAE): seconds per denoising step,
//! decode time and peak memory, with no checkpoint needed. At its defaults this is the
//! reference CLI's 540P window (97 frames at 544×960, 30 steps with guidance).

use std::time::Instant;

use candle_core::{DType, Tensor};
use skyreels_core::checkpoint::RandomWeights;
use skyreels_core::device::{DeviceChoice, DeviceMemoryMeter, Offload, Precision};
use skyreels_core::nn::WeightFormat;
use skyreels_core::pipelines::{
    to_rgb_frames, Continuation, DfSettings, DfVideo, SeededNoise, StepCache, TextConditioning, WindowDecoder,
    WindowPlan,
};
use skyreels_core::{SigmaGrid, TransformerConfig, VaeConfig, WanTransformer3d, WanVae};

/// What to generate.
#[derive(clap::Args)]
pub struct WindowArgs {
    /// Released transformer configuration: df-1.3b, df-14b.
    #[arg(long, default_value = "df-1.3b")]
    preset: String,
    /// Keep only this many transformer blocks (a smoke run on a CPU).
    #[arg(long)]
    layers: Option<usize>,
    /// Video frames of the window (4k + 1).
    #[arg(long, default_value_t = 97)]
    frames: usize,
    /// Height in pixels (multiple of 16).
    #[arg(long, default_value_t = 544)]
    height: usize,
    /// Width in pixels (multiple of 16).
    #[arg(long, default_value_t = 960)]
    width: usize,
    /// Denoising steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Guidance scale (1 = one transformer pass per step, else two).
    #[arg(long, default_value_t = 6.0)]
    guidance: f64,
    /// The transformer's precision: auto (bf16 on a GPU, f32 on the CPU), f32, bf16.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<Precision>)]
    dtype: Precision,
    /// The VAE's precision: f32 or bf16.
    #[arg(long, default_value = "f32", value_parser = crate::device::parse_vae_dtype)]
    vae_dtype: candle_core::DType,
    /// Where to compute: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    device: DeviceChoice,
    /// Keep the transformer off the GPU: none, model (parked while the VAE decodes), blocks
    /// (streamed one block at a time).
    #[arg(long, default_value = "none", value_parser = crate::device::parse::<Offload>)]
    offload: Offload,
    /// How the blocks' matrices are held: native or fp8.
    #[arg(long, default_value = "native", value_parser = crate::device::parse::<WeightFormat>)]
    weights: WeightFormat,
}

pub fn run(args: &WindowArgs) -> Result<(), String> {
    let c = |e: candle_core::Error| e.to_string();
    let e = |e: skyreels_core::Error| e.to_string();
    let mut config = TransformerConfig::preset(&args.preset)
        .filter(|c| c.image_dim.is_none())
        .ok_or_else(|| format!("unknown preset `{}`: use df-1.3b or df-14b", args.preset))?;
    if args.frames % 4 != 1 || !args.height.is_multiple_of(16) || !args.width.is_multiple_of(16) || args.steps == 0 {
        return Err("--frames must be 4k + 1, --height and --width multiples of 16, --steps positive".into());
    }
    config.num_layers = args.layers.unwrap_or(config.num_layers).min(config.num_layers);
    let (device, info) = crate::device::open(args.device)?;
    let dtype = args.dtype.resolve(&device, DType::F32);
    let mut memory = DeviceMemoryMeter::new();
    let load_start = Instant::now();
    let streamed = args.offload == Offload::Blocks;
    let load_on = if streamed { candle_core::Device::Cpu } else { device.clone() };
    let mut model =
        WanTransformer3d::from_weights_as(config.clone(), &RandomWeights::new(0), &load_on, dtype, args.weights)
            .map_err(e)?;
    if streamed {
        model.keep_blocks_on(Some(&candle_core::Device::Cpu)).map_err(e)?;
        model.move_to(&device).map_err(e)?;
        model.set_compute_dtype(dtype);
    }
    let vae =
        WanVae::from_weights_as(VaeConfig::wan21(), &RandomWeights::new(1), &device, args.vae_dtype).map_err(e)?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    memory.sample(&device);
    let context = || Tensor::randn(0f32, 0.1, (1, 512, config.text_dim), &device).map_err(c);
    let text = TextConditioning { positive: context()?, negative: context()? };
    let latent_frames = (args.frames - 1) / 4 + 1;
    let settings = DfSettings {
        steps: args.steps,
        shift: 8.0,
        sigma_grid: SigmaGrid::SkyReels,
        guidance_scale: args.guidance,
        ar_step: 0,
        causal_block_size: 1,
        addnoise_condition: 0,
        fps: 24,
        sampler: skyreels_core::Sampler::UniPc,
        cache: Default::default(),
    };
    let plan = WindowPlan { window: latent_frames, overlap: 0, total: Some(latent_frames) };
    let mut video = DfVideo::new(plan, None).map_err(e)?;
    let mut noise = SeededNoise::new(0);
    let size = (args.height / 8, args.width / 8);
    let denoise_start = Instant::now();
    let (spec, latents) = video
        .generate_window(&model, size, None, None, &text, &settings, &mut noise, &mut StepCache::off(), &mut |_, _| {
            memory.sample(&device);
            Ok(())
        })
        .map_err(e)?;
    device.synchronize().map_err(c)?;
    let denoise_seconds = denoise_start.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    if args.offload == Offload::Model {
        model.move_to(&candle_core::Device::Cpu).map_err(e)?;
    }
    let mut decoder = WindowDecoder::new(&vae, Continuation::Latent, 17);
    let mut frames = 0;
    decoder
        .decode_window(&spec, &latents, &mut |chunk| {
            frames += to_rgb_frames(chunk)?.len();
            memory.sample(&device);
            Ok(())
        })
        .map_err(e)?;
    let decode_seconds = decode_start.elapsed().as_secs_f64();
    let rows = args.steps as f64;
    println!("device: {info}; VAE in {}", if args.vae_dtype == candle_core::DType::BF16 { "bf16" } else { "f32" });
    println!(
        "| preset | layers | dtype | weights | offload | frames | size | steps | guidance | load s | s/step | denoise s | VAE decode s | peak device MiB | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {frames} | {}×{} | {} | {} | {load_seconds:.1} | {:.3} | {denoise_seconds:.1} | {decode_seconds:.1} | {} | {} |",
        args.preset,
        config.num_layers,
        if dtype == DType::BF16 { "bf16" } else { "f32" },
        args.weights,
        args.offload,
        args.width,
        args.height,
        args.steps,
        args.guidance,
        denoise_seconds / rows,
        memory.peak_mib().map_or("n/a".into(), |m| m.to_string()),
        super::peak_rss_mib().map_or("n/a".into(), |m| m.to_string()),
    );
    Ok(())
}
