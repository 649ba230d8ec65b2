//! `skyreels bench transformer`: times transformer forward passes of a released configuration
//! with random weights and prints a table (no checkpoint needed).

use super::Report;
use candle_core::{DType, Tensor};
use skyreels_core::checkpoint::RandomWeights;
use skyreels_core::device::{DeviceChoice, DeviceMemoryMeter, Precision};
use skyreels_core::nn::WeightFormat;
use skyreels_core::{TransformerConfig, TransformerInput, WanTransformer3d};

/// What to measure.
#[derive(clap::Args)]
pub struct TransformerArgs {
    /// Released configuration: df-1.3b, df-14b, t2v-14b, i2v-1.3b, i2v-14b.
    #[arg(long, default_value = "df-1.3b")]
    preset: String,
    /// Keep only this many transformer blocks (the time of the full model is extrapolated).
    #[arg(long)]
    layers: Option<usize>,
    /// Latent frames.
    #[arg(long, default_value_t = 5)]
    frames: usize,
    /// Latent height (pixels / 8).
    #[arg(long, default_value_t = 30)]
    height: usize,
    /// Latent width (pixels / 8).
    #[arg(long, default_value_t = 52)]
    width: usize,
    /// Timed repetitions after one warm-up pass.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Precision: auto (bf16 on a GPU, f32 on the CPU), f32 or bf16 (on the CPU: bf16 weights,
    /// matrix products of bf16 operands summed in f32, the rest in f32).
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<Precision>)]
    dtype: Precision,
    /// Where to compute: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    device: DeviceChoice,
    /// How the blocks' matrices are held: native or fp8.
    #[arg(long, default_value = "native", value_parser = crate::device::parse::<WeightFormat>)]
    weights: WeightFormat,
    /// Print one JSON object instead of the table (for `tools/bench_vs_torch.sh`).
    #[arg(long)]
    json: bool,
}

pub fn run(args: &TransformerArgs) -> Result<(), String> {
    let mut config = TransformerConfig::preset(&args.preset).ok_or_else(|| {
        format!("unknown preset `{}`: use df-1.3b, df-14b, t2v-14b, i2v-1.3b or i2v-14b", args.preset)
    })?;
    let full_layers = config.num_layers;
    config.num_layers = args.layers.unwrap_or(full_layers).min(full_layers);
    let (device, info) = crate::device::open(args.device)?;
    let dtype = args.dtype.resolve(&device, DType::F32);
    let e = |e: skyreels_core::Error| e.to_string();
    let c = |e: candle_core::Error| e.to_string();
    let model = WanTransformer3d::from_weights_as(config.clone(), &RandomWeights::new(0), &device, dtype, args.weights)
        .map_err(e)?;
    let latents =
        Tensor::randn(0f32, 1.0, (1, config.in_channels, args.frames, args.height, args.width), &device).map_err(c)?;
    let t: Vec<i64> = (0..args.frames).map(|i| 999 - (i as i64 * 997 / args.frames.max(1) as i64)).collect();
    let timesteps = Tensor::from_vec(t, (1, args.frames), &device).map_err(c)?;
    let context = (Tensor::randn(0f32, 1.0, (1, 512, config.text_dim), &device).map_err(c)? * 0.1).map_err(c)?;
    let image = match config.image_dim {
        Some(d) => Some(Tensor::randn(0f32, 1.0, (1, 257, d), &device).map_err(c)?),
        None => None,
    };
    let fps = Tensor::new(&[1u32], &device).map_err(c)?;
    let input = TransformerInput {
        latents: &latents,
        timesteps: &timesteps,
        context: &context,
        image_context: image.as_ref(),
        fps_index: Some(&fps),
        frame_positions: None,
    };
    let mut memory = DeviceMemoryMeter::new();
    let (best, mean) = super::time_runs(args.repeat, || {
        model.forward(&input).map_err(e)?;
        memory.sample(&device);
        device.synchronize().map_err(c)
    })?;
    let tokens = args.frames * (args.height / config.patch_size[1]) * (args.width / config.patch_size[2]);
    let flops = forward_flops(&config, tokens, 512);
    Report {
        title: format!("device: {info}"),
        columns: vec![
            ("preset", args.preset.clone()),
            ("layers", format!("{}/{full_layers}", config.num_layers)),
            ("dtype", if dtype == DType::BF16 { "bf16" } else { "f32" }.to_string()),
            ("tokens", tokens.to_string()),
            ("seconds", format!("{best:.3}")),
            ("mean s", format!("{mean:.3}")),
            ("GFLOP/s", format!("{:.1}", flops / best / 1e9)),
            ("full-depth estimate s", format!("{:.1}", best * full_layers as f64 / config.num_layers.max(1) as f64)),
            ("peak RSS MiB", super::peak_rss_mib().map_or("n/a".into(), |m| m.to_string())),
            ("peak device MiB", memory.peak_mib().map_or("n/a".into(), |m| m.to_string())),
            ("threads", super::threads().to_string()),
        ],
    }
    .print(args.json);
    Ok(())
}

/// Multiply-add FLOPs of the transformer blocks (embeddings and head are negligible).
fn forward_flops(c: &TransformerConfig, tokens: usize, text: usize) -> f64 {
    let (l, d, f, t) = (tokens as f64, c.dim() as f64, c.ffn_dim as f64, text as f64);
    let self_attn = 2.0 * 4.0 * l * d * d + 2.0 * 2.0 * l * l * d;
    let cross_attn = 2.0 * 2.0 * l * d * d + 2.0 * 2.0 * t * d * d + 2.0 * 2.0 * l * t * d;
    let ffn = 2.0 * 2.0 * l * d * f;
    c.num_layers as f64 * (self_attn + cross_attn + ffn)
}
