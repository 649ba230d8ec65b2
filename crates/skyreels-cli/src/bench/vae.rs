//! `skyreels bench vae-decode` and `vae-encode`: streaming decode / encode time and peak memory
//! of the full-size Wan2.1 VAE (random weights). The decoder's chunks are dropped once made, as
//! a video writer would consume them; the encoder is fed 1, then 4 frames at a time, as the
//! pipelines feed it.

use super::{peak_rss_mib, Report};
use candle_core::{DType, Device, Tensor};
use skyreels_core::checkpoint::RandomWeights;
use skyreels_core::device::{DeviceChoice, DeviceMemoryMeter};
use skyreels_core::{VaeConfig, WanVae};

/// What to decode.
#[derive(clap::Args)]
pub struct VaeDecodeArgs {
    /// Latent frames to decode (video frames = 1 + 4·(N − 1)).
    #[arg(long, default_value_t = 5)]
    latent_frames: usize,
    /// Latent height (pixels / 8).
    #[arg(long, default_value_t = 8)]
    height: usize,
    /// Latent width (pixels / 8).
    #[arg(long, default_value_t = 8)]
    width: usize,
    #[command(flatten)]
    common: VaeCommon,
}

/// What to encode.
#[derive(clap::Args)]
pub struct VaeEncodeArgs {
    /// Video frames to encode (1 + 4k; latent frames = 1 + k).
    #[arg(long, default_value_t = 17)]
    frames: usize,
    /// Frame height in pixels (a multiple of 8).
    #[arg(long, default_value_t = 64)]
    height: usize,
    /// Frame width in pixels (a multiple of 8).
    #[arg(long, default_value_t = 64)]
    width: usize,
    #[command(flatten)]
    common: VaeCommon,
}

/// Options both VAE benchmarks share.
#[derive(clap::Args)]
struct VaeCommon {
    /// The VAE's precision: f32 or bf16.
    #[arg(long, default_value = "f32", value_parser = crate::device::parse_vae_dtype)]
    vae_dtype: DType,
    /// Where to compute: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    device: DeviceChoice,
    /// Print one JSON object instead of the table (for `tools/bench_vs_torch.sh`).
    #[arg(long)]
    json: bool,
}

fn load(common: &VaeCommon) -> Result<(WanVae, Device, String), String> {
    let (device, info) = crate::device::open(common.device)?;
    let vae = WanVae::from_weights_as(VaeConfig::wan21(), &RandomWeights::new(0), &device, common.vae_dtype)
        .map_err(|e| e.to_string())?;
    Ok((vae, device, info.to_string()))
}

pub fn decode(args: &VaeDecodeArgs) -> Result<(), String> {
    let c = |e: candle_core::Error| e.to_string();
    let e = |e: skyreels_core::Error| e.to_string();
    if args.latent_frames == 0 || args.height == 0 || args.width == 0 {
        return Err("--latent-frames, --height and --width must be positive".into());
    }
    let (vae, device, info) = load(&args.common)?;
    let mut memory = DeviceMemoryMeter::new();
    let rss_loaded = peak_rss_mib();
    let start = std::time::Instant::now();
    let mut stream = vae.decode_stream();
    let mut frames = 0;
    for _ in 0..args.latent_frames {
        let z = Tensor::randn(0f32, 1.0, (1, 16, 1, args.height, args.width), &device).map_err(c)?;
        frames += stream.push(&z).map_err(e)?.dim(2).map_err(c)?;
        memory.sample(&device);
    }
    device.synchronize().map_err(c)?;
    let seconds = start.elapsed().as_secs_f64();
    Report {
        title: format!("device: {info}; VAE decode in {}", dtype_name(args.common.vae_dtype)),
        columns: vec![
            ("latent frames", args.latent_frames.to_string()),
            ("video frames", frames.to_string()),
            ("size", format!("{}×{}", 8 * args.width, 8 * args.height)),
        ]
        .into_iter()
        .chain(measured(frames, seconds, rss_loaded, &memory))
        .collect(),
    }
    .print(args.common.json);
    Ok(())
}

pub fn encode(args: &VaeEncodeArgs) -> Result<(), String> {
    let c = |e: candle_core::Error| e.to_string();
    let e = |e: skyreels_core::Error| e.to_string();
    if args.frames % 4 != 1
        || args.height == 0
        || args.width == 0
        || !args.height.is_multiple_of(8)
        || !args.width.is_multiple_of(8)
    {
        return Err("--frames must be 1 + 4k and --height and --width positive multiples of 8".into());
    }
    let (vae, device, info) = load(&args.common)?;
    let mut memory = DeviceMemoryMeter::new();
    let rss_loaded = peak_rss_mib();
    let start = std::time::Instant::now();
    let mut stream = vae.encode_stream();
    let mut latent_frames = 0;
    let mut done = 0;
    while done < args.frames {
        let len = if done == 0 { 1 } else { 4 };
        let video =
            (Tensor::rand(0f32, 2.0, (1, 3, len, args.height, args.width), &device).map_err(c)? - 1.0).map_err(c)?;
        latent_frames += stream.push(&video).map_err(e)?.dim(2).map_err(c)?;
        memory.sample(&device);
        done += len;
    }
    device.synchronize().map_err(c)?;
    let seconds = start.elapsed().as_secs_f64();
    Report {
        title: format!("device: {info}; VAE encode in {}", dtype_name(args.common.vae_dtype)),
        columns: vec![
            ("video frames", args.frames.to_string()),
            ("latent frames", latent_frames.to_string()),
            ("size", format!("{}×{}", args.width, args.height)),
        ]
        .into_iter()
        .chain(measured(args.frames, seconds, rss_loaded, &memory))
        .collect(),
    }
    .print(args.common.json);
    Ok(())
}

/// The columns both VAE benchmarks measure: time, video frames per second, memory, threads.
fn measured(
    frames: usize,
    seconds: f64,
    rss_loaded: Option<u64>,
    memory: &DeviceMemoryMeter,
) -> Vec<(&'static str, String)> {
    vec![
        ("seconds", format!("{seconds:.2}")),
        ("frames/s", format!("{:.2}", frames as f64 / seconds)),
        ("peak RSS MiB (after load)", mib(rss_loaded)),
        ("peak RSS MiB", mib(peak_rss_mib())),
        ("peak device MiB", mib(memory.peak_mib())),
        ("threads", super::threads().to_string()),
    ]
}

fn dtype_name(dtype: DType) -> &'static str {
    if dtype == DType::BF16 {
        "bf16"
    } else {
        "f32"
    }
}

fn mib(value: Option<u64>) -> String {
    value.map_or("n/a".into(), |m| m.to_string())
}
