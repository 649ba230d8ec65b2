//! The `--device`, `--dtype`, `--weights`, `--offload` and `--vae-dtype` flags shared by the
//! commands that compute.

use std::str::FromStr;

use candle_core::Device;
use skyreels_core::device::{DeviceChoice, DeviceInfo};

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
