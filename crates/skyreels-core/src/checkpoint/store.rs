//! An index over all `*.safetensors` shards of a model directory, addressed by canonical names.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::names::{detect_scheme, diffusers_to_canonical, is_non_weight_key, model_name_from_key, NamingScheme};
use crate::error::{Error, Result};

/// Where one tensor lives and what it looks like.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Index of the shard in [`WeightStore::files`].
    pub file: usize,
    /// The key as stored in the file.
    pub stored_name: String,
    /// The stored dtype.
    pub dtype: DType,
    /// The stored shape.
    pub shape: Vec<usize>,
}

/// Memory-mapped, validated safetensors shards of one model, looked up by canonical name.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<PathBuf>,
    shards: Vec<MmapedSafetensors>,
    index: HashMap<String, TensorInfo>,
    scheme: NamingScheme,
    model_name: Option<String>,
}

/// Lists the `*.safetensors` files of a directory in name order.
pub fn list_safetensors(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

impl WeightStore {
    /// Opens every `*.safetensors` file in `dir`, validating each header against the file size.
    pub fn open(dir: &Path) -> Result<Self> {
        let files = list_safetensors(dir)?;
        if files.is_empty() {
            return Err(Error::BadConfig {
                path: dir.to_path_buf(),
                reason: "the directory holds no *.safetensors weight file".into(),
            });
        }
        Self::open_files(dir, files)
    }

    /// Opens the given shards (all belonging to one model stored in `dir`).
    pub fn open_files(dir: &Path, files: Vec<PathBuf>) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut stored: Vec<(usize, String, DType, Vec<usize>)> = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let shard = open_shard(path)?;
            for (name, view) in shard.tensors() {
                let dtype = DType::try_from(view.dtype()).map_err(|e| Error::BadCheckpointFile {
                    path: path.clone(),
                    reason: format!("tensor `{name}`: {e}"),
                })?;
                stored.push((i, name, dtype, view.shape().to_vec()));
            }
            shards.push(shard);
        }
        let scheme = detect_scheme(stored.iter().map(|(_, n, _, _)| n.as_str()));
        let mut index = HashMap::with_capacity(stored.len());
        let mut model_name = None;
        for (file, stored_name, dtype, shape) in stored {
            if is_non_weight_key(&stored_name) {
                model_name = model_name_from_key(&stored_name).map(str::to_string);
                continue;
            }
            let canonical = match scheme {
                NamingScheme::Original => stored_name.clone(),
                NamingScheme::Diffusers => diffusers_to_canonical(&stored_name),
            };
            index.insert(canonical, TensorInfo { file, stored_name, dtype, shape });
        }
        Ok(Self { dir: dir.to_path_buf(), files, shards, index, scheme, model_name })
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shard files, in the order [`TensorInfo::file`] refers to.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The naming scheme the checkpoint was written in.
    pub fn scheme(&self) -> NamingScheme {
        self.scheme
    }

    /// The model name SkyReels records in its `model_type.<ModelName>` key, if present.
    pub fn model_name(&self) -> Option<&str> {
        self.model_name.as_deref()
    }

    /// Metadata of a tensor by canonical name.
    pub fn info(&self, canonical: &str) -> Option<&TensorInfo> {
        self.index.get(canonical)
    }

    /// Whether a tensor with this canonical name exists.
    pub fn contains(&self, canonical: &str) -> bool {
        self.index.contains_key(canonical)
    }

    /// Iterates over (canonical name, info) of every weight tensor.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &TensorInfo)> {
        self.index.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Total number of scalar parameters over all weight tensors.
    pub fn parameter_count(&self) -> usize {
        self.index.values().map(|t| t.shape.iter().product::<usize>()).sum()
    }

    /// Number of scalar parameters per stored dtype.
    pub fn parameters_by_dtype(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for t in self.index.values() {
            *out.entry(format!("{:?}", t.dtype).to_lowercase()).or_insert(0) += t.shape.iter().product::<usize>();
        }
        out
    }

    /// Shape of a tensor, or a [`Error::MissingTensor`] naming it in the checkpoint's own scheme.
    pub fn shape(&self, canonical: &str) -> Result<&[usize]> {
        self.index.get(canonical).map(|t| t.shape.as_slice()).ok_or_else(|| self.missing(canonical))
    }

    /// Loads a tensor, checking its shape, converted to `dtype` on `device`.
    pub fn tensor(&self, canonical: &str, expected: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let info = self.index.get(canonical).ok_or_else(|| self.missing(canonical))?;
        if info.shape != expected {
            return Err(Error::ShapeMismatch {
                name: info.stored_name.clone(),
                file: self.files[info.file].clone(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        let tensor = self.shards[info.file].load(&info.stored_name, device).map_err(|e| Error::BadCheckpointFile {
            path: self.files[info.file].clone(),
            reason: format!("tensor `{}`: {e}", info.stored_name),
        })?;
        Ok(tensor.to_dtype(dtype)?)
    }

    fn missing(&self, canonical: &str) -> Error {
        let name = match self.scheme {
            NamingScheme::Original => canonical.to_string(),
            NamingScheme::Diffusers => super::names::canonical_to_diffusers(canonical),
        };
        Error::MissingTensor { name, dir: self.dir.clone() }
    }
}

fn open_shard(path: &Path) -> Result<MmapedSafetensors> {
    let len = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?.len();
    if len < 8 {
        return Err(Error::BadCheckpointFile { path: path.to_path_buf(), reason: format!("only {len} bytes long") });
    }
    // SAFETY: the file is mapped read-only; like every mmap-based loader we assume no other
    // process truncates it while the model is alive.
    unsafe { MmapedSafetensors::new(path) }
        .map_err(|e| Error::BadCheckpointFile { path: path.to_path_buf(), reason: describe_safetensors_error(&e) })
}

/// Strips candle's path decoration so the message stays one short sentence.
fn describe_safetensors_error(e: &candle_core::Error) -> String {
    let mut inner = e;
    while let candle_core::Error::WithPath { inner: i, .. } = inner {
        inner = i;
    }
    let text = inner.to_string();
    let text = text.lines().next().unwrap_or("unreadable").to_string();
    if text.contains("MetadataIncompleteBuffer") || text.contains("incomplete") {
        "the file is truncated: its header promises more data than the file holds".into()
    } else if text.contains("HeaderTooLarge") || text.contains("InvalidHeader") || text.contains("HeaderTooSmall") {
        format!("corrupted header: {text}")
    } else {
        text
    }
}
