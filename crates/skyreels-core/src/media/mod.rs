//! Media I/O: still images in, videos out (and back in), with no system libraries.
//!
//! * [`load_image`] / [`fit_to`]: conditioning images for image-to-video.
//! * [`create_writer`] / [`resume_writer`]: crash-safe, appendable video output. After every
//!   [`VideoWriter::commit`] the file on disk is a complete, playable video, and the returned
//!   [`WriterCheckpoint`] lets a later process truncate back to it and continue, producing a
//!   file byte-identical to an uninterrupted run.
//! * [`open_video`]: streaming input for video extension.
//!
//! Formats, chosen by the output path: `.mp4` (H.264 in fragmented MP4, one fragment per
//! commit), `.gif` (animated, looping) and a folder of `frame_000000.png` files.

pub mod frame;
mod gif_file;
mod h264;
pub mod image;
mod mp4_demux;
mod mp4_mux;
mod png_folder;
#[cfg(test)]
mod tests;
mod yuv;

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use self::frame::RgbFrame;
pub use self::image::{fit_to, load_image};
use crate::error::{invalid_input, Error, Result};

/// A video output that frames are appended to and that can be made durable at any point.
pub trait VideoWriter: Send {
    /// Adds frames (all of the writer's size); they reach the disk at the next commit.
    fn append(&mut self, frames: &[RgbFrame]) -> Result<()>;
    /// Writes the appended frames and fsyncs: the file is now a valid video of all frames so far.
    fn commit(&mut self) -> Result<WriterCheckpoint>;
    /// Frames appended so far, committed or not.
    fn frames_written(&self) -> u64;
    /// Commits what is left and closes the output.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// A streaming video input: frames are decoded one at a time, in display order.
pub trait VideoReader: Iterator<Item = Result<RgbFrame>> + Send {
    /// Frame width in pixels.
    fn width(&self) -> u32;
    /// Frame height in pixels.
    fn height(&self) -> u32;
    /// Average frame rate, when the container records one.
    fn fps(&self) -> Option<f64>;
    /// Number of frames, when known before decoding.
    fn frame_count(&self) -> Option<u64>;
}

/// The container formats this module writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VideoFormat {
    /// H.264 in fragmented MP4.
    Mp4,
    /// Animated GIF.
    Gif,
    /// A folder of numbered PNG files.
    PngFolder,
}

impl VideoFormat {
    /// Picks the format for an output path: `.mp4`/`.m4v`, `.gif`, or a folder (existing
    /// directory, trailing `/`, or no extension).
    pub fn for_output(path: &Path) -> Result<Self> {
        let text = path.to_string_lossy();
        if path.is_dir() || text.ends_with('/') || text.ends_with(std::path::MAIN_SEPARATOR) {
            return Ok(Self::PngFolder);
        }
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            None => Ok(Self::PngFolder),
            Some("mp4" | "m4v") => Ok(Self::Mp4),
            Some("gif") => Ok(Self::Gif),
            Some(other) => Err(invalid_input!(
                "cannot write video as '.{other}' ({}): use .mp4, .gif, or a folder for PNG frames",
                path.display()
            )),
        }
    }
}

/// Everything needed to continue a video after its process died: where the last commit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterCheckpoint {
    /// The container, so a checkpoint cannot be applied to the wrong kind of output.
    pub format: VideoFormat,
    /// Length of the file at the commit (0 for a PNG folder).
    pub bytes: u64,
    /// Frames committed.
    pub frames: u64,
    /// MP4 fragments committed; the next `moof` gets sequence number `fragments + 1`.
    pub fragments: u32,
}

/// Creates (or truncates) a video at `path`, in the format its name asks for.
pub fn create_writer(path: &Path, width: u32, height: u32, fps: f64) -> Result<Box<dyn VideoWriter>> {
    check_fps(fps)?;
    Ok(match VideoFormat::for_output(path)? {
        VideoFormat::Mp4 => Box::new(mp4_mux::Mp4Writer::create(path, width, height, fps)?),
        VideoFormat::Gif => Box::new(gif_file::GifWriter::create(path, width, height, fps)?),
        VideoFormat::PngFolder => Box::new(png_folder::PngFolderWriter::create(path, width, height)?),
    })
}

/// Reopens a video written with the same settings, drops everything after `checkpoint`, and
/// continues appending.
pub fn resume_writer(
    path: &Path,
    width: u32,
    height: u32,
    fps: f64,
    checkpoint: &WriterCheckpoint,
) -> Result<Box<dyn VideoWriter>> {
    check_fps(fps)?;
    let format = VideoFormat::for_output(path)?;
    if format != checkpoint.format {
        return Err(invalid_input!(
            "checkpoint is for {:?} output but {} is {format:?}",
            checkpoint.format,
            path.display()
        ));
    }
    Ok(match format {
        VideoFormat::Mp4 => Box::new(mp4_mux::Mp4Writer::resume(path, width, height, fps, checkpoint)?),
        VideoFormat::Gif => Box::new(gif_file::GifWriter::resume(path, width, height, fps, checkpoint)?),
        VideoFormat::PngFolder => Box::new(png_folder::PngFolderWriter::resume(path, width, height, checkpoint)?),
    })
}

/// Opens an MP4 (H.264), animated GIF, or folder of PNG frames for streaming decode.
pub fn open_video(path: &Path) -> Result<Box<dyn VideoReader>> {
    if path.is_dir() {
        return Ok(Box::new(png_folder::PngFolderReader::open(path)?));
    }
    let magic = read_prefix(path, 8)?;
    // Sniff the content rather than trust the extension.
    if magic.starts_with(b"GIF87a") || magic.starts_with(b"GIF89a") {
        return Ok(Box::new(gif_file::GifReader::open(path)?));
    }
    if magic.len() >= 8 && mp4_demux::is_top_level_box(&magic[4..8]) {
        return Ok(Box::new(mp4_demux::Mp4Reader::open(path)?));
    }
    Err(invalid_input!(
        "{} is not a supported video (MP4 with H.264, animated GIF, or a folder of PNG frames)",
        path.display()
    ))
}

/// Refuses frame rates no container here can represent.
fn check_fps(fps: f64) -> Result<()> {
    if !(0.01..=1000.0).contains(&fps) {
        return Err(invalid_input!("frame rate {fps} is outside 0.01..=1000"));
    }
    Ok(())
}

/// Refuses frames that do not have the writer's size.
fn check_frames(frames: &[RgbFrame], width: u32, height: u32) -> Result<()> {
    for frame in frames {
        frame.validate()?;
        if (frame.width, frame.height) != (width, height) {
            return Err(invalid_input!("frame is {}x{} but the video is {width}x{height}", frame.width, frame.height));
        }
    }
    Ok(())
}

/// Wraps an I/O error with the path it happened on.
fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// The first `len` bytes of a file (fewer if it is shorter).
fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut prefix = Vec::new();
    let file = File::open(path).map_err(io_error(path))?;
    file.take(len).read_to_end(&mut prefix).map_err(io_error(path))?;
    Ok(prefix)
}

/// Makes a newly created or renamed directory entry durable (a no-op where unsupported).
fn sync_parent_dir(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(parent)
}

/// Fsyncs a directory so the entries created in it survive a power loss.
fn sync_dir(dir: &Path) -> Result<()> {
    // Directories cannot be opened as files on Windows; there, renames are durable on their own.
    if cfg!(unix) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))?;
    }
    Ok(())
}
