//! What the API accepts and returns for jobs, and how a job's request becomes the engine's
//! [`GenerationRequest`] — on the server when it is checked, and on whichever worker runs it.
//!
//! Clients never name files: images and videos are uploaded first and referred to by the id
//! the upload returned, and every path is built here from the data folder and generated ids.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use skyreels_core::pipelines::generation::{GenerateParams, GenerationRequest, Segment};
use utoipa::ToSchema;

use crate::store::JobRow;
use crate::Limits;

/// A generation job: the settings of `skyreels generate`, with uploads instead of files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobRequest {
    /// What the video shows (or give `story`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Story mode: one prompt per segment, each lasting `windows` windows (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub story: Option<Vec<StorySegment>>,
    /// Negative prompt for guidance (default: the model's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Upload id of the first frame (image-to-video).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Upload id of the frame the video must end on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_image: Option<String>,
    /// Upload ids of 1–4 reference images (a reference-to-video model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub references: Option<Vec<String>>,
    /// Image guidance of reference-to-video (used with `guidance` above 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_guidance: Option<f64>,
    /// LoRA adapters this server offers (the files `NAME.safetensors` in `<data>/loras/`):
    /// `NAME` or `NAME:STRENGTH`. Workers that keep the model loaded switch them per job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loras: Option<Vec<String>>,
    /// Upload id of a video (MP4/GIF) to extend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extend: Option<String>,
    /// With a SkyReels-V3 video-extension model: cut to a new shot (`zoom-in-cut`,
    /// `zoom-out-cut`, `cut`) instead of continuing the same one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transition: Option<String>,
    /// Id of one of the caller's finished jobs to extend (its video is copied to a new upload,
    /// which the stored job then names as `extend`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extend_job: Option<String>,
    /// `mp4` (default) or `gif`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A model this server offers (`GET /v1/health` lists them); default: its first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Video frames (4k+1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
    /// Frames per window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_frames: Option<u64>,
    /// Frames shared by consecutive windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlap_history: Option<u64>,
    /// Height in pixels (multiple of 16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// Width in pixels (multiple of 16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u64>,
    /// Frames per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fps: Option<u32>,
    /// Denoising steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    /// Flow shift.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
    /// Guidance scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    /// Seed (drawn when omitted, and then shown in the job).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Steps each causal block trails the previous one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ar_step: Option<u64>,
    /// Latent frames per causal block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causal_block_size: Option<u64>,
    /// Noise given to the clean overlap frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addnoise_condition: Option<u32>,
    /// `latent` or `pixel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation: Option<String>,
    /// `skyreels` or `diffusers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma_grid: Option<String>,
    /// The solver: `unipc`, `euler` or `lcm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// The step cache: `off`, `teacache[:THRESHOLD]` or `frames[:THRESHOLD]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Block-causal attention in asynchronous mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub causal_attention: Option<bool>,
    /// Transformer precision: auto, f32, bf16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// VAE precision: f32, bf16.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae_dtype: Option<String>,
    /// Transformer matrices: native or fp8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<String>,
}

/// The fields of [`JobRequest`], as JSON spells them.
pub const FIELDS: &[&str] = &[
    "prompt",
    "story",
    "negative_prompt",
    "image",
    "end_image",
    "references",
    "reference_guidance",
    "loras",
    "extend",
    "transition",
    "extend_job",
    "format",
    "model",
    "frames",
    "base_frames",
    "overlap_history",
    "height",
    "width",
    "fps",
    "steps",
    "shift",
    "guidance",
    "seed",
    "ar_step",
    "causal_block_size",
    "addnoise_condition",
    "continuation",
    "sigma_grid",
    "sampler",
    "cache",
    "causal_attention",
    "dtype",
    "vae_dtype",
    "weights",
];

/// One prompt of a story.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StorySegment {
    /// The prompt.
    pub prompt: String,
    /// Windows generated with it (default 1).
    #[serde(default)]
    pub windows: Option<u64>,
}

/// A job as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    /// Job id.
    pub id: String,
    /// text, image, end_image, extend or story.
    pub kind: String,
    /// queued, running, interrupted (its worker vanished; it resumes on the next), done,
    /// failed or cancelled.
    pub state: String,
    /// Creation time (ms since the Unix epoch).
    pub created_ms: i64,
    /// When a worker first started it.
    pub started_ms: Option<i64>,
    /// When it ended.
    pub finished_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The latest progress.
    pub progress: Option<Progress>,
    /// Frames in the finished video.
    pub frames: Option<i64>,
    /// Generation seconds.
    pub seconds: Option<f64>,
    /// Times a worker started it (more than 1 after an interruption).
    pub attempts: i64,
    /// The settings, with the seed and model filled in.
    pub settings: JobRequest,
    /// Where the video is (playable while it is being written).
    pub video_url: String,
    /// The latest frame as PNG, once the first window is done.
    pub preview_url: Option<String>,
}

/// Progress of a running job.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// What it is doing before denoising starts (encoding prompts, loading models).
    pub stage: Option<String>,
    /// Current window, from 1.
    pub window: Option<u64>,
    /// Windows in the video.
    pub windows: Option<u64>,
    /// Denoising steps done in this window.
    pub step: Option<u64>,
    /// Denoising steps of this window.
    pub steps: Option<u64>,
    /// Denoising steps done in the whole video.
    pub steps_done: Option<u64>,
    /// Denoising steps of the whole video.
    pub total_steps: Option<u64>,
    /// Frames committed so far.
    pub frames: Option<u64>,
    /// Seconds left, estimated from the steps so far.
    pub eta_seconds: Option<f64>,
    /// Whether a preview frame exists.
    pub preview: bool,
    /// Adjustments made to the settings.
    pub notices: Vec<String>,
}

impl Job {
    /// The client's view of a stored job.
    pub fn from_row(row: &JobRow, now_ms: i64) -> Self {
        let progress: Option<Progress> = row.progress.as_deref().and_then(|p| serde_json::from_str(p).ok());
        let preview = progress.as_ref().is_some_and(|p| p.preview);
        Self {
            id: row.id.clone(),
            kind: row.kind.clone(),
            state: row.visible_state(now_ms).to_string(),
            created_ms: row.created_ms,
            started_ms: row.started_ms,
            finished_ms: row.finished_ms,
            error: row.error.clone(),
            progress,
            frames: row.frames,
            seconds: row.seconds,
            attempts: row.attempts,
            settings: serde_json::from_str(&row.request).unwrap_or_default(),
            video_url: format!("/v1/jobs/{}/video", row.id),
            preview_url: preview.then(|| format!("/v1/jobs/{}/preview", row.id)),
        }
    }
}

/// Where a server's or worker's files are.
#[derive(Debug, Clone)]
pub struct DataDir(pub PathBuf);

impl DataDir {
    /// The folder of one job (output, resume state, sidecar, preview).
    pub fn job(&self, id: &str) -> PathBuf {
        self.0.join("jobs").join(id)
    }

    /// The LoRA adapter `name` offered in `<data>/loras/`, if `name` is a plain file stem
    /// (never a path) and the file exists.
    pub fn lora(&self, name: &str) -> Option<PathBuf> {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        let path = self.0.join("loras").join(format!("{name}.safetensors"));
        (plain && path.is_file()).then_some(path)
    }

    /// The names of the LoRA adapters offered in `<data>/loras/`, sorted.
    pub fn lora_names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.0.join("loras")) else { return Vec::new() };
        let mut names: Vec<String> = entries
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".safetensors")?.to_string();
                self.lora(&stem).is_some().then_some(stem)
            })
            .collect();
        names.sort();
        names
    }

    /// The folder of one owner's uploads.
    pub fn uploads(&self, owner: &str) -> PathBuf {
        self.0.join("uploads").join(owner)
    }

    /// An uploaded file, if `id` is an upload id (never a path).
    pub fn upload(&self, owner: &str, id: &str) -> Option<PathBuf> {
        is_id(id).then(|| self.uploads(owner).join(id))
    }
}

/// Whether `s` is one of our generated ids (32 lowercase hex digits): anything else is
/// refused before it comes near a path.
pub fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Why a request is refused: one sentence, and the request field it is about when there is one
/// (a form shows the sentence beside that field).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The field of [`JobRequest`], e.g. `height`.
    pub field: Option<String>,
    /// The sentence.
    pub message: String,
}

impl Refusal {
    /// A refusal about `field`.
    pub fn of(field: &str, message: impl Into<String>) -> Self {
        Self { field: Some(field.to_string()), message: message.into() }
    }

    /// A refusal of the request as a whole.
    pub fn general(message: impl Into<String>) -> Self {
        Self { field: None, message: message.into() }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The kind of job a request makes.
pub fn kind_of(request: &JobRequest) -> &'static str {
    if request.story.is_some() {
        "story"
    } else if request.extend.is_some() {
        "extend"
    } else if request.end_image.is_some() {
        "end_image"
    } else if request.image.is_some() {
        "image"
    } else if request.references.as_ref().is_some_and(|r| !r.is_empty()) {
        "references"
    } else {
        "text"
    }
}

/// The output's file name for the requested format.
pub fn output_name(request: &JobRequest) -> Result<&'static str, Refusal> {
    match request.format.as_deref().unwrap_or("mp4") {
        "mp4" => Ok("video.mp4"),
        "gif" => Ok("video.gif"),
        other => Err(Refusal::of("format", format!("format `{other}` is not one of mp4, gif"))),
    }
}

/// Refuses values above the server's caps before the engine sees them.
pub fn check_caps(request: &JobRequest, limits: &Limits) -> Result<(), Refusal> {
    if let Some(frames) = request.frames {
        if frames == 0 && !limits.endless {
            return Err(Refusal::of(
                "frames",
                "frames 0 (an endless video) is not accepted by this server (it would need --endless)",
            ));
        }
        if frames > limits.max_frames {
            let message = format!("frames {frames} is above this server's limit of {}", limits.max_frames);
            return Err(Refusal::of("frames", message));
        }
    }
    for (name, value) in [("height", request.height), ("width", request.width)] {
        if let Some(v) = value.filter(|&v| v > limits.max_side) {
            return Err(Refusal::of(name, format!("{name} {v} is above this server's limit of {}", limits.max_side)));
        }
    }
    if let Some(steps) = request.steps.filter(|&s| s > limits.max_steps) {
        return Err(Refusal::of(
            "steps",
            format!("steps {steps} is above this server's limit of {}", limits.max_steps),
        ));
    }
    for (name, value) in [("base_frames", request.base_frames), ("overlap_history", request.overlap_history)] {
        if value.is_some_and(|v| v > limits.max_frames) {
            return Err(Refusal::of(
                name,
                format!("{name} is above this server's frame limit of {}", limits.max_frames),
            ));
        }
    }
    if let Some(story) = &request.story {
        if story.len() > 1000 || story.iter().any(|s| s.windows.is_some_and(|w| w > limits.max_frames)) {
            return Err(Refusal::of("story", "the story is longer than this server accepts"));
        }
    }
    for (name, value) in [("ar_step", request.ar_step), ("causal_block_size", request.causal_block_size)] {
        if value.is_some_and(|v| v > 1000) {
            return Err(Refusal::of(name, format!("{name} must be at most 1000")));
        }
    }
    if request.extend.is_some() && request.extend_job.is_some() {
        return Err(Refusal::of("extend_job", "give extend (an upload) or extend_job (a finished job), not both"));
    }
    Ok(())
}

/// Refuses completed settings above the caps (a story or the model's defaults may have made
/// them larger than the request said).
pub fn check_completed_caps(params: &GenerateParams, limits: &Limits) -> Result<(), Refusal> {
    match params.frames {
        None if !limits.endless => Err(Refusal::of("frames", "an endless video is not accepted by this server")),
        Some(f) if f as u64 > limits.max_frames => Err(Refusal::of(
            "frames",
            format!("the video would have {f} frames, above this server's limit of {}", limits.max_frames),
        )),
        _ if params.width as u64 > limits.max_side || params.height as u64 > limits.max_side => {
            let field = if params.width as u64 > limits.max_side { "width" } else { "height" };
            Err(Refusal::of(
                field,
                format!("the video size is above this server's limit of {} pixels a side", limits.max_side),
            ))
        }
        _ if params.sampler.steps as u64 > limits.max_steps => Err(Refusal::of(
            "steps",
            format!("steps {} is above this server's limit of {}", params.sampler.steps, limits.max_steps),
        )),
        _ => Ok(()),
    }
}

/// `NAME[:STRENGTH]` of a job as the engine's `FILE:STRENGTH`, the file found among the
/// server's adapters.
fn offered_lora(data: &DataDir, spec: &str) -> Result<String, Refusal> {
    let (name, strength) = match spec.rsplit_once(':') {
        Some((name, strength)) => (name, strength),
        None => (spec, "1"),
    };
    let path = data.lora(name).ok_or_else(|| {
        Refusal::of("loras", format!("loras: this server offers no adapter `{name}` (adapters go in <data>/loras/)"))
    })?;
    Ok(format!("{}:{strength}", path.display()))
}

/// The engine's request for a stored job: uploads resolved in `data`, the output in the job's
/// folder, the model name resolved among `models`.
pub fn to_generation_request(
    request: &JobRequest,
    owner: &str,
    job_dir: &Path,
    output_name: &str,
    data: &DataDir,
    model_dir: &Path,
) -> Result<GenerationRequest, Refusal> {
    let upload = |field: &str, id: &Option<String>| -> Result<Option<PathBuf>, Refusal> {
        let Some(id) = id else { return Ok(None) };
        match data.upload(owner, id) {
            Some(path) if path.is_file() => Ok(Some(path)),
            _ => Err(Refusal::of(
                field,
                format!("{field}: there is no upload `{id}` (upload the file to /v1/uploads first)"),
            )),
        }
    };
    let size = |v: Option<u64>| v.map(|v| usize::try_from(v).unwrap_or(usize::MAX));
    let defaults = GenerationRequest::default();
    let weights = match &request.weights {
        Some(w) => w.parse().map_err(|e: skyreels_core::Error| Refusal::of("weights", e.to_string()))?,
        None => defaults.weights,
    };
    Ok(GenerationRequest {
        model: Some(model_dir.to_string_lossy().into_owned()),
        prompt: request.prompt.clone(),
        story: request.story.as_ref().map(|s| {
            s.iter()
                .map(|seg| Segment {
                    prompt: seg.prompt.clone(),
                    windows: seg.windows.map_or(1, |w| usize::try_from(w).unwrap_or(usize::MAX)),
                })
                .collect()
        }),
        negative_prompt: request.negative_prompt.clone(),
        image: upload("image", &request.image)?,
        end_image: upload("end_image", &request.end_image)?,
        references: request
            .references
            .iter()
            .flatten()
            .map(|id| upload("references", &Some(id.clone())).map(Option::unwrap_or_default))
            .collect::<Result<_, _>>()?,
        reference_guidance: request.reference_guidance,
        loras: request.loras.iter().flatten().map(|spec| offered_lora(data, spec)).collect::<Result<_, _>>()?,
        extend: upload("extend", &request.extend)?,
        transition: request.transition.clone(),
        output: Some(job_dir.join(output_name)),
        frames: size(request.frames),
        base_frames: size(request.base_frames),
        overlap_history: size(request.overlap_history),
        height: size(request.height),
        width: size(request.width),
        fps: request.fps,
        steps: size(request.steps),
        shift: request.shift,
        guidance: request.guidance,
        seed: request.seed,
        ar_step: size(request.ar_step).unwrap_or(defaults.ar_step),
        causal_block_size: size(request.causal_block_size).unwrap_or(defaults.causal_block_size),
        addnoise_condition: request.addnoise_condition.unwrap_or(defaults.addnoise_condition),
        continuation: request.continuation.clone(),
        sigma_grid: request.sigma_grid.clone(),
        sampler: request.sampler.clone(),
        cache: request.cache.clone(),
        causal_attention: request.causal_attention.unwrap_or(defaults.causal_attention),
        dtype: request.dtype.clone().unwrap_or(defaults.dtype),
        vae_dtype: request.vae_dtype.clone().unwrap_or(defaults.vae_dtype),
        weights,
        text_length: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_generated_ids_reach_paths() {
        let data = DataDir("/data".into());
        assert!(data.upload("o", "0123456789abcdef0123456789abcdef").is_some());
        for bad in ["../etc/passwd", "..", "0123456789ABCDEF0123456789abcdef", "a/b", ""] {
            assert!(data.upload("o", bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn the_field_list_is_the_schema() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(JobRequest::schema()).unwrap();
        let mut properties: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut fields = FIELDS.to_vec();
        properties.sort_unstable();
        fields.sort_unstable();
        assert_eq!(properties, fields);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<JobRequest>(r#"{"prompt": "x", "promt": "y"}"#).is_err());
        assert!(serde_json::from_str::<JobRequest>(r#"{"frames": -5}"#).is_err());
        let r: JobRequest = serde_json::from_str(r#"{"prompt": "x", "story": null}"#).unwrap();
        assert_eq!(kind_of(&r), "text");
    }
}
