//! The `--device` and `--dtype` flags shared by the commands that compute.

use candle_core::Device;
use skyreels_core::device::{DeviceChoice, DeviceInfo, Offload, Precision};
use skyreels_core::nn::WeightFormat;

/// Parses `--device` (auto, cpu, cuda, cuda:N, metal, metal:N) for clap.
pub fn parse_device(text: &str) -> Result<DeviceChoice, String> {
    text.parse().map_err(|e: skyreels_core::Error| e.to_string())
}

/// Parses `--dtype` (auto, f32, bf16) for clap.
pub fn parse_precision(text: &str) -> Result<Precision, String> {
    text.parse().map_err(|e: skyreels_core::Error| e.to_string())
}

/// Parses `--weights` (native, fp8) for clap.
pub fn parse_weights(text: &str) -> Result<WeightFormat, String> {
    text.parse().map_err(|e: skyreels_core::Error| e.to_string())
}

/// Parses `--offload` (none, model, blocks) for clap.
pub fn parse_offload(text: &str) -> Result<Offload, String> {
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
