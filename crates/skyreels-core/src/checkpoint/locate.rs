//! Finding one model's weights in the layouts users have on disk: a single original release
//! file, a folder of safetensors (with or without `config.json`), or a diffusers pipeline root.

use std::path::{Path, PathBuf};

use super::{list_safetensors, Component, WeightStore};
use crate::error::{Error, Result};

/// Where a model's weights can live, and how to recognise them.
pub struct ModelFiles<'a> {
    /// Which naming the weights use.
    pub component: Component,
    /// The folder a diffusers pipeline keeps the model in (`vae`, `text_encoder`).
    pub subfolder: &'a str,
    /// The single file of the original release (`Wan2.1_VAE.pth`), used when a folder holds
    /// no safetensors.
    pub original_file: &'a str,
    /// Canonical names every checkpoint of this model has.
    pub signature: &'a [&'a str],
    /// What the model is, completing "this is not …" when the signature is missing.
    pub description: &'a str,
}

/// Opened weights, where they were found, and the `config.json` next to them if any.
pub struct LocatedModel {
    /// The weights.
    pub store: WeightStore,
    /// The file or folder they were read from (for error messages).
    pub location: PathBuf,
    /// `config.json` beside safetensors weights; `None` for single files.
    pub config: Option<PathBuf>,
}

/// Opens the weights of `files.component` at `path`: a weight file, a folder of safetensors,
/// a folder holding only the original release file, or a pipeline root with `files.subfolder`.
pub fn open_model(path: &Path, files: &ModelFiles) -> Result<LocatedModel> {
    if path.is_file() {
        return checked(WeightStore::open_file(path, files.component)?, path, None, files);
    }
    let nested = path.join(files.subfolder);
    let dir = if nested.is_dir() { nested } else { path.to_path_buf() };
    if !dir.is_dir() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    let original = dir.join(files.original_file);
    if original.is_file() && list_safetensors(&dir)?.is_empty() {
        return checked(WeightStore::open_file(&original, files.component)?, &original, None, files);
    }
    let config = Some(dir.join("config.json")).filter(|c| c.is_file());
    checked(WeightStore::open(&dir, files.component)?, &dir, config, files)
}

fn checked(store: WeightStore, location: &Path, config: Option<PathBuf>, files: &ModelFiles) -> Result<LocatedModel> {
    if !files.signature.iter().all(|name| store.contains(name)) {
        return Err(Error::BadModelFile {
            path: location.to_path_buf(),
            reason: format!("this is not {}", files.description),
        });
    }
    Ok(LocatedModel { store, location: location.to_path_buf(), config })
}
