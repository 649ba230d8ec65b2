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

fn generate(model: &str, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyreels"));
    cmd.args(["generate", "--model", &fixture(model), "-o", out.to_str().unwrap()]);
    cmd.args(["--height", "32", "--width", "48", "--steps", "3", "--seed", "7", "--text-length", "16", "--quiet"]);
    cmd.args(extra);
    cmd.output().unwrap()
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
        ("i2v_pipeline", &["-p", "x", "--frames", "9"], "--image is required"),
        ("i2v_pipeline", &["-p", "x", "--image", image, "--end-image", image], "--end-image needs"),
        ("i2v_pipeline", &["-p", "x", "--image", unreadable], "not a readable image"),
        ("r2v_pipeline", &five_refs, "at most 4 reference images"),
        ("r2v_pipeline", &["-p", "x"], "--ref is required"),
        ("r2v_pipeline", &["-p", "x", "--ref", unreadable], "--ref"),
        ("r2v_pipeline", &["-p", "x", "--ref", image, "--image", image], "give a reference-to-video (R2V) model"),
        ("t2v_pipeline", &["-p", "x", "--ref", image], "--ref needs a SkyReels-V3 reference-to-video (R2V) model"),
        ("df_pipeline", &["-p", "x", "--ref", image], "this is a diffusion-forcing (DF) model"),
    ];
    for (model, args, mentions) in cases {
        let out = dir.path().join("refused.mp4");
        let run = generate(model, &out, args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{model} {args:?} should fail");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(mentions), "`{stderr}` should mention `{mentions}`");
        assert!(!out.exists());
    }
}
