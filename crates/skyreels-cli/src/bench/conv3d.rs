//! `skyreels bench conv3d`: the CPU Conv3d on a VAE-sized layer.

use candle_core::{Device, Tensor};
use skyreels_core::nn::{Conv3d, SpatialPadding};

/// Layer shape: `[1, C, T, S, S] → C` channels, kernel 3, spatial padding 1.
#[derive(clap::Args)]
pub struct Conv3dArgs {
    /// Input and output channels.
    #[arg(long, default_value_t = 96)]
    channels: usize,
    /// Output frames (the input gets the 2 causal frames on top).
    #[arg(long, default_value_t = 5)]
    frames: usize,
    /// Height and width.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Timed repetitions after one warm-up run.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

pub fn run(args: &Conv3dArgs) -> Result<(), String> {
    let c = |e: candle_core::Error| e.to_string();
    let e = |e: skyreels_core::Error| e.to_string();
    let (ch, f, s) = (args.channels, args.frames, args.size);
    if ch == 0 || f == 0 || s == 0 {
        return Err("--channels, --frames and --size must be positive".into());
    }
    let device = Device::Cpu;
    let weight = (Tensor::randn(0f32, 1.0, (ch, ch, 3, 3, 3), &device).map_err(c)? * 0.05).map_err(c)?;
    let bias = Tensor::randn(0f32, 1.0, ch, &device).map_err(c)?;
    let conv = Conv3d::new(weight, Some(bias), [1, 1, 1], SpatialPadding::uniform(1)).map_err(e)?;
    let x = Tensor::randn(0f32, 1.0, (1, ch, f + 2, s, s), &device).map_err(c)?;
    let flops = 2.0 * (ch * ch * 27 * f * s * s) as f64;
    println!("| execution | input | best ms | mean ms | GFLOP/s | threads |");
    println!("|---|---|---|---|---|---|");
    type Forward<'a> = (&'a str, Box<dyn Fn() -> skyreels_core::Result<Tensor> + 'a>);
    let runs: [Forward; 3] = [
        ("implicit GEMM", Box::new(|| conv.forward(&x))),
        ("conv2d taps", Box::new(|| conv.forward_taps(&x))),
        ("temporal unfold (GPU path)", Box::new(|| conv.forward_temporal_unfold(&x))),
    ];
    for (name, forward) in runs {
        let (best, mean) = super::time_runs(args.repeat, || forward().map(drop).map_err(e))?;
        println!(
            "| {name} | 1×{ch}×{}×{s}×{s} → {ch}, k3 | {:.1} | {:.1} | {:.1} | {} |",
            f + 2,
            best * 1e3,
            mean * 1e3,
            flops / best / 1e9,
            super::threads()
        );
    }
    Ok(())
}
