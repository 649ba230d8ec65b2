//! Turning windows of latents into the new frames of the video, and carrying the overlap into the
//! next window.
//!
//! Two ways to join windows:
//! - [`Continuation::Latent`] (default, as diffusers does): the overlap stays in latent space and
//!   one causal VAE decoder runs across all windows, so the output equals decoding the whole
//!   latent video at once — no decode/re-encode round trip, no colour drift at the joins.
//! - [`Continuation::Pixel`] (the original SkyReels code): every window is decoded on its own, the
//!   last `overlap_history` pixel frames are re-encoded and become the next window's prefix.
//!
//! Either way frames leave as soon as they are decoded, one latent frame at a time, so memory
//! does not grow with the length of the video.

use std::collections::VecDeque;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::diffusion_forcing::WindowSpec;
use crate::error::{invalid_input, Result};
use crate::media::RgbFrame;
use crate::models::vae::DecodeStream;
use crate::WanVae;

/// How consecutive windows are joined (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Continuation {
    /// Keep the overlap as latents; decode the whole video as one stream.
    #[default]
    Latent,
    /// Decode each window, re-encode its last pixel frames as the next prefix.
    Pixel,
}

impl std::str::FromStr for Continuation {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "latent" => Ok(Self::Latent),
            "pixel" => Ok(Self::Pixel),
            other => Err(invalid_input!("unknown continuation `{other}`: use `latent` or `pixel`")),
        }
    }
}

/// What a [`WindowDecoder`] needs to continue after a restart.
///
/// The latent stream's memory is not stored as such (its caches are gigabytes at 540P): a causal
/// decoder forgets everything older than [`VaeConfig::decoder_memory_frames`] latent frames, so
/// feeding those again to a fresh decoder rebuilds it bit for bit.
///
/// [`VaeConfig::decoder_memory_frames`]: crate::VaeConfig::decoder_memory_frames
#[derive(Debug, Clone, Default)]
pub struct WindowDecoderState {
    /// The latest normalised latent frames decoded `[1, C, n, h, w]` (latent continuation,
    /// after the first window), at most the decoder's memory.
    pub recent_latents: Option<Tensor>,
    /// The last `overlap_history` output frames `[1, 3, n, H, W]` (pixel continuation).
    pub pixel_history: Option<Tensor>,
}

/// Decodes windows of (normalised) latents into new output frames.
pub struct WindowDecoder<'a> {
    vae: &'a WanVae,
    mode: Continuation,
    /// Pixel frames the overlap latents stand for (`overlap_history`).
    overlap_pixels: usize,
    stream: Option<DecodeStream<'a>>,
    /// The latent frames the stream's memory depends on, oldest first.
    recent: VecDeque<Tensor>,
    pixel_history: Option<Tensor>,
}

impl<'a> WindowDecoder<'a> {
    /// A decoder for a new video whose windows overlap by `overlap_pixels` frames (`4k + 1`).
    pub fn new(vae: &'a WanVae, mode: Continuation, overlap_pixels: usize) -> Self {
        Self { vae, mode, overlap_pixels, stream: None, recent: VecDeque::new(), pixel_history: None }
    }

    /// A decoder continuing from a saved state: the latent stream is rebuilt by decoding the
    /// saved recent latents again (their pixels are already in the output).
    pub fn resume(
        vae: &'a WanVae,
        mode: Continuation,
        overlap_pixels: usize,
        state: WindowDecoderState,
    ) -> Result<Self> {
        let mut decoder = Self::new(vae, mode, overlap_pixels);
        decoder.pixel_history = state.pixel_history;
        if let Some(latents) = state.recent_latents {
            let mut stream = vae.decode_stream();
            for j in 0..latents.dim(2)? {
                let frame = latents.narrow(2, j, 1)?;
                stream.push(&vae.denormalize(&frame)?)?;
                decoder.recent.push_back(frame);
            }
            decoder.stream = Some(stream);
        }
        Ok(decoder)
    }

    /// The state to save after a window.
    pub fn state(&self) -> Result<WindowDecoderState> {
        let recent_latents = match (&self.stream, self.recent.is_empty()) {
            (Some(_), false) => Some(Tensor::cat(&self.recent.iter().collect::<Vec<_>>(), 2)?),
            _ => None,
        };
        Ok(WindowDecoderState { recent_latents, pixel_history: self.pixel_history.clone() })
    }

    /// Starts from existing frames `[1, 3, n, H, W]` in [−1, 1] (the end of a video being
    /// extended) and returns their normalised latents, the first window's history. `n` must be
    /// `4k + 1`.
    pub fn start_from_frames(&mut self, frames: &Tensor) -> Result<Tensor> {
        if self.mode == Continuation::Pixel {
            self.pixel_history = Some(frames.clone());
        }
        self.vae.encode_latents(frames)
    }

    /// Decodes the window `latents` (all of its frames, normalised) and hands the new output frames
    /// to `emit` in order, a few at a time, as `[1, 3, n, H, W]` tensors in [−1, 1].
    pub fn decode_window(
        &mut self,
        spec: &WindowSpec,
        latents: &Tensor,
        emit: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        match self.mode {
            Continuation::Latent => self.decode_latent(spec, latents, emit),
            Continuation::Pixel => self.decode_pixel(spec, latents, emit),
        }
    }

    /// The next window's history when continuing in pixel space: the re-encoded last output frames.
    pub fn pixel_history_latents(&self) -> Result<Option<Tensor>> {
        match (&self.mode, &self.pixel_history) {
            (Continuation::Pixel, Some(frames)) => Ok(Some(self.vae.encode_latents(frames)?)),
            _ => Ok(None),
        }
    }

    fn decode_latent(
        &mut self,
        spec: &WindowSpec,
        latents: &Tensor,
        emit: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        // The first window primes the stream with its history (an extended video's last frames,
        // whose pixels are already in the output); later windows push only their new frames.
        let (first_new, primed) = match self.stream {
            Some(_) => (spec.history, true),
            None => (0, false),
        };
        let memory = self.vae.config().decoder_memory_frames();
        let stream = self.stream.get_or_insert_with(|| self.vae.decode_stream());
        for j in first_new..latents.dim(2)? {
            let frame = latents.narrow(2, j, 1)?;
            let pixels = stream.push(&self.vae.denormalize(&frame)?)?;
            self.recent.push_back(frame);
            if self.recent.len() > memory {
                self.recent.pop_front();
            }
            if primed || j >= spec.history {
                emit(&pixels)?;
            }
        }
        Ok(())
    }

    fn decode_pixel(
        &mut self,
        spec: &WindowSpec,
        latents: &Tensor,
        emit: &mut dyn FnMut(&Tensor) -> Result<()>,
    ) -> Result<()> {
        let mut stream = self.vae.decode_stream();
        let mut skip = if spec.history > 0 { self.overlap_pixels } else { 0 };
        for j in 0..latents.dim(2)? {
            let frames = stream.push(&self.vae.denormalize(&latents.narrow(2, j, 1)?)?)?;
            let n = frames.dim(2)?;
            let dropped = skip.min(n);
            skip -= dropped;
            if dropped < n {
                let new = frames.narrow(2, dropped, n - dropped)?;
                self.remember(&new)?;
                emit(&new)?;
            }
        }
        Ok(())
    }

    /// Keeps the last `overlap_pixels` output frames.
    fn remember(&mut self, new: &Tensor) -> Result<()> {
        let joined = match self.pixel_history.take() {
            Some(old) => Tensor::cat(&[&old, new], 2)?,
            None => new.clone(),
        };
        let n = joined.dim(2)?;
        let keep = n.min(self.overlap_pixels);
        self.pixel_history = Some(joined.narrow(2, n - keep, keep)?);
        Ok(())
    }
}

/// Converts decoded frames `[1, 3, n, H, W]` in [−1, 1] to `n` RGB8 images, as the reference
/// does: `⌊clamp(x/2 + 0.5, 0, 1)·255⌋` (truncation, not rounding).
pub fn to_rgb_frames(frames: &Tensor) -> Result<Vec<RgbFrame>> {
    let (b, c, n, h, w) = frames.dims5()?;
    if b != 1 || c != 3 {
        return Err(invalid_input!("expected frames [1, 3, n, H, W], got {:?}", frames.dims()));
    }
    let scaled = (frames.to_dtype(DType::F32)?.affine(0.5, 0.5)?.clamp(0f32, 1f32)? * 255.0)?;
    // [n, H, W, 3]: one contiguous interleaved image per frame.
    let hwc = scaled.squeeze(0)?.permute((1, 2, 3, 0))?.contiguous()?;
    (0..n)
        .map(|i| {
            let data = hwc.get(i)?.flatten_all()?.to_vec1::<f32>()?.into_iter().map(|v| v as u8).collect();
            RgbFrame::new(w as u32, h as u32, data)
        })
        .collect()
}

/// The inverse of [`to_rgb_frames`]: same-sized RGB8 images → `[1, 3, n, H, W]` in [−1, 1]
/// (`x/127.5 − 1`), as the VAE encoder takes them.
pub fn from_rgb_frames(frames: &[RgbFrame], device: &Device) -> Result<Tensor> {
    let first = frames.first().ok_or_else(|| invalid_input!("no frames to convert"))?;
    let (w, h) = (first.width as usize, first.height as usize);
    if let Some(odd) = frames.iter().find(|f| (f.width, f.height) != (first.width, first.height)) {
        return Err(invalid_input!("frames of {}x{} and {}x{} cannot form one video", w, h, odd.width, odd.height));
    }
    let data: Vec<u8> = frames.iter().flat_map(|f| f.data.iter().copied()).collect();
    let hwc = Tensor::from_vec(data, (frames.len(), h, w, 3), device)?;
    Ok(hwc.permute((3, 0, 1, 2))?.unsqueeze(0)?.to_dtype(DType::F32)?.affine(2.0 / 255.0, -1.0)?)
}
