//! The one-window pipelines of the non-DF checkpoints: text-to-video (SkyReels-V2-T2V-14B) and
//! image-to-video (SkyReels-V2-I2V-1.3B/14B; spec §7). One window, every frame at the same noise
//! level, one flow-UniPC solver over the whole latent, classifier-free guidance. The solver loop
//! is shared with [reference-to-video](super::reference_to_video).
//!
//! Image-to-video gives the model a 20-channel condition concatenated along channels (4 mask
//! channels marking the given frames, then the VAE latents of the first frame followed by black
//! frames — and of the last frame, when there is one) and CLIP tokens of the image for its image
//! cross-attention ([`ImageConditioning`]).

use candle_core::{DType, Device, Tensor};

use super::diffusion_forcing::{guide, DfSettings, DfVideo, TextConditioning, WindowSpec};
use super::noise::NoiseSource;
use super::reference_to_video::{denoise_with_references, sample_posterior, ReferenceConditioning};
use super::step_cache::StepCache;
use super::video_extension::{denoise_extension, ExtensionLayout};
use crate::error::{invalid_input, Result};
use crate::models::transformer::fps_index;
use crate::schedulers::{FlowSchedule, Sampler, SigmaGrid};
use crate::{TransformerInput, WanTransformer3d, WanVae};

/// Sampler settings of a non-DF run.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoSampler {
    /// Scheduler steps.
    pub steps: usize,
    /// Flow shift of the sigma schedule.
    pub shift: f64,
    /// Which reference's sigma grid to use.
    pub sigma_grid: SigmaGrid,
    /// Classifier-free guidance scale; at most 1 disables the unconditional pass.
    pub guidance_scale: f64,
    /// Frame rate told to models with the fps embedding (ignored by the others).
    pub fps: u32,
    /// The solver.
    pub sampler: Sampler,
}

impl VideoSampler {
    /// The one-window sampler of a job's settings (their DF-only fields unused).
    pub fn from_settings(settings: &DfSettings) -> Self {
        Self {
            steps: settings.steps,
            shift: settings.shift,
            sigma_grid: settings.sigma_grid,
            guidance_scale: settings.guidance_scale,
            fps: settings.fps,
            sampler: settings.sampler,
        }
    }
}

/// What an image-to-video model is given besides the noise and the prompt.
#[derive(Debug, Clone)]
pub struct ImageConditioning {
    /// `[1, 4 + z, T, h, w]`: the mask channels, then the normalised latents of the condition
    /// video ([`image_condition`]).
    pub condition: Tensor,
    /// CLIP tokens `[1, L, image_dim]` of the image(s) (the penultimate block's states).
    pub image_context: Tensor,
}

/// Denoises `noise` `[1, z, T, h, w]` into the video's latents (normalised, as the VAE's
/// [`denormalize`](WanVae::denormalize) expects them). Every model call goes through `cache`.
/// `on_step(done, steps)` is called after every step; an error it returns (e.g. a cancellation)
/// stops the run.
pub fn denoise_video(
    model: &WanTransformer3d,
    noise: &Tensor,
    text: &TextConditioning,
    image: Option<&ImageConditioning>,
    sampler: &VideoSampler,
    cache: &mut StepCache,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    check_channels(model, noise, image)?;
    sample(model, noise, sampler, cache, on_step, &mut |input, cache| {
        let mut predict = |context: &Tensor| predict(model, cache, input, context, image, None);
        let conditional = predict(&text.positive)?;
        if sampler.guidance_scale <= 1.0 {
            return Ok(conditional);
        }
        let unconditional = predict(&text.negative)?;
        guide(&unconditional, &conditional, sampler.guidance_scale)
    })
}

/// The sampled latents and the step they are at, as a prediction closure sees them.
pub(super) struct StepInput<'a> {
    pub(super) x: &'a Tensor,
    /// The step's timestep, `[1]` on the host.
    pub(super) t: Tensor,
    /// The same timestep as a number.
    pub(super) timestep: i64,
    pub(super) fps: Option<Tensor>,
}

/// The solver loop shared by every one-window pipeline; `velocity` gives the guided
/// prediction at a step, making its model calls through the cache it is handed.
pub(super) fn sample(
    model: &WanTransformer3d,
    noise: &Tensor,
    sampler: &VideoSampler,
    cache: &mut StepCache,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    velocity: &mut dyn FnMut(&StepInput<'_>, &mut StepCache) -> Result<Tensor>,
) -> Result<Tensor> {
    let schedule = FlowSchedule::new(sampler.sigma_grid, sampler.steps, sampler.shift)?;
    let timesteps = schedule.timesteps().to_vec();
    if sampler.sampler.noise_draws(sampler.steps) > 0 {
        return Err(invalid_input!(
            "the {} sampler runs diffusion-forcing models only: use euler or unipc with this model",
            sampler.sampler
        ));
    }
    let mut solver = sampler.sampler.solver(schedule, false, Vec::new())?;
    // Host values the transformer reads on the host: no device round trip per step.
    let fps =
        model.config().inject_sample_info.then(|| Tensor::new(&[fps_index(sampler.fps)], &Device::Cpu)).transpose()?;
    let mut x = noise.clone();
    cache.start_window();
    for (i, &t) in timesteps.iter().enumerate() {
        let input = StepInput { x: &x, t: Tensor::new(&[t], &Device::Cpu)?, timestep: t, fps: fps.clone() };
        cache.start_step(None);
        let v = velocity(&input, cache)?;
        x = solver.step(&v, &x)?;
        on_step(i + 1, timesteps.len())?;
    }
    Ok(x)
}

/// One model call: the image condition concatenated along channels, references along time (and
/// their prediction dropped).
pub(super) fn predict(
    model: &WanTransformer3d,
    cache: &mut StepCache,
    input: &StepInput<'_>,
    context: &Tensor,
    image: Option<&ImageConditioning>,
    references: Option<&Tensor>,
) -> Result<Tensor> {
    let x = input.x;
    let mut latents = match image {
        Some(image) => Tensor::cat(&[x, &image.condition.to_dtype(x.dtype())?], 1)?,
        None => x.clone(),
    };
    if let Some(refs) = references {
        latents = Tensor::cat(&[&latents, &refs.to_dtype(x.dtype())?], 2)?;
    }
    let out = cache.forward(
        model,
        &TransformerInput {
            latents: &latents,
            timesteps: &input.t,
            context,
            image_context: image.map(|i| &i.image_context),
            fps_index: input.fps.as_ref(),
            frame_positions: None,
        },
    )?;
    Ok(if references.is_some() { out.narrow(2, 0, x.dim(2)?)? } else { out })
}

/// What a window of the one-shot and V3 models is conditioned on besides the noise and the prompt.
#[derive(Clone, Copy)]
pub enum WindowConditioning<'a> {
    /// The prompt alone (T2V).
    Text,
    /// An image-to-video condition and CLIP tokens (I2V, A2).
    Image(&'a ImageConditioning),
    /// Reference latents appended along time (V3 R2V).
    References(&'a ReferenceConditioning),
    /// SkyReels-V3 extension in `layout`; a shot switch cuts from the clip's last frames given.
    Extension(ExtensionLayout, Option<&'a Tensor>),
}

/// Fills the next window of `video` from fresh noise drawn from `noise`, with the sampler
/// settings of `settings`, conditioned as `conditioning` says, every model call through `cache`.
/// Returns the window and its
/// latents; a same-shot extension window's start with its clean prefix (the window's history),
/// as a diffusion-forcing window's do.
#[allow(clippy::too_many_arguments)]
pub fn generate_conditioned_window(
    video: &mut DfVideo,
    model: &WanTransformer3d,
    (h, w): (usize, usize),
    conditioning: WindowConditioning<'_>,
    text: &TextConditioning,
    settings: &DfSettings,
    noise: &mut dyn NoiseSource,
    cache: &mut StepCache,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<(WindowSpec, Tensor)> {
    let spec = video.next_window(1).ok_or_else(|| invalid_input!("the video is already complete"))?;
    let sampler = VideoSampler::from_settings(settings);
    let (channels, device) = (model.config().out_channels, model.device());
    let mut draw = |frames: usize| noise.randn(&[1, channels, frames, h, w], device);
    let out = match conditioning {
        WindowConditioning::Text => denoise_video(model, &draw(spec.frames)?, text, None, &sampler, cache, on_step)?,
        WindowConditioning::Image(image) => {
            denoise_video(model, &draw(spec.frames)?, text, Some(image), &sampler, cache, on_step)?
        }
        WindowConditioning::References(references) => {
            denoise_with_references(model, &draw(spec.frames)?, text, references, &sampler, cache, on_step)?
        }
        WindowConditioning::Extension(ExtensionLayout::SameShot, _) => {
            let history = video
                .history()
                .filter(|_| spec.prefix > 0)
                .ok_or_else(|| invalid_input!("a same-shot extension window needs the clip's last frames"))?;
            let prefix = history.narrow(2, 0, spec.prefix)?.to_dtype(DType::F32)?;
            let latents = draw(spec.frames - spec.prefix)?;
            let new =
                denoise_extension(model, &latents, &prefix, ExtensionLayout::SameShot, text, &sampler, cache, on_step)?;
            Tensor::cat(&[prefix, new], 2)?
        }
        WindowConditioning::Extension(ExtensionLayout::ShotSwitch, context) => {
            let prefix = context.ok_or_else(|| invalid_input!("a shot switch needs the clip's last frames"))?;
            let latents = draw(spec.frames)?;
            denoise_extension(model, &latents, prefix, ExtensionLayout::ShotSwitch, text, &sampler, cache, on_step)?
        }
    };
    video.record_window(&spec, &out)?;
    Ok((spec, out))
}

/// Refuses a model that expects another input width (a T2V model given an image, or the reverse).
pub(super) fn check_channels(
    model: &WanTransformer3d,
    noise: &Tensor,
    image: Option<&ImageConditioning>,
) -> Result<()> {
    let given = noise.dim(1)? + image.map_or(Ok(0), |i| i.condition.dim(1))?;
    let expected = model.config().in_channels;
    if given != expected {
        let kind = if image.is_some() { "an image-to-video" } else { "a text-to-video" };
        return Err(invalid_input!(
            "this transformer takes {expected} input channels, but {kind} run gives it {given}: use a model of that kind"
        ));
    }
    Ok(())
}

/// The 20-channel condition of image-to-video (spec §7.2): the VAE latents of a `frames`-long
/// video that is `first` (`[1, 3, H, W]` in [−1, 1]) followed by black frames — ending on `last`
/// when given — normalised, after 4 mask channels that are 1 where a pixel frame was given.
/// The mask lists the first pixel frame 4 times (a latent frame stands for 4 pixel frames, the
/// first for 1), so latent frame `t`, channel `c` marks pixel frame `4t + c − 3`.
pub fn image_condition(vae: &WanVae, first: &Tensor, last: Option<&Tensor>, frames: usize) -> Result<Tensor> {
    if frames == 0 || !(frames - 1).is_multiple_of(4) || (last.is_some() && frames < 2) {
        return Err(invalid_input!(
            "an image-to-video condition needs 4k + 1 frames (at least 5 with a last frame), got {frames}"
        ));
    }
    let (_, _, height, width) = first.dims4()?;
    let first = first.to_dtype(DType::F32)?.unsqueeze(2)?;
    let device = first.device().clone();
    let black = |n: usize| Tensor::zeros((1, 3, n, height, width), DType::F32, &device);
    let video = match last {
        None => Tensor::cat(&[first, black(frames - 1)?], 2)?,
        Some(last) => {
            let last = last.to_dtype(DType::F32)?.unsqueeze(2)?;
            Tensor::cat(&[first, black(frames - 2)?, last], 2)?
        }
    };
    let latents = vae.encode_latents(&video.to_dtype(vae.dtype())?)?.to_dtype(DType::F32)?;
    let (_, _, latent_frames, h, w) = latents.dims5()?;
    let given = |pixel: usize| pixel == 0 || (last.is_some() && pixel == frames - 1);
    let mut mask = Vec::with_capacity(4 * latent_frames);
    for c in 0..4 {
        for t in 0..latent_frames {
            let pixel = (4 * t + c).saturating_sub(3);
            mask.push(if given(pixel) { 1f32 } else { 0f32 });
        }
    }
    let mask = Tensor::from_vec(mask, (1, 4, latent_frames, 1, 1), latents.device())?
        .broadcast_as((1, 4, latent_frames, h, w))?
        .contiguous()?;
    Ok(Tensor::cat(&[mask, latents], 1)?)
}

/// Elements SkyReels-A2 composes into one video.
pub const MAX_ELEMENTS: usize = 3;

/// SkyReels-A2's condition (elements-to-video, `skyreels-v3-a2-captioner.md` §3): the VAE latents
/// of the pixel video `[e₀, e₁ ×4, e₂ ×4, black …]` (`elements` each `[1, 3, H, W]` in [−1, 1],
/// `frames` long), so that latent frame `i` holds element `i`, after 4 mask channels that are 1
/// on those latent frames. One element is image-to-video's first-frame layout (upstream's own
/// single-element layout miscounts its mask; its fix does this). With `noise` the posterior is
/// sampled, as upstream does; without, its mean is taken.
pub fn elements_condition(
    vae: &WanVae,
    elements: &[Tensor],
    frames: usize,
    noise: Option<&mut dyn NoiseSource>,
) -> Result<Tensor> {
    let count = elements.len();
    if count == 0 || count > MAX_ELEMENTS {
        return Err(invalid_input!("elements-to-video takes 1 to {MAX_ELEMENTS} element images, got {count}"));
    }
    let given = 4 * (count - 1) + 1;
    if !(frames - 1).is_multiple_of(4) || frames < given {
        return Err(invalid_input!(
            "an elements-to-video condition of {count} elements needs 4k + 1 frames, at least {given}, got {frames}"
        ));
    }
    let (_, _, height, width) = elements[0].dims4()?;
    let mut pixels = Vec::with_capacity(frames);
    for (i, element) in elements.iter().enumerate() {
        let frame = element.to_dtype(DType::F32)?.unsqueeze(2)?;
        pixels.extend(std::iter::repeat_n(frame, if i == 0 { 1 } else { 4 }));
    }
    if frames > given {
        pixels.push(Tensor::zeros((1, 3, frames - given, height, width), DType::F32, elements[0].device())?);
    }
    let video = Tensor::cat(&pixels, 2)?.to_dtype(vae.dtype())?;
    let latents = match noise {
        Some(noise) => sample_posterior(vae, &video, noise)?,
        None => vae.encode_latents(&video)?.to_dtype(DType::F32)?,
    };
    let (_, _, latent_frames, h, w) = latents.dims5()?;
    let mask: Vec<f32> = (0..4).flat_map(|_| (0..latent_frames).map(|t| if t < count { 1.0 } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (1, 4, latent_frames, 1, 1), latents.device())?
        .broadcast_as((1, 4, latent_frames, h, w))?
        .contiguous()?;
    Ok(Tensor::cat(&[mask, latents], 1)?)
}
