//! The one error type of the engine: every failure a user can cause is a sentence, never a panic.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory that failed.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A file could not be written (a full disk, a read-only folder, …).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory that failed.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A safetensors file is truncated, corrupted or not a safetensors file at all.
    #[error("{path} is not a valid safetensors file ({reason})")]
    BadCheckpointFile {
        /// The offending file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A model file other than a safetensors shard (a tokenizer, a `.pth`) is unusable.
    #[error("{path} is not usable: {reason}")]
    BadModelFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A `config.json` is missing, malformed or describes an impossible model.
    #[error("bad model config {path}: {reason}")]
    BadConfig {
        /// The config file (or model directory when no config exists).
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the model needs is not in any checkpoint shard.
    #[error("tensor `{name}` is missing from the checkpoint in {dir}")]
    MissingTensor {
        /// The tensor name in the checkpoint's own naming scheme.
        name: String,
        /// The model directory.
        dir: PathBuf,
    },
    /// A tensor exists but has the wrong shape for the configured model.
    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor name in the checkpoint's own naming scheme.
        name: String,
        /// The shard holding it.
        file: PathBuf,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },
    /// The caller passed tensors or settings that do not fit the model.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A diffusion-forcing schedule cannot be built from the requested settings.
    #[error("invalid diffusion-forcing schedule: {0}")]
    InvalidSchedule(String),
    /// `--device` names no device kind this engine knows.
    #[error("unknown device `{0}`: use auto, cpu, cuda, cuda:N, metal or metal:N")]
    UnknownDevice(String),
    /// The device exists in principle but cannot be used here (not built in, not present).
    #[error("{0}")]
    DeviceUnavailable(String),
    /// A model and its working set do not fit the device's free memory.
    #[error("{0}")]
    WontFit(String),
    /// A caller's progress callback asked the computation to stop.
    #[error("cancelled")]
    Cancelled,
    /// An error raised inside candle (device, dtype or kernel failure).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias used across the engine.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for [`Error::InvalidInput`] with a formatted message.
macro_rules! invalid_input {
    ($($arg:tt)*) => { $crate::error::Error::InvalidInput(format!($($arg)*)) };
}
pub(crate) use invalid_input;
