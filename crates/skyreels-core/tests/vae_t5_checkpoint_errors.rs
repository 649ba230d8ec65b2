//! Broken or wrong VAE / text-encoder files give one clear error naming the file, never a panic.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::fixture;
use skyreels_core::{UmT5Encoder, WanVae};

fn truncated_copy(src: &Path, dir: &Path, keep: f64) -> std::path::PathBuf {
    let bytes = std::fs::read(src).unwrap();
    let dst = dir.join(src.file_name().unwrap());
    std::fs::write(&dst, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
    dst
}

#[test]
fn truncated_pth_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    for keep in [0.0, 0.3, 0.97] {
        let vae = truncated_copy(&fixture("models/vae_original/Wan2.1_VAE.pth"), dir.path(), keep);
        let err = WanVae::load(&vae, &Device::Cpu).err().expect("truncated VAE must fail").to_string();
        assert!(err.contains("Wan2.1_VAE.pth"), "{err}");
        let t5 = truncated_copy(&fixture("models/umt5_original/models_t5_umt5-xxl-enc-bf16.pth"), dir.path(), keep);
        let err = UmT5Encoder::load(&t5, &Device::Cpu, DType::F32).err().expect("truncated umT5 must fail").to_string();
        assert!(err.contains("models_t5_umt5-xxl-enc-bf16.pth"), "{err}");
    }
}

#[test]
fn truncated_safetensors_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("models/vae_diffusers");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    truncated_copy(&src.join("diffusion_pytorch_model.safetensors"), dir.path(), 0.5);
    let err = WanVae::load(dir.path(), &Device::Cpu).err().expect("truncated VAE must fail").to_string();
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn a_file_of_another_model_is_named_as_such() {
    let t5 = fixture("models/umt5_original/models_t5_umt5-xxl-enc-bf16.pth");
    let err = WanVae::load(&t5, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("not a Wan VAE checkpoint") && err.contains("models_t5_umt5-xxl-enc-bf16.pth"), "{err}");
    let vae = fixture("models/vae_original/Wan2.1_VAE.pth");
    let err = UmT5Encoder::load(&vae, &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("not a umT5 encoder checkpoint") && err.contains("Wan2.1_VAE.pth"), "{err}");
    let err = WanVae::load(&fixture("models/df_fps_diffusers"), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("not a Wan VAE checkpoint"), "{err}");
}

#[test]
fn missing_paths_are_named() {
    let err = WanVae::load(Path::new("/nonexistent/vae"), &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/vae"), "{err}");
    let err = UmT5Encoder::load(Path::new("/nonexistent/t5"), &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("/nonexistent/t5"), "{err}");
}
