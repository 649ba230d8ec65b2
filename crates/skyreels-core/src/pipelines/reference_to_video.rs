//! SkyReels-V3 reference-to-video (R2V; `skyreels-v3-a2-captioner.md` §2.5): one window composed
//! from up to four reference images — characters, objects, a scene — kept consistent across the
//! clip. The model is a plain Wan DiT; the references enter only through the sequence layout:
//! one clean latent frame per reference appended after the noisy frames along time (RoPE runs
//! over both, every token gets the step's timestep), the prediction for the appended frames
//! dropped. Missing references are zero frames, so the model always sees four.

use candle_core::{DType, Tensor};

use super::diffusion_forcing::{guide, TextConditioning};
use super::noise::NoiseSource;
use super::step_cache::StepCache;
use super::text_to_video::{check_channels, predict, sample, VideoSampler};
use crate::error::{invalid_input, Result};
use crate::{WanTransformer3d, WanVae};

/// Reference slots of the model: upstream always appends this many latent frames.
pub const REFERENCE_SLOTS: usize = 4;

/// SkyReels-V3 reference-to-video's conditioning: clean latents of up to four reference images
/// appended after the noisy frames along time (RoPE runs over both), the model's prediction for
/// the appended frames dropped.
#[derive(Debug, Clone)]
pub struct ReferenceConditioning {
    /// `[1, z, R, h, w]`: one normalised latent frame per reference, zero frames for missing
    /// ones (upstream always appends four).
    pub latents: Tensor,
    /// Image guidance scale (upstream `guidance_scale_img`), used with text guidance: the
    /// prediction is `u_ti + g_img·(u_t − u_ti) + g·(c − u_t)`, where `u_t` drops the prompt and
    /// `u_ti` the prompt and the references.
    pub image_guidance: f64,
}

/// [`denoise_video`](super::denoise_video) for reference-to-video: `references` ride along after the noise.
pub fn denoise_with_references(
    model: &WanTransformer3d,
    noise: &Tensor,
    text: &TextConditioning,
    references: &ReferenceConditioning,
    sampler: &VideoSampler,
    cache: &mut StepCache,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    check_channels(model, noise, None)?;
    let blank = references.latents.zeros_like()?;
    sample(model, noise, sampler, cache, on_step, &mut |input, cache| {
        let mut predict = |context: &Tensor, refs: &Tensor| predict(model, cache, input, context, None, Some(refs));
        let conditional = predict(&text.positive, &references.latents)?;
        if sampler.guidance_scale <= 1.0 {
            return Ok(conditional);
        }
        let without_text = predict(&text.negative, &references.latents)?;
        let without_either = predict(&text.negative, &blank)?;
        let image_guided = guide(&without_either, &without_text, references.image_guidance)?;
        Ok((image_guided + (conditional - &without_text)?.affine(sampler.guidance_scale, 0.0)?)?)
    })
}

/// The appended latents of `images` (each `[1, 3, H, W]` in [−1, 1], already letterboxed to the
/// video's size): one latent frame per image drawn from the VAE's posterior with draws from
/// `noise` (upstream samples it, not its mean), normalised, then zero frames up to
/// [`REFERENCE_SLOTS`]. Returns `[1, z, 4, H/8, W/8]` in f32.
pub fn reference_latents(vae: &WanVae, images: &[Tensor], noise: &mut dyn NoiseSource) -> Result<Tensor> {
    if images.is_empty() || images.len() > REFERENCE_SLOTS {
        return Err(invalid_input!(
            "reference-to-video takes 1 to {REFERENCE_SLOTS} reference images, got {}",
            images.len()
        ));
    }
    let mut frames = Vec::with_capacity(REFERENCE_SLOTS);
    for image in images {
        frames.push(sample_posterior(vae, &image.unsqueeze(2)?, noise)?);
    }
    let blank = frames[0].zeros_like()?;
    frames.resize(REFERENCE_SLOTS, blank);
    Ok(Tensor::cat(&frames, 2)?)
}

/// Normalised latents of `video` (`[1, 3, 1 + 4k, H, W]` in [−1, 1]) drawn from the VAE's
/// posterior with draws from `noise`, in f32: what diffusers' `latent_dist.sample(generator)`
/// gives (the log-variance clamped to [−30, 20] the same way).
pub fn sample_posterior(vae: &WanVae, video: &Tensor, noise: &mut dyn NoiseSource) -> Result<Tensor> {
    let z = vae.config().z_dim;
    let moments = vae.encode_moments(&video.to_dtype(vae.dtype())?)?.to_dtype(DType::F32)?;
    let mean = moments.narrow(1, 0, z)?;
    let std = (moments.narrow(1, z, z)?.clamp(-30f32, 20f32)? * 0.5)?.exp()?;
    let eps = noise.randn(mean.dims(), mean.device())?;
    vae.normalize(&(mean + (std * eps)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::SeededNoise;
    use candle_core::Device;

    #[test]
    fn missing_references_are_zero_frames_and_a_fifth_is_refused() {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/vae_diffusers");
        let vae = WanVae::load(&fixture, &Device::Cpu).unwrap();
        let image = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
        let mut noise = SeededNoise::new(1);
        let latents = reference_latents(&vae, &[image.clone(), image.clone()], &mut noise).unwrap();
        assert_eq!(latents.dims(), &[1, vae.config().z_dim, 4, 2, 2]);
        let energy =
            |t: usize| latents.narrow(2, t, 1).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(energy(0) > 0.0 && energy(1) > 0.0);
        assert_eq!((energy(2), energy(3)), (0.0, 0.0));
        // Two encodings of one image differ: the posterior is sampled, not its mean taken.
        let diff = (latents.narrow(2, 0, 1).unwrap() - latents.narrow(2, 1, 1).unwrap()).unwrap();
        assert!(diff.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        let five = vec![image; 5];
        assert!(reference_latents(&vae, &five, &mut noise).unwrap_err().to_string().contains("1 to 4"));
    }
}
