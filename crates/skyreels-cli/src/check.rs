//! `skyreels check`: replays the PyTorch parity fixtures on a device and prints each
//! component's relative error against its bound; fails when one is exceeded.

use std::path::PathBuf;

use candle_core::DType;
use skyreels_core::check::{run_all, CheckSettings, Component, Measurement};
use skyreels_core::device::{DeviceChoice, Precision};
use skyreels_core::nn::WeightFormat;

/// Flags of `skyreels check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Where to compute: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    device: DeviceChoice,
    /// The transformer's compute dtype (umT5 holds its weights in it): auto (bf16 on a GPU,
    /// f32 on the CPU), f32 or bf16 (bf16 on the CPU reproduces the GPU's bf16 arithmetic).
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<Precision>)]
    dtype: Precision,
    /// The VAE's precision: f32 or bf16.
    #[arg(long, default_value = "f32", value_parser = crate::device::parse_vae_dtype)]
    vae_dtype: DType,
    /// How the transformer's block matrices are held: native or fp8 (FP8 has its own bounds).
    #[arg(long, default_value = "native", value_parser = crate::device::parse::<WeightFormat>)]
    weights: WeightFormat,
    /// The fixture folder of the repository.
    #[arg(long, default_value = "crates/skyreels-core/tests/fixtures")]
    fixtures: PathBuf,
    /// Only one component: transformer, text-encoder, vae or df-pipeline.
    #[arg(long)]
    only: Option<String>,
    /// Print the measurements as JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &CheckArgs) -> Result<(), String> {
    let only = match &args.only {
        Some(text) => Some(text.parse::<Component>().map_err(|e| e.to_string())?),
        None => None,
    };
    let (device, info) = crate::device::open(args.device)?;
    let dtype = args.dtype.resolve(&device, DType::F32);
    let dtype_name = if dtype == DType::BF16 { "bf16" } else { "f32" };
    if args.json {
        let header = serde_json::json!({ "device": info, "dtype": dtype_name, "weights": args.weights });
        println!("{header}");
    } else {
        let vae = if args.vae_dtype == DType::BF16 { "bf16" } else { "f32" };
        println!("device: {info}\ndtype: {dtype_name}\nweights: {}\nvae dtype: {vae}\n", args.weights);
        println!("| component | case | relative L2 | bound | |");
        println!("|---|---|---|---|---|");
    }
    let settings = CheckSettings {
        fixtures: args.fixtures.clone(),
        device,
        dtype,
        weights: args.weights,
        vae_dtype: args.vae_dtype,
        only,
    };
    let print = |m: &Measurement| {
        if args.json {
            println!("{}", serde_json::to_string(m).unwrap_or_default());
        } else {
            let verdict = if m.passed() { "ok" } else { "FAIL" };
            println!("| {} | {} | {:.2e} | {:.1e} | {verdict} |", m.component, m.case, m.rel_l2, m.tolerance);
        }
    };
    let results = run_all(&settings, &mut |m| print(m)).map_err(|e| e.to_string())?;
    let failed: Vec<&Measurement> = results.iter().filter(|m| !m.passed()).collect();
    if failed.is_empty() {
        if !args.json {
            println!("\nall {} measurements within their bounds", results.len());
        }
        return Ok(());
    }
    let worst = failed.iter().max_by(|a, b| (a.rel_l2 / a.tolerance).total_cmp(&(b.rel_l2 / b.tolerance)));
    let worst = worst.map_or(String::new(), |m| {
        format!(" (worst: {} {}, {:.2e} against {:.1e})", m.component, m.case, m.rel_l2, m.tolerance)
    });
    Err(format!("{} of {} measurements exceed their bounds{worst}", failed.len(), results.len()))
}
