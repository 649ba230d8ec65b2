//! A freshly initialised training VAE is a per-frame image autoencoder that repeats frames in
//! time: its causal convolutions ignore past frames and its temporal resamplers pick or repeat
//! the current frame. Training then starts the video phase from what the image phase learned.

use candle_core::{Device, IndexOp, Tensor};
use skyreels_core::models::WanVae;
use skyreels_train::train::data::clip_video;
use skyreels_train::train::params::ParamStore;
use skyreels_train::train::vae::VaeStage;
use skyreels_train::world::{sample_clip, Split, WorldConfig};

fn round_trip(stage: &VaeStage, video: &Tensor) -> anyhow::Result<Tensor> {
    let params = ParamStore::new(3, &Device::Cpu);
    let vae = WanVae::from_weights(stage.vae_config(), &params, &Device::Cpu)?;
    let moments = vae.encode_moments(video)?;
    let mean = moments.narrow(1, 0, stage.z_dim)?;
    Ok(vae.decode_stream().push_unclamped(&mean)?)
}

fn max_difference(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn a_fresh_vae_decodes_a_still_video_to_identical_frames() -> anyhow::Result<()> {
    // Odd sizes on purpose: 24×40 frames, 5 base channels.
    let stage = VaeStage { base_dim: 5, ..VaeStage::default() };
    let world = WorldConfig { width: 40, height: 24, ..WorldConfig::default() };
    let clip = clip_video(&sample_clip(7, &world, Split::Train), 0, 1, &Device::Cpu)?;
    let still = clip.repeat((1, 1, 9, 1, 1))?;
    let decoded = round_trip(&stage, &still)?;
    assert_eq!(decoded.dims(), still.dims());
    let first = decoded.i((.., .., 0..1))?;
    let spread = max_difference(&decoded, &first.repeat((1, 1, 9, 1, 1))?)?;
    let scale = first.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert!(scale > 1e-2, "the decoder's output is degenerate (max |x| = {scale})");
    assert!(spread <= 1e-5 * scale.max(1.0), "frames of a still video decode differently: {spread}");
    Ok(())
}

#[test]
fn a_fresh_vae_repeats_each_latent_frame_four_times() -> anyhow::Result<()> {
    let stage = VaeStage { base_dim: 4, ..VaeStage::default() };
    let world = WorldConfig { width: 16, height: 16, ..WorldConfig::default() };
    let video = clip_video(&sample_clip(11, &world, Split::Train), 0, 9, &Device::Cpu)?;
    let decoded = round_trip(&stage, &video)?;
    for chunk in 0..2 {
        let start = 1 + 4 * chunk;
        let reference = decoded.i((.., .., start..start + 1))?;
        for t in start + 1..start + 4 {
            let d = max_difference(&decoded.i((.., .., t..t + 1))?, &reference)?;
            assert!(d <= 1e-5, "frame {t} differs from frame {start} by {d}");
        }
    }
    Ok(())
}
