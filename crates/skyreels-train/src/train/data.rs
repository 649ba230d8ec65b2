//! Training data drawn from the film world: pixel clips for the VAE, prompts with latents for
//! the DiT.

use candle_core::{Device, Tensor};
use skyreels_core::pipelines::from_rgb_frames;

use crate::world::{render_frame, sample_clip, ClipSpec, Rng, Split, WorldConfig};

/// Renders frames `start..start + len` of a clip as a video `[1, 3, len, H, W]` in [−1, 1].
pub fn clip_video(clip: &ClipSpec, start: usize, len: usize, device: &Device) -> anyhow::Result<Tensor> {
    let frames: Vec<_> = (start..start + len).map(|i| render_frame(clip, i)).collect();
    Ok(from_rgb_frames(&frames, device)?)
}

/// A batch of `batch` random training-split segments of `len` frames, `[batch, 3, len, H, W]`.
pub fn video_batch(rng: &mut Rng, world: &WorldConfig, batch: usize, len: usize) -> anyhow::Result<Tensor> {
    let mut videos = Vec::with_capacity(batch);
    for _ in 0..batch {
        let clip = sample_clip(rng.next_u64(), world, Split::Train);
        let start = rng.below(clip.frames().saturating_sub(len) + 1);
        videos.push(clip_video(&clip, start, len.min(clip.frames()), &Device::Cpu)?);
    }
    Ok(Tensor::cat(&videos, 0)?)
}

/// A tensor of `shape` filled with standard normal draws from `rng`.
pub fn gaussian(rng: &mut Rng, shape: &[usize]) -> anyhow::Result<Tensor> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}
