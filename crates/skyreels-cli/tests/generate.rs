//! `skyreels generate` driven as a user would: the real binary on the tiny fixture pipeline
//! (`skyreels-core/tests/fixtures/models/df_pipeline`), outputs decoded back and checked.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use skyreels_core::media::{create_writer, open_video, RgbFrame};

#[path = "common/lora.rs"]
mod lora;
use lora::{add_metadata, write_lora};

fn model() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../skyreels-core/tests/fixtures/models/df_pipeline")
}

/// Small, fast settings: 32×48 pixels, 3 steps, windows of 13 frames overlapping by 5.
const FAST: &[&str] = &[
    "--height",
    "32",
    "--width",
    "48",
    "--steps",
    "3",
    "--base-frames",
    "13",
    "--overlap-history",
    "5",
    "--seed",
    "11",
    "--text-length",
    "16",
    "--quiet",
];

fn skyreels(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyreels"));
    cmd.args(args);
    cmd
}

fn generate(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--model", model(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    skyreels(&args).output().unwrap()
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "generate failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Decodes a video: (frames, width, height, fps).
fn probe(path: &Path) -> (Vec<RgbFrame>, u32, u32, Option<f64>) {
    let reader = open_video(path).unwrap();
    let (w, h, fps) = (reader.width(), reader.height(), reader.fps());
    (reader.map(|f| f.unwrap()).collect(), w, h, fps)
}

/// One sentence on stderr, a non-zero status, and nothing left at `out`.
fn assert_clean_failure(out: &Output, path: &Path, mentions: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line expected, got: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(mentions), "`{stderr}` should mention `{mentions}`");
    assert!(!path.exists(), "a failed run left {} behind", path.display());
    assert!(!Path::new(&format!("{}.resume", path.display())).exists());
}

fn write_image(path: &Path, rgb: [u8; 3]) {
    // A one-frame PNG folder gives a PNG file without another image dependency.
    let dir = path.parent().unwrap().join(format!("frames_of_{}", path.file_stem().unwrap().to_string_lossy()));
    let mut w = create_writer(&dir, 64, 40, 1.0).unwrap();
    let data = (0..64 * 40).flat_map(|i| if i % 64 < 32 { rgb } else { [255 - rgb[0], 40, 200] }).collect();
    w.append(&[RgbFrame::new(64, 40, data).unwrap()]).unwrap();
    w.finish().unwrap();
    std::fs::rename(dir.join("frame_000000.png"), path).unwrap();
}

#[test]
fn text_to_video_in_every_container() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["t2v.mp4", "t2v.gif", "t2v_frames"] {
        let out = dir.path().join(name);
        assert_ok(&generate(&out, &["--prompt", "a cat", "--frames", "29", "--fps", "16"]));
        let (frames, w, h, fps) = probe(&out);
        assert_eq!((frames.len(), w, h), (29, 48, 32), "{name}");
        if name != "t2v_frames" {
            assert!((fps.unwrap() - 16.0).abs() < 0.05, "{name}: fps {fps:?}");
        }
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{}.json", out.display())).unwrap()).unwrap();
        assert_eq!(sidecar["settings"]["seed"], 11);
        assert_eq!(sidecar["complete"], true);
        assert!(!Path::new(&format!("{}.resume", out.display())).exists(), "resume state left after completion");
    }
}

#[test]
fn frame_counts_are_rounded_to_4k_plus_1_with_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.gif");
    let mut args = vec!["generate", "--model", model(), "-o", out.to_str().unwrap(), "--prompt", "x", "--frames", "10"];
    args.extend(FAST.iter().filter(|a| **a != "--quiet"));
    let run = skyreels(&args).output().unwrap();
    assert_ok(&run);
    assert!(String::from_utf8_lossy(&run.stderr).contains("--frames 10 is not of the form 4k+1; using 13"));
    assert_eq!(probe(&out).0.len(), 13);
}

#[test]
fn image_to_video_and_start_end_frames() {
    let dir = tempfile::tempdir().unwrap();
    let start = dir.path().join("start.png");
    let end = dir.path().join("end.png");
    write_image(&start, [250, 20, 20]);
    write_image(&end, [20, 20, 250]);
    let out = dir.path().join("i2v.gif");
    assert_ok(&generate(&out, &["--prompt", "a cat", "--frames", "9", "--image", start.to_str().unwrap()]));
    assert_eq!(probe(&out).0.len(), 9);
    let out = dir.path().join("flf.gif");
    let args = [
        "--prompt",
        "a cat",
        "--frames",
        "21",
        "--image",
        start.to_str().unwrap(),
        "--end-image",
        end.to_str().unwrap(),
    ];
    assert_ok(&generate(&out, &args));
    assert_eq!(probe(&out).0.len(), 21);
}

#[test]
fn extension_keeps_the_input_and_adds_new_frames() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.mp4");
    assert_ok(&generate(&first, &["--prompt", "a cat", "--frames", "9"]));
    let (input, ..) = probe(&first);
    let out = dir.path().join("extended.mp4");
    // 21 frames = the 5-frame overlap + 16 new ones.
    assert_ok(&generate(&out, &["--prompt", "a cat", "--frames", "21", "--extend", first.to_str().unwrap()]));
    let (frames, w, h, _) = probe(&out);
    assert_eq!((frames.len(), w, h), (9 + 16, 48, 32));
    // The copied input is re-encoded, so compare loosely.
    let diff: u64 = frames[..9]
        .iter()
        .zip(&input)
        .map(|(a, b)| a.data.iter().zip(&b.data).map(|(x, y)| x.abs_diff(*y) as u64).sum::<u64>())
        .sum();
    assert!(diff as f64 / (9.0 * 48.0 * 32.0 * 3.0) < 8.0, "the input frames were not kept");
}

#[test]
fn story_mode_async_and_pixel_continuation() {
    let dir = tempfile::tempdir().unwrap();
    let story = dir.path().join("story.json");
    std::fs::write(&story, r#"{"segments": [{"prompt": "a cat", "windows": 2}, {"prompt": "a dog"}]}"#).unwrap();
    let out = dir.path().join("story.gif");
    assert_ok(&generate(&out, &["--story", story.to_str().unwrap()]));
    // Three windows of 4 latents overlapping by 2: 4 + 2 + 2 latents = 8 → 29 frames.
    assert_eq!(probe(&out).0.len(), 29);

    let out = dir.path().join("async.gif");
    let args = [
        "--prompt",
        "a cat",
        "--frames",
        "29",
        "--ar-step",
        "1",
        "--causal-block-size",
        "2",
        "--addnoise-condition",
        "20",
    ];
    assert_ok(&generate(&out, &args));
    assert_eq!(probe(&out).0.len(), 29);

    let out = dir.path().join("pixel.gif");
    assert_ok(&generate(&out, &["--prompt", "a cat", "--frames", "29", "--continuation", "pixel"]));
    assert_eq!(probe(&out).0.len(), 29);
}

#[test]
fn same_seed_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.mp4"), dir.path().join("b.mp4"));
    assert_ok(&generate(&a, &["--prompt", "a cat", "--frames", "29"]));
    assert_ok(&generate(&b, &["--prompt", "a cat", "--frames", "29"]));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

/// Starts a run with JSON progress and kills it (SIGKILL) once `windows` windows are committed.
fn kill_after_windows(out: &Path, extra: &[&str], windows: usize) {
    let mut args = vec!["generate", "--model", model(), "-o", out.to_str().unwrap()];
    args.extend(FAST.iter().filter(|a| **a != "--quiet"));
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--progress", "json"]);
    let mut child = skyreels(&args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = 0;
    for line in stdout.lines() {
        if line.unwrap().contains(r#""event":"window""#) {
            seen += 1;
            if seen == windows {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(seen, windows, "the run ended before {windows} windows");
}

#[test]
fn kill_9_then_resume_gives_the_identical_file() {
    let dir = tempfile::tempdir().unwrap();
    for (name, extra) in [
        ("latent.mp4", &["--frames", "45"][..]),
        ("pixel.gif", &["--frames", "45", "--continuation", "pixel"][..]),
        ("frames", &["--frames", "45", "--ar-step", "1", "--causal-block-size", "2"][..]),
    ] {
        let whole = dir.path().join(format!("whole_{name}"));
        let mut args = vec!["--prompt", "a cat"];
        args.extend_from_slice(extra);
        assert_ok(&generate(&whole, &args));

        let broken = dir.path().join(format!("broken_{name}"));
        kill_after_windows(&broken, &args, 2);
        // What was written before the kill is a valid video of whole windows.
        let (frames, ..) = probe(&broken);
        assert!(frames.len() >= 21, "{name}: only {} frames survived", frames.len());
        // The interrupted output can be moved, with its state, before resuming.
        let moved_dir = dir.path().join(format!("moved_{name}"));
        std::fs::create_dir(&moved_dir).unwrap();
        let moved = moved_dir.join(broken.file_name().unwrap());
        std::fs::rename(&broken, &moved).unwrap();
        std::fs::rename(format!("{}.resume", broken.display()), format!("{}.resume", moved.display())).unwrap();
        let broken = moved;
        let resumed = skyreels(&["generate", "--resume", broken.to_str().unwrap(), "--quiet"]).output().unwrap();
        assert_ok(&resumed);
        assert_eq!(read_all(&broken), read_all(&whole), "{name}: resumed output differs");
    }
}

/// A file's bytes, or a folder's files' bytes in name order.
fn read_all(path: &Path) -> Vec<Vec<u8>> {
    if path.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(path).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        names.iter().map(|p| std::fs::read(p).unwrap()).collect()
    } else {
        vec![std::fs::read(path).unwrap()]
    }
}

#[test]
fn endless_runs_until_killed_and_stay_playable() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("endless.mp4");
    kill_after_windows(&out, &["--prompt", "a cat", "--frames", "inf"], 4);
    // 13 + 3 × 8 frames are committed after four windows.
    assert!(probe(&out).0.len() >= 37);
}

#[test]
fn hub_ids_are_found_in_the_local_cache() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("models--Skywork--Tiny-DF/snapshots/abc123");
    std::fs::create_dir_all(snapshot.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(Path::new(model()).canonicalize().unwrap(), &snapshot).unwrap();
    std::fs::create_dir_all(dir.path().join("models--Skywork--Tiny-DF/refs")).unwrap();
    std::fs::write(dir.path().join("models--Skywork--Tiny-DF/refs/main"), "abc123").unwrap();
    let out = dir.path().join("hub.gif");
    let mut args =
        vec!["generate", "--model", "Skywork/Tiny-DF", "-o", out.to_str().unwrap(), "--prompt", "x", "--frames", "5"];
    args.extend_from_slice(FAST);
    assert_ok(&skyreels(&args).env("HF_HUB_CACHE", dir.path()).output().unwrap());
    let missing = dir.path().join("missing.gif");
    let mut args = vec!["generate", "--model", "Skywork/Not-There", "-o", missing.to_str().unwrap(), "--prompt", "x"];
    args.extend_from_slice(FAST);
    let run = skyreels(&args).env("HF_HUB_CACHE", dir.path()).output().unwrap();
    assert_clean_failure(&run, &missing, "not in the local Hugging Face cache");
}

#[test]
fn bad_inputs_fail_with_one_sentence_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bad.mp4");
    let run = |extra: &[&str]| generate(&out, extra);

    let mut args = vec!["generate", "--model", model(), "-o", out.to_str().unwrap(), "--prompt", "x", "--height", "40"];
    args.extend(FAST.iter().skip(2));
    assert_clean_failure(&skyreels(&args).output().unwrap(), &out, "multiple of 16");
    assert_clean_failure(&run(&["--prompt", "x", "--no-such-flag"]), &out, "--no-such-flag");
    let not_image = dir.path().join("notes.png");
    std::fs::write(&not_image, "not an image").unwrap();
    assert_clean_failure(&run(&["--prompt", "x", "--image", not_image.to_str().unwrap()]), &out, "notes.png");
    let short = dir.path().join("short.gif");
    assert_ok(&generate(&short, &["--prompt", "x", "--frames", "1"]));
    assert_clean_failure(
        &run(&["--prompt", "x", "--extend", short.to_str().unwrap()]),
        &out,
        "fewer than the 5 frames",
    );

    let empty_model = dir.path().join("model");
    std::fs::create_dir_all(empty_model.join("transformer")).unwrap();
    std::fs::write(empty_model.join("model_index.json"), "{}").unwrap();
    let args = ["generate", "--model", empty_model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--prompt", "x"];
    assert_clean_failure(&skyreels(&args).output().unwrap(), &out, "vae/config.json");

    // Outputs never replace the run's inputs or a folder of other files.
    let clip = dir.path().join("clip.gif");
    assert_ok(&generate(&clip, &["--prompt", "x", "--frames", "9"]));
    let same = generate(&clip, &["--prompt", "x", "--extend", clip.to_str().unwrap(), "--overwrite"]);
    assert!(!same.status.success() && String::from_utf8_lossy(&same.stderr).contains("overwrite the input"));
    assert_eq!(probe(&clip).0.len(), 9);
    let folder = dir.path().join("documents");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("thesis.txt"), "years of work").unwrap();
    let refused = generate(&folder, &["--prompt", "x", "--frames", "5", "--overwrite"]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("refusing to replace"));
    assert!(folder.join("thesis.txt").exists());
    // A missing required argument names it; a missing demo model says where it was looked for.
    let missing = skyreels(&["generate", "--model", model(), "--prompt", "x"]).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--output is required"));
    let no_demo = skyreels(&["generate", "--prompt", "x", "-o", "x.mp4"])
        .env("SKYREELS_DEMO_MODEL", dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_demo.stderr).contains("built-in demo model is not at"));

    // An existing output is never clobbered without --overwrite.
    std::fs::write(&out, "precious").unwrap();
    let refused = run(&["--prompt", "x", "--frames", "5"]);
    assert!(!refused.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
}

#[test]
fn original_layout_folders_work_too() {
    // The same tiny pipeline arranged as an original SkyReels-V2 download: transformer files at
    // the top, the VAE and umT5 as PyTorch .pth files, the tokenizer under google/umt5-xxl/.
    let fixtures = Path::new(model()).join("..");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("SkyReels-V2-tiny");
    std::fs::create_dir_all(root.join("google/umt5-xxl")).unwrap();
    let link =
        |from: PathBuf, to: &str| std::os::unix::fs::symlink(from.canonicalize().unwrap(), root.join(to)).unwrap();
    link(fixtures.join("df_pipeline/transformer/config.json"), "config.json");
    link(fixtures.join("df_pipeline/transformer/diffusion_pytorch_model.safetensors"), "model.safetensors");
    link(fixtures.join("vae_original/Wan2.1_VAE.pth"), "Wan2.1_VAE.pth");
    link(fixtures.join("umt5_original/models_t5_umt5-xxl-enc-bf16.pth"), "models_t5_umt5-xxl-enc-bf16.pth");
    link(fixtures.join("tokenizer/tokenizer.json"), "google/umt5-xxl/tokenizer.json");
    let out = dir.path().join("original.gif");
    let mut args = vec![
        "generate",
        "--model",
        root.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--prompt",
        "x",
        "--frames",
        "9",
    ];
    args.extend_from_slice(FAST);
    assert_ok(&skyreels(&args).output().unwrap());
    assert_eq!(probe(&out).0.len(), 9);

    std::fs::remove_file(root.join("Wan2.1_VAE.pth")).unwrap();
    let missing = dir.path().join("missing.gif");
    let args = ["generate", "--model", root.to_str().unwrap(), "-o", missing.to_str().unwrap(), "--prompt", "x"];
    assert_clean_failure(&skyreels(&args).output().unwrap(), &missing, "Wan2.1_VAE.pth");
}

/// Without --model the built-in demo model is used (here pointed at the fixture pipeline with
/// a `skyreels.json`), and its generation defaults apply unless a flag overrides them.
#[test]
fn the_default_model_and_its_generation_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    std::fs::create_dir(&demo).unwrap();
    for entry in std::fs::read_dir(model()).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(std::fs::canonicalize(entry.path()).unwrap(), demo.join(entry.file_name())).unwrap();
    }
    let defaults = r#"{"generation_defaults": {"height": 32, "width": 32, "fps": 16, "frames": 9,
        "base_frames": 9, "overlap_history": 5, "steps": 2, "shift": 3.0, "guidance": 1.0,
        "text_length": 16, "negative_prompt": ""}}"#;
    std::fs::write(demo.join("skyreels.json"), defaults).unwrap();
    let out = dir.path().join("v.gif");
    let run = skyreels(&["generate", "-p", "a red circle", "-o", out.to_str().unwrap(), "--steps", "3", "--quiet"])
        .env("SKYREELS_DEMO_MODEL", &demo)
        .output()
        .unwrap();
    assert_ok(&run);
    let (frames, w, h, _) = probe(&out);
    assert_eq!((frames.len(), w, h), (9, 32, 32));
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("v.gif.json")).unwrap()).unwrap();
    let settings = &sidecar["settings"];
    assert_eq!(settings["sampler"]["steps"], 3, "a flag overrides the model's default");
    assert_eq!(settings["sampler"]["fps"], 16);
    assert_eq!(settings["negative_prompt"], "");
    // A broken skyreels.json is one clear sentence, not a panic.
    std::fs::write(demo.join("skyreels.json"), "{\"generation_defaults\": {\"height\": \"tall\"}}").unwrap();
    let bad = skyreels(&["generate", "-p", "x", "-o", dir.path().join("w.gif").to_str().unwrap(), "--quiet"])
        .env("SKYREELS_DEMO_MODEL", &demo)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("skyreels.json"));
}

#[test]
fn lora_adapters_change_the_video_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lora = dir.path().join("style.safetensors");
    write_lora(&lora, 32);
    let plain = dir.path().join("plain.mp4");
    assert_ok(&generate(&plain, &["-p", "a kite", "--frames", "9"]));
    let styled = dir.path().join("styled.mp4");
    let spec = format!("{}:0.8", lora.display());
    assert_ok(&generate(&styled, &["-p", "a kite", "--frames", "9", "--lora", &spec]));
    assert_ne!(std::fs::read(&plain).unwrap(), std::fs::read(&styled).unwrap());
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("styled.mp4.json")).unwrap()).unwrap();
    assert_eq!(sidecar["settings"]["loras"][0]["strength"], 0.8);
    // Strength 0 is the model as it was.
    let zero = dir.path().join("zero.mp4");
    assert_ok(&generate(&zero, &["-p", "a kite", "--frames", "9", "--lora", &format!("{}:0", lora.display())]));
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&zero).unwrap());

    // A model folder can name adapters every run gets (its skyreels.json).
    let folder = dir.path().join("styled-model");
    std::fs::create_dir(&folder).unwrap();
    for entry in std::fs::read_dir(model()).unwrap() {
        let path = entry.unwrap().path();
        std::os::unix::fs::symlink(&path, folder.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::copy(&lora, folder.join("style.safetensors")).unwrap();
    let config = r#"{"generation_defaults": {"loras": ["style.safetensors:0.8"]}}"#;
    std::fs::write(folder.join("skyreels.json"), config).unwrap();
    let from_folder = dir.path().join("from_folder.mp4");
    let mut args = vec!["generate", "--model", folder.to_str().unwrap(), "-o", from_folder.to_str().unwrap()];
    args.extend_from_slice(FAST);
    args.extend_from_slice(&["-p", "a kite", "--frames", "9"]);
    assert_ok(&skyreels(&args).output().unwrap());
    assert_eq!(std::fs::read(&styled).unwrap(), std::fs::read(&from_folder).unwrap());

    let wide = dir.path().join("wide.safetensors");
    write_lora(&wide, 48);
    let out = dir.path().join("refused.mp4");
    let bad_strength = format!("{}:strong", lora.display());
    assert_clean_failure(&generate(&out, &["-p", "x", "--lora", &bad_strength]), &out, "is not a number");
    assert_clean_failure(
        &generate(&out, &["-p", "x", "--lora", wide.to_str().unwrap()]),
        &out,
        "does not fit this model",
    );
    assert_clean_failure(&generate(&out, &["-p", "x", "--lora", "nowhere.safetensors"]), &out, "no such file");
}

#[test]
fn a_distilled_lora_brings_its_sampling_unless_a_flag_says_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let settings = |out: &Path| -> serde_json::Value {
        let text = std::fs::read_to_string(format!("{}.json", out.display())).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["settings"]["sampler"].clone()
    };
    let run = |lora: &Path, extra: &[&str]| {
        let out = dir.path().join("out.mp4");
        let spec = lora.to_str().unwrap();
        let args = [&["-p", "a kite", "--frames", "9", "--overwrite", "--lora", spec][..], extra].concat();
        let mut command_args = vec!["generate", "--model", model(), "-o", out.to_str().unwrap()];
        command_args.extend(FAST.iter().filter(|a| **a != "--quiet"));
        command_args.extend_from_slice(&args);
        let output = skyreels(&command_args).output().unwrap();
        assert_ok(&output);
        (settings(&out), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    // LightX2V's guidance-distilled adapters say so in their names.
    let named = dir.path().join("wan_t2v_lightx2v_cfg_step_distill_lora_rank32.safetensors");
    write_lora(&named, 32);
    let (sampler, stderr) = run(&named, &[]);
    assert_eq!(sampler["guidance_scale"], 1.0);
    assert!(stderr.contains("is distilled for guidance 1"), "{stderr}");
    assert_eq!(run(&named, &["--guidance", "3"]).0["guidance_scale"], 3.0, "a flag wins");
    // Any adapter can declare its sampling in its metadata.
    let declared = dir.path().join("fast.safetensors");
    write_lora(&declared, 32);
    add_metadata(&declared, &[("skyreels_sampling", r#"{"guidance": 1, "sampler": "lcm", "shift": 5}"#)]);
    let (sampler, _) = run(&declared, &[]);
    assert_eq!((sampler["guidance_scale"].clone(), sampler["sampler"].clone()), (1.0.into(), "lcm".into()));
    assert_eq!(sampler["shift"], 5.0);
    // A plain adapter changes nothing; a malformed declaration is one sentence.
    let plain = dir.path().join("style.safetensors");
    write_lora(&plain, 32);
    assert_eq!(run(&plain, &[]).0["guidance_scale"], 6.0);
    add_metadata(&plain, &[("skyreels_sampling", r#"{"steps": "four"}"#)]);
    let out = dir.path().join("refused.mp4");
    assert_clean_failure(&generate(&out, &["-p", "x", "--lora", plain.to_str().unwrap()]), &out, "skyreels_sampling");
}

/// Few-step sampling as step-distilled models want it: Euler, 3 steps (the fast settings'), no
/// guidance, in asynchronous diffusion forcing across windows.
#[test]
fn few_step_euler_sampling_runs_diffusion_forcing() {
    let dir = tempfile::tempdir().unwrap();
    let few = ["-p", "a kite", "--frames", "21", "--guidance", "1", "--ar-step", "2"];
    let euler = dir.path().join("euler.mp4");
    assert_ok(&generate(&euler, &[&few[..], &["--sampler", "euler"]].concat()));
    assert_eq!(probe(&euler).0.len(), 21);
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("euler.mp4.json")).unwrap()).unwrap();
    assert_eq!(sidecar["settings"]["sampler"]["sampler"], "euler");
    let unipc = dir.path().join("unipc.mp4");
    assert_ok(&generate(&unipc, &few));
    assert_ne!(std::fs::read(&euler).unwrap(), std::fs::read(&unipc).unwrap());
    // LCM re-noises from the run's noise stream: different from Euler, the same twice.
    let lcm = [&few[..], &["--sampler", "lcm"]].concat();
    let (once, twice) = (dir.path().join("lcm1.mp4"), dir.path().join("lcm2.mp4"));
    assert_ok(&generate(&once, &lcm));
    assert_ok(&generate(&twice, &lcm));
    assert_eq!(probe(&once).0.len(), 21);
    assert_eq!(std::fs::read(&once).unwrap(), std::fs::read(&twice).unwrap());
    assert_ne!(std::fs::read(&once).unwrap(), std::fs::read(&euler).unwrap());
    let out = dir.path().join("refused.mp4");
    assert_clean_failure(&generate(&out, &["-p", "x", "--sampler", "ddim"]), &out, "unknown sampler `ddim`");
}

#[test]
fn step_caches_skip_block_passes_say_so_and_resume_byte_identically() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = |path: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(format!("{}.json", path.display())).unwrap()).unwrap()
    };
    let args = ["--prompt", "a cat", "--frames", "45", "--ar-step", "1", "--causal-block-size", "2"];
    let plain = dir.path().join("plain.mp4");
    assert_ok(&generate(&plain, &args));
    let exact = dir.path().join("exact.mp4");
    assert_ok(&generate(&exact, &[&args[..], &["--cache", "frames:0"]].concat()));
    assert_eq!(std::fs::read(&exact).unwrap(), std::fs::read(&plain).unwrap(), "threshold 0 changes nothing");
    assert_eq!(sidecar(&exact)["transformer"]["skipped_block_passes"], 0);

    let cached = [&args[..], &["--cache", "frames:1"]].concat();
    let whole = dir.path().join("whole.mp4");
    assert_ok(&generate(&whole, &cached));
    let stats = sidecar(&whole)["transformer"].clone();
    let skipped = stats["skipped_block_passes"].as_u64().unwrap();
    assert!(skipped > 0 && skipped < stats["block_passes"].as_u64().unwrap(), "{stats}");
    assert_eq!(sidecar(&whole)["settings"]["sampler"]["cache"], "frames:1");
    assert_ne!(std::fs::read(&whole).unwrap(), std::fs::read(&plain).unwrap());

    let broken = dir.path().join("broken.mp4");
    kill_after_windows(&broken, &cached, 2);
    let resumed = skyreels(&["generate", "--resume", broken.to_str().unwrap(), "--quiet"]).output().unwrap();
    assert_ok(&resumed);
    assert_eq!(std::fs::read(&broken).unwrap(), std::fs::read(&whole).unwrap(), "resumed output differs");
    assert_eq!(sidecar(&broken)["transformer"], stats, "the counts survive the kill");

    for (flag, says) in [("frames:2", "from 0 to 1"), ("teacache:-1", "from 0 to 1"), ("deep", "unknown cache 'deep'")]
    {
        let out = dir.path().join("refused.mp4");
        assert_clean_failure(&generate(&out, &["-p", "x", "--cache", flag]), &out, says);
    }
}
