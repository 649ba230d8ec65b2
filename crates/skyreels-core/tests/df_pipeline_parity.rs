//! End-to-end parity of diffusion-forcing generation with diffusers'
//! `SkyReelsV2DiffusionForcingPipeline` on the tiny `models/df_pipeline` (fixtures from
//! `tools/reference/gen_df_pipeline_fixtures.py`).
//!
//! The reference's random draws are replayed in order, so any difference in the window plan, the
//! prefix handling, addnoise, guidance or the per-frame solvers shows up in the latents.

mod common;

use std::collections::{HashMap, VecDeque};

use candle_core::{DType, Device, Tensor};
use common::{fixture, load, rel_l2};
use serde_json::Value;
use skyreels_core::pipelines::{
    encode_prompt, Continuation, DfSettings, DfVideo, NoiseSource, TextConditioning, WindowDecoder, WindowPlan,
};
use skyreels_core::text::PromptTokenizer;
use skyreels_core::{SigmaGrid, UmT5Encoder, WanTransformer3d, WanVae};

/// The acceptance bound for whole-pipeline latents.
const PIPELINE_TOL: f64 = 1e-4;

/// Hands out the reference's recorded draws, checking each one's shape.
struct Replay(VecDeque<Tensor>);

impl NoiseSource for Replay {
    fn randn(&mut self, shape: &[usize], _device: &Device) -> skyreels_core::Result<Tensor> {
        let next = self.0.pop_front().expect("the pipeline drew more noise than the reference");
        assert_eq!(next.dims(), shape, "draw shape differs from the reference's");
        Ok(next)
    }
}

struct Run {
    tensors: HashMap<String, Tensor>,
    settings: Value,
}

fn run_fixture(name: &str) -> Run {
    let file = std::fs::read(fixture(&format!("df_{name}.safetensors"))).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&file).unwrap();
    let settings: Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["settings"]).unwrap();
    Run { tensors: load(&format!("df_{name}.safetensors")), settings }
}

fn numbered(t: &HashMap<String, Tensor>, prefix: &str) -> Vec<Tensor> {
    (0..).map_while(|i| t.get(&format!("{prefix}.{i}")).cloned()).collect()
}

fn latent(frames: u64) -> usize {
    ((frames - 1) / 4 + 1) as usize
}

/// Runs our pipeline with the run's settings and replayed noise; returns all latents.
fn generate(run: &Run, text: &TextConditioning) -> Tensor {
    let s = &run.settings;
    let block = s["causal_block_size"].as_u64().unwrap_or(1) as usize;
    let mut model = WanTransformer3d::load(&fixture("models/df_pipeline"), &Device::Cpu, DType::F32).unwrap();
    if !s["causal_block_size"].is_null() {
        // diffusers turns the block-causal mask on whenever a block size is passed.
        model.set_causal_block_size(block).unwrap();
    }
    let settings = DfSettings {
        steps: s["num_inference_steps"].as_u64().unwrap() as usize,
        shift: 8.0,
        sigma_grid: SigmaGrid::Diffusers,
        guidance_scale: s["guidance_scale"].as_f64().unwrap(),
        ar_step: s["ar_step"].as_u64().unwrap() as usize,
        causal_block_size: block,
        addnoise_condition: s["addnoise_condition"].as_u64().unwrap() as u32,
        fps: s["fps"].as_u64().unwrap() as u32,
    };
    let total = latent(s["num_frames"].as_u64().unwrap());
    let base = latent(s["base_num_frames"].as_u64().unwrap());
    let plan = match s["overlap_history"].as_u64() {
        Some(overlap) if total > base => WindowPlan { window: base, overlap: latent(overlap), total: Some(total) },
        _ => WindowPlan { window: total, overlap: 0, total: Some(total) },
    };
    let size = (s["height"].as_u64().unwrap() as usize / 8, s["width"].as_u64().unwrap() as usize / 8);
    let mut noise = Replay(numbered(&run.tensors, "noise").into());
    let mut video = DfVideo::new(plan, None).unwrap();
    let mut parts = Vec::new();
    while video.next_window(block).is_some() {
        let (spec, latents) =
            video.generate_window(&model, size, None, None, text, &settings, &mut noise, &mut |_, _| {}).unwrap();
        let new = spec.history;
        parts.push(latents.narrow(2, new, spec.frames - new).unwrap());
    }
    assert!(noise.0.is_empty(), "{} reference draws were not used", noise.0.len());
    Tensor::cat(&parts, 2).unwrap()
}

fn reference_text(run: &Run) -> TextConditioning {
    let positive = run.tensors["prompt_embeds"].clone();
    let negative = run.tensors.get("negative_prompt_embeds").cloned().unwrap_or_else(|| positive.zeros_like().unwrap());
    TextConditioning { positive, negative }
}

fn check(name: &str) {
    let run = run_fixture(name);
    let ours = generate(&run, &reference_text(&run));
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
    let latents = generate(&run, &reference_text(&run));
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
