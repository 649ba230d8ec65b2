//! CLIP's vision tower against transformers' `CLIPVisionModel` and the upstream SkyReels-V2
//! `modules/clip.py` (fixtures from tools/reference/gen_clip_fixtures.py).

mod common;

use candle_core::{DType, Device};
use common::{assert_close, fixture, load};
use skyreels_core::models::clip::{resize_bicubic, ClipActivation};
use skyreels_core::models::ClipVisionEncoder;

#[test]
fn transformers_layout_matches_the_penultimate_hidden_states() {
    let t = load("clip.safetensors");
    for case in ["clip_hf_a", "clip_hf_b"] {
        let encoder = ClipVisionEncoder::load(&fixture(&format!("models/{case}")), &Device::Cpu, DType::F32).unwrap();
        let out = encoder.forward(&t[&format!("{case}.pixels")]).unwrap();
        assert_close(case, &out, &t[&format!("{case}.penultimate")]);
    }
    // The second model has other shapes and OpenAI's quick GELU.
    let b = ClipVisionEncoder::load(&fixture("models/clip_hf_b"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!((b.config().tokens(), b.config().num_heads), (26, 2));
    assert_eq!(b.config().activation, ClipActivation::QuickGelu);
}

#[test]
fn original_layout_matches_encode_video_with_its_preprocessing() {
    let t = load("clip.safetensors");
    let path = fixture("models/clip_original/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth");
    // Width 32 does not divide into ViT-H's heads of 80: its structure is given here.
    let store =
        skyreels_core::checkpoint::WeightStore::open_file(&path, skyreels_core::checkpoint::Component::ImageEncoder)
            .unwrap();
    let weights = skyreels_core::checkpoint::ClipVisionWeights(store);
    let config = skyreels_core::models::ClipVisionConfig {
        image_size: 28,
        patch_size: 14,
        hidden_size: 32,
        intermediate_size: 128,
        num_layers: 3,
        num_heads: 2,
        layer_norm_eps: 1e-5,
        activation: ClipActivation::Gelu,
    };
    let encoder = ClipVisionEncoder::from_weights(config, &weights, &Device::Cpu, DType::F32).unwrap();
    // The video frame [1, 3, 1, 37, 53] as an image batch.
    let video = &t["original.video"];
    let images = video.squeeze(2).unwrap();
    let pixels = resize_bicubic(&images, 28, 28).unwrap();
    let pixels = ((pixels * 0.5).unwrap() + 0.5).unwrap();
    let mean = candle_core::Tensor::new(&skyreels_core::models::clip::CLIP_MEAN, &Device::Cpu)
        .unwrap()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let std = candle_core::Tensor::new(&skyreels_core::models::clip::CLIP_STD, &Device::Cpu)
        .unwrap()
        .reshape((1, 3, 1, 1))
        .unwrap();
    let normalised = pixels.broadcast_sub(&mean).unwrap().broadcast_div(&std).unwrap();
    assert_close("preprocessed pixels", &normalised, &t["original.pixels"]);
    assert_close("penultimate", &encoder.forward(&t["original.pixels"]).unwrap(), &t["original.penultimate"]);
    assert_close("encode_images", &encoder.encode_images(&images).unwrap(), &t["original.penultimate"]);
}

#[test]
fn bicubic_resizing_keeps_constants_and_refuses_empty_sizes() {
    let flat = candle_core::Tensor::full(0.25f32, (1, 3, 7, 5), &Device::Cpu).unwrap();
    let up = resize_bicubic(&flat, 16, 9).unwrap();
    assert_eq!(up.dims(), &[1, 3, 16, 9]);
    let values = up.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| (v - 0.25).abs() < 1e-6));
    assert!(resize_bicubic(&flat, 0, 4).is_err());
}

#[test]
fn transformers_4_prefixed_keys_and_pipeline_roots_load_too() {
    // transformers 4 saved `vision_model.embeddings…`; diffusers pipelines keep it in image_encoder/.
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("image_encoder");
    std::fs::create_dir_all(&folder).unwrap();
    let tensors = candle_core::safetensors::load(fixture("models/clip_hf_a/model.safetensors"), &Device::Cpu).unwrap();
    let prefixed: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.into_iter().map(|(k, v)| (format!("vision_model.{k}"), v)).collect();
    candle_core::safetensors::save(&prefixed, folder.join("model.safetensors")).unwrap();
    std::fs::copy(fixture("models/clip_hf_a/config.json"), folder.join("config.json")).unwrap();
    let encoder = ClipVisionEncoder::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let t = load("clip.safetensors");
    assert_close("prefixed", &encoder.forward(&t["clip_hf_a.pixels"]).unwrap(), &t["clip_hf_a.penultimate"]);
}

#[test]
fn unusable_inputs_get_one_sentence() {
    // An original file whose width is not ViT-H's heads of 80 cannot be guessed.
    let path = fixture("models/clip_original/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth");
    let err = ClipVisionEncoder::load(&path, &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
    // A different checkpoint is named as not being a CLIP encoder.
    let err = ClipVisionEncoder::load(&fixture("models/umt5_hf"), &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("not a CLIP vision encoder"), "{err}");
    // Pixels of the wrong size.
    let encoder = ClipVisionEncoder::load(&fixture("models/clip_hf_a"), &Device::Cpu, DType::F32).unwrap();
    let wrong = candle_core::Tensor::zeros((1, 3, 30, 28), DType::F32, &Device::Cpu).unwrap();
    assert!(encoder.forward(&wrong).unwrap_err().to_string().contains("[B, 3, 28, 28]"));
}
