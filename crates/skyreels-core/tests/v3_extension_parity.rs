//! SkyReels-V3 video extension against the upstream code (fixtures from
//! `tools/reference/gen_v3_extension_fixtures.py`): the upstream `WanModel` on the tiny
//! `models/t2v_original` weights, called on `[prefix, noise]` with per-frame timesteps (single
//! shot) and on the list `[noise, prefix]` with the prefix at rotary positions from 1024 (shot
//! switching); then the whole sampling loops of `SingleShotExtensionPipeline` and
//! `ShotSwitchingExtensionPipeline`, with and without guidance, from the same noise.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, load_with_settings, rel_l2};
use skyreels_core::models::transformer::CONTEXT_FRAME_POSITION;
use skyreels_core::pipelines::{denoise_extension, ExtensionLayout, StepCache, TextConditioning};
use skyreels_core::schedulers::SigmaGrid;
use skyreels_core::{TransformerInput, WanTransformer3d};

const PIPELINE_TOL: f64 = 1e-4;

fn model() -> WanTransformer3d {
    WanTransformer3d::load(&common::fixture("models/t2v_original"), &Device::Cpu, DType::F32).unwrap()
}

#[test]
fn the_extension_layouts_match_the_upstream_model() {
    let (t, _) = load_with_settings("v3_extension.safetensors");
    let model = model();
    let context = &t["model.single.context"];
    let single = model
        .forward(&TransformerInput {
            latents: &t["model.single.latents"],
            timesteps: &t["model.single.timesteps"],
            context,
            image_context: None,
            fps_index: None,
            frame_positions: None,
        })
        .unwrap();
    assert_close("single shot: [prefix, noise], per-frame timesteps", &single, &t["model.single.output"]);

    let (noise, prefix) = (&t["model.shot.noise"], &t["model.shot.prefix"]);
    let (new, given) = (noise.dim(2).unwrap(), prefix.dim(2).unwrap());
    let latents = Tensor::cat(&[noise, prefix], 2).unwrap();
    let shot = |frame_positions: Option<&[usize]>| {
        let input = TransformerInput {
            latents: &latents,
            timesteps: &t["model.shot.timesteps"],
            context,
            image_context: None,
            fps_index: None,
            frame_positions,
        };
        model.forward(&input).unwrap().narrow(2, 0, new).unwrap()
    };
    let positions: Vec<usize> = (0..new).chain((0..given).map(|i| CONTEXT_FRAME_POSITION + i)).collect();
    assert_close("shot switch: [noise, prefix at 1024..]", &shot(Some(&positions)), &t["model.shot.output"]);
    // The positions matter: numbered 0, 1, … the prefix tells the model something else.
    assert!(rel_l2(&shot(None), &t["model.shot.output"]) > 1e-3);
}

#[test]
fn the_extension_loops_match_the_upstream_pipelines_with_and_without_guidance() {
    let (t, settings) = load_with_settings("v3_extension.safetensors");
    let model = model();
    for case in ["single", "single_guided", "shot", "shot_guided"] {
        let s = &settings[case];
        let text = TextConditioning {
            positive: t[&format!("{case}.positive")].clone(),
            negative: t[&format!("{case}.negative")].clone(),
        };
        let sampler = common::recorded_sampler(s, SigmaGrid::SkyReels, 24);
        let layout = if case.starts_with("shot") { ExtensionLayout::ShotSwitch } else { ExtensionLayout::SameShot };
        let noise = &t[&format!("{case}.noise")];
        let prefix = &t[&format!("{case}.prefix")];
        let out = denoise_extension(
            &model,
            noise,
            prefix,
            layout,
            &text,
            &sampler,
            &mut StepCache::off(),
            &mut |_, _| Ok(()),
        )
        .unwrap();
        let err = rel_l2(&out, &t[&format!("{case}.output_latents")]);
        if std::env::var_os("SKYREELS_SHOW_ERRORS").is_some() {
            eprintln!("v3 extension {case}: {err:.2e}");
        }
        assert!(err <= PIPELINE_TOL, "{case}: output latents differ by {err:.3e} (relative L2)");
    }
}
