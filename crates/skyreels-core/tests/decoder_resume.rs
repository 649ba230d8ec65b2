//! A latent-continuation decoder rebuilt from its saved state (the latest latent frames, decoded
//! again) continues bit-for-bit like one that never stopped — the property `generate --resume`
//! relies on for byte-identical files.

mod common;

use candle_core::{Device, Tensor};
use common::fixture;
use skyreels_core::pipelines::{Continuation, WindowDecoder, WindowDecoderState, WindowSpec};
use skyreels_core::WanVae;

fn window(index: usize, frames: usize) -> WindowSpec {
    WindowSpec { index, frames, history: 0, prefix: 0, is_last: false }
}

/// Pixels of `latents` decoded as one more window by `decoder`.
fn decode(decoder: &mut WindowDecoder<'_>, index: usize, latents: &Tensor) -> Vec<f32> {
    let mut out = Vec::new();
    decoder
        .decode_window(&window(index, latents.dim(2).unwrap()), latents, &mut |f| {
            out.extend(f.flatten_all()?.to_vec1::<f32>()?);
            Ok(())
        })
        .unwrap();
    out
}

/// Decodes `before` then `after` without stopping, and again with a save/restore in between
/// (optionally keeping only the last `keep` saved frames); returns both outputs of `after`.
fn continuous_and_resumed(vae: &WanVae, before: usize, after: usize, keep: Option<usize>) -> (Vec<f32>, Vec<f32>) {
    let latents = Tensor::randn(0f32, 1.0, (1, 16, before + after, 2, 3), &Device::Cpu).unwrap();
    let (first, second) = (latents.narrow(2, 0, before).unwrap(), latents.narrow(2, before, after).unwrap());
    let mut running = WindowDecoder::new(vae, Continuation::Latent, 5);
    decode(&mut running, 0, &first);
    let mut state = running.state().unwrap();
    if let (Some(keep), Some(recent)) = (keep, &state.recent_latents) {
        let n = recent.dim(2).unwrap();
        state = WindowDecoderState { recent_latents: Some(recent.narrow(2, n - keep, keep).unwrap()), ..state };
    }
    let mut resumed = WindowDecoder::resume(vae, Continuation::Latent, 5, state).unwrap();
    (decode(&mut running, 1, &second), decode(&mut resumed, 1, &second))
}

#[test]
fn resumed_latent_stream_is_bit_identical() {
    let vae = WanVae::load(&fixture("models/vae_diffusers"), &Device::Cpu).unwrap();
    let memory = vae.config().decoder_memory_frames();
    assert_eq!(memory, 66, "Wan2.1's decoder has 32 causal convolutions");
    // Shorter than the memory: everything is replayed from the start.
    let (a, b) = continuous_and_resumed(&vae, 7, 5, None);
    assert_eq!(a, b);
    // Longer: only the last `memory` frames are kept, and that is enough.
    let (a, b) = continuous_and_resumed(&vae, memory + 9, 6, None);
    assert_eq!(a, b);
}

#[test]
fn too_short_a_replay_is_detected() {
    // The check above can fail: a decoder rebuilt from 4 frames does not match.
    let vae = WanVae::load(&fixture("models/vae_diffusers"), &Device::Cpu).unwrap();
    let (a, b) = continuous_and_resumed(&vae, 20, 4, Some(4));
    assert_ne!(a, b);
}
