//! `skyreels`: the command-line front end of skyreels-rs.
//!
//! Every failure prints one line starting with `error:` and exits with status 1; nothing here
//! panics on bad input.

mod bench;
mod check;
mod device;
mod eval;
mod generate;
mod serve;
mod train;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use skyreels_core::models::transformer::{inspect, TransformerSummary};

/// SkyReels-V2 video generation in Rust.
#[derive(Parser)]
#[command(name = "skyreels", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a video: text-to-video, image-to-video, start/end frames, extension, story mode,
    /// endless length; resumable after a crash.
    Generate(Box<generate::GenerateArgs>),
    /// Describe a transformer checkpoint directory: kind, config, parameter count and dtype.
    Info {
        /// A directory with `config.json` + `*.safetensors` (SkyReels or diffusers naming), or a
        /// diffusers pipeline directory with a `transformer/` folder.
        model_dir: PathBuf,
        /// Print the summary as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Render a clip of the synthetic film world (the demo model's training data) with its caption.
    World(world::WorldArgs),
    /// Train the built-in demo model from scratch: `tokenizer`, `vae`, then `dit`.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Judge the demo model on the film world: prompt adherence and long-video stability.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Time transformer forward passes of a released configuration with random weights.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Replay the PyTorch parity fixtures on a device and print each component's error; fails
    /// when one exceeds its bound (run it to trust a new GPU, driver or build).
    Check(check::CheckArgs),
    /// Serve generation over HTTP: a job queue that survives restarts, tokens, progress
    /// events, downloads (`serve token create --name NAME` makes a token).
    Serve(Box<serve::ServeArgs>),
    /// Run jobs of a server's queue on this machine's device (SQLite on the same machine,
    /// PostgreSQL across machines).
    Worker(Box<serve::WorkerCommandArgs>),
}

fn main() -> ExitCode {
    skyreels_core::allocator::retain_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Generate(args) => return generate_exit(*args),
        Command::World(args) => world::run(&args),
        Command::Info { model_dir, json } => info(&model_dir, json),
        Command::Bench(command) => bench::run(&command),
        Command::Train(command) => train::run(&command),
        Command::Eval(command) => eval::run(&command),
        Command::Check(args) => check::run(&args),
        Command::Serve(args) => serve::serve(*args),
        Command::Worker(args) => serve::worker(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `generate`: bad settings are usage errors (status 2, like a bad flag), other failures
/// status 1.
fn generate_exit(args: generate::GenerateArgs) -> ExitCode {
    use skyreels_core::pipelines::generation::GenerationError;
    match generate::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if matches!(e, GenerationError::Settings(_)) { 2 } else { 1 })
        }
    }
}

/// Prints help/version as clap does, and any other parse error as one sentence (clap's message
/// without its usage block and tips).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let message = message.join(" ");
    eprintln!("error: {} (see `skyreels --help`)", message.trim_start_matches("error: "));
    ExitCode::from(2)
}

fn info(dir: &std::path::Path, json: bool) -> Result<(), String> {
    let summary = inspect(dir).map_err(|e| e.to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?);
    } else {
        print!("{}", render(&summary));
    }
    Ok(())
}

/// The human-readable summary, one `key: value` per line.
fn render(s: &TransformerSummary) -> String {
    let c = &s.config;
    let mut out = String::new();
    let mut line = |key: &str, value: String| out.push_str(&format!("{key:<14}{value}\n"));
    line("model:", s.dir.display().to_string());
    line("kind:", s.kind.to_string());
    if let Some(name) = &s.model_name {
        line("release:", name.clone());
    }
    line("size:", s.size_class.map_or("custom (not a released size)".into(), |c| c.to_string()));
    line("parameters:", format!("{} ({})", group_digits(s.parameters), human(s.parameters)));
    let total = s.parameters.max(1) as f64;
    let dtypes: Vec<String> =
        s.parameters_by_dtype.iter().map(|(d, n)| format!("{d} {:.1}%", 100.0 * *n as f64 / total)).collect();
    line("dtype:", dtypes.join(", "));
    line("naming:", format!("{} ({} safetensors shard{})", s.naming, s.shards, if s.shards == 1 { "" } else { "s" }));
    line(
        "config:",
        format!(
            "dim {} = {} heads x {}, {} layers, ffn {}, channels {} -> {}, patch {}x{}x{}, text dim {}, freq dim {}, eps {:e}",
            c.dim(),
            c.num_heads,
            c.head_dim,
            c.num_layers,
            c.ffn_dim,
            c.in_channels,
            c.out_channels,
            c.patch_size[0],
            c.patch_size[1],
            c.patch_size[2],
            c.text_dim,
            c.freq_dim,
            c.eps
        ),
    );
    line("fps embed:", if c.inject_sample_info { "yes (16 / 24 fps)".into() } else { "no".into() });
    line("image branch:", c.image_dim.map_or("no".into(), |d| format!("yes (CLIP tokens of width {d})")));
    if let Some(kind) = s.pipeline {
        line("pipeline:", kind.to_string());
    }
    if let Some(e) = &s.image_encoder {
        line(
            "CLIP encoder:",
            format!(
                "ViT, {} px in {} px patches, width {} = {} heads, {} blocks (the last unused), {} parameters ({}), {} naming",
                e.image_size,
                e.patch_size,
                e.hidden_size,
                e.num_heads,
                e.num_layers,
                group_digits(e.parameters),
                human(e.parameters),
                e.naming
            ),
        );
    }
    out
}

fn group_digits(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_grouping() {
        assert_eq!(group_digits(1_435_525_696), "1,435,525,696");
        assert_eq!(group_digits(999), "999");
        assert_eq!(human(1_435_525_696), "1.44B");
    }
}
