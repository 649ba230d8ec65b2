//! One run per output: an exclusive lock held from the checks to the last commit, so a second
//! run (another terminal, a second worker) is refused at once instead of interleaving its
//! writes with the first.
//!
//! The lock is an OS file lock on a hidden file beside the output (`.<name>.lock`), which holds
//! the holder's process id for the refusal message. The operating system releases it when the
//! process ends, however it ends. The file itself is left in place: deleting it could let two
//! later runs lock two different files of the same name.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::GenerationError;

/// Held while a run may write its output; released on drop.
#[derive(Debug)]
pub struct OutputLock {
    _file: File,
    path: PathBuf,
}

impl OutputLock {
    /// Takes the lock of `output`, or says which process holds it.
    pub fn acquire(output: &Path) -> Result<Self, GenerationError> {
        let path = lock_path(output);
        let fail = |e: std::io::Error| GenerationError::Output(format!("cannot lock {}: {e}", path.display()));
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(fail)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
                return Err(GenerationError::Output(format!(
                    "{} is being written by another skyreels run ({who}); wait for it or choose another --output",
                    output.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail(e)),
        }
        file.set_len(0).and_then(|()| file.seek(SeekFrom::Start(0))).map_err(fail)?;
        file.write_all(std::process::id().to_string().as_bytes()).map_err(fail)?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `dir/video.mp4` → `dir/.video.mp4.lock`; a folder `frames/` → `.frames.lock` beside it.
pub fn lock_path(output: &Path) -> PathBuf {
    let trimmed = PathBuf::from(output.to_string_lossy().trim_end_matches(['/', '\\']).to_string());
    let name = trimmed.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    trimmed.with_file_name(format!(".{name}.lock"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("v.mp4");
        let first = OutputLock::acquire(&out).unwrap();
        assert_eq!(first.path(), dir.path().join(".v.mp4.lock"));
        let err = OutputLock::acquire(&out).unwrap_err().to_string();
        assert!(err.contains(&format!("process {}", std::process::id())), "{err}");
        drop(first);
        OutputLock::acquire(&out).unwrap();
        assert_eq!(lock_path(Path::new("a/frames/")), PathBuf::from("a/.frames.lock"));
    }
}
