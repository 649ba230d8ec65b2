//! `skyreels generate` with the non-DF models (SkyReels-V2-T2V / I2V, SkyReels-V3-R2V), picked
//! from the model folder: the tiny `t2v_pipeline`, `i2v_pipeline` and `r2v_pipeline` fixtures run
//! end to end through the binary, their outputs decoded and checked, and what a model cannot do
//! refused in one sentence.

use std::path::Path;
use std::process::{Command, Output};

use skyreels_core::media::{create_writer, open_video, RgbFrame};

fn fixture(name: &str) -> String {
    format!("{}/../skyreels-core/tests/fixtures/models/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn generate_command(model: &str, out: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyreels"));
    cmd.args(["generate", "--model", &fixture(model), "-o", out.to_str().unwrap()]);
    cmd.args(["--height", "32", "--width", "48", "--steps", "3", "--seed", "7", "--text-length", "16", "--quiet"]);
    cmd.args(extra);
    cmd
}

fn generate(model: &str, out: &Path, extra: &[&str]) -> Output {
    generate_command(model, out, extra).output().unwrap()
}

/// Runs `generate` until it aborts at the crash point `at` (`SKYREELS_TEST_ABORT_AT`), then
/// `--resume`s it; returns the finished output's bytes.
fn killed_and_resumed(model: &str, out: &Path, extra: &[&str], at: &str) -> Vec<u8> {
    let aborted = generate_command(model, out, extra).env("SKYREELS_TEST_ABORT_AT", at).output().unwrap();
    assert!(!aborted.status.success(), "the run should have stopped at {at}");
    assert!(Path::new(&format!("{}.resume", out.display())).exists());
    let resumed = Command::new(env!("CARGO_BIN_EXE_skyreels"))
        .args(["generate", "--resume", out.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    std::fs::read(out).unwrap()
}

fn frames_of(path: &Path) -> (usize, u32, u32) {
    let reader = open_video(path).unwrap();
    let (w, h) = (reader.width(), reader.height());
    (reader.inspect(|f| assert!(f.is_ok(), "{f:?}")).count(), w, h)
}

fn write_png(path: &Path) {
    write_png_sized(path, 48, 32, 90);
}

/// A `w × h` gradient with `green` in its green channel.
fn write_png_sized(path: &Path, w: u32, h: u32, green: u8) {
    let dir = path.parent().unwrap().join("png_frames");
    let mut writer = create_writer(&dir, w, h, 1.0).unwrap();
    let data = (0..w * h).flat_map(|i| [(i % w * 5) as u8, green, (i / w * 7) as u8]).collect();
    writer.append(&[RgbFrame::new(w, h, data).unwrap()]).unwrap();
    writer.finish().unwrap();
    std::fs::rename(dir.join("frame_000000.png"), path).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}

/// Each `(model, args, mentions)` fails with one sentence mentioning `mentions`, leaving no output.
fn assert_refused(dir: &Path, cases: &[(&str, &[&str], &str)]) {
    for (model, args, mentions) in cases {
        let out = dir.join("refused.mp4");
        let run = generate(model, &out, args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{model} {args:?} should fail");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(mentions), "`{stderr}` should mention `{mentions}`");
        assert!(!out.exists());
    }
}

fn sidecar(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{}.json", out.display())).unwrap()).unwrap()
}

#[test]
fn a_text_to_video_model_makes_one_window() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t2v.mp4");
    let run = generate(
        "t2v_pipeline",
        &out,
        &["-p", "a red kite", "--frames", "9", "--base-frames", "13", "--overlap-history", "5"],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(frames_of(&out), (9, 48, 32));
    assert_eq!(sidecar(&out)["complete"], true);
    assert!(!dir.path().join("t2v.mp4.resume").exists());
    // The same seed gives the same video.
    let again = dir.path().join("again.mp4");
    assert!(generate(
        "t2v_pipeline",
        &again,
        &["-p", "a red kite", "--frames", "9", "--base-frames", "13", "--overlap-history", "5"]
    )
    .status
    .success());
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn an_image_to_video_model_starts_from_the_image_with_its_clip_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("first.png");
    write_png(&image);
    let out = dir.path().join("i2v.mp4");
    let run = generate("i2v_pipeline", &out, &["-p", "it moves", "--image", image.to_str().unwrap(), "--frames", "9"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(frames_of(&out), (9, 48, 32));
}

#[test]
fn a_reference_to_video_model_composes_its_references() {
    let dir = tempfile::tempdir().unwrap();
    let (wide, tall) = (dir.path().join("wide.png"), dir.path().join("tall.png"));
    write_png_sized(&wide, 64, 24, 200);
    write_png_sized(&tall, 20, 40, 30);
    let refs = |out: &Path, images: &[&Path]| {
        let mut args = vec!["-p", "two friends wave"];
        for image in images {
            args.extend(["--ref", image.to_str().unwrap()]);
        }
        args.extend(["--frames", "9"]);
        generate("r2v_pipeline", out, &args)
    };
    let out = dir.path().join("r2v.mp4");
    let run = refs(&out, &[&wide, &tall]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(frames_of(&out), (9, 48, 32));
    let record = sidecar(&out);
    assert_eq!(record["complete"], true);
    // SkyReels-V3's distilled sampling is the model kind's default.
    assert_eq!(record["settings"]["sampler"]["guidance_scale"], 1.0);
    assert_eq!(record["settings"]["sampler"]["sigma_grid"], "diffusers");
    assert_eq!(record["settings"]["references"].as_array().map(Vec::len), Some(2));
    // The references reach the model: other references, another video.
    let other = dir.path().join("other.mp4");
    assert!(refs(&other, &[&tall]).status.success());
    assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&other).unwrap());
    // With guidance on, upstream's three-call text + image guidance runs.
    let guided = dir.path().join("guided.mp4");
    let run = generate(
        "r2v_pipeline",
        &guided,
        &["-p", "x", "--ref", wide.to_str().unwrap(), "--frames", "5", "--guidance", "3", "--ref-guidance", "2"],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(frames_of(&guided), (5, 48, 32));
}

#[test]
fn an_elements_to_video_model_composes_its_elements() {
    let dir = tempfile::tempdir().unwrap();
    let elements: Vec<_> = [(64, 24, 200), (20, 40, 30), (48, 48, 120)]
        .iter()
        .enumerate()
        .map(|(i, &(w, h, green))| {
            let path = dir.path().join(format!("element{i}.png"));
            write_png_sized(&path, w, h, green);
            path
        })
        .collect();
    let out = dir.path().join("a2.mp4");
    let mut args = vec!["-p", "a man holds a teddy bear in the forest", "--frames", "13"];
    for element in &elements {
        args.extend(["--ref", element.to_str().unwrap()]);
    }
    let run = generate("a2_pipeline", &out, &args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(frames_of(&out), (13, 48, 32));
    let settings = &sidecar(&out)["settings"];
    assert_eq!(settings["sampler"]["guidance_scale"], 5.0, "SkyReels-A2's released guidance is the default");
    assert_eq!(settings["references"].as_array().map(Vec::len), Some(3));
    // Two elements make another video.
    let two = dir.path().join("two.mp4");
    let run = generate("a2_pipeline", &two, &args[..args.len() - 2]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&two).unwrap());
}

#[test]
fn what_a_model_cannot_do_is_refused_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("first.png");
    write_png(&image);
    let unreadable = dir.path().join("broken.png");
    std::fs::write(&unreadable, b"not an image").unwrap();
    let unreadable = unreadable.to_str().unwrap();
    let image = image.to_str().unwrap();
    let five_refs: Vec<&str> = (0..5).flat_map(|_| ["--ref", image]).chain(["-p", "x"]).collect();
    let cases: &[(&str, &[&str], &str)] = &[
        ("t2v_pipeline", &["-p", "x", "--frames", "200"], "diffusion-forcing (DF) model"),
        ("t2v_pipeline", &["-p", "x", "--frames", "0"], "endless"),
        ("t2v_pipeline", &["-p", "x", "--image", image], "image-to-video (I2V)"),
        ("t2v_pipeline", &["-p", "x", "--ar-step", "2"], "--ar-step needs"),
        ("t2v_pipeline", &["-p", "x", "--sampler", "lcm"], "runs diffusion-forcing models only"),
        ("i2v_pipeline", &["-p", "x", "--frames", "9"], "--image is required"),
        ("i2v_pipeline", &["-p", "x", "--image", image, "--end-image", image], "--end-image needs"),
        ("i2v_pipeline", &["-p", "x", "--image", unreadable], "not a readable image"),
        ("r2v_pipeline", &five_refs, "at most 4 reference images"),
        ("r2v_pipeline", &["-p", "x"], "--ref is required"),
        ("r2v_pipeline", &["-p", "x", "--ref", unreadable], "--ref"),
        ("r2v_pipeline", &["-p", "x", "--ref", image, "--image", image], "give a reference-to-video (R2V) model"),
        (
            "t2v_pipeline",
            &["-p", "x", "--ref", image],
            "--ref needs a SkyReels-V3 reference-to-video (R2V) or a SkyReels-A2",
        ),
        ("df_pipeline", &["-p", "x", "--ref", image], "this is a diffusion-forcing (DF) model"),
        ("a2_pipeline", &five_refs[2..], "at most 3 element images"),
        ("a2_pipeline", &["-p", "x"], "--ref is required: this elements-to-video (A2) model"),
        ("a2_pipeline", &["-p", "x", "--ref", image, "--ref", image, "--ref", image, "--frames", "5"], "at least 9"),
    ];
    assert_refused(dir.path(), cases);
}

/// A `frames`-frame 48 × 32 MP4 clip to extend.
fn write_clip(path: &Path, frames: usize) {
    let mut writer = create_writer(path, 48, 32, 24.0).unwrap();
    for k in 0..frames {
        let data = (0..48 * 32).flat_map(|i| [(i % 48 * 5) as u8, (k * 9) as u8, (i / 48 * 7) as u8]).collect();
        writer.append(&[RgbFrame::new(48, 32, data).unwrap()]).unwrap();
    }
    writer.finish().unwrap();
}

#[test]
fn a_video_extension_model_continues_the_shot_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    write_clip(&clip, 11);
    let clip = clip.to_str().unwrap();
    // Windows of 4 latent frames overlapping by 2: 21 frames counting the 5 shared → 2 windows.
    let args =
        ["-p", "it walks on", "--extend", clip, "--frames", "21", "--base-frames", "13", "--overlap-history", "5"];
    let out = dir.path().join("longer.mp4");
    let run = generate("v2v_pipeline", &out, &args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(frames_of(&out), (11 + 21 - 5, 48, 32));
    let record = sidecar(&out);
    assert_eq!(record["settings"]["continuation"], "pixel", "SkyReels-V3's pixel round trip is the default");
    assert_eq!(record["settings"]["transition"], serde_json::Value::Null);
    // Killed after the first window is published, then resumed: the same video.
    let killed = dir.path().join("killed.mp4");
    assert_eq!(std::fs::read(&out).unwrap(), killed_and_resumed("v2v_pipeline", &killed, &args, "published:1"));
}

#[test]
fn a_video_extension_model_cuts_to_a_new_shot() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    write_clip(&clip, 10);
    let clip = clip.to_str().unwrap();
    let out = dir.path().join("cut.mp4");
    let run = generate(
        "v2v_pipeline",
        &out,
        &["-p", "a close-up", "--extend", clip, "--transition", "zoom-in-cut", "--frames", "49"],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // The clip, then the whole new shot (2 s), cut from the clip's last 9 frames.
    assert_eq!(frames_of(&out), (10 + 49, 48, 32));
    let settings = &sidecar(&out)["settings"];
    assert_eq!(settings["transition"], "[ZOOM_IN_CUT]");
    assert_eq!(settings["segments"][0]["prompt"], "[ZOOM_IN_CUT] a close-up");
    assert_eq!(settings["overlap_history"], 9);
    // A tag at the start of the prompt asks for the same thing.
    let tagged = dir.path().join("tagged.mp4");
    let run =
        generate("v2v_pipeline", &tagged, &["-p", "[ZOOM_IN_CUT] a close-up", "--extend", clip, "--frames", "49"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&tagged).unwrap());
    // Killed while the new shot is decoded (the clip is committed): resumed, the same video.
    let killed = dir.path().join("killed.mp4");
    let args = ["-p", "a close-up", "--extend", clip, "--transition", "zoom-in-cut", "--frames", "49"];
    assert_eq!(std::fs::read(&out).unwrap(), killed_and_resumed("v2v_pipeline", &killed, &args, "decoded:1"));
}

#[test]
fn what_a_video_extension_model_cannot_do_is_refused_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    write_clip(&clip, 10);
    let clip = clip.to_str().unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        ("v2v_pipeline", &["-p", "x", "--extend", clip, "--transition", "wipe"], "`wipe` is not a transition"),
        ("v2v_pipeline", &["-p", "x", "--extend", clip, "--transition", "cut", "--frames", "50"], "not a shot"),
        ("v2v_pipeline", &["-p", "x"], "--extend is required"),
        ("v2v_pipeline", &["-p", "[ZOOM_IN_CUT] x", "--extend", clip, "--transition", "cut"], "keep one"),
        ("df_pipeline", &["-p", "x", "--extend", clip, "--transition", "cut"], "--transition needs a SkyReels-V3"),
    ];
    assert_refused(dir.path(), cases);
}
