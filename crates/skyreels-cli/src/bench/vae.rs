//! `skyreels bench vae-decode`: streaming decode time and peak memory of the full-size Wan2.1
//! VAE (random weights) over N latent frames; each chunk of frames is dropped once made, as
//! a video writer would consume it.

use super::peak_rss_mib;
use candle_core::Tensor;
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
    /// The VAE's precision: f32 or bf16.
    #[arg(long, default_value = "f32", value_parser = crate::device::parse_vae_dtype)]
    vae_dtype: candle_core::DType,
    /// Where to compute: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    device: DeviceChoice,
}

pub fn run(args: &VaeDecodeArgs) -> Result<(), String> {
    let c = |e: candle_core::Error| e.to_string();
    let e = |e: skyreels_core::Error| e.to_string();
    if args.latent_frames == 0 || args.height == 0 || args.width == 0 {
        return Err("--latent-frames, --height and --width must be positive".into());
    }
    let (device, info) = crate::device::open(args.device)?;
    let mut memory = DeviceMemoryMeter::new();
    let vae =
        WanVae::from_weights_as(VaeConfig::wan21(), &RandomWeights::new(0), &device, args.vae_dtype).map_err(e)?;
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
    println!("device: {info}; VAE in {}", if args.vae_dtype == candle_core::DType::BF16 { "bf16" } else { "f32" });
    println!("| latent frames | video frames | size | decode s | frames/s | peak RSS MiB (after load) | peak RSS MiB | peak device MiB | threads |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {frames} | {}×{} | {seconds:.1} | {:.2} | {} | {} | {} | {} |",
        args.latent_frames,
        8 * args.width,
        8 * args.height,
        frames as f64 / seconds,
        rss_loaded.map_or("n/a".into(), |m| m.to_string()),
        peak_rss_mib().map_or("n/a".into(), |m| m.to_string()),
        memory.peak_mib().map_or("n/a".into(), |m| m.to_string()),
        super::threads()
    );
    Ok(())
}
