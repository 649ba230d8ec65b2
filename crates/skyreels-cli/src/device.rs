//! The `--device`, `--dtype`, `--weights`, `--offload` and `--vae-dtype` flags shared by the
//! commands that compute.

use std::str::FromStr;

use candle_core::Device;
use skyreels_core::device::{DeviceChoice, DeviceInfo, Offload};
use skyreels_core::pipelines::generation::RunOptions;

/// Where a generation computes: the flags `generate`, `serve` and `worker` share.
#[derive(clap::Args, Debug, Clone)]
pub struct RunDeviceArgs {
    /// Where to compute: auto (a GPU when this binary has GPU support and one is present, else
    /// the CPU), cpu, cuda, cuda:N, metal. Also applies when resuming.
    #[arg(long, default_value = "auto", value_parser = parse::<DeviceChoice>)]
    pub device: DeviceChoice,
    /// Keep the transformer off the GPU to save memory: none; model (parked in host memory
    /// while the VAE decodes); blocks (in host memory, each block copied to the GPU as it runs).
    /// Same output, slower. Also applies when resuming.
    #[arg(long, default_value = "none", value_parser = parse::<Offload>)]
    pub offload: Offload,
    /// Where the text encoder runs (default: --device). `cpu` keeps umT5-XXL's 11 GB off the GPU.
    #[arg(long, value_parser = parse::<DeviceChoice>)]
    pub text_encoder_device: Option<DeviceChoice>,
}

impl RunDeviceArgs {
    /// The engine's run options for these flags.
    pub fn run_options(&self) -> RunOptions {
        RunOptions { device: self.device, text_encoder_device: self.text_encoder_device, offload: self.offload }
    }
}

/// Parses a flag whose values the engine names (`--device`, `--dtype`, `--weights`,
/// `--offload`) for clap, with the engine's sentence for a value it does not know.
pub fn parse<T: FromStr<Err = skyreels_core::Error>>(text: &str) -> Result<T, String> {
    text.parse().map_err(|e: skyreels_core::Error| e.to_string())
}

/// Parses `--vae-dtype` (f32, bf16) for clap.
pub fn parse_vae_dtype(text: &str) -> Result<candle_core::DType, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "f32" => Ok(candle_core::DType::F32),
        "bf16" => Ok(candle_core::DType::BF16),
        _ => Err(format!("VAE dtype `{text}` is not one of f32, bf16")),
    }
}

/// Opens the chosen device, or the one sentence saying why it cannot be used.
pub fn open(choice: DeviceChoice) -> Result<(Device, DeviceInfo), String> {
    let device = choice.open().map_err(|e| e.to_string())?;
    let info = DeviceInfo::of(&device);
    Ok((device, info))
}
