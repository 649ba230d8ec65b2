//! The loss log of a run: `loss.csv` (one row per step, appended) and `loss.png` (raw and
//! smoothed loss on a log scale, with labelled axes).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use image::{Rgb, RgbImage};

/// Loss history of a run, backed by `loss.csv`.
pub struct LossLog {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    losses: Vec<(u64, f64)>,
    smoothed: f64,
}

const HEADER: &str = "step,loss,grad_norm,lr,seconds";

impl LossLog {
    /// Opens `dir/loss.csv`, keeping only rows up to `step` (a resumed run rewrites what came
    /// after its checkpoint).
    pub fn open(dir: &Path, step: u64) -> anyhow::Result<Self> {
        let path = dir.join("loss.csv");
        let mut kept = Vec::new();
        let mut losses = Vec::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines().skip(1) {
                let mut cols = line.split(',');
                let (Some(s), Some(l)) = (cols.next(), cols.next()) else { continue };
                let (Ok(s), Ok(l)) = (s.parse::<u64>(), l.parse::<f64>()) else { continue };
                if s <= step {
                    kept.push(line.to_string());
                    losses.push((s, l));
                }
            }
        }
        let mut text = String::from(HEADER);
        text.push('\n');
        for line in &kept {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        let file = std::fs::OpenOptions::new().append(true).open(&path)?;
        let smoothed = losses.last().map_or(f64::NAN, |&(_, l)| l);
        Ok(Self { path, file: std::io::BufWriter::new(file), losses, smoothed })
    }

    /// Appends one step; `extra` columns are written after the standard ones as `name=value`.
    pub fn record(
        &mut self,
        step: u64,
        loss: f64,
        grad_norm: f64,
        lr: f64,
        seconds: f64,
        extra: &[(&str, f64)],
    ) -> anyhow::Result<()> {
        write!(self.file, "{step},{loss:.6},{grad_norm:.4},{lr:.3e},{seconds:.1}")?;
        for (name, value) in extra {
            write!(self.file, ",{name}={value:.6}")?;
        }
        writeln!(self.file)?;
        self.losses.push((step, loss));
        self.smoothed = if self.smoothed.is_finite() { 0.98 * self.smoothed + 0.02 * loss } else { loss };
        Ok(())
    }

    /// Flushes the CSV to disk.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        self.file.flush().with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// The exponentially smoothed loss (for the progress bar).
    pub fn smoothed(&self) -> f64 {
        self.smoothed
    }

    /// Draws the loss curve to a PNG (written atomically).
    pub fn plot(&self, path: &Path) -> anyhow::Result<()> {
        let image = plot_losses(&self.losses);
        let tmp = path.with_extension("png.tmp");
        image.save_with_format(&tmp, image::ImageFormat::Png)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// Mean of each window of `n` values, so the smoothed curve is drawn from a moving average.
fn moving_average(values: &[f64], n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    let mut sum = 0.0;
    for (i, v) in values.iter().enumerate() {
        sum += v;
        if i >= n {
            sum -= values[i - n];
        }
        out.push(sum / (i + 1).min(n) as f64);
    }
    out
}

const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;
const LEFT: u32 = 60;
const BOTTOM: u32 = 30;
const MARGIN: u32 = 12;

/// Renders loss against step on a log₁₀ axis: raw losses in light blue, their moving average
/// in dark blue, decade grid lines labelled on the left, the step range labelled below.
pub fn plot_losses(losses: &[(u64, f64)]) -> RgbImage {
    let mut img = RgbImage::from_pixel(WIDTH, HEIGHT, Rgb([255, 255, 255]));
    let (x0, x1, y0, y1) = (LEFT, WIDTH - MARGIN, MARGIN, HEIGHT - BOTTOM);
    let finite: Vec<(u64, f64)> = losses.iter().copied().filter(|(_, l)| l.is_finite() && *l > 0.0).collect();
    if finite.is_empty() {
        return img;
    }
    let logs: Vec<f64> = finite.iter().map(|(_, l)| l.log10()).collect();
    let lo = logs.iter().copied().fold(f64::INFINITY, f64::min).floor();
    let hi = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max).ceil().max(lo + 1.0);
    let last_step = finite.last().map_or(1, |&(s, _)| s).max(1);
    let to_x = |s: u64| x0 as f64 + (x1 - x0) as f64 * s as f64 / last_step as f64;
    let to_y = |l: f64| y1 as f64 - (y1 - y0) as f64 * (l - lo) / (hi - lo);
    let grid = Rgb([225, 225, 225]);
    let mut decade = lo;
    while decade <= hi {
        let y = to_y(decade) as u32;
        for x in x0..x1 {
            img.put_pixel(x, y.min(HEIGHT - 1), grid);
        }
        draw_text(&mut img, 4, y.saturating_sub(3), &format!("1e{}", decade as i64), Rgb([80, 80, 80]));
        decade += 1.0;
    }
    let axis = Rgb([0, 0, 0]);
    for x in x0..x1 {
        img.put_pixel(x, y1, axis);
    }
    for y in y0..=y1 {
        img.put_pixel(x0, y, axis);
    }
    draw_text(&mut img, x0, y1 + 8, "0", axis);
    let label = format!("{last_step}");
    draw_text(&mut img, x1.saturating_sub(4 * label.len() as u32), y1 + 8, &label, axis);
    let points = |values: &[f64]| -> Vec<(f64, f64)> {
        finite.iter().zip(values).map(|(&(s, _), &l)| (to_x(s), to_y(l))).collect()
    };
    draw_polyline(&mut img, &points(&logs), Rgb([170, 200, 240]));
    let window = (finite.len() / 50).max(1);
    let smooth: Vec<f64> = moving_average(&finite.iter().map(|(_, l)| *l).collect::<Vec<_>>(), window)
        .into_iter()
        .map(f64::log10)
        .collect();
    draw_polyline(&mut img, &points(&smooth), Rgb([20, 60, 160]));
    img
}

fn draw_polyline(img: &mut RgbImage, points: &[(f64, f64)], colour: Rgb<u8>) {
    for pair in points.windows(2) {
        let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
        let n = ((bx - ax).abs().max((by - ay).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            let (x, y) = (ax + (bx - ax) * t, ay + (by - ay) * t);
            if x >= 0.0 && y >= 0.0 && (x as u32) < img.width() && (y as u32) < img.height() {
                img.put_pixel(x as u32, y as u32, colour);
            }
        }
    }
    if let [(x, y)] = points {
        img.put_pixel(*x as u32, *y as u32, colour);
    }
}

/// 3×5 glyphs for the characters axis labels use.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'e' => [0, 7, 7, 4, 7],
        '-' => [0, 0, 7, 0, 0],
        '.' => [0, 0, 0, 0, 2],
        _ => [0; 5],
    }
}

fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, colour: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..3 {
                if bits & (4 >> col) != 0 {
                    let (px, py) = (x + 4 * i as u32 + col, y + row as u32);
                    if px < img.width() && py < img.height() {
                        img.put_pixel(px, py, colour);
                    }
                }
            }
        }
    }
}
