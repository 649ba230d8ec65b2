//! SkyReels-V3 reference-to-video against the upstream `WanSkyReelsA2WanT2VPipeline` on the tiny
//! `models/t2v_diffusers` DiT (fixtures from `tools/reference/gen_r2v_fixtures.py`): the same
//! noise, prompt states and reference latents in, the output latents compared — without guidance
//! (one call per step, upstream's default) and with the three-call text + image guidance.

mod common;

use candle_core::{DType, Device};
use common::{load_with_settings, rel_l2};
use skyreels_core::pipelines::{denoise_with_references, ReferenceConditioning, StepCache};
use skyreels_core::schedulers::SigmaGrid;
use skyreels_core::WanTransformer3d;

const PIPELINE_TOL: f64 = 1e-4;

#[test]
fn reference_to_video_matches_the_upstream_pipeline_with_and_without_guidance() {
    let (t, settings) = load_with_settings("r2v.safetensors");
    let model = WanTransformer3d::load(&common::fixture("models/t2v_diffusers"), &Device::Cpu, DType::F32).unwrap();
    for case in ["plain", "guided"] {
        let s = &settings[case];
        let length = s["text_length"].as_u64().unwrap() as usize;
        let text = common::padded_prompt_states(&t, case, length);
        let sampler = common::recorded_sampler(s, SigmaGrid::Diffusers, 24);
        let references = ReferenceConditioning {
            latents: t[&format!("{case}.references")].clone(),
            image_guidance: s["guidance_img"].as_f64().unwrap(),
        };
        let out = denoise_with_references(
            &model,
            &t[&format!("{case}.noise")],
            &text,
            &references,
            &sampler,
            &mut StepCache::off(),
            &mut |_, _| Ok(()),
        )
        .unwrap();
        let err = rel_l2(&out, &t[&format!("{case}.output_latents")]);
        if std::env::var_os("SKYREELS_SHOW_ERRORS").is_some() {
            eprintln!("r2v {case}: {err:.2e}");
        }
        assert!(err <= PIPELINE_TOL, "{case}: output latents differ by {err:.3e} (relative L2)");
    }
}
