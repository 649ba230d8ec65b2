//! `skyreels info` driven as a real binary on the fixture checkpoints and on broken copies.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../skyreels-core/tests/fixtures/models")
}

fn skyreels(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skyreels")).args(args).output().expect("run skyreels")
}

fn info(dir: &Path) -> Output {
    skyreels(&["info".as_ref(), dir.as_os_str()])
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Asserts a failure with exactly one `error:` line on stderr that contains every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stdout: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "expected one line, got: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
    }
}

#[test]
fn reports_kind_and_parameter_count_of_every_fixture() {
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(models_dir().join("param_counts.json")).unwrap()).unwrap();
    let cases = [
        ("df_fps", "diffusion-forcing DiT with fps embedding"),
        ("t2v", "text-to-video / diffusion-forcing DiT"),
        ("i2v", "image-to-video DiT (CLIP image branch)"),
    ];
    for (model, kind) in cases {
        for naming in ["diffusers", "original"] {
            let dir = models_dir().join(format!("{model}_{naming}"));
            let out = info(&dir);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{model}_{naming}: {}", String::from_utf8_lossy(&out.stderr));
            assert!(stdout.contains(&format!("kind:         {kind}\n")), "{model}_{naming}: {stdout}");
            assert!(stdout.contains("parameters:   "), "{stdout}");
            assert!(stdout.contains("dtype:        f32 100.0%"), "{stdout}");
            let json = skyreels(&["info".as_ref(), dir.as_os_str(), "--json".as_ref()]);
            let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
            assert_eq!(json["parameters"], counts[model], "{model}_{naming}: parameter count");
        }
    }
    let out = info(&models_dir().join("df_fps_original"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("release:      SkyReels-V2-DF-1.3B-540P"));
}

#[test]
fn json_output_and_diffusers_pipeline_root() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&models_dir().join("t2v_diffusers"), &tmp.path().join("transformer"));
    std::fs::write(tmp.path().join("model_index.json"), "{}").unwrap();
    let out = skyreels(&["info".as_ref(), tmp.path().as_os_str(), "--json".as_ref()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["kind"], "TextToVideo");
    assert_eq!(json["naming"], "diffusers");
    assert_eq!(json["config"]["num_heads"], 3);
    assert_eq!(json["config"]["head_dim"], 20);
}

#[test]
fn truncated_shard_is_a_one_line_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&models_dir().join("df_fps_original"), tmp.path());
    let shard = tmp.path().join("model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(len / 2).unwrap();
    assert_one_line_error(&info(tmp.path()), &["model-00002-of-00002.safetensors", "truncated"]);
}

#[test]
fn corrupted_header_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&models_dir().join("t2v_original"), tmp.path());
    let shard = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[8..24].copy_from_slice(b"this is not json");
    std::fs::write(&shard, &bytes).unwrap();
    assert_one_line_error(&info(tmp.path()), &["model.safetensors", "not a valid safetensors file"]);
    // A header length far beyond the file.
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&shard, &bytes).unwrap();
    assert_one_line_error(&info(tmp.path()), &["model.safetensors"]);
    std::fs::write(&shard, b"tiny").unwrap();
    assert_one_line_error(&info(tmp.path()), &["model.safetensors", "only 4 bytes"]);
}

#[test]
fn missing_or_empty_directories_and_bad_configs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    assert_one_line_error(&info(&tmp.path().join("nope")), &["nope"]);
    assert_one_line_error(&info(tmp.path()), &["no *.safetensors"]);
    copy_dir(&models_dir().join("t2v_original"), tmp.path());
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    assert_one_line_error(&info(tmp.path()), &["config.json"]);
    std::fs::write(tmp.path().join("config.json"), "{\"dim\": 60}").unwrap();
    assert_one_line_error(&info(tmp.path()), &["config.json", "num_heads"]);
    std::fs::write(tmp.path().join("config.json"), "{not json").unwrap();
    assert_one_line_error(&info(tmp.path()), &["not valid JSON"]);
}

#[test]
fn unknown_flags_are_rejected() {
    let out = skyreels(&["info".as_ref(), "--frobnicate".as_ref()]);
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}

#[test]
fn pipeline_folders_name_their_pipeline_and_clip_encoder() {
    let out = info(&models_dir().join("i2v_pipeline"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("pipeline:     image-to-video (I2V)"), "{text}");
    // 14,016 = sum(p.numel()) of the transformers CLIPVisionModel in clip_hf_b.
    assert!(
        text.contains("CLIP encoder: ViT, 35 px in 7 px patches, width 24 = 2 heads") && text.contains("14,016"),
        "{text}"
    );
    let t2v = info(&models_dir().join("t2v_pipeline"));
    assert!(String::from_utf8_lossy(&t2v.stdout).contains("pipeline:     text-to-video (T2V)"));
    let r2v = String::from_utf8_lossy(&info(&models_dir().join("r2v_pipeline")).stdout).to_string();
    assert!(r2v.contains("pipeline:     reference-to-video (R2V)") && r2v.contains("parameters:   48,832"), "{r2v}");
    let v2v = String::from_utf8_lossy(&info(&models_dir().join("v2v_pipeline")).stdout).to_string();
    assert!(v2v.contains("pipeline:     video-extension (V2V)") && v2v.contains("parameters:   48,832"), "{v2v}");
    let a2 = String::from_utf8_lossy(&info(&models_dir().join("a2_pipeline")).stdout).to_string();
    assert!(a2.contains("pipeline:     elements-to-video (A2)") && a2.contains("CLIP encoder:"), "{a2}");
    let json = skyreels(&["info".as_ref(), models_dir().join("i2v_pipeline").as_os_str(), "--json".as_ref()]);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (value["pipeline"].as_str(), value["image_encoder"]["parameters"].as_u64()),
        (Some("image_to_video"), Some(14016))
    );
}
