//! Animated GIF output (looping) and input.
//!
//! Crash safety: every commit overwrites the trailer byte (`;`) with the new frames followed by
//! a fresh trailer, in one write, then fsyncs. The checkpoint is the file length, trailer
//! included; resuming cuts the file back to it. Each frame gets its own palette computed from
//! that frame alone, so re-encoding the same frames after a resume gives the same bytes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use gif::{ColorOutput, DecodeOptions, DisposalMethod, Repeat};

use super::{
    check_frames, check_prefix, continue_crc, io_error, write_error, Aside, RgbFrame, VideoFormat, VideoReader,
    VideoWriter, WriterCheckpoint,
};
use crate::error::{invalid_input, Error, Result};

/// The byte that ends every GIF.
const TRAILER: u8 = 0x3b;
/// Pixels NeuQuant learns each palette from: enough for a good palette at any frame size.
const QUANTIZER_SAMPLES: usize = 65_536;
/// GIF delays are whole centiseconds and players treat delays under 2 as 10, so 50 fps is the cap.
const MAX_FPS: f64 = 50.0;

/// Writes frames into an infinitely looping animated GIF.
pub(crate) struct GifWriter {
    file: File,
    path: PathBuf,
    width: u16,
    height: u16,
    fps: f64,
    /// Serialises frames into its `Vec`, which holds the bytes of the uncommitted frames.
    encoder: gif::Encoder<Vec<u8>>,
    pending_frames: u64,
    checkpoint: WriterCheckpoint,
    /// Set until the file holds frames and replaces its target.
    aside: Option<Aside>,
}

impl GifWriter {
    /// Creates or truncates `path` and writes an empty, valid GIF.
    pub(crate) fn create(path: &Path, width: u32, height: u32, fps: f64) -> Result<Self> {
        let (w, h) = check_settings(width, height, fps)?;
        let (encoder, mut header) = new_encoder(w, h, path)?;
        let prefix_crc = continue_crc(0, &header);
        header.push(TRAILER);
        let aside = Aside::new(path);
        let partial = aside.partial();
        let mut file = File::create(partial).map_err(write_error(partial))?;
        file.write_all(&header).and_then(|()| file.sync_all()).map_err(write_error(partial))?;
        let checkpoint = WriterCheckpoint {
            format: VideoFormat::Gif,
            bytes: header.len() as u64,
            frames: 0,
            fragments: 0,
            prefix_crc,
        };
        let path = path.to_path_buf();
        let aside = Some(aside);
        Ok(Self { file, path, width: w, height: h, fps, encoder, pending_frames: 0, checkpoint, aside })
    }

    /// Reopens a GIF this writer made with the same settings and cuts it back to `checkpoint`.
    pub(crate) fn resume(
        path: &Path,
        width: u32,
        height: u32,
        fps: f64,
        checkpoint: &WriterCheckpoint,
    ) -> Result<Self> {
        let (w, h) = check_settings(width, height, fps)?;
        let (encoder, header) = new_encoder(w, h, path)?;
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        let mut existing = vec![0; header.len()];
        // The trailer byte itself may have been overwritten by a commit whose checkpoint was
        // never saved (a kill between the two): only what precedes it must match.
        let fits = checkpoint.bytes > header.len() as u64 && len >= checkpoint.bytes - 1;
        if fits {
            file.read_exact(&mut existing).map_err(io_error(path))?;
        }
        if !fits || existing != header {
            return Err(invalid_input!(
                "{} does not match a {width}x{height} GIF checkpoint at {} bytes",
                path.display(),
                checkpoint.bytes
            ));
        }
        let data = checkpoint.bytes - 1;
        check_prefix(&mut file, data, checkpoint.prefix_crc, path)?;
        file.set_len(data)
            .and_then(|()| file.seek(SeekFrom::Start(data)))
            .and_then(|_| file.write_all(&[TRAILER]))
            .and_then(|()| file.sync_all())
            .map_err(write_error(path))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            width: w,
            height: h,
            fps,
            encoder,
            pending_frames: 0,
            checkpoint: *checkpoint,
            aside: None,
        })
    }

    /// NeuQuant's sampling step (1 = every pixel … 30), sized so each palette sees about
    /// [`QUANTIZER_SAMPLES`] pixels: the best quality on small frames, bounded time on large ones.
    fn quantizer_speed(&self) -> i32 {
        let pixels = usize::from(self.width) * usize::from(self.height);
        pixels.div_ceil(QUANTIZER_SAMPLES).clamp(1, 30) as i32
    }
}

impl VideoWriter for GifWriter {
    fn append(&mut self, frames: &[RgbFrame]) -> Result<()> {
        check_frames(frames, u32::from(self.width), u32::from(self.height))?;
        for frame in frames {
            let index = self.checkpoint.frames + self.pending_frames;
            let mut gif_frame =
                gif::Frame::from_rgb_speed(self.width, self.height, &frame.data, self.quantizer_speed());
            gif_frame.delay = frame_delay(index, self.fps);
            self.encoder
                .write_frame(&gif_frame)
                .map_err(|e| invalid_input!("cannot encode GIF frame for {}: {e}", self.path.display()))?;
            self.pending_frames += 1;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<WriterCheckpoint> {
        if self.pending_frames == 0 {
            return Ok(self.checkpoint);
        }
        let mut bytes = std::mem::take(self.encoder.get_mut());
        bytes.push(TRAILER);
        // Overwrite the old trailer: the file is valid again the moment the write completes.
        let at = self.checkpoint.bytes - 1;
        let path = &self.path;
        self.file.seek(SeekFrom::Start(at)).map_err(write_error(path))?;
        self.file.write_all(&bytes).and_then(|()| self.file.sync_all()).map_err(write_error(path))?;
        self.checkpoint.prefix_crc = continue_crc(self.checkpoint.prefix_crc, &bytes[..bytes.len() - 1]);
        self.checkpoint.bytes = at + bytes.len() as u64;
        self.checkpoint.frames += self.pending_frames;
        self.pending_frames = 0;
        Ok(self.checkpoint)
    }

    fn publish(&mut self) -> Result<()> {
        if self.checkpoint.frames > 0 {
            if let Some(mut aside) = self.aside.take() {
                aside.publish()?;
            }
        }
        Ok(())
    }

    fn frames_written(&self) -> u64 {
        self.checkpoint.frames + self.pending_frames
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.commit()?;
        match self.aside.take() {
            Some(mut aside) => aside.publish(),
            None => Ok(()),
        }
    }
}

/// Checks the size fits GIF's 16-bit fields and the rate its centisecond delays.
fn check_settings(width: u32, height: u32, fps: f64) -> Result<(u16, u16)> {
    let size = u16::try_from(width).ok().zip(u16::try_from(height).ok()).filter(|&(w, h)| w > 0 && h > 0);
    let (w, h) =
        size.ok_or_else(|| invalid_input!("GIF frames must be 1..=65535 pixels wide and high, got {width}x{height}"))?;
    if fps > MAX_FPS {
        return Err(invalid_input!("GIF cannot play faster than {MAX_FPS} fps, got {fps}"));
    }
    Ok((w, h))
}

/// A frame serialiser with an empty buffer, plus the header bytes it wrote (screen
/// descriptor and loop extension).
fn new_encoder(width: u16, height: u16, path: &Path) -> Result<(gif::Encoder<Vec<u8>>, Vec<u8>)> {
    let gif_error = |e: gif::EncodingError| invalid_input!("cannot start GIF {}: {e}", path.display());
    let mut encoder = gif::Encoder::new(Vec::new(), width, height, &[]).map_err(gif_error)?;
    encoder.set_repeat(Repeat::Infinite).map_err(gif_error)?;
    // Take the header out, leaving the encoder's buffer empty for frames.
    let header = std::mem::take(encoder.get_mut());
    Ok((encoder, header))
}

/// Delay of frame `index` in centiseconds: rounding the *cumulative* time keeps rates such as
/// 24 fps exact on average (4, 4, 4, 5, …) instead of drifting to 25.
fn frame_delay(index: u64, fps: f64) -> u16 {
    let at = |i: u64| (i as f64 * 100.0 / fps).round() as u64;
    (at(index + 1) - at(index)) as u16
}

/// Streams an animated GIF as full RGB frames, applying each frame's disposal.
pub(crate) struct GifReader {
    path: PathBuf,
    decoder: gif::Decoder<File>,
    width: u32,
    height: u32,
    fps: Option<f64>,
    /// Complete frames found by the pre-scan; a truncated last frame is not counted.
    frame_count: u64,
    emitted: u64,
    /// The RGBA canvas frames are drawn on.
    canvas: Canvas,
    /// What to write back into the canvas before the next frame (the disposal of the last one).
    undo: Option<(Rect, Vec<u8>)>,
}

impl GifReader {
    /// Opens `path`, counting its frames and total duration in a quick pass first.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let (frame_count, centiseconds) = prescan(path)?;
        let mut options = DecodeOptions::new();
        options.set_color_output(ColorOutput::RGBA);
        let file = File::open(path).map_err(io_error(path))?;
        let decoder = options.read_info(file).map_err(|e| corrupt(path, &e))?;
        let (width, height) = (u32::from(decoder.width()), u32::from(decoder.height()));
        if width == 0 || height == 0 {
            return Err(corrupt(path, &"the canvas is empty"));
        }
        let fps = (centiseconds > 0).then(|| frame_count as f64 * 100.0 / centiseconds as f64);
        let canvas = Canvas {
            width: width as usize,
            height: height as usize,
            rgba: vec![0; width as usize * height as usize * 4],
        };
        Ok(Self { path: path.to_path_buf(), decoder, width, height, fps, frame_count, emitted: 0, canvas, undo: None })
    }

    /// Draws the next frame onto the canvas and returns the canvas as RGB.
    fn next_frame(&mut self) -> Result<Option<RgbFrame>> {
        if let Some((rect, pixels)) = self.undo.take() {
            self.canvas.blit(rect, &pixels, false);
        }
        let Some(frame) = self.decoder.read_next_frame().map_err(|e| corrupt(&self.path, &e))? else {
            return Ok(None);
        };
        let rect = Rect {
            x: usize::from(frame.left),
            y: usize::from(frame.top),
            w: usize::from(frame.width),
            h: usize::from(frame.height),
        };
        self.undo = match frame.dispose {
            DisposalMethod::Background => Some((rect, vec![0; rect.w * rect.h * 4])),
            DisposalMethod::Previous => Some((rect, self.canvas.region(rect))),
            DisposalMethod::Any | DisposalMethod::Keep => None,
        };
        self.canvas.blit(rect, &frame.buffer, true);
        let rgb = self.canvas.rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
        RgbFrame::new(self.width, self.height, rgb).map(Some)
    }
}

/// A frame's rectangle on the canvas.
#[derive(Clone, Copy)]
struct Rect {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

/// The RGBA image a GIF's frames are composed on.
struct Canvas {
    width: usize,
    height: usize,
    rgba: Vec<u8>,
}

impl Canvas {
    /// Copies RGBA `pixels` into `rect`, clipped to the canvas; transparent pixels are
    /// skipped when `skip_transparent` (drawing a frame) and copied otherwise (undoing one).
    fn blit(&mut self, rect: Rect, pixels: &[u8], skip_transparent: bool) {
        let visible = rect.w.min(self.width.saturating_sub(rect.x));
        let rows = rect.h.min(self.height.saturating_sub(rect.y));
        if visible == 0 || rows == 0 {
            return;
        }
        for (row, src) in pixels.chunks_exact(rect.w * 4).take(rows).enumerate() {
            let start = ((rect.y + row) * self.width + rect.x) * 4;
            let dst = &mut self.rgba[start..start + visible * 4];
            for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                if !skip_transparent || s[3] != 0 {
                    d.copy_from_slice(s);
                }
            }
        }
    }

    /// The canvas pixels under `rect` (zero where it leaves the canvas), as RGBA rows.
    fn region(&self, rect: Rect) -> Vec<u8> {
        let mut out = vec![0; rect.w * rect.h * 4];
        let visible = rect.w.min(self.width.saturating_sub(rect.x));
        let rows = if visible == 0 { 0 } else { rect.h.min(self.height.saturating_sub(rect.y)) };
        for row in 0..rows {
            let start = ((rect.y + row) * self.width + rect.x) * 4;
            out[row * rect.w * 4..][..visible * 4].copy_from_slice(&self.rgba[start..start + visible * 4]);
        }
        out
    }
}

impl Iterator for GifReader {
    type Item = Result<RgbFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        // Stop at the pre-scanned count so a truncated tail is never decoded into an error.
        if self.emitted >= self.frame_count {
            return None;
        }
        self.emitted += 1;
        match self.next_frame() {
            Ok(frame) => frame.map(Ok),
            Err(e) => {
                self.emitted = self.frame_count;
                Some(Err(e))
            }
        }
    }
}

impl VideoReader for GifReader {
    fn width(&self) -> u32 {
        self.width
    }
    fn height(&self) -> u32 {
        self.height
    }
    fn fps(&self) -> Option<f64> {
        self.fps
    }
    fn frame_count(&self) -> Option<u64> {
        Some(self.frame_count)
    }
}

/// Counts the complete frames and sums their delays without decompressing pixels.
fn prescan(path: &Path) -> Result<(u64, u64)> {
    let mut options = DecodeOptions::new();
    options.skip_frame_decoding(true);
    let file = File::open(path).map_err(io_error(path))?;
    let mut decoder = options.read_info(file).map_err(|e| corrupt(path, &e))?;
    let (mut frames, mut centiseconds) = (0u64, 0u64);
    // An error here means the file ends mid-frame (e.g. a crash during a write): stop there.
    while let Ok(Some(frame)) = decoder.read_next_frame() {
        frames += 1;
        centiseconds += u64::from(frame.delay);
    }
    Ok((frames, centiseconds))
}

fn corrupt(path: &Path, reason: &dyn std::fmt::Display) -> Error {
    invalid_input!("{} is not a readable GIF: {reason}", path.display())
}
