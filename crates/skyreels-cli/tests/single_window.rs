//! `skyreels generate` with the non-DF models (SkyReels-V2-T2V / I2V), picked from the model
//! folder: the tiny `t2v_pipeline` and `i2v_pipeline` fixtures run end to end through the binary,
//! their outputs decoded and checked, and what only a DF model can do refused in one sentence.

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
    let dir = path.parent().unwrap().join("png_frames");
    let mut w = create_writer(&dir, 48, 32, 1.0).unwrap();
    let data = (0..48 * 32).flat_map(|i| [(i % 48 * 5) as u8, 90, (i / 48 * 7) as u8]).collect();
    w.append(&[RgbFrame::new(48, 32, data).unwrap()]).unwrap();
    w.finish().unwrap();
    std::fs::rename(dir.join("frame_000000.png"), path).unwrap();
}

fn sidecar(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{}.json", out.display())).unwrap()).unwrap()
}

#[test]
fn a_text_to_video_model_makes_one_window() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t2v.mp4");
    let run = generate("t2v_pipeline", &out, &["-p", "a red kite", "--frames", "9", "--base-frames", "13", "--overlap-history", "5"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(frames_of(&out), (9, 48, 32));
    assert_eq!(sidecar(&out)["complete"], true);
    assert!(!dir.path().join("t2v.mp4.resume").exists());
    // The same seed gives the same video.
    let again = dir.path().join("again.mp4");
    assert!(generate("t2v_pipeline", &again, &["-p", "a red kite", "--frames", "9", "--base-frames", "13", "--overlap-history", "5"])
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
fn what_only_a_df_model_can_do_is_refused_in_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("first.png");
    write_png(&image);
    let image = image.to_str().unwrap();
    let cases: &[(&str, &[&str], &str)] = &[
        ("t2v_pipeline", &["-p", "x", "--frames", "200"], "diffusion-forcing (DF) model"),
        ("t2v_pipeline", &["-p", "x", "--frames", "0"], "endless"),
        ("t2v_pipeline", &["-p", "x", "--image", image], "image-to-video (I2V)"),
        ("t2v_pipeline", &["-p", "x", "--ar-step", "2"], "--ar-step needs"),
        ("i2v_pipeline", &["-p", "x", "--frames", "9"], "--image is required"),
        ("i2v_pipeline", &["-p", "x", "--image", image, "--end-image", image], "--end-image needs"),
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
