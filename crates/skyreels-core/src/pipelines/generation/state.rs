//! What is saved next to the output after every window: the resume state (to continue an
//! interrupted run bit-identically) and the sidecar JSON (to reproduce or audit the video).
//!
//! Both are replaced atomically (write a temporary file, sync, rename), so a crash at any moment
//! leaves either the previous or the new version, never a torn one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::settings::GenerateParams;
use super::GenerationError;
use crate::media::WriterCheckpoint;
use crate::pipelines::{DfProgress, NoiseState, WindowDecoderState};

/// Format version of the resume file; bumped when its meaning changes.
pub const STATE_VERSION: u32 = 2;
const METADATA_KEY: &str = "skyreels_resume";
/// CRC-32 of the settings JSON followed by every tensor's bytes in name order: a state whose
/// numbers were damaged is refused instead of producing a wrong video.
const CHECKSUM_KEY: &str = "skyreels_resume_crc";

/// The non-tensor part of the resume state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeInfo {
    /// [`STATE_VERSION`] of the writer.
    pub version: u32,
    /// The generation's settings.
    pub params: GenerateParams,
    /// Windows and latent frames done.
    pub progress: DfProgress,
    /// The noise stream's position.
    pub noise: NoiseState,
    /// Where the output file ends and how to continue it.
    pub writer: WriterCheckpoint,
    /// Model rows done so far (for the progress bar).
    pub rows_done: usize,
    /// Seconds spent generating before this point.
    pub seconds: f64,
    /// Block passes made and skipped by the step cache so far (states saved before it existed
    /// had none).
    #[serde(default)]
    pub cache: crate::pipelines::CacheStats,
}

/// Everything needed to continue a run.
pub struct ResumeState {
    /// Settings and counters.
    pub info: ResumeInfo,
    /// Latents the next window starts from.
    pub history: Option<Tensor>,
    /// The first-frame latent of image-to-video.
    pub image_latent: Option<Tensor>,
    /// The last-frame latent of `--end-image`.
    pub end_latent: Option<Tensor>,
    /// The clip's last frames a SkyReels-V3 shot switch cuts from.
    pub context_latents: Option<Tensor>,
    /// What the window decoder needs to continue.
    pub decoder: WindowDecoderState,
}

impl ResumeState {
    /// Writes the state atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<(), GenerationError> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let mut put = |name: String, t: &Option<Tensor>| {
            if let Some(t) = t {
                tensors.insert(name, t.clone());
            }
        };
        put("history".into(), &self.history);
        put("image_latent".into(), &self.image_latent);
        put("end_latent".into(), &self.end_latent);
        put("context_latents".into(), &self.context_latents);
        put("pixel_history".into(), &self.decoder.pixel_history);
        put("recent_latents".into(), &self.decoder.recent_latents);
        let info = serde_json::to_string(&self.info).map_err(|e| GenerationError::Output(e.to_string()))?;
        let serialise = |metadata| {
            safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), Some(metadata))
                .map_err(|e| GenerationError::Output(format!("cannot serialise the resume state: {e}")))
        };
        // Serialised once to read the tensors' bytes back as stored, then with their checksum.
        let draft = serialise(HashMap::from([(METADATA_KEY.to_string(), info.clone())]))?;
        let crc = checksum(&info, &draft).map_err(GenerationError::Output)?;
        let metadata = HashMap::from([(METADATA_KEY.to_string(), info), (CHECKSUM_KEY.to_string(), crc.to_string())]);
        write_atomically(path, &serialise(metadata)?)
    }

    /// Reads a state written by [`save`](Self::save).
    pub fn load(path: &Path, device: &Device) -> Result<Self, GenerationError> {
        let bytes = std::fs::read(path).map_err(|e| {
            GenerationError::Resume(format!(
                "cannot read the resume state {} ({e}); was this output made by `skyreels generate`?",
                path.display()
            ))
        })?;
        let bad =
            |why: String| GenerationError::Resume(format!("the resume state {} is damaged ({why})", path.display()));
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let info_json =
            meta.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)).ok_or_else(|| bad("no settings".into()))?;
        let version = serde_json::from_str::<serde_json::Value>(info_json).ok().and_then(|v| v["version"].as_u64());
        if version != Some(STATE_VERSION as u64) {
            return Err(GenerationError::Resume(format!(
                "the resume state {} was written by another version of skyreels",
                path.display()
            )));
        }
        let stored = meta.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)).and_then(|c| c.parse::<u32>().ok());
        if stored != Some(checksum(info_json, &bytes).map_err(bad)?) {
            return Err(bad("its checksum does not match its contents".into()));
        }
        let info: ResumeInfo = serde_json::from_str(info_json).map_err(|e| bad(e.to_string()))?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            history: tensors.remove("history"),
            image_latent: tensors.remove("image_latent"),
            end_latent: tensors.remove("end_latent"),
            context_latents: tensors.remove("context_latents"),
            decoder: WindowDecoderState {
                recent_latents: tensors.remove("recent_latents"),
                pixel_history: tensors.remove("pixel_history"),
            },
            info,
        })
    }
}

/// The checksum of a state file's settings and tensor bytes (see [`CHECKSUM_KEY`]).
fn checksum(info_json: &str, file: &[u8]) -> Result<u32, String> {
    let tensors = safetensors::SafeTensors::deserialize(file).map_err(|e| e.to_string())?;
    let mut names: Vec<&str> = tensors.names();
    names.sort_unstable();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(info_json.as_bytes());
    for name in names {
        let tensor = tensors.tensor(name).map_err(|e| e.to_string())?;
        hasher.update(name.as_bytes());
        hasher.update(tensor.data());
    }
    Ok(hasher.finalize())
}

impl ResumeState {
    /// The same state with its tensors on `device`.
    pub fn to_device(self, device: &Device) -> Result<Self, GenerationError> {
        let move_to = |t: Option<Tensor>| {
            t.map(|t| t.to_device(device)).transpose().map_err(|e| GenerationError::Engine(e.to_string()))
        };
        Ok(Self {
            history: move_to(self.history)?,
            image_latent: move_to(self.image_latent)?,
            end_latent: move_to(self.end_latent)?,
            context_latents: move_to(self.context_latents)?,
            decoder: WindowDecoderState {
                recent_latents: move_to(self.decoder.recent_latents)?,
                pixel_history: move_to(self.decoder.pixel_history)?,
            },
            info: self.info,
        })
    }
}

/// Replaces `path` with `bytes` so that readers see the old or the new content, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), GenerationError> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    // One fixed name: a temporary left by a crash is simply replaced by the next write.
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let fail = |e: std::io::Error| GenerationError::Output(format!("cannot write {}: {e}", path.display()));
    let mut file = std::fs::File::create(&tmp).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable; not all platforms can open directories, so best effort.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
