//! The engine's job API used directly, as the server and library users do: a model cache kept
//! across jobs, progress events, cancellation between steps, and a cancelled job resumed to the
//! same bytes as one that ran straight through.

use std::path::Path;

use skyreels_core::device::DeviceChoice;
use skyreels_core::pipelines::generation::{
    CancelToken, Devices, Event, Generation, GenerationError, GenerationRequest, ModelCache, RunOptions,
};

fn request(output: &Path) -> GenerationRequest {
    GenerationRequest {
        model: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/df_pipeline").into()),
        prompt: Some("a small test".into()),
        output: Some(output.to_path_buf()),
        height: Some(32),
        width: Some(48),
        steps: Some(3),
        base_frames: Some(13),
        overlap_history: Some(5),
        frames: Some(29), // three windows
        seed: Some(3),
        text_length: Some(16),
        ..Default::default()
    }
}

fn devices() -> Devices {
    Devices::open(&RunOptions { device: DeviceChoice::Cpu, ..Default::default() }).unwrap()
}

#[test]
fn cancelled_jobs_resume_to_the_same_bytes_and_models_stay_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let devices = devices();
    let mut models = ModelCache::new(1);

    let straight = dir.path().join("straight.mp4");
    let mut steps = 0;
    let mut windows = 0;
    let outcome = Generation::new(&request(&straight), false)
        .unwrap()
        .run(
            &mut models,
            &devices,
            &mut |e| match e {
                Event::Step { .. } => steps += 1,
                Event::WindowDone { last_frame, .. } => {
                    windows += 1;
                    assert!(last_frame.is_some_and(|f| (f.width, f.height) == (48, 32)));
                }
                _ => {}
            },
            &CancelToken::default(),
        )
        .unwrap();
    assert_eq!((outcome.frames, windows), (29, 3));
    assert!(steps > 0);
    assert_eq!(models.len(), 1);

    // Cancelled during the second window: an error, a playable first window, a resume state.
    let interrupted = dir.path().join("interrupted.mp4");
    let cancel = CancelToken::default();
    let mut windows_done = 0;
    let result = Generation::new(&request(&interrupted), false).unwrap().run(
        &mut models,
        &devices,
        &mut |e| match e {
            Event::WindowDone { .. } => windows_done += 1,
            Event::Step { window: 1, .. } => cancel.cancel(),
            _ => {}
        },
        &cancel,
    );
    assert!(matches!(result, Err(GenerationError::Cancelled)), "{result:?}");
    assert_eq!(windows_done, 1);
    assert_eq!(models.len(), 1, "the second job reused the loaded models");
    assert!(Generation::can_resume(&interrupted));

    let resumed = Generation::resume(&interrupted).unwrap();
    resumed.run(&mut models, &devices, &mut |_| {}, &CancelToken::default()).unwrap();
    assert!(std::fs::read(&interrupted).unwrap() == std::fs::read(&straight).unwrap());
    assert!(!Generation::can_resume(&interrupted));
}

#[test]
fn bad_requests_are_refused_before_anything_loads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.mp4");
    let refused = |edit: &dyn Fn(&mut GenerationRequest)| {
        let mut r = request(&out);
        edit(&mut r);
        Generation::new(&r, false).err().unwrap()
    };
    assert!(matches!(refused(&|r| r.height = Some(33)), GenerationError::Settings(_)));
    assert!(matches!(refused(&|r| r.image = Some("/nonexistent.png".into())), GenerationError::Input(_)));
    assert!(matches!(refused(&|r| r.output = Some("/nonexistent/dir/x.mp4".into())), GenerationError::Output(_)));
    assert!(matches!(Generation::resume(&out), Err(GenerationError::Resume(_))));
    assert!(!out.exists());
}

/// A rank-2 kohya LoRA for the df_pipeline transformer (32 wide) on block 0's query.
fn write_lora(path: &Path) {
    use candle_core::{Device, Tensor};
    let values = |n: usize| (0..n).map(|i| ((i * 29 % 13) as f32 - 6.0) * 0.08).collect::<Vec<f32>>();
    let tensors = std::collections::HashMap::from([
        (
            "lora_unet_blocks_0_self_attn_q.lora_down.weight".to_string(),
            Tensor::from_vec(values(64), (2, 32), &Device::Cpu).unwrap(),
        ),
        (
            "lora_unet_blocks_0_self_attn_q.lora_up.weight".to_string(),
            Tensor::from_vec(values(64), (32, 2), &Device::Cpu).unwrap(),
        ),
    ]);
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// A cache that keeps models switches adapters per job without reloading: a job after a LoRA
/// job is the plain model again, byte for byte.
#[test]
fn kept_models_switch_lora_adapters_per_job() {
    let dir = tempfile::tempdir().unwrap();
    let devices = devices();
    let lora = dir.path().join("style.safetensors");
    write_lora(&lora);
    let run = |models: &mut ModelCache, name: &str, loras: Vec<String>| {
        let out = dir.path().join(name);
        let request = GenerationRequest { loras, frames: Some(9), ..request(&out) };
        Generation::new(&request, false).unwrap().run(models, &devices, &mut |_| {}, &CancelToken::default()).unwrap();
        std::fs::read(&out).unwrap()
    };
    let plain = run(&mut ModelCache::new(0), "plain.mp4", vec![]);
    let merged = run(&mut ModelCache::new(0), "merged.mp4", vec![lora.display().to_string()]);
    let mut kept = ModelCache::new(1);
    let styled = run(&mut kept, "styled.mp4", vec![format!("{}:1", lora.display())]);
    let after = run(&mut kept, "after.mp4", vec![]);
    assert_eq!(kept.len(), 1, "the base model stays loaded");
    assert_ne!(styled, plain);
    assert_ne!(merged, plain);
    assert_eq!(after, plain);
}
