//! A tiny LoRA file for the tests' df_pipeline transformer.

use std::path::Path;

/// A kohya-layout LoRA for a `width`-wide transformer (df_pipeline is 32): rank 2 on two modules of
/// block 0, random matrices.
pub fn write_lora(path: &Path, width: usize) {
    use candle_core::{Device, Tensor};
    let mut tensors = std::collections::HashMap::new();
    for (k, module) in ["self_attn_q", "ffn_2"].iter().enumerate() {
        let (out, inputs) = if *module == "ffn_2" { (width, 64) } else { (width, width) };
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
