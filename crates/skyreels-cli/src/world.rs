//! `skyreels world`: render clips of the synthetic film world the demo model learns from, with
//! their captions — to see what the training data looks like and which prompts it speaks.

use std::path::PathBuf;

use clap::Args;
use skyreels_core::media::create_writer;
use skyreels_train::world::{render_frame, sample_clip, Split, WorldConfig};

/// Flags of `skyreels world`.
#[derive(Args, Debug)]
pub struct WorldArgs {
    /// Which clip to draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `train` (no held-out combination) or `held-out` (leads with one).
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Frames in the clip.
    #[arg(long, default_value_t = 33)]
    pub frames: usize,
    /// Width and height in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Output video (.mp4, .gif or a folder); its caption goes to `<output>.caption.json`.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Replace an existing output instead of refusing.
    #[arg(long)]
    pub overwrite: bool,
}

/// The world split a `--split` flag names.
pub fn parse_split(name: &str) -> Result<Split, String> {
    match name {
        "train" => Ok(Split::Train),
        "held-out" | "heldout" | "held_out" => Ok(Split::HeldOut),
        other => Err(format!("--split `{other}` is not `train` or `held-out`")),
    }
}

/// Renders one clip and prints its prompt.
pub fn run(args: &WorldArgs) -> Result<(), String> {
    let split = parse_split(&args.split)?;
    if args.frames == 0 || args.size < 16 || !args.size.is_multiple_of(2) {
        return Err("--frames must be positive and --size an even number of at least 16 pixels".into());
    }
    if args.output.exists() && !args.overwrite {
        return Err(format!("{} already exists: choose another --output or pass --overwrite", args.output.display()));
    }
    let config = WorldConfig { width: args.size, height: args.size, frames: args.frames, ..WorldConfig::default() };
    let clip = sample_clip(args.seed, &config, split);
    let mut writer =
        create_writer(&args.output, clip.width, clip.height, clip.fps as f64).map_err(|e| e.to_string())?;
    for i in 0..clip.frames() {
        writer.append(&[render_frame(&clip, i)]).map_err(|e| e.to_string())?;
    }
    writer.finish().map_err(|e| e.to_string())?;
    let caption = serde_json::json!({ "prompt": clip.prompt(), "caption": clip.caption(), "clip": clip });
    let path = crate::generate::with_suffix(&args.output, ".caption.json");
    let text = serde_json::to_string_pretty(&caption).map_err(|e| e.to_string())?;
    crate::generate::write_atomically(&path, text.as_bytes()).map_err(|e| e.to_string())?;
    println!("{}", clip.prompt());
    Ok(())
}
