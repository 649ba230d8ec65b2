//! Progress of a generation: a bar on a terminal, one JSON event per line for programs, or
//! nothing (`--quiet`).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};
use skyreels_core::pipelines::generation::{Event, GenerationOutcome};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, a line per window otherwise.
    Auto,
    /// A bar on stderr (drawn only when stderr is a terminal).
    Bar,
    /// One JSON object per line on stdout.
    Json,
    /// Nothing but errors.
    None,
}

/// Reports the generation's progress in the chosen mode.
pub struct Reporter {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    started: Instant,
    windows: Option<usize>,
    total_rows: Option<usize>,
    rows_done: usize,
    frames_written: u64,
}

impl Reporter {
    /// A reporter; `quiet` overrides the mode with `None`.
    pub fn new(mode: ProgressMode, quiet: bool) -> Self {
        let mode = match (quiet, mode) {
            (true, _) => ProgressMode::None,
            (false, ProgressMode::Auto) if std::io::stderr().is_terminal() => ProgressMode::Bar,
            (false, m) => m,
        };
        Self {
            mode,
            bar: None,
            started: Instant::now(),
            windows: None,
            total_rows: None,
            rows_done: 0,
            frames_written: 0,
        }
    }

    /// Shows one event of the engine's generation.
    pub fn event(&mut self, event: &Event<'_>) {
        match *event {
            Event::Notice(message) => self.notice(message),
            Event::Stage(message) => self.stage(message),
            Event::Started { windows, total_rows, windows_done, rows_done } => {
                self.start(windows, total_rows, windows_done, rows_done)
            }
            Event::Step { window, row, rows } => self.row(window, row, rows),
            Event::WindowDone { window, new_frames, frames, .. } => self.window_done(window, new_frames, frames),
            Event::Done(outcome) => self.done(outcome),
        }
    }

    fn event_line(&self, value: Value) {
        let mut out = std::io::stdout().lock();
        // A closed pipe must not abort the render; the video matters more than the log.
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// A note about an adjusted setting or a truncated prompt.
    fn notice(&self, message: &str) {
        match self.mode {
            ProgressMode::Json => self.event_line(json!({"event": "notice", "message": message})),
            ProgressMode::None => {}
            _ => self.line(&format!("note: {message}")),
        }
    }

    /// A stage before generation (loading, encoding).
    fn stage(&self, message: &str) {
        match self.mode {
            ProgressMode::Json => {
                self.event_line(json!({"event": "stage", "message": message, "elapsed_s": self.elapsed()}))
            }
            ProgressMode::None => {}
            _ => self.line(message),
        }
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Generation begins: `windows`/`total_rows` are `None` for endless videos.
    fn start(&mut self, windows: Option<usize>, total_rows: Option<usize>, first_window: usize, rows_done: usize) {
        self.windows = windows;
        self.total_rows = total_rows;
        self.rows_done = rows_done;
        self.frames_written = 0;
        self.started = Instant::now();
        match self.mode {
            ProgressMode::Json => self.event_line(json!({
                "event": "start", "windows": windows, "rows": total_rows, "first_window": first_window + 1,
            })),
            ProgressMode::Bar => {
                let bar = match total_rows {
                    Some(n) => ProgressBar::new(n as u64),
                    None => ProgressBar::new_spinner(),
                };
                bar.set_draw_target(ProgressDrawTarget::stderr());
                let style = if total_rows.is_some() {
                    "{bar:30} {pos}/{len} model rows · {msg} · ETA {eta}"
                } else {
                    "{spinner} {pos} model rows · {msg}"
                };
                bar.set_style(ProgressStyle::with_template(style).unwrap_or_else(|_| ProgressStyle::default_bar()));
                bar.set_position(rows_done as u64);
                bar.reset_eta();
                self.bar = Some(bar);
            }
            _ => {}
        }
    }

    fn window_label(&self, window: usize) -> String {
        match self.windows {
            Some(n) => format!("window {}/{n}", window + 1),
            None => format!("window {}", window + 1),
        }
    }

    /// One model row of `window` finished.
    fn row(&mut self, window: usize, row: usize, rows: usize) {
        self.rows_done += 1;
        match self.mode {
            ProgressMode::Json => self.event_line(json!({
                "event": "step", "window": window + 1, "windows": self.windows, "step": row, "steps": rows,
                "rows_done": self.rows_done, "rows": self.total_rows, "elapsed_s": self.elapsed(),
            })),
            ProgressMode::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(self.rows_done as u64);
                    bar.set_message(format!(
                        "{} · step {row}/{rows} · {:.2} frames/s",
                        self.window_label(window),
                        self.fps()
                    ));
                }
            }
            _ => {}
        }
    }

    fn fps(&self) -> f64 {
        self.frames_written as f64 / self.elapsed().max(1e-9)
    }

    /// A window was decoded and committed to the output.
    fn window_done(&mut self, window: usize, new_frames: u64, frames_written: u64) {
        self.frames_written += new_frames;
        match self.mode {
            ProgressMode::Json => self.event_line(json!({
                "event": "window", "window": window + 1, "windows": self.windows, "frames": frames_written,
                "elapsed_s": self.elapsed(), "frames_per_s": self.fps(),
            })),
            ProgressMode::Auto => eprintln!(
                "{} done: {frames_written} frames written, {:.2} frames/s",
                self.window_label(window),
                self.fps()
            ),
            _ => {}
        }
    }

    /// The video is complete.
    fn done(&mut self, outcome: &GenerationOutcome) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let (output, frames, seconds) = (outcome.output.display().to_string(), outcome.frames, outcome.seconds);
        let c = outcome.cache;
        let cache = json!({
            "model_calls": c.model_calls,
            "block_passes": c.block_passes,
            "skipped": c.skipped,
            "skipped_fraction": c.skipped_fraction(),
        });
        match self.mode {
            ProgressMode::Json => self.event_line(
                json!({"event": "done", "output": output, "frames": frames, "seconds": seconds, "cache": cache}),
            ),
            ProgressMode::None => {}
            _ => {
                eprintln!("wrote {frames} frames to {output} in {seconds:.1} s");
                if outcome.cache_setting.is_on() {
                    eprintln!(
                        "step cache {}: skipped {} of {} block passes ({:.1}%)",
                        outcome.cache_setting,
                        c.skipped,
                        c.block_passes,
                        100.0 * c.skipped_fraction()
                    );
                }
            }
        }
    }
}
