//! Finding every file of a full generation pipeline from one `--model` argument.
//!
//! Three spellings are accepted:
//! - a SkyReels/Wan original-layout directory: transformer `config.json` + `*.safetensors` at the
//!   top, `Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth` and `google/umt5-xxl/tokenizer.json`;
//! - a diffusers-layout directory: `model_index.json`, `transformer/`, `vae/`, `text_encoder/`,
//!   `tokenizer/` (and `scheduler/`, which is not needed: the schedule comes from the flags);
//! - SkyReels-V3's video-extension release: the original layout's VAE, text encoder and tokenizer
//!   at the top, its two transformers in `transformer/` (same shot) and `shot_transformer/`
//!   (shot switching);
//! - a Hugging Face hub id such as `Skywork/SkyReels-V2-DF-1.3B-540P`, looked up in the local hub
//!   cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`). Nothing is
//!   downloaded.
//!
//! Everything missing is reported in one error, so a half-downloaded model is fixed in one go.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// On-disk layout of a pipeline directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineLayout {
    /// The original SkyReels-V2 release.
    Original,
    /// A diffusers `save_pretrained` folder.
    Diffusers,
}

/// Where each component of a pipeline lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineFiles {
    /// The directory everything was found under.
    pub root: PathBuf,
    /// How `--model` was spelled, for the record (a hub id or the directory).
    pub id: String,
    /// Original or diffusers layout.
    pub layout: PipelineLayout,
    /// Transformer directory (config.json + safetensors).
    pub transformer: PathBuf,
    /// A quantised transformer: the one `*.gguf` file of the transformer directory when it holds
    /// no safetensors (its config still comes from the directory's `config.json`).
    pub transformer_gguf: Option<PathBuf>,
    /// VAE directory or `.pth` file.
    pub vae: PathBuf,
    /// Text-encoder directory or `.pth` file.
    pub text_encoder: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// CLIP's vision tower, when the folder has one (image-to-video models): the diffusers
    /// `image_encoder/` or the original open-clip `.pth`.
    pub image_encoder: Option<PathBuf>,
    /// SkyReels-V3's shot-switching transformer directory (`shot_transformer/`), when the folder
    /// is a video-extension release that has one.
    pub shot_transformer: Option<PathBuf>,
    /// Which pipeline the model is for.
    pub kind: PipelineKind,
}

/// Which sampling loop a model is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipelineKind {
    /// Diffusion forcing: windows of per-frame noise levels, any length (the DF models).
    DiffusionForcing,
    /// One window from text (SkyReels-V2-T2V).
    TextToVideo,
    /// One window from a first frame, with CLIP tokens and a 20-channel condition
    /// (SkyReels-V2-I2V).
    ImageToVideo,
    /// One window composed from up to four reference images appended along time
    /// (SkyReels-V3-R2V).
    ReferenceToVideo,
    /// A clip continued from clean latents of its last frames, in the same shot or cut to a new
    /// one (SkyReels-V3-V2V).
    VideoExtension,
    /// One window composed from 1–3 element images: their CLIP tokens through the image
    /// cross-attention and the images as the first frames of the condition video (SkyReels-A2).
    ElementsToVideo,
}

impl std::fmt::Display for PipelineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PipelineKind::DiffusionForcing => "diffusion-forcing (DF)",
            PipelineKind::TextToVideo => "text-to-video (T2V)",
            PipelineKind::ImageToVideo => "image-to-video (I2V)",
            PipelineKind::ReferenceToVideo => "reference-to-video (R2V)",
            PipelineKind::VideoExtension => "video-extension (V2V)",
            PipelineKind::ElementsToVideo => "elements-to-video (A2)",
        })
    }
}

/// The pipeline a folder is for: elements-to-video when the transformer or the pipeline is
/// SkyReels-A2's (`A2Model`, `A2Pipeline`: an I2V DiT the pipeline feeds differently);
/// image-to-video when its transformer takes the 36 channels of
/// noise + condition (or says `model_type: i2v`); reference-to-video when the transformer is
/// SkyReels-V3's (`SkyReelsA2WanI2v3DModel`, or `SkyReelsC1WanI2v3DModel` as some published
/// configs spell it: the same Wan DiT, which only the sequence layout tells apart);
/// text-to-video when a diffusers folder names `SkyReelsV2Pipeline` or an original folder is
/// named like a T2V release (`SkyReels-V2-T2V-14B-540P`: T2V and DF-14B share one
/// architecture); diffusion forcing otherwise.
fn detect_kind(root: &Path, transformer: &Path, layout: PipelineLayout) -> PipelineKind {
    let read =
        |path: &Path| -> Option<serde_json::Value> { serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok() };
    let index_class = read(&root.join("model_index.json"))
        .and_then(|index| index.get("_class_name")?.as_str().map(str::to_string))
        .unwrap_or_default();
    if let Some(config) = read(&transformer.join("config.json")) {
        let class = config.get("_class_name").and_then(|v| v.as_str()).unwrap_or_default();
        if class == "A2Model" || index_class == "A2Pipeline" {
            return PipelineKind::ElementsToVideo;
        }
        let channels = config.get("in_channels").or_else(|| config.get("in_dim")).and_then(|v| v.as_u64());
        if channels == Some(36) || config.get("model_type").and_then(|v| v.as_str()) == Some("i2v") {
            return PipelineKind::ImageToVideo;
        }
        if class.starts_with("SkyReels") && class.ends_with("WanI2v3DModel") {
            return PipelineKind::ReferenceToVideo;
        }
    }
    let text_to_video = match layout {
        PipelineLayout::Diffusers => index_class == "SkyReelsV2Pipeline",
        PipelineLayout::Original => {
            root.file_name().is_some_and(|name| name.to_string_lossy().to_ascii_uppercase().contains("-T2V-"))
        }
    };
    if text_to_video {
        PipelineKind::TextToVideo
    } else {
        PipelineKind::DiffusionForcing
    }
}

/// Resolves `model` (a directory or a hub id) to the files of every component.
pub fn resolve_pipeline(model: &str) -> Result<PipelineFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return resolve_dir(path, model);
    }
    if path.exists() {
        return Err(bad(
            path,
            "is a file; --model takes a model directory or a hub id such as Skywork/SkyReels-V2-DF-1.3B-540P",
        ));
    }
    if looks_like_hub_id(model) {
        let snapshot = find_in_hub_cache(model)?;
        return resolve_dir(&snapshot, model);
    }
    Err(Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such model directory"),
    })
}

fn bad(path: &Path, reason: &str) -> Error {
    Error::BadConfig { path: path.to_path_buf(), reason: reason.to_string() }
}

fn looks_like_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The hub cache directories to search, most specific first.
fn hub_cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("HF_HUB_CACHE") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("HF_HOME") {
        dirs.push(PathBuf::from(d).join("hub"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    dirs
}

/// `models--owner--name/snapshots/<revision>`: the revision `refs/main` points to, else the only
/// (or newest) snapshot.
fn find_in_hub_cache(id: &str) -> Result<PathBuf> {
    let folder = format!("models--{}", id.replace('/', "--"));
    let searched = hub_cache_dirs();
    for cache in &searched {
        let repo = cache.join(&folder);
        if !repo.is_dir() {
            continue;
        }
        let snapshots = repo.join("snapshots");
        if let Ok(main) = std::fs::read_to_string(repo.join("refs/main")) {
            let dir = snapshots.join(main.trim());
            if dir.is_dir() {
                return Ok(dir);
            }
        }
        let mut revisions: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
            .collect();
        revisions.sort();
        if let Some((_, newest)) = revisions.pop() {
            return Ok(newest);
        }
    }
    let places: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
    Err(bad(
        Path::new(id),
        &format!(
            "model {id} is not in the local Hugging Face cache (looked in {}); download it first \
             (`huggingface-cli download {id}`) or pass a model directory",
            if places.is_empty() { "no cache directory: HOME is not set".to_string() } else { places.join(", ") }
        ),
    ))
}

fn resolve_dir(root: &Path, id: &str) -> Result<PipelineFiles> {
    let index = root.join("model_index.json").is_file();
    // SkyReels-V3-V2V: original-layout files at the top, its transformers in subfolders.
    let v3_extension = !index && root.join("transformer").is_dir() && root.join("Wan2.1_VAE.pth").is_file();
    let diffusers = !v3_extension && (index || root.join("transformer").is_dir());
    let mut files = if diffusers { diffusers_files(root, id) } else { original_files(root, id) };
    if v3_extension {
        files.transformer = root.join("transformer");
        files.shot_transformer = Some(root.join("shot_transformer")).filter(|d| d.is_dir());
    }
    if !has_extension(&files.transformer, "safetensors") {
        files.transformer_gguf = single_gguf(&files.transformer);
    }
    files.kind =
        if v3_extension { PipelineKind::VideoExtension } else { detect_kind(root, &files.transformer, files.layout) };
    let missing: Vec<String> = required(&files).into_iter().filter(|(_, ok)| !ok).map(|(what, _)| what).collect();
    if missing.is_empty() {
        return Ok(files);
    }
    let layout = if diffusers { "diffusers" } else { "original SkyReels" };
    Err(bad(root, &format!("this {layout}-layout model is missing {}", missing.join(", "))))
}

fn diffusers_files(root: &Path, id: &str) -> PipelineFiles {
    PipelineFiles {
        root: root.to_path_buf(),
        id: id.to_string(),
        layout: PipelineLayout::Diffusers,
        transformer: root.join("transformer"),
        transformer_gguf: None,
        vae: root.join("vae"),
        text_encoder: root.join("text_encoder"),
        tokenizer: root.join("tokenizer/tokenizer.json"),
        image_encoder: Some(root.join("image_encoder")).filter(|d| d.is_dir()),
        shot_transformer: None,
        kind: PipelineKind::DiffusionForcing,
    }
}

fn original_files(root: &Path, id: &str) -> PipelineFiles {
    PipelineFiles {
        root: root.to_path_buf(),
        id: id.to_string(),
        layout: PipelineLayout::Original,
        transformer: root.to_path_buf(),
        transformer_gguf: None,
        vae: root.join("Wan2.1_VAE.pth"),
        text_encoder: root.join("models_t5_umt5-xxl-enc-bf16.pth"),
        tokenizer: root.join("google/umt5-xxl/tokenizer.json"),
        image_encoder: Some(root.join("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"))
            .filter(|f| f.is_file()),
        shot_transformer: None,
        kind: PipelineKind::DiffusionForcing,
    }
}

/// Whether `dir` holds a file ending in `.{extension}`.
fn has_extension(dir: &Path, extension: &str) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == extension)))
        .unwrap_or(false)
}

/// The `*.gguf` file of `dir`, when there is exactly one.
fn single_gguf(dir: &Path) -> Option<PathBuf> {
    let mut found =
        std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "gguf"));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Every file the layout needs, with whether it is present (named relative to the root).
fn required(f: &PipelineFiles) -> Vec<(String, bool)> {
    let rel = |p: &Path| p.strip_prefix(&f.root).unwrap_or(p).display().to_string();
    let has_safetensors =
        |dir: &Path| has_extension(dir, "safetensors") || (dir == f.transformer && f.transformer_gguf.is_some());
    let mut out = Vec::new();
    let mut need_dir = |dir: &Path, label: &str| {
        let config = dir.join("config.json");
        let name = if rel(dir).is_empty() { String::new() } else { format!("{}/", rel(dir)) };
        out.push((format!("{name}config.json ({label} config)"), config.is_file()));
        out.push((format!("{name}*.safetensors ({label} weights)"), has_safetensors(dir)));
    };
    need_dir(&f.transformer, "transformer");
    if f.layout == PipelineLayout::Diffusers {
        need_dir(&f.vae, "VAE");
        need_dir(&f.text_encoder, "text encoder");
    }
    if f.layout == PipelineLayout::Original {
        out.push((format!("{} (VAE)", rel(&f.vae)), f.vae.is_file()));
        out.push((format!("{} (text encoder)", rel(&f.text_encoder)), f.text_encoder.is_file()));
    }
    out.push((format!("{} (tokenizer)", rel(&f.tokenizer)), f.tokenizer.is_file()));
    if matches!(f.kind, PipelineKind::ImageToVideo | PipelineKind::ElementsToVideo) {
        let clip = match f.layout {
            PipelineLayout::Diffusers => "image_encoder/ (CLIP image encoder)",
            PipelineLayout::Original => "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth (CLIP image encoder)",
        };
        out.push((clip.to_string(), f.image_encoder.is_some()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_owner_slash_name() {
        assert!(looks_like_hub_id("Skywork/SkyReels-V2-DF-1.3B-540P"));
        assert!(!looks_like_hub_id("Skywork"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("./x/y z"));
    }

    #[test]
    fn missing_components_are_all_listed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.path().join("transformer")).unwrap();
        std::fs::write(dir.path().join("transformer/config.json"), "{}").unwrap();
        let err = resolve_pipeline(dir.path().to_str().unwrap()).unwrap_err().to_string();
        for part in
            ["transformer/*.safetensors", "vae/config.json", "text_encoder/*.safetensors", "tokenizer/tokenizer.json"]
        {
            assert!(err.contains(part), "{err} should name {part}");
        }
        assert!(!err.contains("transformer/config.json"), "{err}");
    }

    #[test]
    fn original_layout_lists_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_pipeline(dir.path().to_str().unwrap()).unwrap_err().to_string();
        for part in
            ["Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/tokenizer.json", "config.json"]
        {
            assert!(err.contains(part), "{err} should name {part}");
        }
    }

    #[test]
    fn the_pipeline_kind_comes_from_the_folder() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
        let kind = |name: &str| resolve_pipeline(fixtures.join(name).to_str().unwrap()).unwrap().kind;
        assert_eq!(kind("df_pipeline"), PipelineKind::DiffusionForcing);
        assert_eq!(kind("t2v_pipeline"), PipelineKind::TextToVideo);
        assert_eq!(kind("i2v_pipeline"), PipelineKind::ImageToVideo);
        assert_eq!(kind("r2v_pipeline"), PipelineKind::ReferenceToVideo);
        assert_eq!(kind("v2v_pipeline"), PipelineKind::VideoExtension);
        assert_eq!(kind("a2_pipeline"), PipelineKind::ElementsToVideo);
        let v2v = resolve_pipeline(fixtures.join("v2v_pipeline").to_str().unwrap()).unwrap();
        assert!(v2v.transformer.ends_with("transformer"));
        assert!(v2v.shot_transformer.is_some_and(|p| p.ends_with("shot_transformer")));
        let i2v = resolve_pipeline(fixtures.join("i2v_pipeline").to_str().unwrap()).unwrap();
        assert!(i2v.image_encoder.is_some_and(|p| p.ends_with("image_encoder")));
        // An original folder is T2V when it is named like the T2V release.
        let dir = tempfile::tempdir().unwrap();
        let t2v = dir.path().join("SkyReels-V2-T2V-14B-540P");
        std::fs::create_dir_all(&t2v).unwrap();
        assert_eq!(detect_kind(&t2v, &t2v, PipelineLayout::Original), PipelineKind::TextToVideo);
        std::fs::write(t2v.join("config.json"), r#"{"model_type": "i2v", "in_dim": 36}"#).unwrap();
        assert_eq!(detect_kind(&t2v, &t2v, PipelineLayout::Original), PipelineKind::ImageToVideo);
    }

    /// A transformer folder with one GGUF file and no safetensors is a quantised transformer;
    /// two GGUF files are ambiguous and count as no weights.
    #[test]
    fn a_lone_gguf_file_stands_in_for_the_transformer_weights() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("google/umt5-xxl")).unwrap();
        for file in
            ["config.json", "Wan2.1_VAE.pth", "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/tokenizer.json"]
        {
            std::fs::write(root.join(file), "{}").unwrap();
        }
        std::fs::write(root.join("SkyReels-V2-DF-1.3B-Q8_0.gguf"), "").unwrap();
        let files = resolve_pipeline(root.to_str().unwrap()).unwrap();
        assert_eq!(files.transformer_gguf, Some(root.join("SkyReels-V2-DF-1.3B-Q8_0.gguf")));
        std::fs::write(root.join("SkyReels-V2-DF-1.3B-Q4_K.gguf"), "").unwrap();
        let err = resolve_pipeline(root.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("*.safetensors"), "{err}");
    }
}
