//! Training data drawn from the film world: pixel clips for the VAE, prompts with latents for
//! the DiT.

use candle_core::{Device, Tensor};
use skyreels_core::pipelines::from_rgb_frames;

use crate::world::{render_frame, sample_clip, subject_coverage, ClipSpec, Rng, Split, WorldConfig};

/// Renders frames `start..start + len` of a clip as a video `[1, 3, len, H, W]` in [−1, 1].
pub fn clip_video(clip: &ClipSpec, start: usize, len: usize, device: &Device) -> anyhow::Result<Tensor> {
    let frames: Vec<_> = (start..start + len).map(|i| render_frame(clip, i)).collect();
    Ok(from_rgb_frames(&frames, device)?)
}

/// How much of each latent cell of a whole clip shows a subject, `[1, 1, T', H/s, W/s]` in
/// [0, 1], for a causal VAE that compresses time by `t` (the first frame alone, then groups of
/// `t`) and space by `s`.
pub fn latent_subject_coverage(clip: &ClipSpec, t: usize, s: usize) -> anyhow::Result<Tensor> {
    let frames = clip.frames();
    let (w, h) = (clip.width as usize, clip.height as usize);
    if frames == 0 || !(frames - 1).is_multiple_of(t) || w % s != 0 || h % s != 0 {
        anyhow::bail!("a {w}×{h} clip of {frames} frames does not fit a VAE compressing {t}× in time and {s}× in space");
    }
    let (lt, lh, lw) = (1 + (frames - 1) / t, h / s, w / s);
    let mut cells = vec![0f32; lt * lh * lw];
    for f in 0..frames {
        let (latent_frame, group) = if f == 0 { (0, 1) } else { ((f - 1) / t + 1, t) };
        let share = 1.0 / (group * s * s) as f32;
        for (i, cover) in subject_coverage(clip, f).into_iter().enumerate() {
            let (y, x) = (i / w, i % w);
            cells[(latent_frame * lh + y / s) * lw + x / s] += cover * share;
        }
    }
    Ok(Tensor::from_vec(cells, (1, 1, lt, lh, lw), &Device::Cpu)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_coverage_pools_subject_pixels_per_latent_cell() -> anyhow::Result<()> {
        let world = WorldConfig { width: 48, height: 32, frames: 9, max_subjects: 1, ..WorldConfig::default() };
        let clip = sample_clip(5, &world, Split::Train);
        let cells = latent_subject_coverage(&clip, 4, 8)?;
        assert_eq!(cells.dims(), &[1, 1, 3, 4, 6]);
        let cells: Vec<f32> = cells.flatten_all()?.to_vec1()?;
        assert!(cells.iter().all(|c| (0.0..=1.0 + 1e-6).contains(c)));
        // Latent frame 0 is pixel frame 0 alone; frame 2 averages pixel frames 5–8.
        let pixels = |frames: std::ops::Range<usize>| -> f32 {
            frames.clone().map(|f| subject_coverage(&clip, f).iter().sum::<f32>()).sum::<f32>() / frames.len() as f32
        };
        let per_frame = |k: usize| cells[k * 24..(k + 1) * 24].iter().sum::<f32>() * 64.0;
        assert!((per_frame(0) - pixels(0..1)).abs() < 1e-2 && per_frame(0) > 20.0, "{} vs {}", per_frame(0), pixels(0..1));
        assert!((per_frame(2) - pixels(5..9)).abs() < 1e-2, "{} vs {}", per_frame(2), pixels(5..9));
        assert!(latent_subject_coverage(&clip, 3, 8).is_err(), "9 frames do not fit 3× time compression");
        Ok(())
    }
}
