//! `skyreels bench`: measurements that print markdown tables (speed and memory are measured
//! here, never in timed tests).

mod cache;
mod conv3d;
mod text_encoder;
mod transformer;
mod vae;
mod window;

pub(crate) use skyreels_core::memory::peak_rss_mib;

/// Which measurement to run.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Forward passes of a released transformer configuration with random weights.
    Transformer(transformer::TransformerArgs),
    /// Few-step sampling and the step caches (`--cache`) against 30-step guided UniPC: model
    /// calls, block passes skipped, time per video second, PSNR/SSIM, and the judge's scores.
    Cache(cache::CacheArgs),
    /// CPU Conv3d throughput on a VAE-sized layer: implicit GEMM vs conv2d taps.
    Conv3d(conv3d::Conv3dArgs),
    /// Streaming Wan2.1 VAE decode (random weights): time and peak memory for N latent frames.
    VaeDecode(vae::VaeDecodeArgs),
    /// Streaming Wan2.1 VAE encode (random weights): time and peak memory for N video frames.
    VaeEncode(vae::VaeEncodeArgs),
    /// umT5 forward passes at umT5-XXL width (random weights), truncated to a few layers.
    TextEncoder(text_encoder::TextEncoderArgs),
    /// One diffusion-forcing window end to end with random weights (default: the 540P window of
    /// DF-1.3B, 97 frames, 30 steps with guidance): s/step, decode time, peak memory.
    Window(window::WindowArgs),
}

/// Runs one benchmark.
pub fn run(command: &BenchCommand) -> Result<(), String> {
    match command {
        BenchCommand::Transformer(args) => transformer::run(args),
        BenchCommand::Cache(args) => cache::run(args),
        BenchCommand::Conv3d(args) => conv3d::run(args),
        BenchCommand::VaeDecode(args) => vae::decode(args),
        BenchCommand::VaeEncode(args) => vae::encode(args),
        BenchCommand::TextEncoder(args) => text_encoder::run(args),
        BenchCommand::Window(args) => window::run(args),
    }
}

/// Best and mean wall time of `repeat` runs of `f` after one warm-up run.
pub fn time_runs(repeat: usize, mut f: impl FnMut() -> Result<(), String>) -> Result<(f64, f64), String> {
    if repeat == 0 {
        return Err("--repeat must be at least 1".into());
    }
    f()?;
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let start = std::time::Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok((best, times.iter().sum::<f64>() / times.len() as f64))
}

/// Threads the CPU kernels use.
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// One benchmark result: a one-row Markdown table under a title, or one JSON object whose keys
/// are the column labels in snake case ("peak RSS MiB" → `peak_rss_mib`), numbers as numbers.
pub struct Report {
    /// The line above the table (device, precision).
    pub title: String,
    /// Column labels and values, in order.
    pub columns: Vec<(&'static str, String)>,
}

impl Report {
    /// Prints the table, or the JSON object when `json`.
    pub fn print(&self, json: bool) {
        if json {
            let mut object = serde_json::Map::new();
            object.insert("title".into(), self.title.clone().into());
            for (label, value) in &self.columns {
                let value = match (value.parse::<i64>(), value.parse::<f64>()) {
                    (Ok(i), _) => i.into(),
                    (_, Ok(f)) => f.into(),
                    _ => value.clone().into(),
                };
                object.insert(snake_case(label), value);
            }
            println!("{}", serde_json::Value::Object(object));
            return;
        }
        println!("{}", self.title);
        let labels: Vec<&str> = self.columns.iter().map(|(l, _)| *l).collect();
        let values: Vec<&str> = self.columns.iter().map(|(_, v)| v.as_str()).collect();
        println!("| {} |", labels.join(" | "));
        println!("|{}", "---|".repeat(labels.len()));
        println!("| {} |", values.join(" | "));
    }
}

/// `"peak RSS MiB (after load)"` → `"peak_rss_mib_after_load"`.
fn snake_case(label: &str) -> String {
    let mut out = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_become_snake_case_keys() {
        assert_eq!(super::snake_case("peak RSS MiB (after load)"), "peak_rss_mib_after_load");
        assert_eq!(super::snake_case("best s"), "best_s");
        assert_eq!(super::snake_case("frames/s"), "frames_s");
    }
}
