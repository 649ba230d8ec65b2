//! `--device` and `skyreels check` as a user meets them: the check passes on the shipped
//! fixtures, fails on a perturbed one, and devices that cannot be used are refused with one
//! sentence, a non-zero status and no output left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../skyreels-core/tests/fixtures"))
}

fn skyreels(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skyreels")).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `skyreels generate` of a 5-frame 32×32 clip from the tiny fixture pipeline into `out`, with
/// `extra` flags.
fn tiny_generate(out: &Path, extra: &[&str]) -> Output {
    let model = fixtures().join("models/df_pipeline");
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", "x", "--frames", "5"];
    args.extend(["--height", "32", "--width", "32", "--steps", "2", "--text-length", "16", "--quiet"]);
    args.extend(["-o", out.to_str().unwrap()]);
    args.extend_from_slice(extra);
    skyreels(&args)
}

/// A non-zero status and exactly one `error:` line mentioning `mentions`.
fn assert_refused(out: &Output, mentions: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "should fail: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected, got: {err}");
    assert!(err.starts_with("error: ") && err.contains(mentions), "`{err}` should mention `{mentions}`");
}

#[test]
fn check_passes_on_the_shipped_fixtures() {
    let dir = fixtures();
    let out = skyreels(&["check", "--device", "cpu", "--fixtures", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", stderr(&out));
    assert!(stdout.contains("device: cpu"), "{stdout}");
    for component in ["| transformer |", "| text encoder |", "| vae |", "| df pipeline |"] {
        assert!(stdout.contains(component), "{component} missing from\n{stdout}");
    }
    assert!(stdout.contains("all 32 measurements within their bounds"), "{stdout}");
    assert!(!stdout.contains("FAIL"));
}

/// One VAE output scaled by 1.0001 (a 1e-4 error against a 1e-5 bound): the check fails and
/// names it.
#[test]
fn check_fails_on_a_perturbed_fixture() {
    let shipped = fixtures();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "vae.safetensors" {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let device = candle_core::Device::Cpu;
    let mut tensors = candle_core::safetensors::load(shipped.join("vae.safetensors"), &device).unwrap();
    let mu = (tensors["enc.mu"].clone() * 1.0001).unwrap();
    tensors.insert("enc.mu".into(), mu);
    candle_core::safetensors::save(&tensors, dir.path().join("vae.safetensors")).unwrap();

    let out = skyreels(&["check", "--device", "cpu", "--only", "vae", "--fixtures", dir.path().to_str().unwrap()]);
    assert_refused(&out, "exceed their bounds");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("FAIL").count(), 2, "{stdout}");
    assert!(stdout.lines().filter(|l| l.contains("FAIL")).all(|l| l.contains("encode |")), "{stdout}");
    assert!(stderr(&out).contains("vae"));
}

#[test]
fn check_refuses_a_folder_that_is_not_the_fixtures_and_an_unknown_component() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(
        &skyreels(&["check", "--device", "cpu", "--fixtures", dir.path().to_str().unwrap()]),
        "fixture folder",
    );
    assert_refused(&skyreels(&["check", "--device", "cpu", "--only", "clip"]), "not a component");
}

/// Unknown devices, GPUs this build lacks and GPU indices that do not exist: one sentence each,
/// before any work, on every command that computes.
#[test]
fn devices_that_cannot_be_used_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("video.mp4");
    let generate = |device: &str| tiny_generate(&out, &["--device", device]);
    let gpu_missing = if cfg!(feature = "cuda") { "there is no CUDA device" } else { "built without CUDA support" };
    for (device, mentions) in [("tpu", "unknown device `tpu`"), ("cuda:x", "unknown device"), ("cuda", gpu_missing)] {
        assert_refused(&generate(device), mentions);
        assert!(!out.exists() && !Path::new(&format!("{}.json", out.display())).exists());
        assert_refused(&skyreels(&["check", "--device", device]), mentions);
        assert_refused(&skyreels(&["bench", "transformer", "--layers", "1", "--device", device]), mentions);
        assert_refused(&skyreels(&["eval", "adherence", "--prompts", "1", "--device", device]), mentions);
    }
    assert_refused(
        &generate("cuda:64"),
        if cfg!(feature = "cuda") { "there is no CUDA device 64" } else { gpu_missing },
    );
    if !cfg!(feature = "metal") {
        assert_refused(&generate("metal"), "built without Metal support");
    }
    let text_on_gpu = tiny_generate(&out, &["--device", "cpu", "--text-encoder-device", "cuda:3"]);
    assert_refused(&text_on_gpu, "CUDA");
    assert!(!out.exists());
    // Offloading needs a GPU to offload from; an unknown mode is named.
    let offload = |mode: &str| tiny_generate(&out, &["--device", "cpu", "--offload", mode]);
    assert_refused(&offload("blocks"), "computes on the CPU");
    assert_refused(&offload("disk"), "not one of none, model, blocks");
    assert!(!out.exists());
}

/// The sidecar records where the video was made.
#[test]
fn the_sidecar_records_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.gif");
    let run = tiny_generate(&out, &["--device", "cpu", "--text-encoder-device", "cpu"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}.json", out.display())).unwrap()).unwrap();
    assert_eq!(sidecar["device"]["device"], "cpu");
    assert!(sidecar["device"]["name"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(sidecar["peak_device_memory_mib"].is_null(), "the CPU has no device memory: {sidecar}");
}

/// FP8 block weights and a bf16 VAE each change the video's bytes and are recorded in the
/// sidecar (and so kept by `--resume`); unknown values are refused.
#[test]
fn fp8_weights_and_a_bf16_vae_generate_and_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str, weights: &str| {
        let out = dir.path().join(name);
        (tiny_generate(&out, &["--seed", "3", "--weights", weights]), out)
    };
    let (native, native_out) = run("native.gif", "native");
    let (fp8, fp8_out) = run("fp8.gif", "fp8");
    assert!(native.status.success() && fp8.status.success(), "{}", stderr(&fp8));
    let (a, b) = (std::fs::read(&native_out).unwrap(), std::fs::read(&fp8_out).unwrap());
    assert_ne!(a, b, "fp8 weights must change the computation");
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}.json", fp8_out.display())).unwrap()).unwrap();
    assert_eq!(sidecar["settings"]["weights"], "fp8");
    let (bad, bad_out) = run("bad.gif", "int3");
    assert_refused(&bad, "not one of native, fp8");
    assert!(!bad_out.exists());
    // A bf16 VAE decodes the same latents to nearby, not equal, frames; it is recorded too.
    let bf16_out = dir.path().join("bf16-vae.gif");
    let bf16 = tiny_generate(&bf16_out, &["--seed", "3", "--vae-dtype", "bf16"]);
    assert!(bf16.status.success(), "{}", stderr(&bf16));
    assert_ne!(std::fs::read(&bf16_out).unwrap(), a);
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}.json", bf16_out.display())).unwrap()).unwrap();
    assert_eq!(sidecar["settings"]["vae_dtype"], "bf16");
    assert_refused(&tiny_generate(&bad_out, &["--vae-dtype", "f16"]), "not one of f32, bf16");
}
