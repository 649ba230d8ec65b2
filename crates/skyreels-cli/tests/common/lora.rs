//! A tiny LoRA file for the tests' df_pipeline transformer.

use std::path::Path;

/// A kohya-layout LoRA for a `width`-wide transformer with df_pipeline's FFN width (df_pipeline
/// is 32 wide): rank 2 on two modules of block 0, random matrices.
#[allow(dead_code)]
pub fn write_lora(path: &Path, width: usize) {
    write_lora_sized(path, width, 64);
}

/// [`write_lora`] for a transformer `width` wide with an FFN `ffn` wide.
pub fn write_lora_sized(path: &Path, width: usize, ffn: usize) {
    use candle_core::{Device, Tensor};
    let mut tensors = std::collections::HashMap::new();
    for (k, module) in ["self_attn_q", "ffn_2"].iter().enumerate() {
        let (out, inputs) = if *module == "ffn_2" { (width, ffn) } else { (width, width) };
        let stem = format!("lora_unet_blocks_0_{module}");
        let values =
            |n: usize, seed: usize| (0..n).map(|i| (((i * 37 + seed * 11) % 17) as f32 - 8.0) * 0.05).collect();
        tensors.insert(
            format!("{stem}.lora_down.weight"),
            Tensor::from_vec(values(2 * inputs, k), (2, inputs), &Device::Cpu).unwrap(),
        );
        tensors.insert(
            format!("{stem}.lora_up.weight"),
            Tensor::from_vec(values(out * 2, k + 3), (out, 2), &Device::Cpu).unwrap(),
        );
        tensors.insert(format!("{stem}.alpha"), Tensor::new(2f32, &Device::Cpu).unwrap());
    }
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// Adds `__metadata__` entries to the header of the safetensors file at `path`.
#[allow(dead_code)]
pub fn add_metadata(path: &Path, entries: &[(&str, &str)]) {
    let bytes = std::fs::read(path).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    let metadata = header.as_object_mut().unwrap().entry("__metadata__").or_insert_with(|| serde_json::json!({}));
    for (key, value) in entries {
        metadata[*key] = serde_json::Value::String(value.to_string());
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + length..]);
    std::fs::write(path, out).unwrap();
}
