//! Stage 1: the Wan causal 3D VAE, trained as a KL-regularised autoencoder on film-world clips.
//!
//! The very same `WanVae` the engine decodes with is built from the trainable parameters every
//! step; clips of `1 + 4k` frames exercise both its first-frame and its cached 4-frame chunks.
//! The export is a diffusers `vae/` folder whose per-channel latent statistics are measured on
//! held-back clips, so the DiT sees roughly unit-variance latents, as with Wan2.1.

use std::path::Path;

use anyhow::Context;
use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};
use skyreels_core::models::vae::{VaeConfig, WanVae};

use super::data::{gaussian, video_batch};
use super::export::write_vae;
use super::params::FrozenWeights;
use super::run::{Run, RunOptions, RunSettings};
use crate::world::{Rng, WorldConfig};

/// What the VAE stage trains, beyond the shared [`RunSettings`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeStage {
    /// Channels of the first stage.
    pub base_dim: usize,
    /// Latent channels.
    pub z_dim: usize,
    /// Channel multiplier per stage (3 downsamplings: 8× spatial).
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage.
    pub num_res_blocks: usize,
    /// Which downsamplings also halve time (two: 4× temporal).
    pub temporal_downsample: Vec<bool>,
    /// Frames per training clip (`1 + 4k`).
    pub frames: usize,
    /// Clips per step.
    pub batch: usize,
    /// Side of the random square crop trained on (a multiple of 8; the VAE is fully
    /// convolutional, so crops teach it the whole frame at a fraction of the cost).
    pub crop: usize,
    /// Weight of the KL term against the reconstruction (L1 + L2) loss.
    pub kl_weight: f64,
    /// Most chunks (1 frame, then 4 at a time) the causal caches are run through before the
    /// trained frames, without gradient: each step draws 0 to this many, so that late chunks,
    /// which see caches shaped by many earlier ones, are trained at the cost of short clips.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warm_up_chunks: usize,
    /// Weight of the edge term: the L1 distance between the horizontal and vertical pixel
    /// differences of the decoded and the true frames. L1 + L2 alone are content with rounded
    /// corners on subjects a few pixels wide; differences penalise a blurred outline directly.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub edge_weight: f64,
    /// Train only the decoder (and `post_quant_conv`): the encoder, and so the latents a DiT was
    /// trained on, stay exactly as they were. Needs a run to start from.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub decoder_only: bool,
    /// The world clips are drawn from.
    pub world: WorldConfig,
}

impl Default for VaeStage {
    fn default() -> Self {
        Self {
            base_dim: 8,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 1,
            temporal_downsample: vec![false, true, true],
            frames: 9,
            batch: 2,
            crop: 32,
            kl_weight: 1e-4,
            warm_up_chunks: 0,
            edge_weight: 0.0,
            decoder_only: false,
            world: WorldConfig::default(),
        }
    }
}

// Runs from before the field existed serialise the same, so they still resume.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

fn is_zero_f64(x: &f64) -> bool {
    *x == 0.0
}

/// Whether a VAE parameter belongs to the encoder side (frozen by [`VaeStage::decoder_only`]).
fn is_encoder_parameter(name: &str) -> bool {
    name.starts_with("encoder.") || name.starts_with("quant_conv.")
}

impl VaeStage {
    /// The VAE structure (latent statistics neutral until measured at export).
    pub fn vae_config(&self) -> VaeConfig {
        VaeConfig {
            base_dim: self.base_dim,
            z_dim: self.z_dim,
            dim_mult: self.dim_mult.clone(),
            num_res_blocks: self.num_res_blocks,
            temporal_downsample: self.temporal_downsample.clone(),
            latents_mean: vec![0.0; self.z_dim],
            latents_std: vec![1.0; self.z_dim],
        }
    }

    /// Frames to run through the caches before the trained ones, for `chunks` warm-up chunks.
    fn warm_up_frames(chunks: usize) -> usize {
        if chunks == 0 {
            0
        } else {
            1 + 4 * (chunks - 1)
        }
    }

    /// Trained frames after `warm_up` frames: the clip length, less the lone first frame when
    /// the warm-up has already taken it.
    fn trained_frames(&self, warm_up: usize) -> usize {
        if warm_up == 0 {
            self.frames
        } else {
            self.frames - 1
        }
    }
}

/// One step's loss: reconstruction of a sampled latent plus the weighted KL divergence, over
/// the frames after the first `warm_up` (which only fill the causal caches, without gradient).
fn vae_loss(vae: &WanVae, video: &Tensor, warm_up: usize, stage: &VaeStage, rng: &mut Rng) -> anyhow::Result<(Tensor, f64, f64)> {
    let z_dim = stage.z_dim;
    let mut encoder = vae.encode_stream();
    let mut decoder = vae.decode_stream();
    if warm_up > 0 {
        let moments = encoder.push(&video.narrow(2, 0, warm_up)?)?;
        decoder.push_unclamped(&moments.narrow(1, 0, z_dim)?)?;
        encoder.detach();
        decoder.detach();
    }
    let video = video.narrow(2, warm_up, video.dim(2)? - warm_up)?;
    let mut moments = encoder.push(&video)?;
    if stage.decoder_only {
        moments = moments.detach();
    }
    let mean = moments.narrow(1, 0, z_dim)?;
    let logvar = moments.narrow(1, z_dim, z_dim)?.clamp(-30f32, 20f32)?;
    let std = (&logvar * 0.5)?.exp()?;
    let z = (&mean + std.mul(&gaussian(rng, mean.dims())?)?)?;
    let decoded = decoder.push_unclamped(&z)?;
    let diff = (&decoded - &video)?;
    let mut recon = (diff.abs()?.mean_all()? + diff.sqr()?.mean_all()?)?;
    if stage.edge_weight > 0.0 {
        recon = (recon + (edge_loss(&decoded, &video)? * stage.edge_weight)?)?;
    }
    let kl = ((mean.sqr()? + logvar.exp()?)? - &logvar)?.affine(0.5, -0.5)?.mean_all()?;
    let loss = (&recon + (&kl * stage.kl_weight)?)?;
    Ok((loss, recon.to_scalar::<f32>()? as f64, kl.to_scalar::<f32>()? as f64))
}

/// Mean L1 distance between the pixel differences (along height and width) of `decoded` and
/// `truth`, both `[B, C, T, H, W]`.
fn edge_loss(decoded: &Tensor, truth: &Tensor) -> anyhow::Result<Tensor> {
    let differences = |x: &Tensor, axis: usize| -> candle_core::Result<Tensor> {
        let n = x.dim(axis)?;
        x.narrow(axis, 1, n - 1)? - x.narrow(axis, 0, n - 1)?
    };
    let along = |axis| (differences(decoded, axis)? - differences(truth, axis)?)?.abs()?.mean_all();
    Ok((along(3)? + along(4)?)?)
}

/// A random `side × side` window (aligned to 8 pixels) of every frame; `0` keeps the frame.
fn random_crop(video: &Tensor, side: usize, rng: &mut Rng) -> anyhow::Result<Tensor> {
    let (_, _, _, h, w) = video.dims5()?;
    if side == 0 || side >= h.min(w) {
        return Ok(video.clone());
    }
    let top = 8 * rng.below((h - side) / 8 + 1);
    let left = 8 * rng.below((w - side) / 8 + 1);
    Ok(video.narrow(3, top, side)?.narrow(4, left, side)?.contiguous()?)
}

/// Trains the VAE in `dir` (fresh, resumed, or from another run's weights with
/// `options.init_from`), then exports it to `dir/export`.
pub fn train_vae(dir: &Path, stage: &VaeStage, settings: RunSettings, options: &RunOptions) -> anyhow::Result<()> {
    if !stage.crop.is_multiple_of(8) {
        anyhow::bail!("--crop must be a multiple of 8, got {}", stage.crop);
    }
    if stage.frames == 0 || !(stage.frames - 1).is_multiple_of(4) || stage.frames > stage.world.frames {
        anyhow::bail!("--frames must be 1 + 4k and at most the clip length {}, got {}", stage.world.frames, stage.frames);
    }
    if stage.warm_up_chunks > 0 && stage.frames == 1 {
        anyhow::bail!("--warm-up-chunks needs --frames of at least 5: after the warm-up, frames come 4 at a time");
    }
    let longest = VaeStage::warm_up_frames(stage.warm_up_chunks) + stage.trained_frames(stage.warm_up_chunks);
    if longest > stage.world.frames {
        anyhow::bail!(
            "--warm-up-chunks {} with --frames {} needs clips of {longest} frames; the world's are {}",
            stage.warm_up_chunks,
            stage.frames,
            stage.world.frames
        );
    }
    let resuming = options.resume && dir.join("checkpoint.json").exists();
    if stage.decoder_only && options.init_from.is_none() && !resuming {
        anyhow::bail!("--decoder-only fine-tunes a trained VAE: give the run to start from with --init-from");
    }
    if !(stage.edge_weight.is_finite() && stage.edge_weight >= 0.0) {
        anyhow::bail!("--edge-weight must be a finite number ≥ 0, got {}", stage.edge_weight);
    }
    let config = stage.vae_config();
    let device = Device::Cpu;
    let mut run = Run::start(dir, "vae", serde_json::to_value(stage)?, settings, options, |params| {
        WanVae::from_weights(config.clone(), params, &device)?;
        Ok(())
    })?;
    if stage.decoder_only && !resuming {
        // The export is the EMA; start the frozen encoder at the EMA's values, so it exports
        // exactly the encoder the source run exported.
        let encoder = run.ema_weights().iter().filter(|(k, _)| is_encoder_parameter(k));
        run.params.assign(&encoder.map(|(k, v)| (k.clone(), v.clone())).collect())?;
    }
    while !run.done() {
        let chunks = if stage.warm_up_chunks == 0 { 0 } else { run.rng.below(stage.warm_up_chunks + 1) };
        let warm_up = VaeStage::warm_up_frames(chunks);
        let video = video_batch(&mut run.rng, &stage.world, stage.batch, warm_up + stage.trained_frames(warm_up))?;
        let video = random_crop(&video, stage.crop, &mut run.rng)?;
        let vae = WanVae::from_weights(config.clone(), &run.params, &device)?;
        let (loss, recon, kl) = vae_loss(&vae, &video, warm_up, stage, &mut run.rng)?;
        run.apply(&loss, &[("recon", recon), ("kl", kl)])?;
    }
    run.finish();
    export_vae(&run, stage, &dir.join("export"))
}

/// Writes the EMA weights as a diffusers `vae/` folder with measured latent statistics.
fn export_vae(run: &Run, stage: &VaeStage, out: &Path) -> anyhow::Result<()> {
    let mut config = stage.vae_config();
    let weights = run.ema_weights();
    let store = FrozenWeights(weights.clone());
    let vae = WanVae::from_weights(config.clone(), &store, &Device::Cpu)?;
    // Statistics over held-back clips (a seed stream the training data never uses).
    let mut rng = Rng::new(0x57A7_5EED);
    let mut latents = Vec::new();
    for _ in 0..16 {
        let video = video_batch(&mut rng, &stage.world, 1, stage.world.frames)?;
        latents.push(vae.encode(&video)?);
    }
    let latents = Tensor::cat(&latents, 0)?; // [N, z, T, h, w]
    let per_channel = latents.transpose(0, 1)?.flatten_from(1)?; // [z, N·T·h·w]
    let mean = per_channel.mean_keepdim(D::Minus1)?;
    let std = per_channel.broadcast_sub(&mean)?.sqr()?.mean(D::Minus1)?.sqrt()?;
    config.latents_mean = mean.flatten_all()?.to_vec1()?;
    config.latents_std = std.to_vec1::<f32>()?.into_iter().map(|s| s.max(1e-3)).collect();
    write_vae(out, &config, weights).with_context(|| format!("cannot export the VAE to {}", out.display()))
}
