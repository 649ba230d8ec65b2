//! SkyReels-A2 elements-to-video against the upstream `A2Pipeline` on the tiny
//! `models/i2v_pipeline` DiT (fixtures from `tools/reference/gen_a2_fixtures.py`): our condition
//! video `[e₀, e₁ ×4, e₂ ×4, black …]` and mask from the same element pixels, then the sampling
//! loop with the CLIP tokens of all elements in the image cross-attention and guidance, from the
//! same noise — for two and three elements.

mod common;

use candle_core::{DType, Device};
use common::{assert_close, load_with_settings, rel_l2};
use skyreels_core::pipelines::{denoise_video, elements_condition, ImageConditioning, StepCache};
use skyreels_core::schedulers::SigmaGrid;
use skyreels_core::{WanTransformer3d, WanVae};

const PIPELINE_TOL: f64 = 1e-4;

#[test]
fn elements_to_video_matches_the_upstream_pipeline() {
    let (t, settings) = load_with_settings("a2.safetensors");
    let model =
        WanTransformer3d::load(&common::fixture("models/i2v_pipeline/transformer"), &Device::Cpu, DType::F32).unwrap();
    let vae = WanVae::load(&common::fixture("models/vae_diffusers"), &Device::Cpu).unwrap();
    let length = settings["text_length"].as_u64().unwrap() as usize;
    for case in ["e2", "e3"] {
        let s = &settings[case];
        let all = &t[&format!("{case}.elements")];
        let elements: Vec<_> = (0..all.dim(0).unwrap()).map(|i| all.narrow(0, i, 1).unwrap()).collect();
        let frames = s["frames"].as_u64().unwrap() as usize;
        let condition = elements_condition(&vae, &elements, frames, None).unwrap();
        assert_close(
            &format!("{case}: condition (mask + element latents)"),
            &condition,
            &t[&format!("{case}.condition")],
        );
        let image = ImageConditioning {
            condition: t[&format!("{case}.condition")].clone(),
            image_context: t[&format!("{case}.image_context")].clone(),
        };
        let sampler = common::recorded_sampler(s, SigmaGrid::Diffusers, 16);
        let text = common::padded_prompt_states(&t, case, length);
        let out = denoise_video(
            &model,
            &t[&format!("{case}.noise")],
            &text,
            Some(&image),
            &sampler,
            &mut StepCache::off(),
            &mut |_, _| Ok(()),
        )
        .unwrap();
        let err = rel_l2(&out, &t[&format!("{case}.output_latents")]);
        if std::env::var_os("SKYREELS_SHOW_ERRORS").is_some() {
            eprintln!("a2 {case}: {err:.2e}");
        }
        assert!(err <= PIPELINE_TOL, "{case}: output latents differ by {err:.3e} (relative L2)");
    }
}
