//! Pipelines: the loops that turn prompts and conditioning frames into videos.
//!
//! - [`diffusion_forcing`]: windows of per-frame noise levels over the DiT (spec §8), the sampler
//!   settings and the window plan of long videos.
//! - [`generation`]: a whole job — settings checked, models cached, windows committed to a
//!   resumable output, progress and cancellation — for the CLI, the server and library users.
//! - [`continuation`]: decoding windows into frames and carrying the overlap to the next window.
//! - [`prompt`]: prompt text to text-encoder states.
//! - [`noise`]: the seeded, resumable noise every draw comes from.
//! - [`text_to_video`]: the non-DF checkpoints' single-window text- and image-to-video loop.
//! - [`reference_to_video`]: SkyReels-V3's composition of up to four reference images.
//! - [`video_extension`]: SkyReels-V3's continuation of a clip, in the same shot or a new one.

pub mod continuation;
pub mod diffusion_forcing;
pub mod generation;
pub mod noise;
pub mod prompt;
pub mod reference_to_video;
pub mod step_cache;
pub mod text_to_video;
pub mod video_extension;

pub use continuation::{from_rgb_frames, to_rgb_frames, Continuation, WindowDecoder, WindowDecoderState};
pub use diffusion_forcing::{
    denoise_window, DfProgress, DfSettings, DfVideo, TextConditioning, WindowPlan, WindowSpec,
};
pub use noise::{NoiseSource, NoiseState, SeededNoise};
pub use prompt::{encode_prompt, EncodedPrompt};
pub use reference_to_video::{
    denoise_with_references, reference_latents, sample_posterior, ReferenceConditioning, REFERENCE_SLOTS,
};
pub use step_cache::{CacheSetting, CacheStats, StepCache};
pub use text_to_video::{
    denoise_video, elements_condition, generate_conditioned_window, image_condition, ImageConditioning, VideoSampler,
    WindowConditioning, MAX_ELEMENTS,
};
pub use video_extension::{denoise_extension, ExtensionLayout};
