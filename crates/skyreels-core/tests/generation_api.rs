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
