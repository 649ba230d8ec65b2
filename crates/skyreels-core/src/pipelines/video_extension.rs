//! SkyReels-V3 video extension (V2V; `skyreels-v3-a2-captioner.md` §2.6): a clip continued in
//! the same shot, or cut to a new one, from clean latents of its last frames. The model is a Wan
//! DiT without the fps embedding; every latent frame has its own timestep, and the clean prefix
//! gets timestep 0 while the new frames are denoised together with one flow-UniPC solver.
//!
//! The two models differ only in where the prefix sits:
//! - [`ExtensionLayout::SameShot`] (`transformer/`): prefix first, then the new frames, rotary
//!   positions 0, 1, … over both — the diffusion-forcing layout.
//! - [`ExtensionLayout::ShotSwitch`] (`shot_transformer/`): the new frames first at positions
//!   0, 1, …, the prefix after them at positions from 1024
//!   ([`CONTEXT_FRAME_POSITION`]), its
//!   tokens dropped after the head. The new shot sees the old one as far-away context.

use candle_core::{Device, Tensor};

use super::diffusion_forcing::{guide, TextConditioning};
use super::step_cache::StepCache;
use super::text_to_video::{check_channels, sample, StepInput, VideoSampler};
use crate::error::{invalid_input, Result};
use crate::models::transformer::CONTEXT_FRAME_POSITION;
use crate::{TransformerInput, WanTransformer3d};

/// Where the clean prefix goes in the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtensionLayout {
    /// Single-shot continuation: `[prefix, new]`, positions 0, 1, ….
    SameShot,
    /// Shot switching: `[new, prefix]`, the prefix at positions from 1024.
    ShotSwitch,
}

/// Denoises `noise` `[1, z, L, h, w]` into the new frames' latents, conditioned on the clean
/// `prefix` `[1, z, P, h, w]` (normalised latents of the clip's last frames) laid out as `layout`
/// says; text guidance as in [`denoise_video`](super::denoise_video).
#[allow(clippy::too_many_arguments)]
pub fn denoise_extension(
    model: &WanTransformer3d,
    noise: &Tensor,
    prefix: &Tensor,
    layout: ExtensionLayout,
    text: &TextConditioning,
    sampler: &VideoSampler,
    cache: &mut StepCache,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    check_channels(model, noise, None)?;
    let (new, given) = (noise.dim(2)?, prefix.dim(2)?);
    if given == 0 || prefix.dims()[3..] != noise.dims()[3..] {
        return Err(invalid_input!(
            "an extension needs a prefix of at least one latent frame of the new frames' size: {:?} for {:?}",
            prefix.dims(),
            noise.dims()
        ));
    }
    let patch_t = model.config().patch_size[0];
    if !new.is_multiple_of(patch_t) || !given.is_multiple_of(patch_t) {
        return Err(invalid_input!("extension frames must be multiples of the temporal patch {patch_t}"));
    }
    let positions: Vec<usize> = match layout {
        ExtensionLayout::SameShot => (0..(given + new) / patch_t).collect(),
        ExtensionLayout::ShotSwitch => {
            (0..new / patch_t).chain((0..given / patch_t).map(|i| CONTEXT_FRAME_POSITION + i)).collect()
        }
    };
    sample(model, noise, sampler, cache, on_step, &mut |input, cache| {
        let mut predict = |context: &Tensor| predict(model, cache, input, prefix, layout, &positions, context);
        let conditional = predict(&text.positive)?;
        if sampler.guidance_scale <= 1.0 {
            return Ok(conditional);
        }
        let unconditional = predict(&text.negative)?;
        guide(&unconditional, &conditional, sampler.guidance_scale)
    })
}

/// One model call on the prefix and the current latents; returns the new frames' prediction.
fn predict(
    model: &WanTransformer3d,
    cache: &mut StepCache,
    input: &StepInput<'_>,
    prefix: &Tensor,
    layout: ExtensionLayout,
    positions: &[usize],
    context: &Tensor,
) -> Result<Tensor> {
    let x = input.x;
    let prefix = prefix.to_dtype(x.dtype())?;
    let (new, given) = (x.dim(2)?, prefix.dim(2)?);
    let patch_t = model.config().patch_size[0];
    let t = input.timestep;
    let (latents, per_frame, keep_from) = match layout {
        ExtensionLayout::SameShot => {
            let steps = std::iter::repeat_n(0, given / patch_t).chain(std::iter::repeat_n(t, new / patch_t));
            (Tensor::cat(&[&prefix, x], 2)?, steps.collect::<Vec<i64>>(), given)
        }
        ExtensionLayout::ShotSwitch => {
            let steps = std::iter::repeat_n(t, new / patch_t).chain(std::iter::repeat_n(0, given / patch_t));
            (Tensor::cat(&[x, &prefix], 2)?, steps.collect::<Vec<i64>>(), 0)
        }
    };
    let frames = per_frame.len();
    let timesteps = Tensor::from_vec(per_frame, (1, frames), &Device::Cpu)?;
    let out = cache.forward(
        model,
        &TransformerInput {
            latents: &latents,
            timesteps: &timesteps,
            context,
            image_context: None,
            fps_index: input.fps.as_ref(),
            frame_positions: Some(positions),
        },
    )?;
    Ok(out.narrow(2, keep_from, new)?)
}
