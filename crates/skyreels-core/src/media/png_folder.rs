//! A folder of numbered PNG frames, as output (`frame_000000.png`, …) and as input.
//!
//! Each frame is written to a temporary name, fsynced and renamed, so a frame file either is
//! complete or does not exist; a commit fsyncs the folder. The checkpoint is the frame count.

use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use ::image::codecs::png::{CompressionType, FilterType, PngEncoder};
use ::image::{ExtendedColorType, ImageEncoder};

use super::image::load_image;
use super::{
    check_frames, io_error, sync_dir, write_error, RgbFrame, VideoFormat, VideoReader, VideoWriter, WriterCheckpoint,
};
use crate::error::{invalid_input, Result};

const PREFIX: &str = "frame_";
const SUFFIX: &str = ".png";
const TEMP_SUFFIX: &str = ".png.tmp";

/// Writes each frame as `frame_NNNNNN.png` in a folder.
pub(crate) struct PngFolderWriter {
    /// Where frames are written: the target, or the folder beside it until published.
    dir: PathBuf,
    width: u32,
    height: u32,
    frames: u64,
    /// Set while the frames of a run replacing an existing frame folder are written aside.
    aside: Option<FolderAside>,
}

/// A new frame folder written beside an existing one (`.<name>.partial`) and swapped in when
/// it holds frames, so the old frames stay whole until then.
struct FolderAside {
    partial: PathBuf,
    target: PathBuf,
    published: bool,
}

impl Drop for FolderAside {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.partial);
        }
    }
}

/// `.<name>.partial` beside a frame folder.
pub(crate) fn partial_folder(target: &Path) -> PathBuf {
    let trimmed = PathBuf::from(target.to_string_lossy().trim_end_matches(['/', '\\']).to_string());
    let name = trimmed.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    trimmed.with_file_name(format!(".{name}.partial"))
}

/// Puts the folder `partial` in place of `target`, atomically where the system can (Linux's
/// `renameat2(RENAME_EXCHANGE)`), then removes what was at `target`.
pub(crate) fn swap_in(partial: &Path, target: &Path) -> Result<()> {
    let trimmed = PathBuf::from(target.to_string_lossy().trim_end_matches(['/', '\\']).to_string());
    if !trimmed.exists() {
        fs::rename(partial, &trimmed).map_err(write_error(&trimmed))?;
        return super::sync_parent_dir(&trimmed);
    }
    if !exchange(partial, &trimmed)? {
        // No atomic exchange here: move the old folder aside first; a crash in between leaves
        // both folders beside the target, and a resume moves the new one in.
        let old = trimmed.with_file_name(format!(
            ".{}.old",
            trimmed.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        let _ = fs::remove_dir_all(&old);
        fs::rename(&trimmed, &old).map_err(write_error(&trimmed))?;
        fs::rename(partial, &trimmed).map_err(write_error(&trimmed))?;
        let _ = fs::remove_dir_all(&old);
        return super::sync_parent_dir(&trimmed);
    }
    // After the exchange the old frames are at `partial`.
    let _ = fs::remove_dir_all(partial);
    super::sync_parent_dir(&trimmed)
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c =
        |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| invalid_input!("{} has a NUL byte", p.display()));
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths, resolved against the working directory.
    let status =
        unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    Ok(status == 0)
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> Result<bool> {
    Ok(false)
}

impl PngFolderWriter {
    /// Starts a frame folder beside `dir` (`.<name>.partial`); it takes `dir`'s place when its
    /// first frames are published, so frames of an earlier run stay whole until then.
    pub(crate) fn create(dir: &Path, width: u32, height: u32) -> Result<Self> {
        super::frame::rgb_len(width, height)?;
        let partial = partial_folder(dir);
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).map_err(write_error(&partial))?;
        sync_dir(&partial)?;
        let aside = Some(FolderAside { partial: partial.clone(), target: dir.to_path_buf(), published: false });
        Ok(Self { dir: partial, width, height, frames: 0, aside })
    }

    /// Keeps the first `checkpoint.frames` frames, removes the rest, and continues after them.
    pub(crate) fn resume(dir: &Path, width: u32, height: u32, checkpoint: &WriterCheckpoint) -> Result<Self> {
        super::frame::rgb_len(width, height)?;
        if let Some(last) = checkpoint.frames.checked_sub(1) {
            let path = frame_path(dir, last);
            if !path.is_file() {
                return Err(invalid_input!(
                    "{} is missing, so the checkpoint does not fit this folder",
                    path.display()
                ));
            }
        }
        remove_frames_from(dir, checkpoint.frames)?;
        sync_dir(dir)?;
        Ok(Self { dir: dir.to_path_buf(), width, height, frames: checkpoint.frames, aside: None })
    }

    fn write_frame(&self, frame: &RgbFrame, index: u64) -> Result<()> {
        let path = frame_path(&self.dir, index);
        let temp = self.dir.join(format!("{PREFIX}{index:06}{TEMP_SUFFIX}"));
        let file = File::create(&temp).map_err(write_error(&temp))?;
        let mut out = BufWriter::new(file);
        // Fast compression: these folders are lossless intermediates, where speed matters more.
        PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
            .write_image(&frame.data, frame.width, frame.height, ExtendedColorType::Rgb8)
            .map_err(|e| invalid_input!("cannot encode {}: {e}", path.display()))?;
        let file = out.into_inner().map_err(|e| e.into_error()).map_err(write_error(&temp))?;
        file.sync_all().map_err(write_error(&temp))?;
        fs::rename(&temp, &path).map_err(write_error(&path))
    }
}

impl VideoWriter for PngFolderWriter {
    fn append(&mut self, frames: &[RgbFrame]) -> Result<()> {
        check_frames(frames, self.width, self.height)?;
        for frame in frames {
            self.write_frame(frame, self.frames)?;
            self.frames += 1;
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<WriterCheckpoint> {
        // The frames are already complete files; only their directory entries need syncing.
        sync_dir(&self.dir)?;
        Ok(WriterCheckpoint {
            format: VideoFormat::PngFolder,
            bytes: 0,
            frames: self.frames,
            fragments: 0,
            prefix_crc: 0,
        })
    }

    fn publish(&mut self) -> Result<()> {
        if self.frames == 0 {
            return Ok(());
        }
        if let Some(mut aside) = self.aside.take() {
            swap_in(&aside.partial, &aside.target)?;
            aside.published = true;
            self.dir = aside.target.clone();
        }
        Ok(())
    }

    fn frames_written(&self) -> u64 {
        self.frames
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.commit()?;
        if let Some(mut aside) = self.aside.take() {
            swap_in(&aside.partial, &aside.target)?;
            aside.published = true;
        }
        Ok(())
    }
}

fn frame_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{index:06}{SUFFIX}"))
}

/// Deletes our frame files numbered `first` and up, and any half-written temporaries.
fn remove_frames_from(dir: &Path, first: u64) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let stale = match rest.strip_suffix(SUFFIX).map(str::parse::<u64>) {
            Some(Ok(index)) => index >= first,
            _ => rest.ends_with(TEMP_SUFFIX),
        };
        if stale {
            fs::remove_file(&path).map_err(write_error(&path))?;
        }
    }
    Ok(())
}

/// Reads every `*.png` in a folder, in natural name order (`2.png` before `10.png`).
pub(crate) struct PngFolderReader {
    files: Vec<PathBuf>,
    next: usize,
    width: u32,
    height: u32,
}

impl PngFolderReader {
    /// Lists the PNG files of `dir`; the first one sets the video size.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            let path = entry.map_err(io_error(dir))?.path();
            let is_png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
            let hidden = path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.'));
            if is_png && !hidden && path.is_file() {
                files.push(path);
            }
        }
        files.sort_by_cached_key(|p| natural_key(&p.file_name().unwrap_or_default().to_string_lossy()));
        let first = files.first().ok_or_else(|| invalid_input!("{} contains no PNG frames", dir.display()))?;
        let (width, height) = ::image::image_dimensions(first)
            .map_err(|e| invalid_input!("{} is not a readable image: {e}", first.display()))?;
        Ok(Self { files, next: 0, width, height })
    }
}

impl Iterator for PngFolderReader {
    type Item = Result<RgbFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        let path = self.files.get(self.next)?;
        self.next += 1;
        Some(load_image(path).and_then(|frame| {
            if (frame.width, frame.height) != (self.width, self.height) {
                return Err(invalid_input!(
                    "{} is {}x{}, but the first frame is {}x{}",
                    path.display(),
                    frame.width,
                    frame.height,
                    self.width,
                    self.height
                ));
            }
            Ok(frame)
        }))
    }
}

impl VideoReader for PngFolderReader {
    fn width(&self) -> u32 {
        self.width
    }
    fn height(&self) -> u32 {
        self.height
    }
    fn fps(&self) -> Option<f64> {
        None
    }
    fn frame_count(&self) -> Option<u64> {
        Some(self.files.len() as u64)
    }
}

/// Sort key comparing digit runs by value and everything else as text.
fn natural_key(name: &str) -> Vec<(bool, usize, String)> {
    let mut key = Vec::new();
    let mut rest = name;
    while let Some(first) = rest.chars().next() {
        let digits = first.is_ascii_digit();
        let end = rest.find(|c: char| c.is_ascii_digit() != digits).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        // Numbers: fewer significant digits first, then digit by digit; `false` sorts before text.
        let run = if digits { run.trim_start_matches('0') } else { run };
        key.push((!digits, if digits { run.len() } else { 0 }, run.to_string()));
        rest = tail;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::natural_key;

    #[test]
    fn natural_order_puts_2_before_10() {
        let mut names = vec!["10.png", "2.png", "frame_000001.png", "1.png", "frame_000000.png"];
        names.sort_by_key(|n| natural_key(n));
        assert_eq!(names, ["1.png", "2.png", "10.png", "frame_000000.png", "frame_000001.png"]);
    }
}
