//! `skyreels eval`: the automatic judge of the film world, run on videos the model generates.
//!
//! `adherence` generates one clip per held-out prompt (or renders it, with `--ground-truth`)
//! and scores what the judge reads against the prompt; `stability` generates one long video
//! (or reads one) and measures it window by window.

use std::path::{Path, PathBuf};

use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use skyreels_core::device::DeviceChoice;
use skyreels_core::media::{open_video, RgbFrame};
use skyreels_core::models::WanVae;
use skyreels_core::pipelines::continuation::{from_rgb_frames, to_rgb_frames};
use skyreels_train::eval::judge::read_clip;
use skyreels_train::eval::{is_stable, prompt_set, Scores, StabilityMeter, Tally, WindowStats};
use skyreels_train::world::{render_frame, ClipSpec, Colour, Split, WorldConfig};

use crate::generate::{self, demo_model_dir, GenerateArgs};

/// `skyreels eval` subcommands.
#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Prompt adherence (colour, shape, size, action, direction, camera) and temporal
    /// consistency over held-out attribute combinations.
    Adherence(AdherenceArgs),
    /// Long-horizon stability of one long generation, window by window.
    Stability(StabilityArgs),
}

/// Flags of `skyreels eval adherence`.
#[derive(Args, Debug)]
pub struct AdherenceArgs {
    /// Model directory (default: the built-in demo model).
    #[arg(long)]
    pub model: Option<String>,
    /// Prompts in the set.
    #[arg(long, default_value_t = 40)]
    pub prompts: usize,
    /// The prompt set: `held-out` (attribute combinations no training clip has: what the
    /// targets are judged on) or `train` (combinations the model was trained on, in other clips:
    /// the gap to `held-out` is what it fails to compose rather than to draw).
    #[arg(long, default_value = "held-out")]
    pub split: String,
    /// Judge this one prompt of the film world's grammar instead of a prompt set (e.g. the
    /// README's), generated with `--seeds` seeds from `--seed` on.
    #[arg(long, conflicts_with_all = ["prompts", "split"])]
    pub prompt: Option<String>,
    /// With `--prompt`: how many seeds to generate it with.
    #[arg(long, default_value_t = 5, requires = "prompt")]
    pub seeds: usize,
    /// Frames per clip (the film world's clip length).
    #[arg(long, default_value_t = 33)]
    pub frames: usize,
    /// Sampling steps (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale (default: the model's).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Seed of the first clip; clip `i` uses `seed + i`.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Judge renders of the prompts instead of generations: the judge's own ceiling.
    #[arg(long)]
    pub ground_truth: bool,
    /// With `--ground-truth`: pass each render through the model's VAE (encode, then decode)
    /// before judging it. This is the ceiling of any transformer trained on that VAE's latents.
    #[arg(long, requires = "ground_truth")]
    pub through_vae: bool,
    /// Folder for the generated clips (default: a folder in the system temp dir).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Also write the scores and every reading as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Where to compute (generation and the VAE): auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    pub device: DeviceChoice,
}

/// Flags of `skyreels eval stability`.
#[derive(Args, Debug)]
pub struct StabilityArgs {
    /// Model directory (default: the built-in demo model).
    #[arg(long)]
    pub model: Option<String>,
    /// Prompt of the long generation; its first colour word names the subject to follow (with
    /// `--video` and no prompt, the dominant subject colour of the first window is followed).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Frames to generate (961 = 60 s at 16 fps).
    #[arg(long, default_value_t = 961)]
    pub frames: usize,
    /// Window of the stability figures, in frames.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Seed of the generation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compare sync and async diffusion forcing with latent and pixel continuation (four
    /// generations) instead of one generation with `--ar-step` and `--continuation`.
    #[arg(long)]
    pub compare: bool,
    /// Asynchronous diffusion forcing step (0 = synchronous).
    #[arg(long, default_value_t = 0)]
    pub ar_step: usize,
    /// `latent` or `pixel` continuation between windows.
    #[arg(long, default_value = "latent")]
    pub continuation: String,
    /// Judge this existing video instead of generating one.
    #[arg(long, conflicts_with = "compare")]
    pub video: Option<PathBuf>,
    /// Folder for the generated videos (default: a folder in the system temp dir).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Also write every window's figures as JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Where to compute (generation and the VAE): auto, cpu, cuda, cuda:N, metal.
    #[arg(long, default_value = "auto", value_parser = crate::device::parse::<DeviceChoice>)]
    pub device: DeviceChoice,
}

/// Refuses a report path whose folder does not exist, before any work.
fn check_report_folder(report: &Option<PathBuf>) -> Result<(), String> {
    match report.as_deref().and_then(Path::parent).filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) if !folder.is_dir() => Err(format!("the folder {} for --report does not exist", folder.display())),
        _ => Ok(()),
    }
}

/// Runs an eval subcommand.
pub fn run(command: &EvalCommand) -> Result<(), String> {
    // A device that cannot be used is refused before any clip is rendered or generated.
    let device = match command {
        EvalCommand::Adherence(args) => args.device,
        EvalCommand::Stability(args) => args.device,
    };
    crate::device::open(device)?;
    check_report_folder(match command {
        EvalCommand::Adherence(args) => &args.report,
        EvalCommand::Stability(args) => &args.report,
    })?;
    match command {
        EvalCommand::Adherence(args) => adherence(args),
        EvalCommand::Stability(args) => stability(args),
    }
}

/// Parses `skyreels generate` flags, so evaluation runs exactly what a user runs.
#[derive(Parser)]
struct GenerateFlags {
    #[command(flatten)]
    args: GenerateArgs,
}

/// Generates with the `generate` flags given, through the same code as `skyreels generate`.
pub(crate) fn generate_video(
    model: &Option<String>,
    flags: &[String],
    output: &Path,
    device: DeviceChoice,
) -> Result<(), String> {
    let mut argv = vec!["generate".to_string(), "--device".to_string(), device.to_string()];
    if let Some(model) = model {
        argv.extend(["--model".to_string(), model.clone()]);
    }
    argv.extend(flags.iter().cloned());
    argv.extend(["--overwrite", "--progress", "none", "-o"].map(String::from));
    argv.push(output.to_string_lossy().into_owned());
    let parsed = GenerateFlags::try_parse_from(&argv).map_err(|e| format!("eval built bad generate flags: {e}"))?;
    generate::run(parsed.args).map_err(|e| e.to_string())
}

/// Generates `clip`'s prompt at its length with `seed` and extra generate `flags` into
/// `output`, and reads the frames back.
pub(crate) fn generate_clip(
    model: &Option<String>,
    clip: &skyreels_train::world::ClipSpec,
    seed: u64,
    flags: &[String],
    output: &Path,
    device: DeviceChoice,
) -> Result<Vec<RgbFrame>, String> {
    let mut all = vec![
        "--prompt".to_string(),
        clip.prompt(),
        "--frames".into(),
        clip.frames().to_string(),
        "--seed".into(),
        seed.to_string(),
    ];
    all.extend(flags.iter().cloned());
    generate_video(model, &all, output, device)?;
    read_frames(output)
}

/// A video's frames.
pub(crate) fn read_frames(path: &Path) -> Result<Vec<RgbFrame>, String> {
    let reader = open_video(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    reader.map(|f| f.map_err(|e| format!("cannot read {}: {e}", path.display()))).collect()
}

fn work_dir(work: &Option<PathBuf>, name: &str) -> Result<PathBuf, String> {
    let dir = work
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("skyreels-eval-{name}-{}", std::process::id())));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn write_report(path: &Option<PathBuf>, value: &serde_json::Value) -> Result<(), String> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
        crate::generate::write_atomically(path, text.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn adherence(args: &AdherenceArgs) -> Result<(), String> {
    if args.prompts == 0 || args.seeds == 0 || args.frames < 9 {
        return Err("--prompts and --seeds must be positive and --frames at least 9".into());
    }
    let split = crate::world::parse_split(&args.split)?;
    let world = WorldConfig { frames: args.frames, ..WorldConfig::default() };
    let clips = match &args.prompt {
        Some(prompt) => vec![ClipSpec::from_prompt(prompt, &world).map_err(|e| e.to_string())?; args.seeds],
        None => prompt_set(&world, split, args.prompts),
    };
    let work = if args.ground_truth { None } else { Some(work_dir(&args.work, "adherence")?) };
    let vae = if args.through_vae { Some(load_vae(&args.model, args.device)?) } else { None };
    let mut scores = Scores::default();
    let mut readings = Vec::new();
    for (i, clip) in clips.iter().enumerate() {
        let frames = match &work {
            None => {
                let rendered: Vec<RgbFrame> = (0..clip.frames()).map(|k| render_frame(clip, k)).collect();
                match &vae {
                    Some(vae) => round_trip(vae, &rendered)?,
                    None => rendered,
                }
            }
            Some(dir) => {
                let mut flags = Vec::new();
                if let Some(steps) = args.steps {
                    flags.extend(["--steps".to_string(), steps.to_string()]);
                }
                if let Some(guidance) = args.guidance {
                    flags.extend(["--guidance".to_string(), guidance.to_string()]);
                }
                let output = dir.join(format!("clip-{i:03}"));
                generate_clip(&args.model, clip, args.seed + i as u64, &flags, &output, args.device)?
            }
        };
        let reading = read_clip(&frames, clip.shots[0].shot_type, None);
        scores.add(clip, &reading);
        eprintln!("[{}/{}] {}", i + 1, clips.len(), clip.prompt());
        readings.push(serde_json::json!({ "prompt": clip.prompt(), "clip": clip, "reading": reading }));
    }
    let what = match (args.ground_truth, args.through_vae) {
        (true, true) => "ground-truth renders through the model's VAE",
        (true, false) => "ground-truth renders",
        _ => "generated clips",
    };
    let set = match &args.prompt {
        Some(prompt) => format!("\"{prompt}\", {} seeds from {}", args.seeds, args.seed),
        None if split == Split::Train => format!("{} prompts of trained combinations", scores.clips),
        None => format!("{} held-out prompts", scores.clips),
    };
    print_scores(&scores, &format!("{set} ({what})"));
    write_report(&args.report, &serde_json::json!({ "scores": scores, "clips": readings }))
}

/// The VAE of `model` (default: the built-in demo model).
fn load_vae(model: &Option<String>, device: DeviceChoice) -> Result<(WanVae, Device), String> {
    let dir = model.as_ref().map_or_else(demo_model_dir, PathBuf::from);
    let (device, _) = crate::device::open(device)?;
    let vae = WanVae::load(&dir, &device).map_err(|e| format!("cannot load the VAE of {}: {e}", dir.display()))?;
    Ok((vae, device))
}

/// `frames` encoded and decoded again by `vae`.
fn round_trip((vae, device): &(WanVae, Device), frames: &[RgbFrame]) -> Result<Vec<RgbFrame>, String> {
    let step = || -> skyreels_core::Result<Vec<RgbFrame>> {
        let video = from_rgb_frames(frames, device)?;
        to_rgb_frames(&vae.decode(&vae.encode(&video)?)?)
    };
    step().map_err(|e| format!("the VAE round trip failed: {e}"))
}

fn print_scores(s: &Scores, what: &str) {
    println!("prompt adherence on {what}");
    println!("| attribute | score | judged |");
    println!("|---|---|---|");
    let rows: [(&str, Tally); 6] = [
        ("colour", s.colour),
        ("shape", s.shape),
        ("size", s.size),
        ("action", s.action),
        ("motion direction", s.direction),
        ("camera motion", s.camera),
    ];
    for (name, tally) in rows {
        println!("| {name} | {:.1}% | {}/{} |", tally.percent(), tally.hits, tally.total);
    }
    println!("| identity kept | {:.1}% of frames | |", 100.0 * s.identity);
    println!("| flicker | {:.2} (mean abs. brightness change per frame, 0–255) | |", s.flicker);
}

/// One long-video configuration of the comparison.
struct LongRun {
    label: String,
    flags: Vec<String>,
}

fn stability(args: &StabilityArgs) -> Result<(), String> {
    if args.window == 0 {
        return Err("--window must be positive".into());
    }
    if args.frames == 0 && args.video.is_none() {
        // `generate` would take 0 as "endless", and the evaluation would never end.
        return Err("--frames must be positive: stability is judged on a finite video".into());
    }
    if let Some(video) = &args.video {
        let windows = measure(video, args.window, args.prompt.as_deref().and_then(prompted_colour))?;
        print_windows(&windows);
        println!("stable: {}", is_stable(&windows));
        return write_report(&args.report, &serde_json::json!({ "video": video, "windows": windows }));
    }
    let runs: Vec<LongRun> = if args.compare {
        [(0, "latent"), (0, "pixel"), (2, "latent"), (2, "pixel")]
            .into_iter()
            .map(|(ar, cont)| long_run(ar, cont))
            .collect()
    } else {
        vec![long_run(args.ar_step, &args.continuation)]
    };
    let prompt = args.prompt.clone().unwrap_or_else(|| DEFAULT_LONG_PROMPT.to_string());
    let subject = prompted_colour(&prompt);
    let work = work_dir(&args.work, "stability")?;
    let mut table = Vec::new();
    for run in &runs {
        let output = work.join(format!("long-{}.mp4", run.label.replace([' ', ','], "-")));
        let mut flags = vec![
            "--prompt".to_string(),
            prompt.clone(),
            "--frames".into(),
            args.frames.to_string(),
            "--seed".into(),
            args.seed.to_string(),
        ];
        flags.extend(run.flags.iter().cloned());
        let started = std::time::Instant::now();
        generate_video(&args.model, &flags, &output, args.device)?;
        let seconds = started.elapsed().as_secs_f64();
        let windows = measure(&output, args.window, subject)?;
        if !args.compare {
            print_windows(&windows);
        }
        table.push(serde_json::json!({
            "config": run.label, "video": output, "seconds": seconds,
            "stable": is_stable(&windows), "summary": summary(&windows), "windows": windows,
        }));
    }
    println!("{} frames of \"{prompt}\", windows of {} frames", args.frames, args.window);
    println!("| configuration | stable | subject seen (min) | brightness change (max) | colour drift (max) | backdrop match (min) | time |");
    println!("|---|---|---|---|---|---|---|");
    for row in &table {
        let s = &row["summary"];
        println!(
            "| {} | {} | {:.0}% | {:.1} | {:.1} | {:.0}% | {:.0} s |",
            row["config"].as_str().unwrap_or(""),
            if row["stable"].as_bool().unwrap_or(false) { "yes" } else { "no" },
            100.0 * s["min_subject_present"].as_f64().unwrap_or(0.0),
            s["max_brightness_change"].as_f64().unwrap_or(0.0),
            s["max_colour_drift"].as_f64().unwrap_or(0.0),
            100.0 * s["min_background_match"].as_f64().unwrap_or(0.0),
            row["seconds"].as_f64().unwrap_or(0.0),
        );
    }
    write_report(&args.report, &serde_json::json!({ "prompt": prompt, "frames": args.frames, "runs": table }))
}

fn long_run(ar_step: usize, continuation: &str) -> LongRun {
    let mode = if ar_step == 0 { "sync".to_string() } else { format!("async ar_step {ar_step}") };
    LongRun {
        label: format!("{mode}, {continuation} continuation"),
        flags: vec!["--ar-step".into(), ar_step.to_string(), "--continuation".into(), continuation.into()],
    }
}

/// The long video generated when no `--prompt` is given: a training-split subject that stays in
/// view, on a backdrop that shows any camera drift.
const DEFAULT_LONG_PROMPT: &str =
    "a large red circle bounces on a gray and black checkerboard background, the camera is static";

/// The subject colour a prompt names: its first colour word ("a large red circle …" → red).
fn prompted_colour(prompt: &str) -> Option<Colour> {
    prompt
        .split(|c: char| !c.is_ascii_alphabetic())
        .find_map(|word| Colour::ALL.iter().copied().find(|c| c.word().eq_ignore_ascii_case(word)))
}

/// Streams a video through the stability meter (one window in memory at a time).
fn measure(path: &Path, window: usize, subject: Option<Colour>) -> Result<Vec<WindowStats>, String> {
    let reader = open_video(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut meter = StabilityMeter::new(window, subject);
    for frame in reader {
        meter.push(frame.map_err(|e| format!("cannot read {}: {e}", path.display()))?);
    }
    Ok(meter.finish())
}

fn summary(windows: &[WindowStats]) -> serde_json::Value {
    let first = windows.first();
    let fold = |f: &dyn Fn(&WindowStats) -> f64, min: bool| {
        windows.iter().map(f).fold(if min { f64::INFINITY } else { 0.0 }, |a, b| if min { a.min(b) } else { a.max(b) })
    };
    serde_json::json!({
        "windows": windows.len(),
        "min_subject_present": fold(&|w| w.subject_present, true),
        "max_brightness_change": fold(&|w| (w.brightness - first.map_or(0.0, |f| f.brightness)).abs(), false),
        "max_colour_drift": fold(&|w| w.colour_drift, false),
        "min_background_match": fold(&|w| w.background_match, true),
    })
}

fn print_windows(windows: &[WindowStats]) {
    println!("| frames | subject seen | brightness | colour drift | backdrop match |");
    println!("|---|---|---|---|---|");
    for w in windows {
        println!(
            "| {}–{} | {:.0}% | {:.1} | {:.1} | {:.0}% |",
            w.start,
            w.start + w.frames - 1,
            100.0 * w.subject_present,
            w.brightness,
            w.colour_drift,
            100.0 * w.background_match
        );
    }
}
