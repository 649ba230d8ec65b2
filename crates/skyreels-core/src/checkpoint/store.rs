//! An index over the weight files of one model (`*.safetensors` shards or a PyTorch `.pth`),
//! addressed by canonical names.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::names::{is_non_weight_key, model_name_from_key, Component, NamingScheme};
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

/// The weight files of one model, validated and looked up by canonical name.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<PathBuf>,
    shards: Vec<Shard>,
    index: HashMap<String, TensorInfo>,
    component: Component,
    scheme: NamingScheme,
    model_name: Option<String>,
}

/// One weight file.
enum Shard {
    /// Memory-mapped safetensors.
    Safetensors(MmapedSafetensors),
    /// A PyTorch zip checkpoint (`torch.save` of a state dict); tensors are read on demand.
    Pth(PthTensors),
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
    /// Opens every `*.safetensors` file in `dir` as the weights of `component`, validating each
    /// header against the file size.
    pub fn open(dir: &Path, component: Component) -> Result<Self> {
        let files = list_safetensors(dir)?;
        if files.is_empty() {
            return Err(Error::BadConfig {
                path: dir.to_path_buf(),
                reason: "the directory holds no *.safetensors weight file".into(),
            });
        }
        Self::open_files(dir, files, component)
    }

    /// Opens one weight file (`.safetensors`, or `.pth`/`.pt`/`.bin` PyTorch zip checkpoint).
    pub fn open_file(path: &Path, component: Component) -> Result<Self> {
        Self::open_files(path, vec![path.to_path_buf()], component)
    }

    /// Opens the given files, all belonging to one model; `location` names it in errors.
    pub fn open_files(location: &Path, files: Vec<PathBuf>, component: Component) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut stored: Vec<(usize, String, DType, Vec<usize>)> = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let shard = open_shard(path)?;
            match &shard {
                Shard::Safetensors(st) => {
                    for (name, view) in st.tensors() {
                        let dtype = DType::try_from(view.dtype()).map_err(|e| Error::BadCheckpointFile {
                            path: path.clone(),
                            reason: format!("tensor `{name}`: {e}"),
                        })?;
                        stored.push((i, name, dtype, view.shape().to_vec()));
                    }
                }
                Shard::Pth(pth) => {
                    for (name, info) in pth.tensor_infos() {
                        stored.push((i, name.clone(), info.dtype, info.layout.dims().to_vec()));
                    }
                }
            }
            shards.push(shard);
        }
        let scheme = component.detect_scheme(stored.iter().map(|(_, n, _, _)| n.as_str()));
        let mut index = HashMap::with_capacity(stored.len());
        let mut model_name = None;
        for (file, stored_name, dtype, shape) in stored {
            if is_non_weight_key(&stored_name) {
                model_name = model_name_from_key(&stored_name).map(str::to_string);
                continue;
            }
            let canonical = component.to_canonical(scheme, &stored_name);
            index.insert(canonical, TensorInfo { file, stored_name, dtype, shape });
        }
        Ok(Self { dir: location.to_path_buf(), files, shards, index, component, scheme, model_name })
    }

    /// The model directory (or the single file it was opened from).
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
        let unreadable = |reason: String| Error::BadModelFile {
            path: self.files[info.file].clone(),
            reason: format!("tensor `{}`: {reason}", info.stored_name),
        };
        let tensor = match &self.shards[info.file] {
            Shard::Safetensors(st) => st.load(&info.stored_name, device).map_err(|e| unreadable(e.to_string()))?,
            Shard::Pth(pth) => pth
                .get(&info.stored_name)
                .map_err(|e| unreadable(describe_candle_error(&e)))?
                .ok_or_else(|| unreadable("listed in the checkpoint but not readable".into()))?
                .to_device(device)?,
        };
        if !tensor.dtype().is_float() {
            return Err(unreadable(format!("stored as {:?}, but a weight must be floating point", tensor.dtype())));
        }
        // One pass over the weight: a NaN or an infinity would silently turn every video black.
        let sum = tensor.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
        if !sum.is_finite() {
            return Err(unreadable("it holds NaN or infinite values".into()));
        }
        Ok(tensor.to_dtype(dtype)?)
    }

    fn missing(&self, canonical: &str) -> Error {
        let name = self.component.to_stored(self.scheme, canonical);
        Error::MissingTensor { name, dir: self.dir.clone() }
    }
}

fn open_shard(path: &Path) -> Result<Shard> {
    let len = std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?.len();
    if path.extension().is_some_and(|e| e == "pth" || e == "pt" || e == "bin") {
        return open_pth(path, len).map(Shard::Pth);
    }
    if len < 8 {
        return Err(Error::BadCheckpointFile { path: path.to_path_buf(), reason: format!("only {len} bytes long") });
    }
    // SAFETY: the file is mapped read-only; like every mmap-based loader we assume no other
    // process truncates it while the model is alive.
    unsafe { MmapedSafetensors::new(path) }
        .map(Shard::Safetensors)
        .map_err(|e| Error::BadCheckpointFile { path: path.to_path_buf(), reason: describe_safetensors_error(&e) })
}

fn open_pth(path: &Path, len: u64) -> Result<PthTensors> {
    let bad = |reason: String| Error::BadModelFile { path: path.to_path_buf(), reason };
    let pth = PthTensors::new(path, None).map_err(|e| {
        let text = describe_candle_error(&e);
        if text.contains("EOCD") || text.contains("end of central directory") || text.contains("invalid Zip archive") {
            bad(format!("not a complete PyTorch zip checkpoint ({len} bytes; truncated or not a .pth): {text}"))
        } else {
            bad(text)
        }
    })?;
    if pth.tensor_infos().is_empty() {
        return Err(bad("holds no tensors (expected a state dict saved with torch.save)".into()));
    }
    Ok(pth)
}

/// The innermost message of a candle error, on one line.
fn describe_candle_error(e: &candle_core::Error) -> String {
    let mut inner = e;
    while let candle_core::Error::WithPath { inner: i, .. } = inner {
        inner = i;
    }
    inner.to_string().lines().next().unwrap_or("unreadable").to_string()
}

/// Strips candle's path decoration so the message stays one short sentence.
fn describe_safetensors_error(e: &candle_core::Error) -> String {
    let text = describe_candle_error(e);
    if text.contains("MetadataIncompleteBuffer") || text.contains("incomplete") {
        "the file is truncated: its header promises more data than the file holds".into()
    } else if text.contains("HeaderTooLarge") || text.contains("InvalidHeader") || text.contains("HeaderTooSmall") {
        format!("corrupted header: {text}")
    } else {
        text
    }
}
