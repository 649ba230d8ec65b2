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
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::frame::RgbFrame;
pub use self::image::{fit_to, letterbox, load_image};
use crate::error::{invalid_input, Error, Result};

/// A video output that frames are appended to and that can be made durable at any point.
pub trait VideoWriter: Send {
    /// Adds frames (all of the writer's size); they reach the disk at the next commit.
    fn append(&mut self, frames: &[RgbFrame]) -> Result<()>;
    /// Writes the appended frames and fsyncs: the file is now a valid video of all frames so far.
    /// A new file stays beside its target until [`publish`](Self::publish).
    fn commit(&mut self) -> Result<WriterCheckpoint>;
    /// Puts a new file that holds committed frames in place of its target (atomically); a no-op
    /// once done, before any frame is committed, and for PNG folders. Call it after saving what
    /// a resume needs, so the video and its state always move together.
    fn publish(&mut self) -> Result<()> {
        Ok(())
    }
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
    /// CRC-32 of the committed bytes before any trailer (the GIF's final `;`), so that a
    /// checkpoint is only ever applied to the very file it was taken from.
    pub prefix_crc: u32,
}

/// A new output file written beside its target (`.<name>.partial`) until it holds frames, then
/// renamed over it: an existing file at the target — an older video, or a hard link to one of
/// the run's own inputs — is replaced atomically and never truncated or written through.
pub(crate) struct Aside {
    partial: PathBuf,
    target: PathBuf,
    published: bool,
}

impl Aside {
    pub(crate) fn new(target: &Path) -> Self {
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Self {
            partial: target.with_file_name(format!(".{name}.partial")),
            target: target.to_path_buf(),
            published: false,
        }
    }

    /// Where the file is written until it is published.
    pub(crate) fn partial(&self) -> &Path {
        &self.partial
    }

    /// Renames the (committed, fsynced) file over the target.
    pub(crate) fn publish(&mut self) -> Result<()> {
        std::fs::rename(&self.partial, &self.target).map_err(write_error(&self.target))?;
        self.published = true;
        sync_parent_dir(&self.target)
    }
}

impl Drop for Aside {
    fn drop(&mut self) {
        // Abandoned before holding a frame: nothing of it is worth keeping.
        if !self.published {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

/// After a crash between saving a resume state and publishing the new file it describes:
/// moves that file (beside `path`) into place when it matches `checkpoint`. Returns whether it
/// did; anything that does not match is left alone.
pub fn recover_unpublished(path: &Path, checkpoint: &WriterCheckpoint) -> Result<bool> {
    if checkpoint.frames == 0 {
        return Ok(false);
    }
    if checkpoint.format == VideoFormat::PngFolder {
        let partial = png_folder::partial_folder(path);
        let holds = |dir: &Path| {
            dir.is_dir()
                && png_folder::PngFolderReader::open(dir).ok().and_then(|r| r.frame_count()).unwrap_or(0)
                    >= checkpoint.frames
        };
        if holds(&partial) && !holds(path) {
            png_folder::swap_in(&partial, path)?;
            return Ok(true);
        }
        return Ok(false);
    }
    let mut aside = Aside::new(path);
    let Ok(mut file) = File::open(aside.partial()) else { return Ok(false) };
    let prefix = checksummed_bytes(checkpoint);
    if check_prefix(&mut file, prefix, checkpoint.prefix_crc, aside.partial()).is_err() {
        aside.published = true; // not ours to remove either
        return Ok(false);
    }
    aside.publish()?;
    Ok(true)
}

/// How many leading bytes `prefix_crc` covers: all committed bytes but a GIF's trailer.
fn checksummed_bytes(checkpoint: &WriterCheckpoint) -> u64 {
    match checkpoint.format {
        VideoFormat::Gif => checkpoint.bytes.saturating_sub(1),
        _ => checkpoint.bytes,
    }
}

/// Continues the CRC-32 `previous` (of some prefix) over `bytes`.
fn continue_crc(previous: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(previous);
    hasher.update(bytes);
    hasher.finalize()
}

/// Checks that the first `len` bytes of `file` have the CRC-32 a checkpoint recorded.
fn check_prefix(file: &mut File, len: u64, expected: u32, path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(0)).map_err(io_error(path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut reader = (&mut *file).take(len);
    let mut buf = vec![0u8; 1 << 20];
    let mut seen = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        seen += n as u64;
    }
    if seen != len || hasher.finalize() != expected {
        return Err(invalid_input!(
            "{} is not the video its resume state was saved with (its first {len} bytes changed); \
             it was left untouched",
            path.display()
        ));
    }
    Ok(())
}

/// Creates a video at `path`, in the format its name asks for. A file is written beside `path`
/// and takes its place at the first commit that holds frames (or at `finish`); a PNG folder is
/// emptied of frames at once.
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
    if checkpoint.frames == 0 && format == checkpoint.format && format != VideoFormat::PngFolder {
        // Nothing was published: start the file again beside the target (same bytes).
        return create_writer(path, width, height, fps);
    }
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

/// Checks, without changing anything, that `path` is the video `checkpoint` was taken from
/// (its committed prefix is intact), so a resume can be refused before any work.
pub fn verify_checkpoint(path: &Path, checkpoint: &WriterCheckpoint) -> Result<()> {
    let format = VideoFormat::for_output(path)?;
    if format != checkpoint.format {
        return Err(invalid_input!(
            "the resume state is for {:?} output but {} is {format:?}",
            checkpoint.format,
            path.display()
        ));
    }
    match format {
        _ if checkpoint.frames == 0 => Ok(()),
        VideoFormat::PngFolder => {
            let frames = png_folder::PngFolderReader::open(path)?.frame_count().unwrap_or(0);
            if frames < checkpoint.frames {
                return Err(invalid_input!(
                    "{} holds {frames} frames but its resume state counts {}",
                    path.display(),
                    checkpoint.frames
                ));
            }
            Ok(())
        }
        VideoFormat::Mp4 | VideoFormat::Gif => {
            let mut file = File::open(path).map_err(io_error(path))?;
            let prefix = checksummed_bytes(checkpoint);
            check_prefix(&mut file, prefix, checkpoint.prefix_crc, path)
        }
    }
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

/// Wraps a write error with the path it happened on.
fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Write { path: path.to_path_buf(), source }
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
        File::open(dir).and_then(|d| d.sync_all()).map_err(write_error(dir))?;
    }
    Ok(())
}
