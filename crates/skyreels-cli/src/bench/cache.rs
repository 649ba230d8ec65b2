//! `skyreels bench cache`: what few-step sampling and the step caches buy and what they cost.
//!
//! For sync and async diffusion forcing it generates the same seed with 30-step guided UniPC (the
//! reference), a few-step unguided Euler run and each cache (`--cache`) at each threshold, all
//! through the same code as `skyreels generate`, and prints the model calls, the block passes
//! skipped, the wall time per second of video and the PSNR/SSIM of every run against the
//! reference. On the demo model the film-world judge also scores each configuration on
//! held-out prompts. The random-weight model has DF-1.3B's width (1536, 12 heads, FFN 8960)
//! with the demo model's VAE and text encoder; its frames show how far each run drifts from the
//! reference, not what a trained model makes of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use skyreels_core::checkpoint::{RandomWeights, Weights};
use skyreels_core::device::DeviceChoice;
use skyreels_core::media::RgbFrame;
use skyreels_core::{TransformerConfig, WanTransformer3d};
use skyreels_train::eval::judge::read_clip;
use skyreels_train::eval::{held_out_prompts, Scores};
use skyreels_train::world::WorldConfig;

use crate::eval::{generate_clip, generate_video, read_frames};
use crate::generate::demo_model_dir;

/// What to compare.
#[derive(clap::Args)]
pub struct CacheArgs {
    /// `demo` (the built-in model) or `df-1.3b-random` (random weights at DF-1.3B's width).
    #[arg(long, default_value = "demo")]
    model: String,
    /// Transformer blocks of the random model (DF-1.3B has 30).
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// TeaCache thresholds to try.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.2")]
    teacache: Vec<f64>,
    /// Frame-cache thresholds to try.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.2")]
    frames_cache: Vec<f64>,
    /// Steps of the few-step unguided Euler run.
    #[arg(long, default_value_t = 6)]
    few_steps: usize,
    /// Runs of each video; the best generation time is reported.
    #[arg(long, default_value_t = 2)]
    repeat: usize,
    /// Held-out prompts the judge scores per configuration (demo model; 0 skips the judge).
    #[arg(long, default_value_t = 8)]
    judge_prompts: usize,
    /// Folder for the generated videos (default: a folder in the system temp dir).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Also write every figure as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Where to compute: auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    device: DeviceChoice,
}

/// The prompt of the compared videos: the README's demo prompt.
const VIDEO_PROMPT: &str = "a red circle moves right on a blue background, the camera pans left";

/// One configuration: its label and the generate flags that make it.
struct Config {
    label: String,
    flags: Vec<String>,
}

/// What one configuration measured.
#[derive(serde::Serialize)]
struct Row {
    mode: &'static str,
    config: String,
    model_calls: u64,
    skipped_fraction: f64,
    seconds: f64,
    seconds_per_video_second: f64,
    psnr_db: f64,
    ssim: f64,
    judge: Option<Scores>,
}

pub fn run(args: &CacheArgs) -> Result<(), String> {
    let work = args.work.clone().unwrap_or_else(|| std::env::temp_dir().join("skyreels-bench-cache"));
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let (model_dir, video, modes) = match args.model.as_str() {
        "demo" => (
            demo_model_dir(),
            flags(&["--frames", "97"]),
            [("sync", flags(&["--ar-step", "0"])), ("async", flags(&["--ar-step", "2"]))],
        ),
        "df-1.3b-random" => (
            random_model(&work.join("df-1.3b-random"), args.layers)?,
            flags(&["--frames", "57", "--base-frames", "57", "--height", "128", "--width", "128", "--fps", "24"]),
            [("sync", flags(&["--ar-step", "0"])), ("async", flags(&["--ar-step", "5", "--causal-block-size", "5"]))],
        ),
        other => return Err(format!("unknown --model `{other}`: use demo or df-1.3b-random")),
    };
    let model = Some(model_dir.to_string_lossy().into_owned());
    let configs = configurations(args);
    let judge = args.model == "demo" && args.judge_prompts > 0;
    let clips = held_out_prompts(&WorldConfig { frames: 33, ..WorldConfig::default() }, args.judge_prompts);
    let mut rows = Vec::new();
    for (mode, mode_flags) in &modes {
        let mut reference: Option<Vec<RgbFrame>> = None;
        for config in &configs {
            let name = format!("{}-{mode}-{}", args.model, config.label).replace([' ', ',', ':', '.'], "-");
            let output = work.join(name);
            let prompt = flags(&["--prompt", VIDEO_PROMPT, "--seed", "0"]);
            let all = [video.clone(), mode_flags.clone(), config.flags.clone(), prompt].concat();
            eprintln!("{mode}: {}", config.label);
            let mut seconds = f64::INFINITY;
            let mut sidecar = serde_json::Value::Null;
            for _ in 0..args.repeat.max(1) {
                generate_video(&model, &all, &output, args.device)?;
                sidecar = read_sidecar(&output)?;
                seconds = seconds.min(sidecar["seconds"].as_f64().unwrap_or(f64::NAN));
            }
            let frames = read_frames(&output)?;
            let fps = sidecar["settings"]["fps"].as_f64().unwrap_or(16.0);
            let reference = reference.get_or_insert_with(|| frames.clone());
            let scores = if judge {
                let mut scores = Scores::default();
                for (i, clip) in clips.iter().enumerate() {
                    let clip_flags = [mode_flags.clone(), config.flags.clone()].concat();
                    let out =
                        output.with_file_name(format!("{}-clip{i:02}", output.file_name().unwrap().to_string_lossy()));
                    let clip_frames = generate_clip(&model, clip, i as u64, &clip_flags, &out, args.device)?;
                    scores.add(clip, &read_clip(&clip_frames, clip.shots[0].shot_type, None));
                }
                Some(scores)
            } else {
                None
            };
            rows.push(Row {
                mode,
                config: config.label.clone(),
                model_calls: sidecar["transformer"]["model_calls"].as_u64().unwrap_or(0),
                skipped_fraction: sidecar["transformer"]["skipped_fraction"].as_f64().unwrap_or(0.0),
                seconds,
                seconds_per_video_second: seconds / (frames.len() as f64 / fps),
                psnr_db: psnr(reference, &frames)?,
                ssim: ssim(reference, &frames)?,
                judge: scores,
            });
        }
    }
    print_table(args, &rows);
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "model": args.model, "rows": rows }))
            .map_err(|e| e.to_string())?;
        crate::generate::write_atomically(path, text.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The reference first, then few-step sampling, then each cache at each threshold.
fn configurations(args: &CacheArgs) -> Vec<Config> {
    let mut configs = vec![
        Config { label: "UniPC 30 steps, guided".into(), flags: flags(&["--steps", "30", "--sampler", "unipc"]) },
        Config {
            label: format!("Euler {} steps, unguided", args.few_steps),
            flags: flags(&["--steps", &args.few_steps.to_string(), "--sampler", "euler", "--guidance", "1"]),
        },
    ];
    let caches = args
        .teacache
        .iter()
        .map(|t| format!("teacache:{t}"))
        .chain(args.frames_cache.iter().map(|t| format!("frames:{t}")));
    for cache in caches {
        configs.push(Config {
            label: format!("UniPC 30 steps, guided, {cache}"),
            flags: flags(&["--steps", "30", "--sampler", "unipc", "--cache", &cache]),
        });
    }
    configs
}

fn read_sidecar(output: &Path) -> Result<serde_json::Value, String> {
    let path = PathBuf::from(format!("{}.json", output.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn print_table(args: &CacheArgs, rows: &[Row]) {
    println!(
        "{} model, {} threads ({}), seed 0, best of {} runs; PSNR/SSIM against the 30-step guided UniPC run of the same mode",
        args.model,
        super::threads(),
        skyreels_core::device::cpu_name(),
        args.repeat.max(1)
    );
    let judged = rows.iter().any(|r| r.judge.is_some());
    print!(
        "| mode | configuration | model calls | block passes skipped | wall time | s per video second | PSNR | SSIM |"
    );
    println!("{}", if judged { " colour | shape | direction | camera |" } else { "" });
    println!("|---|---|---|---|---|---|---|---|{}", if judged { "---|---|---|---|" } else { "" });
    for r in rows {
        let psnr = if r.psnr_db.is_infinite() { "identical".to_string() } else { format!("{:.1} dB", r.psnr_db) };
        print!(
            "| {} | {} | {} | {:.0}% | {:.1} s | {:.2} | {psnr} | {:.3} |",
            r.mode,
            r.config,
            r.model_calls,
            100.0 * r.skipped_fraction,
            r.seconds,
            r.seconds_per_video_second,
            r.ssim
        );
        match &r.judge {
            Some(s) => println!(
                " {:.0}% | {:.0}% | {:.0}% | {:.0}% |",
                s.colour.percent(),
                s.shape.percent(),
                s.direction.percent(),
                s.camera.percent()
            ),
            None => println!(),
        }
    }
}

fn check_same_video(a: &[RgbFrame], b: &[RgbFrame]) -> Result<(), String> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| (x.width, x.height) != (y.width, y.height)) {
        return Err(format!("the runs made different videos ({} and {} frames)", a.len(), b.len()));
    }
    Ok(())
}

/// Peak signal-to-noise ratio over every RGB byte of the video, in dB (infinite when equal).
fn psnr(reference: &[RgbFrame], video: &[RgbFrame]) -> Result<f64, String> {
    check_same_video(reference, video)?;
    let (mut sum, mut count) = (0.0f64, 0usize);
    for (a, b) in reference.iter().zip(video) {
        for (&x, &y) in a.data.iter().zip(&b.data) {
            let d = x as f64 - y as f64;
            sum += d * d;
        }
        count += a.data.len();
    }
    let mse = sum / count.max(1) as f64;
    Ok(if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() })
}

/// Mean structural similarity of the frames' luma (BT.601), with the usual 11×11 Gaussian
/// window (σ = 1.5) and constants `(0.01·255)²`, `(0.03·255)²`; windows stay inside the frame.
fn ssim(reference: &[RgbFrame], video: &[RgbFrame]) -> Result<f64, String> {
    check_same_video(reference, video)?;
    let frames: Vec<f64> = reference.iter().zip(video).map(|(a, b)| frame_ssim(a, b)).collect();
    Ok(frames.iter().sum::<f64>() / frames.len().max(1) as f64)
}

fn luma(frame: &RgbFrame) -> Vec<f64> {
    frame.data.chunks_exact(3).map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).collect()
}

fn frame_ssim(a: &RgbFrame, b: &RgbFrame) -> f64 {
    const RADIUS: usize = 5;
    let (w, h) = (a.width as usize, a.height as usize);
    let (x, y) = (luma(a), luma(b));
    let weights: Vec<f64> = (0..=2 * RADIUS)
        .map(|i| {
            let d = i as f64 - RADIUS as f64;
            (-d * d / (2.0 * 1.5 * 1.5)).exp()
        })
        .collect();
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (mut total, mut windows) = (0.0, 0usize);
    for cy in RADIUS..h.saturating_sub(RADIUS) {
        for cx in RADIUS..w.saturating_sub(RADIUS) {
            let (mut sw, mut mx, mut my, mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
            for (j, wy) in weights.iter().enumerate() {
                for (i, wx) in weights.iter().enumerate() {
                    let k = (cy + j - RADIUS) * w + cx + i - RADIUS;
                    let wt = wy * wx;
                    sw += wt;
                    mx += wt * x[k];
                    my += wt * y[k];
                    xx += wt * x[k] * x[k];
                    yy += wt * y[k] * y[k];
                    xy += wt * x[k] * y[k];
                }
            }
            let (mx, my) = (mx / sw, my / sw);
            let (vx, vy, cov) = (xx / sw - mx * mx, yy / sw - my * my, xy / sw - mx * my);
            total += ((2.0 * mx * my + c1) * (2.0 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
            windows += 1;
        }
    }
    if windows == 0 {
        1.0
    } else {
        total / windows as f64
    }
}

/// Records every tensor a model asks a weight source for, to save them as a checkpoint.
struct Recorder<'a> {
    source: &'a dyn Weights,
    seen: std::cell::RefCell<BTreeMap<String, Tensor>>,
}

impl Weights for Recorder<'_> {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> skyreels_core::Result<Tensor> {
        let t = self.source.tensor(name, shape, DType::F32, device)?;
        self.seen.borrow_mut().insert(name.to_string(), t.clone());
        Ok(t.to_dtype(dtype)?)
    }
}

/// A pipeline folder with a random-weight transformer of DF-1.3B's width and `layers` blocks,
/// beside copies of the demo model's VAE, text encoder, tokenizer and scheduler (made once).
fn random_model(dir: &Path, layers: usize) -> Result<PathBuf, String> {
    let demo = demo_model_dir();
    let config = {
        let mut c = TransformerConfig::preset("df-1.3b").ok_or("the df-1.3b preset is missing")?;
        c.num_layers = layers.max(1);
        let text_config = demo.join("text_encoder/config.json");
        let text: serde_json::Value = std::fs::read_to_string(&text_config)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| format!("cannot read {}", text_config.display()))?;
        c.text_dim = text["d_model"].as_u64().ok_or("the demo text encoder has no d_model")? as usize;
        c
    };
    let io = |e: std::io::Error| format!("cannot write the random model in {}: {e}", dir.display());
    let marker = dir.join("transformer").join(format!("layers-{}", config.num_layers));
    if marker.exists() {
        write_random_defaults(dir).map_err(io)?;
        return Ok(dir.to_path_buf());
    }
    let _ = std::fs::remove_dir_all(dir);
    for part in ["vae", "text_encoder", "tokenizer", "scheduler"] {
        std::fs::create_dir_all(dir.join(part)).map_err(io)?;
        for entry in std::fs::read_dir(demo.join(part)).map_err(io)? {
            let entry = entry.map_err(io)?;
            std::fs::copy(entry.path(), dir.join(part).join(entry.file_name())).map_err(io)?;
        }
    }
    std::fs::copy(demo.join("model_index.json"), dir.join("model_index.json")).map_err(io)?;
    write_random_defaults(dir).map_err(io)?;
    let random = RandomWeights::new(0);
    let recorder = Recorder { source: &random, seen: Default::default() };
    WanTransformer3d::from_weights(config.clone(), &recorder, &Device::Cpu, DType::F32).map_err(|e| e.to_string())?;
    skyreels_train::train::export::write_transformer(&dir.join("transformer"), &config, &recorder.seen.into_inner())
        .map_err(|e| format!("cannot write the random transformer: {e}"))?;
    std::fs::write(&marker, "").map_err(io)?;
    Ok(dir.to_path_buf())
}

/// The random model's `skyreels.json`: DF-1.3B's guidance and shift, 512 text tokens (flags
/// such as the few-step run's `--guidance 1` still override them).
fn write_random_defaults(dir: &Path) -> std::io::Result<()> {
    let defaults = serde_json::json!({
        "about": "Random weights at SkyReels-V2-DF-1.3B's width, for `skyreels bench cache` only.",
        "generation_defaults": { "text_length": 512, "negative_prompt": "", "guidance": 6.0, "shift": 8.0 }
    });
    std::fs::write(dir.join("skyreels.json"), defaults.to_string())
}
