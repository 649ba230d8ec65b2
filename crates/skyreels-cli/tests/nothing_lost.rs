//! Nothing a user has is lost: hard-linked outputs, `--overwrite` killed at any moment, foreign
//! or damaged resume states, two runs on one output, and hostile numbers — driving the real
//! binary on the tiny fixture pipeline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use skyreels_core::media::open_video;

fn model() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../skyreels-core/tests/fixtures/models/df_pipeline")
}

/// Small settings: 32×48, 3 steps, windows of 13 frames overlapping by 5; 29 frames = 3 windows.
fn fast(seed: u64) -> Vec<String> {
    let flags = ["--height", "32", "--width", "48", "--steps", "3", "--base-frames", "13", "--overlap-history", "5"];
    let mut v: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    v.extend(["--text-length", "16", "--frames", "29", "--quiet", "--seed"].map(String::from));
    v.push(seed.to_string());
    v
}

fn generate(out: &Path, flags: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skyreels"));
    cmd.args(["generate", "--model", model(), "-p", "a small test", "-o", out.to_str().unwrap()]).args(flags);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn resume(out: &Path) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_skyreels")).args(["generate", "--quiet", "--resume", out.to_str().unwrap()]))
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn one_sentence(out: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should have failed");
    assert!(stderr.starts_with("error: ") && stderr.trim().lines().count() == 1, "{stderr}");
    assert!(stderr.contains(mentions), "`{stderr}` should mention `{mentions}`");
}

fn frames(path: &Path) -> usize {
    let reader = open_video(path).unwrap();
    reader.inspect(|f| assert!(f.is_ok(), "{f:?}")).count()
}

/// A command as one shell line (single-quoted words; the tests' paths hold no quotes).
fn shell_line(command: &Command) -> String {
    let words = std::iter::once(command.get_program()).chain(command.get_args());
    words.map(|w| format!("'{}'", w.to_string_lossy())).collect::<Vec<_>>().join(" ")
}

fn state(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.resume", out.display()))
}

/// A straight run's bytes for `seed`.
fn reference(dir: &Path, seed: u64) -> Vec<u8> {
    let out = dir.join(format!("reference-{seed}.mp4"));
    assert_ok(&run(&mut generate(&out, &fast(seed))));
    std::fs::read(out).unwrap()
}

/// Starts a run and kills it once its first window is committed (its state is saved).
fn interrupted(out: &Path, seed: u64) {
    let mut child = generate(out, &fast(seed)).stderr(Stdio::null()).spawn().unwrap();
    // The state is saved just before a new output is published (renamed into place): wait for
    // both, or a kill between the two leaves no output for the tests to read.
    wait_until(&mut child, || state(out).exists() && out.exists());
    let _ = child.kill();
    let _ = child.wait();
    assert!(state(out).exists(), "the run finished before it could be interrupted");
}

fn wait_until(child: &mut Child, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(start.elapsed() < Duration::from_secs(120), "timed out");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_hard_linked_output_never_touches_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    std::fs::write(&input, reference(dir.path(), 1)).unwrap();
    let original = std::fs::read(&input).unwrap();
    let hard = dir.path().join("hard.mp4");
    std::fs::hard_link(&input, &hard).unwrap();
    let mut flags = fast(2);
    let at = flags.iter().position(|f| f == "--frames").unwrap();
    flags[at + 1] = "37".into();
    flags.extend(["--extend", input.to_str().unwrap(), "--overwrite"].map(String::from));
    assert_ok(&run(&mut generate(&hard, &flags)));
    assert_eq!(std::fs::read(&input).unwrap(), original, "the input was changed through its hard link");
    assert_eq!(frames(&hard), 29 + 37 - 5);
}

#[test]
fn overwrite_killed_at_any_moment_keeps_the_old_video_or_a_resumable_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut outcomes = (0, 0);
    for name in ["out.mp4", "out.gif", "frames"] {
        let made = |seed: u64| {
            let path = dir.path().join(format!("seed{seed}-{name}"));
            assert_ok(&run(&mut generate(&path, &fast(seed))));
            path
        };
        let (old_path, new_path) = (made(3), made(4));
        let (old, new) = (snapshot(&old_path), snapshot(&new_path));
        let out = dir.path().join(name);
        for delay_ms in [0, 5, 20, 50, 100, 200, 400, 800, 1600] {
            remove(&out);
            copy_output(&old_path, &out);
            let _ = std::fs::remove_file(state(&out));
            let mut flags = fast(4);
            flags.push("--overwrite".into());
            let mut child = generate(&out, &flags).stderr(Stdio::null()).spawn().unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms));
            let _ = child.kill();
            let _ = child.wait();
            let now = snapshot(&out);
            if now == old {
                outcomes.0 += 1;
                continue;
            }
            // Not the old video: then a valid new one, complete or resumable to completion.
            assert!(frames(&out) > 0, "{name} after {delay_ms} ms: neither the old nor a playable new video");
            if state(&out).exists() {
                assert_ok(&resume(&out));
            }
            assert!(snapshot(&out) == new, "{name} after {delay_ms} ms: the new video differs");
            outcomes.1 += 1;
        }
    }
    eprintln!("old kept {} times, new video {} times", outcomes.0, outcomes.1);
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "the kills never fell on both sides of the swap");
}

/// A file's bytes, or a folder's visible files with their bytes.
fn snapshot(path: &Path) -> Vec<(String, Vec<u8>)> {
    if path.is_file() {
        return vec![(String::new(), std::fs::read(path).unwrap())];
    }
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(path)
        .expect("the output vanished")
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

fn remove(path: &Path) {
    let _ = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
}

fn copy_output(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    } else {
        std::fs::copy(from, to).unwrap();
    }
}

#[test]
fn foreign_or_damaged_resume_states_are_refused_and_the_output_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let expected = reference(dir.path(), 5);
    let finished = dir.path().join("finished.mp4");
    std::fs::write(&finished, reference(dir.path(), 6)).unwrap();
    let finished_bytes = std::fs::read(&finished).unwrap();
    let a = dir.path().join("a.mp4");
    interrupted(&a, 5);
    let a_bytes = std::fs::read(&a).unwrap();
    let good_state = std::fs::read(state(&a)).unwrap();

    // Another run's state next to a finished video.
    std::fs::write(state(&finished), &good_state).unwrap();
    one_sentence(&resume(&finished), "not the video its resume state was saved with");
    assert_eq!(std::fs::read(&finished).unwrap(), finished_bytes);
    std::fs::remove_file(state(&finished)).unwrap();

    // Damage anywhere in the state: in the tensors (the end of the file) or in its numbers.
    let mut tensors = good_state.clone();
    let n = tensors.len();
    for byte in &mut tensors[n - 20..] {
        *byte ^= 0x5a;
    }
    let text = String::from_utf8_lossy(&good_state).into_owned();
    let numbers = text.replacen("\\\"windows_done\\\":1", "\\\"windows_done\\\":9", 1).into_bytes();
    assert_ne!(numbers, good_state, "the test did not find windows_done in the state");
    for damaged in [tensors, numbers] {
        std::fs::write(state(&a), &damaged).unwrap();
        one_sentence(&resume(&a), "damaged");
        assert_eq!(std::fs::read(&a).unwrap(), a_bytes);
    }

    // The real state still finishes the video exactly.
    std::fs::write(state(&a), &good_state).unwrap();
    assert_ok(&resume(&a));
    assert!(std::fs::read(&a).unwrap() == expected);
}

#[test]
fn a_second_run_on_the_same_output_is_refused_while_the_first_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let expected = reference(dir.path(), 7);
    let out = dir.path().join("shared.mp4");
    let mut first = generate(&out, &fast(7)).stderr(Stdio::piped()).spawn().unwrap();
    let lock = dir.path().join(".shared.mp4.lock");
    wait_until(&mut first, || std::fs::read_to_string(&lock).is_ok_and(|s| !s.is_empty()));
    let mut flags = fast(8);
    flags.push("--overwrite".into());
    let second = run(&mut generate(&out, &flags));
    one_sentence(&second, &format!("process {}", first.id()));
    assert!(first.wait().unwrap().success());
    assert!(std::fs::read(&out).unwrap() == expected, "the first run's video was damaged");
}

/// Deterministic pseudo-random numbers (xorshift), so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        items[(self.0 % items.len() as u64) as usize]
    }
}

#[test]
fn random_numbers_either_run_or_fail_with_one_sentence_and_status_2() {
    let huge = ["18446744073709551615", "18446744073709551616", "99999999999999999999999", "4294967360", "1e308"];
    let odd = ["-1", "-16", "nan", "NaN", "inf", "-inf", "", "0x10", "1.5"];
    let flags: &[(&str, &[&str])] = &[
        ("--height", &["32", "16", "0", "33", "4112"]),
        ("--width", &["48", "16", "0", "40", "4112"]),
        ("--frames", &["13", "5", "1", "21", "1000001"]),
        ("--steps", &["3", "1", "0", "1001"]),
        ("--guidance", &["1", "6", "0", "1e309", "-0.5"]),
        ("--shift", &["8", "0", "0.001"]),
        ("--fps", &["24", "0", "241", "16"]),
        ("--base-frames", &["13", "1", "2", "0", "1029"]),
        ("--overlap-history", &["5", "1", "0", "13", "1029"]),
        ("--ar-step", &["0", "1", "5", "1001"]),
        ("--causal-block-size", &["1", "0", "5", "1001"]),
        ("--addnoise-condition", &["0", "20", "999", "1000"]),
        ("--seed", &["1", "0"]),
        ("--text-length", &["16", "0", "4097"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ran, mut refused) = (0, 0);
    for case in 0..60 {
        let out = dir.path().join(format!("case{case}.mp4"));
        // A valid run (the first value of each flag), with one to four flags changed.
        let mut values: Vec<&str> = flags.iter().map(|(_, v)| v[0]).collect();
        for _ in 0..1 + case % 4 {
            let i = rng.pick(&["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13"]);
            let i: usize = i.parse().unwrap();
            values[i] = match rng.pick(&["usual", "usual", "odd", "huge"]) {
                "odd" => rng.pick(&odd),
                "huge" => rng.pick(&huge),
                _ => rng.pick(flags[i].1),
            };
        }
        let mut args: Vec<String> = vec!["--quiet".into()];
        for ((flag, _), value) in flags.iter().zip(&values) {
            args.extend([flag.to_string(), value.to_string()]);
        }
        let result = run(&mut generate(&out, &args));
        match result.status.code() {
            Some(0) => {
                assert!(frames(&out) > 0, "case {case} {args:?}: no video");
                ran += 1;
            }
            Some(2) => {
                let stderr = String::from_utf8_lossy(&result.stderr);
                assert!(stderr.starts_with("error: ") && stderr.trim().lines().count() == 1, "case {case}: {stderr}");
                assert!(!out.exists() && !state(&out).exists(), "case {case} {args:?}: left a file");
                refused += 1;
            }
            code => panic!("case {case} {args:?}: status {code:?}: {}", String::from_utf8_lossy(&result.stderr)),
        }
    }
    eprintln!("{ran} ran, {refused} refused");
    assert!(refused > 0);
}

fn skyreels(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skyreels")).args(args).output().unwrap()
}

/// Copies the fixture pipeline so its files can be damaged.
fn model_copy(dir: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let to = dir.join("model");
    copy(Path::new(model()), &to);
    to
}

#[test]
fn damaged_settings_files_and_hostile_paths_get_one_sentence_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = model_copy(d);
    let out = d.join("x.mp4");
    let run_with_model = |flags: &[&str]| {
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "-p", "x", "-o", out.to_str().unwrap()];
        args.extend_from_slice(flags);
        skyreels(&args)
    };
    // A model's recommended settings are range-checked like flags; a binary file is an error.
    std::fs::write(model.join("skyreels.json"), r#"{"generation_defaults": {"text_length": 1000000000}}"#).unwrap();
    one_sentence(&run_with_model(&[]), "--text-length 1000000000");
    std::fs::write(model.join("skyreels.json"), [0xff, 0xfe, 0x00, 0x81]).unwrap();
    one_sentence(&run_with_model(&[]), "not UTF-8");
    std::fs::remove_file(model.join("skyreels.json")).unwrap();
    assert!(!out.exists());

    // A FIFO where a config belongs is refused, not read forever.
    let transformer = model.join("transformer");
    std::fs::remove_file(transformer.join("config.json")).unwrap();
    let made = Command::new("mkfifo").arg(transformer.join("config.json")).status();
    if made.is_ok_and(|s| s.success()) {
        one_sentence(&skyreels(&["info", transformer.to_str().unwrap()]), "not a regular file");
    }

    // Other commands check their numbers and paths before working.
    let missing = d.join("missing/report.json");
    one_sentence(&skyreels(&["eval", "stability", "--frames", "0"]), "--frames must be positive");
    one_sentence(&skyreels(&["eval", "adherence", "--split", "test"]), "--split `test`");
    one_sentence(
        &skyreels(&["eval", "adherence", "--ground-truth", "--prompts", "2", "--report", missing.to_str().unwrap()]),
        "does not exist",
    );
    let clip = d.join("clip.gif");
    std::fs::write(&clip, b"keep me").unwrap();
    one_sentence(&skyreels(&["world", "--frames", "5", "-o", clip.to_str().unwrap()]), "--overwrite");
    assert_eq!(std::fs::read(&clip).unwrap(), b"keep me");
    let runs = d.join("runs");
    one_sentence(&skyreels(&["train", "vae", "--batch", "0", "-o", runs.to_str().unwrap()]), "--batch");
    one_sentence(&skyreels(&["train", "vae", "--resume", "-o", runs.to_str().unwrap()]), "no training run to resume");
    one_sentence(&skyreels(&["train", "vae", "--ema-decay", "1", "-o", runs.to_str().unwrap()]), "--ema-decay");

    // A frame folder a killed run left a temporary frame in can still be overwritten.
    let frames = d.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::write(frames.join("frame_000003.png.tmp"), b"partial").unwrap();
    let mut flags = fast(9);
    flags.push("--overwrite".into());
    assert_ok(&run(&mut generate(&frames, &flags)));
}

/// A full disk, simulated with a file-size limit (`ulimit -f`, with SIGXFSZ ignored so that
/// writes fail with EFBIG as on a full disk): the run fails with one sentence, and whatever it
/// had committed resumes, once there is room again, to the bytes of an uninterrupted run.
#[test]
fn a_full_disk_leaves_the_last_commit_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut resumed, mut nothing) = (0, 0);
    for name in ["full.mp4", "full.gif"] {
        let reference_path = dir.path().join(format!("reference-{name}"));
        assert_ok(&run(&mut generate(&reference_path, &fast(10))));
        let expected = std::fs::read(&reference_path).unwrap();
        for fraction in [0.2, 0.45, 0.7, 0.95] {
            let out = dir.path().join(name);
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(state(&out));
            let limit_kib = ((expected.len() as f64 * fraction) / 1024.0).ceil() as u64;
            let script =
                format!("trap '' XFSZ; ulimit -f {limit_kib}; exec {}", shell_line(&generate(&out, &fast(10))));
            let failed = run(Command::new("bash").args(["-c", &script]));
            if failed.status.success() {
                continue; // everything fitted under this limit
            }
            let stderr = String::from_utf8_lossy(&failed.stderr);
            assert!(stderr.starts_with("error: ") && stderr.trim().lines().count() == 1, "{stderr}");
            assert!(stderr.contains("cannot write"), "{stderr}");
            if state(&out).exists() {
                assert_ok(&resume(&out));
                assert!(std::fs::read(&out).unwrap() == expected, "{name} at {limit_kib} KiB: resumed bytes differ");
                resumed += 1;
            } else {
                assert!(!out.exists(), "{name} at {limit_kib} KiB: an output without a state");
                nothing += 1;
            }
        }
    }
    eprintln!("{resumed} resumed after a full disk, {nothing} failed before their first window");
    assert!(resumed >= 2, "the limits never interrupted a run mid-video");
}

/// A crash injected at every step of a window's commit (frames appended, file committed,
/// state saved, new file published, sidecar written) and of the end of a run, in each of the first two windows,
/// for a GIF and an MP4: `--resume` always gives the bytes of an uninterrupted run.
#[test]
fn a_crash_between_any_two_write_steps_resumes_byte_identically() {
    let dir = tempfile::tempdir().unwrap();
    let mut cases = 0;
    for name in ["steps.gif", "steps.mp4"] {
        let reference_path = dir.path().join(format!("reference-{name}"));
        assert_ok(&run(&mut generate(&reference_path, &fast(11))));
        let expected = std::fs::read(&reference_path).unwrap();
        let points = [
            ("decoded", 2),
            ("committed", 2),
            ("saved", 2),
            ("published", 2),
            ("sidecar", 2),
            ("finished", 1),
            ("completed", 1),
        ];
        for (point, times) in points {
            for n in 1..=times {
                let out = dir.path().join(name);
                let _ = std::fs::remove_file(&out);
                let crashed = run(generate(&out, &fast(11)).env("SKYREELS_TEST_ABORT_AT", format!("{point}:{n}")));
                assert!(!crashed.status.success(), "{name}: the crash at {point}:{n} did not happen");
                if state(&out).exists() {
                    assert_ok(&resume(&out));
                } else {
                    // Nothing of this run was committed yet: it runs again from the start.
                    assert!(!out.exists(), "{name} {point}:{n}: an output without a state");
                    assert_ok(&run(&mut generate(&out, &fast(11))));
                }
                assert!(std::fs::read(&out).unwrap() == expected, "{name}: crash at {point}:{n} changed the bytes");
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 24);
}

/// Rewrites one F32 tensor of a safetensors file in place: `edit` gets its header entry (to
/// change the dtype) and its data.
fn edit_first_f32_tensor(file: &Path, edit: impl FnOnce(&mut serde_json::Value, &mut [u8])) {
    let mut bytes = std::fs::read(file).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let name = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, v)| *k != "__metadata__" && v["dtype"] == "F32")
        .map(|(k, _)| k.clone())
        .unwrap();
    let [start, end] = [0, 1].map(|i| header[&name]["data_offsets"][i].as_u64().unwrap() as usize);
    let data_start = 8 + header_len;
    edit(&mut header[&name], &mut bytes[data_start + start..data_start + end]);
    let mut new_header = serde_json::to_vec(&header).unwrap();
    assert!(new_header.len() <= header_len, "the edited header grew");
    new_header.resize(header_len, b' ');
    bytes[8..8 + header_len].copy_from_slice(&new_header);
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn nan_weights_integer_weights_and_a_zero_latent_std_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.mp4");
    let generate_with = |model: &Path| {
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "-p", "x", "-o", out.to_str().unwrap()];
        args.extend([
            "--quiet",
            "--height",
            "32",
            "--width",
            "48",
            "--steps",
            "1",
            "--frames",
            "5",
            "--text-length",
            "16",
        ]);
        skyreels(&args)
    };
    let nan = dir.path().join("nan");
    let model = model_copy(&nan);
    edit_first_f32_tensor(&model.join("transformer/diffusion_pytorch_model.safetensors"), |_, data| {
        data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    one_sentence(&generate_with(&model), "NaN or infinite");

    let ints = dir.path().join("ints");
    let model = model_copy(&ints);
    edit_first_f32_tensor(&model.join("vae/diffusion_pytorch_model.safetensors"), |entry, _| {
        entry["dtype"] = "I32".into();
    });
    one_sentence(&generate_with(&model), "floating point");

    let zero = dir.path().join("zero");
    let model = model_copy(&zero);
    let config_path = model.join("vae/config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let n = config["latents_std"].as_array().unwrap().len();
    config["latents_std"] = serde_json::json!(vec![0.0; n]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    one_sentence(&generate_with(&model), "latents_std");
    assert!(!out.exists());
}

/// An output that is a bind mount of an input (in a private mount namespace, as an
/// unprivileged user can make one): the new video cannot be renamed over a mount point, so the
/// run fails with one sentence, and the input is untouched.
#[test]
fn a_bind_mounted_output_never_touches_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mp4");
    std::fs::write(&input, reference(dir.path(), 12)).unwrap();
    let original = std::fs::read(&input).unwrap();
    let mounted = dir.path().join("mounted.mp4");
    std::fs::write(&mounted, b"mount point").unwrap();
    let mut flags = fast(13);
    flags.extend(["--extend", input.to_str().unwrap(), "--overwrite"].map(String::from));
    let script = format!(
        "mount --bind '{}' '{}' && exec {}",
        input.display(),
        mounted.display(),
        shell_line(&generate(&mounted, &flags))
    );
    let out = run(Command::new("unshare").args(["-rm", "sh", "-c", &script]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("unshare:") && !stderr.contains("mount:"), "no mount namespace here: {stderr}");
    one_sentence(&out, "cannot write");
    assert_eq!(std::fs::read(&input).unwrap(), original, "the input was changed through the bind mount");
}
