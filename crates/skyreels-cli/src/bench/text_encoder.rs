//! `skyreels bench text-encoder`: umT5 forward passes at umT5-XXL width with random weights,
//! truncated to a few layers (the full 24-layer time is extrapolated).

use super::Report;
use candle_core::{DType, Tensor};
use skyreels_core::checkpoint::RandomWeights;
use skyreels_core::device::{DeviceChoice, Precision};
use skyreels_core::{UmT5Config, UmT5Encoder};

/// What to measure.
#[derive(clap::Args)]
pub struct TextEncoderArgs {
    /// Keep only this many of the 24 layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Prompt tokens (SkyReels pads every prompt to 512).
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    /// Timed repetitions after one warm-up pass.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Weight precision: auto (bf16 on a GPU, f32 on the CPU), f32 or bf16.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<Precision>)]
    dtype: Precision,
    /// Where to compute: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    device: DeviceChoice,
    /// Print one JSON object instead of the table (for `tools/bench_vs_torch.sh`).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &TextEncoderArgs) -> Result<(), String> {
    let c = |e: candle_core::Error| e.to_string();
    let e = |e: skyreels_core::Error| e.to_string();
    if args.layers == 0 || args.tokens == 0 {
        return Err("--layers and --tokens must be positive".into());
    }
    let mut config = UmT5Config::umt5_xxl();
    let full_layers = config.num_layers;
    config.num_layers = args.layers.min(full_layers);
    let (device, info) = crate::device::open(args.device)?;
    let dtype = args.dtype.resolve(&device, DType::F32);
    let model = UmT5Encoder::from_weights(config.clone(), &RandomWeights::new(0), &device, dtype).map_err(e)?;
    let ids: Vec<u32> = (0..args.tokens).map(|i| (i as u32 * 7919) % config.vocab_size as u32).collect();
    let ids = Tensor::from_vec(ids, (1, args.tokens), &device).map_err(c)?;
    let mask = Tensor::ones((1, args.tokens), DType::U8, &device).map_err(c)?;
    let (best, mean) = super::time_runs(args.repeat, || {
        model.forward(&ids, &mask).map_err(e)?;
        device.synchronize().map_err(c)
    })?;
    let (l, d, f) = (args.tokens as f64, config.d_model as f64, config.d_ff as f64);
    let inner = (config.num_heads * config.d_kv) as f64;
    // q, k, v, o projections, the two attention matmuls and the gated FFN's three matrices.
    let flops =
        config.num_layers as f64 * (2.0 * 4.0 * l * d * inner + 2.0 * 2.0 * l * l * inner + 2.0 * 3.0 * l * d * f);
    Report {
        title: format!("device: {info}"),
        columns: vec![
            ("layers", format!("{}/{full_layers}", config.num_layers)),
            ("dtype", if dtype == DType::BF16 { "bf16" } else { "f32" }.to_string()),
            ("tokens", args.tokens.to_string()),
            ("seconds", format!("{best:.3}")),
            ("mean s", format!("{mean:.3}")),
            ("GFLOP/s", format!("{:.1}", flops / best / 1e9)),
            ("full-depth estimate s", format!("{:.1}", best * full_layers as f64 / config.num_layers as f64)),
            ("peak RSS MiB", super::peak_rss_mib().map_or("n/a".into(), |m| m.to_string())),
            ("threads", super::threads().to_string()),
        ],
    }
    .print(args.json);
    Ok(())
}
