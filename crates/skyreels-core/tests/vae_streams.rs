//! The streaming encoder gives what one-shot encoding gives, however the frames are split, and
//! cutting the gradient path through its caches (truncated backpropagation, for training)
//! changes no value.

mod common;

use candle_core::{Device, Tensor, Var};
use common::{fixture, rel_l2};
use skyreels_core::WanVae;

fn video(frames: usize) -> Tensor {
    Tensor::randn(0f32, 0.5, (1, 3, frames, 16, 24), &Device::Cpu).unwrap()
}

#[test]
fn pushing_frames_in_pieces_encodes_like_one_call() {
    let vae = WanVae::load(&fixture("models/vae_diffusers"), &Device::Cpu).unwrap();
    let x = video(17);
    let whole = vae.encode_moments(&x).unwrap();
    for split in [[1, 4, 12], [5, 8, 4], [9, 0, 8]] {
        let mut stream = vae.encode_stream();
        let mut parts = Vec::new();
        let mut start = 0;
        for len in split.into_iter().filter(|&n| n > 0) {
            parts.push(stream.push(&x.narrow(2, start, len).unwrap()).unwrap());
            start += len;
        }
        let streamed = Tensor::cat(&parts, 2).unwrap();
        assert_eq!(streamed.dims(), whole.dims());
        assert!(rel_l2(&streamed, &whole) < 1e-6, "{split:?}");
    }
}

#[test]
fn bad_pieces_are_refused() {
    let vae = WanVae::load(&fixture("models/vae_diffusers"), &Device::Cpu).unwrap();
    let mut stream = vae.encode_stream();
    assert!(stream.push(&video(4)).is_err(), "the first push needs 1 + 4k frames");
    stream.push(&video(1)).unwrap();
    let error = stream.push(&video(5)).unwrap_err().to_string();
    assert!(error.contains("4k"), "{error}");
}

#[test]
fn detached_caches_keep_values_and_stop_gradients() {
    let vae = WanVae::load(&fixture("models/vae_diffusers"), &Device::Cpu).unwrap();
    let first = Var::from_tensor(&video(5)).unwrap();
    let second = video(4);
    let run = |detach: bool| {
        let mut encoder = vae.encode_stream();
        let mut decoder = vae.decode_stream();
        let z = encoder.push(first.as_tensor()).unwrap().narrow(1, 0, 16).unwrap();
        decoder.push_unclamped(&z).unwrap();
        if detach {
            encoder.detach();
            decoder.detach();
        }
        let z = encoder.push(&second).unwrap().narrow(1, 0, 16).unwrap();
        decoder.push_unclamped(&z).unwrap().sqr().unwrap().sum_all().unwrap()
    };
    let (kept, cut) = (run(false), run(true));
    // Equal up to summation order: detached inputs take the inference convolution kernel.
    let (a, b) = (kept.to_scalar::<f32>().unwrap(), cut.to_scalar::<f32>().unwrap());
    assert!((a - b).abs() <= 1e-5 * a.abs(), "{a} vs {b}");
    assert!(kept.backward().unwrap().get(first.as_tensor()).is_some(), "the caches carry gradient");
    assert!(cut.backward().unwrap().get(first.as_tensor()).is_none(), "detached caches carry none");
}
