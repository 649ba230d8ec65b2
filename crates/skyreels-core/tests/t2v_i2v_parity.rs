//! End-to-end parity of the non-DF pipelines with diffusers' `SkyReelsV2Pipeline` and
//! `SkyReelsV2ImageToVideoPipeline` on tiny models (fixtures from
//! `tools/reference/gen_t2v_i2v_fixtures.py`): the same noise, prompt states and image tokens in,
//! the output latents compared.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, rel_l2};
use skyreels_core::models::ClipVisionEncoder;
use skyreels_core::pipelines::{
    denoise_video, image_condition, ImageConditioning, StepCache, TextConditioning, VideoSampler,
};
use skyreels_core::schedulers::SigmaGrid;
use skyreels_core::{WanTransformer3d, WanVae};

/// The acceptance bound for whole-pipeline latents.
const PIPELINE_TOL: f64 = 1e-4;

struct Case {
    tensors: HashMap<String, Tensor>,
    settings: serde_json::Value,
}

fn case() -> Case {
    let (tensors, settings) = common::load_with_settings("t2v_i2v.safetensors");
    Case { tensors, settings }
}

impl Case {
    /// The prompt states of `run`, padded with zero rows to the run's text length.
    fn text(&self, run: &str) -> TextConditioning {
        let length = self.settings[run]["text_length"].as_u64().unwrap() as usize;
        common::padded_prompt_states(&self.tensors, run, length)
    }

    fn sampler(&self, run: &str) -> VideoSampler {
        let s = &self.settings[run];
        common::recorded_sampler(s, SigmaGrid::Diffusers, 16)
    }
}

fn check(what: &str, ours: &Tensor, reference: &Tensor) {
    let err = rel_l2(ours, reference);
    if std::env::var_os("SKYREELS_SHOW_ERRORS").is_some() {
        eprintln!("{what}: {err:.2e}");
    }
    assert!(err <= PIPELINE_TOL, "{what}: output latents differ by {err:.3e} (relative L2)");
}

#[test]
fn text_to_video_matches_diffusers_with_and_without_guidance() {
    let c = case();
    let model = WanTransformer3d::load(&fixture("models/t2v_diffusers"), &Device::Cpu, DType::F32).unwrap();
    for run in ["t2v", "t2v_nocfg"] {
        let latents = denoise_video(
            &model,
            &c.tensors[&format!("{run}.noise")],
            &c.text(run),
            None,
            &c.sampler(run),
            &mut StepCache::off(),
            &mut |_, _| Ok(()),
        )
        .unwrap();
        check(run, &latents, &c.tensors[&format!("{run}.output_latents")]);
    }
}

#[test]
fn image_to_video_matches_diffusers_from_the_clip_encoder_to_the_latents() {
    let c = case();
    let t = &c.tensors;
    // The condition: mask channels and the VAE latents of the image followed by black frames.
    let vae = WanVae::load(&fixture("models/vae_diffusers"), &Device::Cpu).unwrap();
    let first = ((&t["i2v.image"] * 2.0).unwrap() - 1.0).unwrap();
    let frames = c.settings["i2v"]["frames"].as_u64().unwrap() as usize;
    let condition = image_condition(&vae, &first, None, frames).unwrap();
    assert_close("condition", &condition, &t["i2v.condition"]);
    // The image tokens from our CLIP encoder.
    let clip = ClipVisionEncoder::load(&fixture("models/clip_hf_b"), &Device::Cpu, DType::F32).unwrap();
    let image_context = clip.forward(&t["i2v.clip_pixels"]).unwrap();
    assert_close("image tokens", &image_context, &t["i2v.image_embeds"]);

    let model = WanTransformer3d::load(&fixture("models/i2v_diffusers"), &Device::Cpu, DType::F32).unwrap();
    let image = ImageConditioning { condition, image_context };
    let mut steps = Vec::new();
    let latents = denoise_video(
        &model,
        &t["i2v.noise"],
        &c.text("i2v"),
        Some(&image),
        &c.sampler("i2v"),
        &mut StepCache::off(),
        &mut |i, n| {
            steps.push((i, n));
            Ok(())
        },
    )
    .unwrap();
    check("i2v", &latents, &t["i2v.output_latents"]);
    assert_eq!(steps.last(), Some(&(4, 4)));
}

#[test]
fn a_model_of_the_other_kind_is_refused_in_one_sentence() {
    let c = case();
    let t2v = WanTransformer3d::load(&fixture("models/t2v_diffusers"), &Device::Cpu, DType::F32).unwrap();
    let image = ImageConditioning {
        condition: Tensor::zeros((1, 20, 3, 4, 6), DType::F32, &Device::Cpu).unwrap(),
        image_context: c.tensors["i2v.image_embeds"].clone(),
    };
    let err = denoise_video(
        &t2v,
        &c.tensors["t2v.noise"],
        &c.text("t2v"),
        Some(&image),
        &c.sampler("t2v"),
        &mut StepCache::off(),
        &mut |_, _| Ok(()),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("takes 16 input channels") && err.contains("image-to-video"), "{err}");
}

#[test]
fn the_end_frame_is_marked_in_the_last_latent_frames_fourth_mask_channel() {
    let vae = WanVae::load(&fixture("models/vae_diffusers"), &Device::Cpu).unwrap();
    let image = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let condition = image_condition(&vae, &image, Some(&image), 9).unwrap();
    let mask = condition.narrow(1, 0, 4).unwrap().mean_keepdim(4).unwrap().mean_keepdim(3).unwrap();
    let mask: Vec<f32> = mask.flatten_all().unwrap().to_vec1().unwrap();
    // [channel][latent frame]: frame 0 all ones; the last frame only in channel 3.
    assert_eq!(mask, vec![1., 0., 0., 1., 0., 0., 1., 0., 0., 1., 0., 1.]);
    assert!(image_condition(&vae, &image, None, 8).is_err());
}
