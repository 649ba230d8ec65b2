//! End-to-end parity of diffusion-forcing generation with diffusers'
//! `SkyReelsV2DiffusionForcingPipeline` on the tiny `models/df_pipeline` (fixtures from
//! `tools/reference/gen_df_pipeline_fixtures.py`).
//!
//! The reference's random draws are replayed in order, so any difference in the window plan, the
//! prefix handling, addnoise, guidance or the per-frame solvers shows up in the latents.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, rel_l2};
use skyreels_core::check::DfRun;
use skyreels_core::nn::WeightFormat;
use skyreels_core::pipelines::{encode_prompt, Continuation, WindowDecoder};
use skyreels_core::text::PromptTokenizer;
use skyreels_core::{UmT5Encoder, WanVae};

/// The acceptance bound for whole-pipeline latents.
const PIPELINE_TOL: f64 = 1e-4;

/// The recorded run `df_<name>.safetensors` (settings, prompt states, noise draws, outputs).
fn run_fixture(name: &str) -> DfRun {
    DfRun::load(&fixture(""), name).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Our pipeline with the run's settings and its noise replayed, in f32 on the CPU.
fn generate(run: &DfRun) -> Tensor {
    run.generate(&fixture(""), &Device::Cpu, (DType::F32, WeightFormat::Native)).unwrap()
}

fn check(name: &str) {
    let run = run_fixture(name);
    let ours = generate(&run);
    let reference = &run.tensors["output_latents"];
    let err = rel_l2(&ours, reference);
    if std::env::var_os("SKYREELS_SHOW_ERRORS").is_some() {
        eprintln!("{name}: output latents rel L2 {err:.2e}");
    }
    assert!(err <= PIPELINE_TOL, "{name}: output latents differ by {err:.3e} (relative L2)");
}

#[test]
fn sync_short_video_matches_diffusers() {
    check("sync_f9");
}

#[test]
fn async_causal_blocks_match_diffusers() {
    check("async_f21_ar1_cb2");
}

#[test]
fn long_video_with_overlap_and_addnoise_matches_diffusers() {
    check("long_f21_base13_ov5_an20");
    check("long_f29_base13_ov5_an20_sync");
}

#[test]
fn long_sync_video_without_guidance_matches_diffusers_down_to_the_pixels() {
    let run = run_fixture("long_f29_base13_ov5_sync_nocfg");
    let latents = generate(&run);
    assert!(rel_l2(&latents, &run.tensors["output_latents"]) <= PIPELINE_TOL);

    // Latent continuation decodes the whole video as one stream, as diffusers decodes at the end.
    let vae = WanVae::load(&fixture("models/df_pipeline"), &Device::Cpu).unwrap();
    let mut decoder = WindowDecoder::new(&vae, Continuation::Latent, 5);
    let spec = skyreels_core::pipelines::WindowSpec {
        index: 0,
        frames: latents.dim(2).unwrap(),
        history: 0,
        prefix: 0,
        is_last: true,
    };
    let mut frames = Vec::new();
    decoder
        .decode_window(&spec, &latents, &mut |f| {
            frames.extend(skyreels_core::pipelines::to_rgb_frames(f)?.into_iter().map(|f| f.data));
            Ok(())
        })
        .unwrap();
    let reference = run.tensors["output_u8"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let ours: Vec<u8> = frames.concat();
    assert_eq!(ours.len(), reference.len(), "frame count or size differs");
    let worst = ours.iter().zip(&reference).map(|(&a, &b)| (a as i16 - b as i16).abs()).max().unwrap();
    assert!(worst <= 1, "decoded pixels differ by up to {worst}/255 (rounding of the reference allows 1)");
}

#[test]
fn prompt_embeddings_of_the_runs_come_out_of_our_text_stack() {
    let run = run_fixture("sync_f9");
    let tokenizer = PromptTokenizer::load(&fixture("models/df_pipeline/tokenizer")).unwrap();
    let encoder = UmT5Encoder::load(&fixture("models/df_pipeline/text_encoder"), &Device::Cpu, DType::F32).unwrap();
    let length = run.settings["max_sequence_length"].as_u64().unwrap() as usize;
    for (key, prompt) in [("prompt_embeds", "prompt"), ("negative_prompt_embeds", "negative_prompt")] {
        let text = run.settings[prompt].as_str().unwrap();
        let ours = encode_prompt(&tokenizer, &encoder, text, length).unwrap().states;
        common::assert_close(key, &ours, &run.tensors[key]);
    }
}
