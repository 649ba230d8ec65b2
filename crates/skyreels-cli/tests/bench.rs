//! `skyreels bench … --json`, what `tools/bench_vs_torch.sh` reads: one JSON object whose keys
//! are the table's columns in snake case, and bad sizes refused in one sentence.

use std::process::{Command, Output};

fn skyreels(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skyreels")).args(args).output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {text}"))
}

#[test]
fn vae_benchmarks_report_json_with_the_measured_frames() {
    let encode = json(&skyreels(&["bench", "vae-encode", "--frames", "5", "--height", "8", "--width", "16", "--json"]));
    assert_eq!(encode["video_frames"], 5);
    assert_eq!(encode["latent_frames"], 2, "1 + 4 frames make 2 latent frames");
    assert_eq!(encode["size"], "16×8");
    assert!(encode["seconds"].as_f64().is_some_and(|s| s > 0.0), "{encode}");
    assert!(encode["peak_rss_mib"].as_f64().is_some_and(|m| m > 0.0), "{encode}");
    assert!(encode["title"].as_str().unwrap().contains("VAE encode in f32"));

    let decode =
        json(&skyreels(&["bench", "vae-decode", "--latent-frames", "2", "--height", "1", "--width", "2", "--json"]));
    assert_eq!(decode["latent_frames"], 2);
    assert_eq!(decode["video_frames"], 5);
    assert!(decode["seconds"].as_f64().is_some_and(|s| s > 0.0), "{decode}");
}

#[test]
fn bad_sizes_are_refused_in_one_sentence() {
    for args in [
        &["bench", "vae-encode", "--frames", "4"][..],
        &["bench", "vae-encode", "--height", "12"],
        &["bench", "vae-decode", "--latent-frames", "0"],
        &["bench", "text-encoder", "--layers", "0"],
    ] {
        let out = skyreels(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
}
