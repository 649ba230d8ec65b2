//! Wan VAE against diffusers' `AutoencoderKLWan` (fixtures from tools/reference/gen_vae_t5_fixtures.py).

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, load};
use skyreels_core::models::vae::VaeTrace;
use skyreels_core::WanVae;

fn vae(layout: &str) -> WanVae {
    let path = match layout {
        "diffusers" => fixture("models/vae_diffusers"),
        _ => fixture("models/vae_original/Wan2.1_VAE.pth"),
    };
    WanVae::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{layout}: {e}"))
}

fn encoder_input(t: &HashMap<String, Tensor>) -> Tensor {
    // The generator stores the clip as 8-bit pixels; p/128 − 1 is exact in f32.
    ((t["enc.video_u8"].to_dtype(DType::F32).unwrap() / 128.0).unwrap() - 1.0).unwrap()
}

fn check_trace(what: &str, trace: &VaeTrace, t: &HashMap<String, Tensor>) {
    let mut compared = 0;
    for (name, chunks) in trace {
        if let Some(reference) = t.get(name) {
            let joined = Tensor::cat(chunks, 2).unwrap();
            assert_close(&format!("{what} {name}"), &joined, reference);
            compared += 1;
        }
    }
    assert!(compared >= 5, "{what}: only {compared} stages compared");
}

#[test]
fn encode_matches_diffusers_stage_by_stage_in_both_layouts() {
    let t = load("vae.safetensors");
    for layout in ["diffusers", "original"] {
        let vae = vae(layout);
        let mut trace = VaeTrace::new();
        let mu = vae.encode_traced(&encoder_input(&t), Some(&mut trace)).unwrap();
        check_trace(&format!("{layout} encode"), &trace, &t);
        assert_close(&format!("{layout} encode mu"), &mu, &t["enc.mu"]);
    }
}

#[test]
fn decode_matches_diffusers_stage_by_stage_in_both_layouts() {
    let t = load("vae.safetensors");
    for layout in ["diffusers", "original"] {
        let vae = vae(layout);
        let mut trace = VaeTrace::new();
        let video = vae.decode_traced(&t["dec.z"], Some(&mut trace)).unwrap();
        check_trace(&format!("{layout} decode"), &trace, &t);
        let clamped = t["dec.conv_out"].clamp(-1f32, 1f32).unwrap();
        assert_close(&format!("{layout} decode video"), &video, &clamped);
    }
}

#[test]
fn image_encode_and_longer_decode() {
    let t = load("vae.safetensors");
    let vae = vae("diffusers");
    assert_close("single-frame encode", &vae.encode(&t["enc1.video"]).unwrap(), &t["enc1.mu"]);
    assert_close("4-latent decode", &vae.decode(&t["dec2.z"]).unwrap(), &t["dec2.video"]);
}

#[test]
fn streaming_decode_equals_one_shot_decode_bit_for_bit() {
    let t = load("vae.safetensors");
    let vae = vae("diffusers");
    let z = &t["dec2.z"];
    let per_frame = vae.decode(z).unwrap();
    // The same latents pushed as chunks of 2 and then all at once.
    let mut stream = vae.decode_stream();
    let first = stream.push(&z.narrow(2, 0, 2).unwrap()).unwrap();
    let second = stream.push(&z.narrow(2, 2, 2).unwrap()).unwrap();
    assert_eq!(first.dim(2).unwrap(), 5);
    assert_eq!(second.dim(2).unwrap(), 8);
    let chunked = Tensor::cat(&[first, second], 2).unwrap();
    let one_shot = vae.decode_stream().push(z).unwrap();
    for (what, other) in [("chunks of 2", &chunked), ("one shot", &one_shot)] {
        let diff = other.sub(&per_frame).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{what} differs from frame-by-frame decoding by {diff}");
    }
}

#[test]
fn normalisation_round_trips_with_the_config_statistics() {
    let vae = vae("original");
    let z = Tensor::randn(0f32, 1.0, (1, 16, 2, 3, 4), &Device::Cpu).unwrap();
    let back = vae.denormalize(&vae.normalize(&z).unwrap()).unwrap();
    assert_close("normalize/denormalize", &back, &z);
    assert_eq!(vae.config().latents_mean[7], 1.5508);
}

#[test]
fn bad_inputs_are_errors() {
    let vae = vae("diffusers");
    let dev = Device::Cpu;
    for dims in [[1, 3, 4, 16, 16], [1, 3, 5, 12, 16], [1, 4, 5, 16, 16]] {
        let video = Tensor::zeros(dims.to_vec(), DType::F32, &dev).unwrap();
        let err = vae.encode(&video).unwrap_err().to_string();
        assert!(err.contains("1 + 4k"), "{dims:?}: {err}");
    }
    let z = Tensor::zeros((1, 8, 2, 3, 3), DType::F32, &dev).unwrap();
    assert!(vae.decode(&z).unwrap_err().to_string().contains("latents"));
}
