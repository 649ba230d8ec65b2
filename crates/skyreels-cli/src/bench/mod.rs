//! `skyreels bench`: measurements that print markdown tables (speed and memory are measured
//! here, never in timed tests).

mod cache;
mod conv3d;
mod transformer;
mod vae;
mod window;

pub(crate) use skyreels_core::memory::peak_rss_mib;

/// Which measurement to run.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Forward passes of a released transformer configuration with random weights.
    Transformer(transformer::TransformerArgs),
    /// Few-step sampling and the step caches (`--cache`) against 30-step guided UniPC: model
    /// calls, block passes skipped, time per video second, PSNR/SSIM, and the judge's scores.
    Cache(cache::CacheArgs),
    /// CPU Conv3d throughput on a VAE-sized layer: implicit GEMM vs conv2d taps.
    Conv3d(conv3d::Conv3dArgs),
    /// Streaming Wan2.1 VAE decode (random weights): time and peak memory for N latent frames.
    VaeDecode(vae::VaeDecodeArgs),
    /// One diffusion-forcing window end to end with random weights (default: the 540P window of
    /// DF-1.3B, 97 frames, 30 steps with guidance): s/step, decode time, peak memory.
    Window(window::WindowArgs),
}

/// Runs one benchmark.
pub fn run(command: &BenchCommand) -> Result<(), String> {
    match command {
        BenchCommand::Transformer(args) => transformer::run(args),
        BenchCommand::Cache(args) => cache::run(args),
        BenchCommand::Conv3d(args) => conv3d::run(args),
        BenchCommand::VaeDecode(args) => vae::run(args),
        BenchCommand::Window(args) => window::run(args),
    }
}

/// Best and mean wall time of `repeat` runs of `f` after one warm-up run.
pub fn time_runs(repeat: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<(f64, f64), String> {
    if repeat == 0 {
        return Err("--repeat must be at least 1".into());
    }
    f()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let start = std::time::Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok((best, times.iter().sum::<f64>() / times.len() as f64))
}

/// Threads the CPU kernels use.
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}
