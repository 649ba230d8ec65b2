//! The Wan2.1 causal video VAE (spec §5): 4×8×8 compression to 16 latent channels.
//!
//! Execution is **streaming**, as in the reference: the encoder takes frame chunks 1, 4, 4, …
//! and the decoder one latent frame at a time. Every causal convolution keeps the last two
//! frames it saw (its "cache"), so memory does not grow with the video length and decoded
//! frames are available as soon as their latent frame is. [`DecodeStream`] accepts chunks of
//! any length, so decoding everything at once and frame by frame give identical results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, D};
use serde_json::Value;

use crate::checkpoint::{open_model, Component, ModelFiles, WeightStore, Weights};
use crate::error::{invalid_input, Error, Result};
use crate::nn::{attention, channel_norm_silu, AttentionMask, Conv3d, SpatialPadding};

/// Per-channel latent statistics of the released Wan2.1 VAE (spec §5.2).
const WAN21_LATENTS_MEAN: [f32; 16] = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632, -0.1922,
    -0.9497, 0.2503, -0.2921,
];
const WAN21_LATENTS_STD: [f32; 16] = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253,
    2.8251, 1.9160,
];

/// Frames of past input each causal convolution keeps (the reference's `CACHE_T`).
const CACHE_FRAMES: usize = 2;

/// Structure of a Wan VAE (diffusers `AutoencoderKLWan` config names).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Channels of the first stage (96 in Wan2.1).
    pub base_dim: usize,
    /// Latent channels (16).
    pub z_dim: usize,
    /// Channel multiplier per stage ([1, 2, 4, 4]).
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (the decoder has one more).
    pub num_res_blocks: usize,
    /// Whether each encoder downsampling also halves time ([false, true, true]).
    pub temporal_downsample: Vec<bool>,
    /// Per-channel latent mean used by [`WanVae::normalize`].
    pub latents_mean: Vec<f32>,
    /// Per-channel latent standard deviation used by [`WanVae::normalize`].
    pub latents_std: Vec<f32>,
}

impl VaeConfig {
    /// The released Wan2.1 VAE (also used by every SkyReels-V2 model).
    pub fn wan21() -> Self {
        Self::wan21_shaped(96, 16)
    }

    fn wan21_shaped(base_dim: usize, z_dim: usize) -> Self {
        Self {
            base_dim,
            z_dim,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temporal_downsample: vec![false, true, true],
            latents_mean: WAN21_LATENTS_MEAN.to_vec(),
            latents_std: WAN21_LATENTS_STD.to_vec(),
        }
    }

    /// Reads a diffusers `vae/config.json`.
    pub fn from_diffusers_json(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadConfig { path: path.to_path_buf(), reason };
        let text = crate::checkpoint::read_text(path)?;
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if json.get("is_residual").and_then(Value::as_bool) == Some(true) {
            return Err(bad("this is a Wan2.2 VAE (is_residual = true), which is not supported".into()));
        }
        if json.get("attn_scales").and_then(Value::as_array).is_some_and(|a| !a.is_empty()) {
            return Err(bad("attention inside the down/up stages (attn_scales) is not supported".into()));
        }
        let usize_field = |name: &str, default: usize| -> Result<usize> {
            match json.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| bad(format!("`{name}` must be an integer"))),
            }
        };
        let list = |name: &str| json.get(name).and_then(Value::as_array);
        let mut config = Self::wan21_shaped(usize_field("base_dim", 96)?, usize_field("z_dim", 16)?);
        config.num_res_blocks = usize_field("num_res_blocks", 2)?;
        if let Some(v) = list("dim_mult") {
            config.dim_mult = v.iter().filter_map(Value::as_u64).map(|v| v as usize).collect();
        }
        if let Some(v) = list("temperal_downsample") {
            config.temporal_downsample = v.iter().filter_map(Value::as_bool).collect();
        }
        for (name, target) in [("latents_mean", &mut config.latents_mean), ("latents_std", &mut config.latents_std)] {
            if let Some(v) = list(name) {
                *target = v.iter().filter_map(Value::as_f64).map(|v| v as f32).collect();
            }
        }
        config.validate().map_err(bad)?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.dim_mult.is_empty() || self.temporal_downsample.len() + 1 != self.dim_mult.len() {
            return Err("`temperal_downsample` needs one entry per downsampling (len(dim_mult) − 1)".into());
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return Err(format!("`latents_mean`/`latents_std` need {} values each", self.z_dim));
        }
        if self.base_dim == 0 || self.z_dim == 0 || self.num_res_blocks == 0 {
            return Err("`base_dim`, `z_dim` and `num_res_blocks` must be positive".into());
        }
        // Latents are divided by the std: zero or non-finite values make every video NaN.
        if self.latents_std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || self.latents_mean.iter().any(|m| !m.is_finite())
        {
            return Err("`latents_std` must be positive and `latents_mean` finite".into());
        }
        Ok(())
    }

    /// Pixel frames per latent frame after the first (4 in Wan2.1).
    pub fn temporal_factor(&self) -> usize {
        1 << self.temporal_downsample.iter().filter(|&&t| t).count()
    }

    /// Pixels per latent row/column (8 in Wan2.1).
    pub fn spatial_factor(&self) -> usize {
        1 << self.temporal_downsample.len()
    }

    /// How many of the latest latent frames a fresh decoder must be fed to end up in exactly the
    /// state of one that decoded the whole video: every causal convolution looks back two frames
    /// at its own rate (at most two latent frames), so the decoder forgets anything older than
    /// twice its number of causal convolutions (plus the frame itself and one for the temporal
    /// upsamplers' special first frame).
    pub fn decoder_memory_frames(&self) -> usize {
        let stages = self.dim_mult.len();
        let resnet_convs = 2 * (2 + stages * (self.num_res_blocks + 1));
        let time_convs = self.temporal_downsample.iter().filter(|&&t| t).count();
        let causal_convs = 1 + resnet_convs + time_convs + 1;
        2 * causal_convs + 2
    }
}

/// Intermediate outputs of one encode or decode, per frame chunk, by stage name.
pub type VaeTrace = BTreeMap<String, Vec<Tensor>>;

fn record(trace: &mut Option<&mut VaeTrace>, name: &str, x: &Tensor) {
    if let Some(trace) = trace.as_deref_mut() {
        trace.entry(name.to_string()).or_default().push(x.clone());
    }
}

/// Streaming state: one slot per stateful layer, visited in the same order for every chunk.
#[derive(Default)]
struct Caches {
    slots: Vec<Option<Tensor>>,
    flags: Vec<bool>,
    cursor: usize,
    flag_cursor: usize,
}

impl Caches {
    fn rewind(&mut self) {
        self.cursor = 0;
        self.flag_cursor = 0;
    }

    fn detach(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            *slot = slot.detach();
        }
    }

    fn next_slot(&mut self) -> &mut Option<Tensor> {
        if self.cursor == self.slots.len() {
            self.slots.push(None);
        }
        self.cursor += 1;
        &mut self.slots[self.cursor - 1]
    }

    /// A per-layer boolean (whether a temporal upsampler has seen its first frame; its cache
    /// alone cannot tell, as a one-frame first chunk leaves it empty).
    fn next_flag(&mut self) -> &mut bool {
        if self.flag_cursor == self.flags.len() {
            self.flags.push(false);
        }
        self.flag_cursor += 1;
        &mut self.flags[self.flag_cursor - 1]
    }
}

fn load_conv(w: &dyn Weights, name: &str, shape: [usize; 5], device: &Device) -> Result<(Tensor, Tensor)> {
    let weight = w.tensor(&format!("{name}.weight"), &shape, DType::F32, device)?;
    let bias = w.tensor(&format!("{name}.bias"), &[shape[0]], DType::F32, device)?;
    Ok((weight, bias))
}

/// A convolution that is causal in time: `2·p` past frames (zeros at the start, the cache
/// afterwards) in front, none behind; spatial padding `p` on every side.
struct CausalConv3d {
    conv: Conv3d,
    /// Past frames needed in front of each chunk.
    context: usize,
}

impl CausalConv3d {
    fn load(w: &dyn Weights, name: &str, io: (usize, usize), kernel: [usize; 3], device: &Device) -> Result<Self> {
        let (weight, bias) = load_conv(w, name, [io.1, io.0, kernel[0], kernel[1], kernel[2]], device)?;
        let conv = Conv3d::new(weight, Some(bias), [1, 1, 1], SpatialPadding::uniform(kernel[1] / 2))?;
        Ok(Self { conv, context: kernel[0] - 1 })
    }

    /// Convolves a chunk, using and updating the cache of the frames before it.
    fn forward(&self, x: &Tensor, cache: &mut Option<Tensor>) -> Result<Tensor> {
        if self.context == 0 {
            return self.conv.forward(x);
        }
        let past = cache.take();
        let past_frames = match &past {
            Some(p) => p.dim(2)?,
            None => 0,
        };
        let frames = x.dim(2)?;
        if past_frames == 0 && frames == 1 && self.conv.is_trainable() {
            // Training on a lone first frame (the image phase, and every clip's first chunk):
            // all taps but the current frame's meet zero padding, so skip them. Inference keeps
            // its packed kernel, which a per-call slice would have to repack.
            *cache = Some(x.clone());
            return self.conv.last_temporal_tap()?.forward(x);
        }
        // The last frames of past ++ x, copied so the cache does not hold the whole chunk.
        let kept = (past_frames + frames).min(CACHE_FRAMES.max(self.context));
        *cache = Some(if frames >= kept {
            x.narrow(2, frames - kept, kept)?.force_contiguous()?
        } else {
            let past = past.as_ref().ok_or_else(|| invalid_input!("a causal cache lost its frames"))?;
            Tensor::cat(&[&past.narrow(2, past_frames - (kept - frames), kept - frames)?, x], 2)?
        });
        let used = past_frames.min(self.context);
        let past = past.as_ref().map(|p| (p, past_frames - used));
        self.conv.forward_joined(self.context - used, past, x)
    }
}

/// `F.normalize(x, dim=1)·√C·γ`: L2 normalisation over channels (eps 1e-12), no bias.
struct RmsNorm {
    gamma: Tensor,
    /// γ on the host, for the fused CPU kernel (used only while γ takes no gradients).
    gamma_values: Vec<f32>,
    scale: f64,
}

impl RmsNorm {
    /// `stored_rank` is the rank of the tensors the checkpoint's module normalised (5 for video
    /// blocks, 4 for the per-frame attention), which sets the stored gamma's shape; here every
    /// input is `[B, C, T, H, W]`.
    fn load(w: &dyn Weights, name: &str, dim: usize, stored_rank: usize, device: &Device) -> Result<Self> {
        let mut shape = vec![dim];
        shape.extend(std::iter::repeat_n(1, stored_rank - 2));
        let gamma = w.tensor(&format!("{name}.gamma"), &shape, DType::F32, device)?.to_dtype(DType::F32)?;
        let gamma_values = gamma.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self { gamma: gamma.reshape((1, dim, 1, 1, 1))?, gamma_values, scale: (dim as f64).sqrt() })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Computed in f32 whatever the VAE's dtype, as the transformer's norms are.
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        // max(√s, ε) written as √max(s, ε²): equal in value, and its gradient stays finite at 0.
        let norm = x.sqr()?.sum_keepdim(1)?.maximum(1e-24)?.sqrt()?;
        Ok((x.broadcast_div(&norm)? * self.scale)?.broadcast_mul(&self.gamma)?.to_dtype(dtype)?)
    }

    /// `SiLU(norm(x))`, what every residual block and head applies: one fused pass on the CPU
    /// in inference, the composed ops elsewhere.
    fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        if !self.gamma.track_op() {
            if let Some(y) = channel_norm_silu(x, &self.gamma_values, self.scale as f32)? {
                return Ok(y);
            }
        }
        Ok(self.forward(x)?.silu()?)
    }
}

/// RMS → SiLU → conv3 → RMS → SiLU → conv3, plus a 1×1×1 shortcut when the width changes.
struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    fn load(w: &dyn Weights, name: &str, in_dim: usize, out_dim: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            norm1: RmsNorm::load(w, &format!("{name}.norm1"), in_dim, 5, device)?,
            conv1: CausalConv3d::load(w, &format!("{name}.conv1"), (in_dim, out_dim), [3, 3, 3], device)?,
            norm2: RmsNorm::load(w, &format!("{name}.norm2"), out_dim, 5, device)?,
            conv2: CausalConv3d::load(w, &format!("{name}.conv2"), (out_dim, out_dim), [3, 3, 3], device)?,
            shortcut: if in_dim != out_dim {
                Some(CausalConv3d::load(w, &format!("{name}.conv_shortcut"), (in_dim, out_dim), [1, 1, 1], device)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        let identity = match &self.shortcut {
            Some(conv) => conv.forward(x, &mut None)?,
            None => x.clone(),
        };
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?, caches.next_slot())?;
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?, caches.next_slot())?;
        Ok((h + identity)?)
    }
}

/// Single-head self-attention over the positions of each frame (no mixing across time).
struct FrameAttention {
    norm: RmsNorm,
    to_qkv: Conv3d,
    proj: Conv3d,
    dim: usize,
}

impl FrameAttention {
    fn load(w: &dyn Weights, name: &str, dim: usize, device: &Device) -> Result<Self> {
        let pointwise = |sub: &str, out: usize| -> Result<Conv3d> {
            let weight = w.tensor(&format!("{name}.{sub}.weight"), &[out, dim, 1, 1], DType::F32, device)?;
            let bias = w.tensor(&format!("{name}.{sub}.bias"), &[out], DType::F32, device)?;
            Conv3d::new(weight.unsqueeze(2)?, Some(bias), [1, 1, 1], SpatialPadding::default())
        };
        Ok(Self {
            norm: RmsNorm::load(w, &format!("{name}.norm"), dim, 4, device)?,
            to_qkv: pointwise("to_qkv", 3 * dim)?,
            proj: pointwise("proj", dim)?,
            dim,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let qkv = self.to_qkv.forward(&self.norm.forward(x)?)?;
        // [B, 3C, T, H, W] → [B·T, 1, H·W, 3C]
        let qkv = qkv.permute((0, 2, 3, 4, 1))?.reshape((b * t, 1, h * w, 3 * c))?;
        let part = |i: usize| qkv.narrow(D::Minus1, i * c, c)?.contiguous();
        let scale = 1.0 / (self.dim as f64).sqrt();
        let out = attention(&part(0)?, &part(1)?, &part(2)?, scale, AttentionMask::Full)?;
        let out = out.reshape((b, t, h, w, c))?.permute((0, 4, 1, 2, 3))?.contiguous()?;
        Ok((self.proj.forward(&out)? + x)?)
    }
}

/// How a resampler changes the size of a chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ResampleMode {
    Down2d,
    Down3d,
    Up2d,
    Up3d,
}

/// Spatial ×2 / ÷2 resampling, with a temporal convolution in the 3D modes.
struct Resample {
    mode: ResampleMode,
    conv: Conv3d,
    time_conv: Option<CausalConv3d>,
    stride_time_conv: Option<Conv3d>,
}

impl Resample {
    fn load(w: &dyn Weights, name: &str, dim: usize, mode: ResampleMode, device: &Device) -> Result<Self> {
        let out = match mode {
            ResampleMode::Up2d | ResampleMode::Up3d => dim / 2,
            _ => dim,
        };
        let weight = w.tensor(&format!("{name}.resample.1.weight"), &[out, dim, 3, 3], DType::F32, device)?;
        let bias = w.tensor(&format!("{name}.resample.1.bias"), &[out], DType::F32, device)?;
        let (stride, padding) = match mode {
            // ZeroPad2d(0, 1, 0, 1) then a stride-2 convolution.
            ResampleMode::Down2d | ResampleMode::Down3d => {
                ([1, 2, 2], SpatialPadding { bottom: 1, right: 1, ..Default::default() })
            }
            _ => ([1, 1, 1], SpatialPadding::uniform(1)),
        };
        let conv = Conv3d::new(weight.unsqueeze(2)?, Some(bias), stride, padding)?;
        let time = format!("{name}.time_conv");
        let (time_conv, stride_time_conv) = match mode {
            ResampleMode::Up3d => (Some(CausalConv3d::load(w, &time, (dim, 2 * dim), [3, 1, 1], device)?), None),
            ResampleMode::Down3d => {
                let (weight, bias) = load_conv(w, &time, [dim, dim, 3, 1, 1], device)?;
                (None, Some(Conv3d::new(weight, Some(bias), [2, 1, 1], SpatialPadding::default())?))
            }
            _ => (None, None),
        };
        Ok(Self { mode, conv, time_conv, stride_time_conv })
    }

    fn forward(&self, x: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        match self.mode {
            ResampleMode::Down2d => self.conv.forward(x),
            ResampleMode::Down3d => {
                let y = self.conv.forward(x)?;
                self.temporal_down(&y, caches)
            }
            ResampleMode::Up2d => self.conv.forward(&upsample_nearest_2x(x)?),
            ResampleMode::Up3d => {
                let doubled = self.temporal_up(x, caches)?;
                self.conv.forward(&upsample_nearest_2x(&doubled)?)
            }
        }
    }

    /// Halves time: frame 0 passes through; frame k ≥ 1 is the stride-2 convolution of
    /// frames 2k−2, 2k−1, 2k. Frames not yet consumed wait in the cache for the next chunk.
    fn temporal_down(&self, y: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        let conv = self.stride_time_conv.as_ref().ok_or_else(|| invalid_input!("downsample3d without time_conv"))?;
        // Every chunk leaves at least one frame pending, so an empty slot means the first chunk.
        let pending = caches.next_slot();
        let mut outputs = Vec::new();
        let buffer = match pending.take() {
            Some(past) => Tensor::cat(&[&past, y], 2)?,
            None => {
                outputs.push(y.narrow(2, 0, 1)?);
                y.clone()
            }
        };
        let frames = buffer.dim(2)?;
        let produced = if frames >= 3 { (frames - 3) / 2 + 1 } else { 0 };
        if produced > 0 {
            outputs.push(conv.forward(&buffer.narrow(2, 0, 2 * produced + 1)?)?);
        }
        *pending = Some(buffer.narrow(2, 2 * produced, frames - 2 * produced)?);
        if outputs.is_empty() {
            let (b, c, _, h, w) = y.dims5()?;
            return Ok(Tensor::zeros((b, c, 0, h, w), y.dtype(), y.device())?);
        }
        Ok(Tensor::cat(&outputs, 2)?)
    }

    /// Doubles time: frame 0 passes through alone; every later frame goes through the causal
    /// time convolution (over the frames after frame 0), whose 2·C output channels become two
    /// consecutive frames.
    fn temporal_up(&self, x: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        let conv = self.time_conv.as_ref().ok_or_else(|| invalid_input!("upsample3d without time_conv"))?;
        let started = caches.next_flag();
        let first_chunk = !*started;
        *started = true;
        let cache = caches.next_slot();
        let (head, rest) =
            if first_chunk { (Some(x.narrow(2, 0, 1)?), x.narrow(2, 1, x.dim(2)? - 1)?) } else { (None, x.clone()) };
        let mut parts: Vec<Tensor> = head.into_iter().collect();
        if rest.dim(2)? > 0 {
            let (b, c, t, h, w) = rest.dims5()?;
            let y = conv.forward(&rest, cache)?;
            // [B, (2, C), T, H, W] → [B, C, (T, 2), H, W]
            let y = y.reshape((b, 2, c, t, h, w))?.permute((0, 2, 3, 1, 4, 5))?.reshape((b, c, 2 * t, h, w))?;
            parts.push(y);
        }
        Ok(Tensor::cat(&parts, 2)?)
    }
}

/// Nearest-neighbour ×2 upsampling of the two spatial axes of `[B, C, T, H, W]`.
fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    let y = x.reshape((b, c * t, h, w))?.upsample_nearest2d(2 * h, 2 * w)?;
    Ok(y.reshape((b, c, t, 2 * h, 2 * w))?)
}

/// One entry of an encoder/decoder stage list.
enum Layer {
    Residual(ResidualBlock),
    Resample(Resample),
}

impl Layer {
    fn forward(&self, x: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        match self {
            Layer::Residual(block) => block.forward(x, caches),
            Layer::Resample(resample) => resample.forward(x, caches),
        }
    }
}

/// Residual, attention, residual at the lowest resolution.
struct MidBlock {
    first: ResidualBlock,
    attention: FrameAttention,
    second: ResidualBlock,
}

impl MidBlock {
    fn load(w: &dyn Weights, name: &str, dim: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            first: ResidualBlock::load(w, &format!("{name}.resnets.0"), dim, dim, device)?,
            attention: FrameAttention::load(w, &format!("{name}.attentions.0"), dim, device)?,
            second: ResidualBlock::load(w, &format!("{name}.resnets.1"), dim, dim, device)?,
        })
    }

    fn forward(&self, x: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        let x = self.first.forward(x, caches)?;
        let x = self.attention.forward(&x)?;
        self.second.forward(&x, caches)
    }
}

/// RMS → SiLU → causal conv3, closing both the encoder and the decoder.
struct Head {
    norm: RmsNorm,
    conv: CausalConv3d,
}

impl Head {
    fn load(w: &dyn Weights, name: &str, io: (usize, usize), device: &Device) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::load(w, &format!("{name}.norm_out"), io.0, 5, device)?,
            conv: CausalConv3d::load(w, &format!("{name}.conv_out"), io, [3, 3, 3], device)?,
        })
    }

    fn forward(&self, x: &Tensor, caches: &mut Caches) -> Result<Tensor> {
        self.conv.forward(&self.norm.forward_silu(x)?, caches.next_slot())
    }
}

struct Encoder {
    conv_in: CausalConv3d,
    down_blocks: Vec<Layer>,
    mid_block: MidBlock,
    head: Head,
}

impl Encoder {
    fn load(c: &VaeConfig, w: &dyn Weights, device: &Device) -> Result<Self> {
        let dims: Vec<usize> = std::iter::once(1).chain(c.dim_mult.iter().copied()).map(|m| m * c.base_dim).collect();
        let conv_in = CausalConv3d::load(w, "encoder.conv_in", (3, dims[0]), [3, 3, 3], device)?;
        let mut down_blocks = Vec::new();
        for stage in 0..c.dim_mult.len() {
            let mut in_dim = dims[stage];
            for _ in 0..c.num_res_blocks {
                let name = format!("encoder.down_blocks.{}", down_blocks.len());
                down_blocks.push(Layer::Residual(ResidualBlock::load(w, &name, in_dim, dims[stage + 1], device)?));
                in_dim = dims[stage + 1];
            }
            if stage + 1 < c.dim_mult.len() {
                let mode = if c.temporal_downsample[stage] { ResampleMode::Down3d } else { ResampleMode::Down2d };
                let name = format!("encoder.down_blocks.{}", down_blocks.len());
                down_blocks.push(Layer::Resample(Resample::load(w, &name, in_dim, mode, device)?));
            }
        }
        let top = *dims.last().unwrap_or(&c.base_dim);
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::load(w, "encoder.mid_block", top, device)?,
            head: Head::load(w, "encoder", (top, 2 * c.z_dim), device)?,
        })
    }

    fn forward(&self, x: &Tensor, caches: &mut Caches, trace: &mut Option<&mut VaeTrace>) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x, caches.next_slot())?;
        for (i, layer) in self.down_blocks.iter().enumerate() {
            x = layer.forward(&x, caches)?;
            record(trace, &format!("enc.down_blocks.{i}"), &x);
        }
        let x = self.mid_block.forward(&x, caches)?;
        record(trace, "enc.mid_block", &x);
        let x = self.head.forward(&x, caches)?;
        record(trace, "enc.conv_out", &x);
        Ok(x)
    }
}

struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

struct Decoder {
    conv_in: CausalConv3d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    head: Head,
}

impl Decoder {
    fn load(c: &VaeConfig, w: &dyn Weights, device: &Device) -> Result<Self> {
        let top = c.base_dim * c.dim_mult.last().copied().unwrap_or(1);
        let dims: Vec<usize> = std::iter::once(top).chain(c.dim_mult.iter().rev().map(|m| m * c.base_dim)).collect();
        let stages = c.dim_mult.len();
        let mut up_blocks = Vec::with_capacity(stages);
        for i in 0..stages {
            // Every upsampler halves the width, so later stages start at half the listed width.
            let mut in_dim = if i > 0 { dims[i] / 2 } else { dims[i] };
            let out_dim = dims[i + 1];
            let mut resnets = Vec::new();
            for j in 0..=c.num_res_blocks {
                let name = format!("decoder.up_blocks.{i}.resnets.{j}");
                resnets.push(ResidualBlock::load(w, &name, in_dim, out_dim, device)?);
                in_dim = out_dim;
            }
            let upsampler = if i + 1 < stages {
                let temporal = c.temporal_downsample[stages - 2 - i];
                let mode = if temporal { ResampleMode::Up3d } else { ResampleMode::Up2d };
                Some(Resample::load(w, &format!("decoder.up_blocks.{i}.upsamplers.0"), out_dim, mode, device)?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsampler });
        }
        Ok(Self {
            conv_in: CausalConv3d::load(w, "decoder.conv_in", (c.z_dim, top), [3, 3, 3], device)?,
            mid_block: MidBlock::load(w, "decoder.mid_block", top, device)?,
            up_blocks,
            head: Head::load(w, "decoder", (c.base_dim, 3), device)?,
        })
    }

    fn forward(&self, z: &Tensor, caches: &mut Caches, trace: &mut Option<&mut VaeTrace>) -> Result<Tensor> {
        let x = self.conv_in.forward(z, caches.next_slot())?;
        record(trace, "dec.conv_in", &x);
        let mut x = self.mid_block.forward(&x, caches)?;
        record(trace, "dec.mid_block", &x);
        for (i, block) in self.up_blocks.iter().enumerate() {
            for resnet in &block.resnets {
                x = resnet.forward(&x, caches)?;
            }
            if let Some(upsampler) = &block.upsampler {
                x = upsampler.forward(&x, caches)?;
            }
            record(trace, &format!("dec.up_blocks.{i}"), &x);
        }
        let x = self.head.forward(&x, caches)?;
        record(trace, "dec.conv_out", &x);
        Ok(x)
    }
}

/// The Wan2.1 VAE: encoder, decoder and the 1×1×1 convolutions around the latent.
pub struct WanVae {
    config: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    mean: Tensor,
    std: Tensor,
    /// The dtype weights are held and activations computed in (norms stay f32; on the CPU the
    /// convolutions accumulate in f32 and round their output to it, as cuDNN does in bf16).
    dtype: DType,
}

/// Hands out every weight in one dtype (the VAE's loaders ask for f32).
struct CastWeights<'a> {
    inner: &'a dyn Weights,
    dtype: DType,
}

impl Weights for CastWeights<'_> {
    fn tensor(&self, name: &str, shape: &[usize], _: DType, device: &Device) -> Result<Tensor> {
        self.inner.tensor(name, shape, self.dtype, device)
    }
}

impl WanVae {
    /// Loads a VAE from a diffusers `vae/` folder (config.json + safetensors), a diffusers
    /// pipeline root holding `vae/`, or an original `Wan2.1_VAE.pth` file. Weights are held and
    /// computed in f32.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_as(path, device, DType::F32)
    }

    /// [`load`](Self::load) with weights held and activations computed in `dtype` (f32 or
    /// bf16; norms stay f32). Inputs may be any dtype; outputs are f32.
    pub fn load_as(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let (config, store) = open_vae(path)?;
        Self::from_weights_as(config, &store, device, dtype)
    }

    /// Builds the VAE from any weight source using canonical (diffusers) names.
    pub fn from_weights(config: VaeConfig, weights: &dyn Weights, device: &Device) -> Result<Self> {
        Self::from_weights_as(config, weights, device, DType::F32)
    }

    /// [`from_weights`](Self::from_weights) in `dtype` (see [`load_as`](Self::load_as)).
    pub fn from_weights_as(config: VaeConfig, weights: &dyn Weights, device: &Device, dtype: DType) -> Result<Self> {
        config.validate().map_err(|reason| Error::BadConfig { path: PathBuf::from("<vae config>"), reason })?;
        let cast = CastWeights { inner: weights, dtype };
        // f32 weights go through the caller's source untouched (training tracks them as Vars).
        let weights: &dyn Weights = if dtype == DType::F32 { weights } else { &cast };
        let z = config.z_dim;
        let column = |v: &[f32]| Tensor::from_slice(v, (1, z, 1, 1, 1), device);
        Ok(Self {
            encoder: Encoder::load(&config, weights, device)?,
            decoder: Decoder::load(&config, weights, device)?,
            quant_conv: CausalConv3d::load(weights, "quant_conv", (2 * z, 2 * z), [1, 1, 1], device)?,
            post_quant_conv: CausalConv3d::load(weights, "post_quant_conv", (z, z), [1, 1, 1], device)?,
            mean: column(&config.latents_mean)?,
            std: column(&config.latents_std)?,
            dtype,
            config,
        })
    }

    /// The dtype the VAE computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The structure this VAE was built with.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Encodes a video `[B, 3, 1 + 4k, H, W]` in [−1, 1] (H, W multiples of 8) to the latent
    /// mean `[B, 16, 1 + k, H/8, W/8]` (raw, not normalised), in frame chunks 1, 4, 4, ….
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        self.encode_traced(video, None)
    }

    /// [`encode`](Self::encode), recording per-chunk stage outputs in `trace`.
    pub fn encode_traced(&self, video: &Tensor, trace: Option<&mut VaeTrace>) -> Result<Tensor> {
        let moments = self.encode_moments_traced(video, trace)?;
        Ok(moments.narrow(1, 0, self.config.z_dim)?)
    }

    /// The encoder's full output `[B, 2·z, 1 + k, H/8, W/8]`: the latent mean followed by the log
    /// variance of the diagonal Gaussian posterior (what VAE training needs).
    pub fn encode_moments(&self, video: &Tensor) -> Result<Tensor> {
        self.encode_moments_traced(video, None)
    }

    fn encode_moments_traced(&self, video: &Tensor, trace: Option<&mut VaeTrace>) -> Result<Tensor> {
        self.encode_stream().push_traced(video, trace)
    }

    /// A streaming encoder: push frames (`1 + 4k` first, then `4k` at a time), get the moments
    /// of their latent frames back, with the causal caches carried between pushes.
    pub fn encode_stream(&self) -> EncodeStream<'_> {
        EncodeStream { vae: self, caches: Caches::default(), frames: 0 }
    }

    /// A video in [−1, 1] straight to the transformer's latent space: [`encode`](Self::encode)
    /// then [`normalize`](Self::normalize).
    pub fn encode_latents(&self, video: &Tensor) -> Result<Tensor> {
        self.normalize(&self.encode(video)?)
    }

    /// `(z − mean) / std` per channel: the latent space the transformer works in.
    pub fn normalize(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(latents
            .broadcast_sub(&self.mean.to_dtype(latents.dtype())?)?
            .broadcast_div(&self.std.to_dtype(latents.dtype())?)?)
    }

    /// `z·std + mean` per channel: back from the transformer's latent space.
    pub fn denormalize(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(latents
            .broadcast_mul(&self.std.to_dtype(latents.dtype())?)?
            .broadcast_add(&self.mean.to_dtype(latents.dtype())?)?)
    }

    /// A streaming decoder: push raw latent frames, get pixel frames back as they are made.
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream { vae: self, caches: Caches::default(), latent_frames: 0 }
    }

    /// Decodes raw latents `[B, 16, T, h, w]` to a video `[B, 3, 1 + 4(T−1), 8h, 8w]` in
    /// [−1, 1], one latent frame at a time.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode_traced(latents, None)
    }

    /// [`decode`](Self::decode), recording per-chunk stage outputs in `trace`.
    pub fn decode_traced(&self, latents: &Tensor, mut trace: Option<&mut VaeTrace>) -> Result<Tensor> {
        let mut stream = self.decode_stream();
        let frames = latents.dims().get(2).copied().unwrap_or(0);
        let mut parts = Vec::with_capacity(frames);
        for t in 0..frames {
            parts.push(stream.push_traced(&latents.narrow(2, t, 1)?, trace.as_deref_mut())?);
        }
        if parts.is_empty() {
            return Err(invalid_input!("no latent frames to decode: latents are {:?}", latents.dims()));
        }
        Ok(Tensor::cat(&parts, 2)?)
    }
}

/// Decoder state between chunks of latent frames (see [`WanVae::decode_stream`]).
pub struct DecodeStream<'a> {
    vae: &'a WanVae,
    caches: Caches,
    latent_frames: usize,
}

impl DecodeStream<'_> {
    /// Decodes the next latent frames `[B, z, T, h, w]` (any T ≥ 1) and returns their pixel
    /// frames: 1 + 4(T−1) for the first chunk, 4T afterwards.
    pub fn push(&mut self, latents: &Tensor) -> Result<Tensor> {
        self.push_traced(latents, None)
    }

    /// [`push`](Self::push), recording stage outputs in `trace`.
    pub fn push_traced(&mut self, latents: &Tensor, trace: Option<&mut VaeTrace>) -> Result<Tensor> {
        Ok(self.push_unclamped_traced(latents, trace)?.clamp(-1f32, 1f32)?)
    }

    /// [`push`](Self::push) without the final clamp to [−1, 1]: what training compares with
    /// its target, since a clamp passes no gradient to pixels that overshoot.
    pub fn push_unclamped(&mut self, latents: &Tensor) -> Result<Tensor> {
        self.push_unclamped_traced(latents, None)
    }

    fn push_unclamped_traced(&mut self, latents: &Tensor, mut trace: Option<&mut VaeTrace>) -> Result<Tensor> {
        let z = self.vae.config.z_dim;
        match latents.dims() {
            &[_, c, t, h, w] if c == z && t > 0 && h > 0 && w > 0 => {}
            dims => return Err(invalid_input!("the VAE decodes [B, {z}, T, h, w] latents; got {dims:?}")),
        }
        self.caches.rewind();
        let x = self.vae.post_quant_conv.forward(&latents.to_dtype(self.vae.dtype)?, &mut None)?;
        let video = self.vae.decoder.forward(&x, &mut self.caches, &mut trace)?;
        self.latent_frames += latents.dim(2)?;
        Ok(video.to_dtype(DType::F32)?)
    }

    /// Latent frames decoded so far.
    pub fn latent_frames(&self) -> usize {
        self.latent_frames
    }

    /// Cuts the gradient path through the carried caches, as [`EncodeStream::detach`].
    pub fn detach(&mut self) {
        self.caches.detach();
    }
}

/// Encoder state between pushes of frames (see [`WanVae::encode_stream`]).
pub struct EncodeStream<'a> {
    vae: &'a WanVae,
    caches: Caches,
    frames: usize,
}

impl EncodeStream<'_> {
    /// Encodes the next frames `[B, 3, F, H, W]` in [−1, 1] (`F = 1 + 4k` for the first push,
    /// `4k` afterwards; H, W multiples of 8) to the full moments of their latent frames
    /// `[B, 2·z, ·, H/8, W/8]`: latent means, then log variances.
    pub fn push(&mut self, video: &Tensor) -> Result<Tensor> {
        self.push_traced(video, None)
    }

    fn push_traced(&mut self, video: &Tensor, mut trace: Option<&mut VaeTrace>) -> Result<Tensor> {
        let (_, channels, frames, h, w) =
            video.dims5().map_err(|_| invalid_input!("a video must be [B, 3, F, H, W], got {:?}", video.dims()))?;
        let tf = self.vae.config.temporal_factor();
        let sf = self.vae.config.spatial_factor();
        let first = usize::from(self.frames == 0);
        if channels != 3 || frames == 0 || (frames - first) % tf != 0 || h % sf != 0 || w % sf != 0 || h == 0 || w == 0
        {
            let expected = if first == 1 { format!("1 + {tf}k") } else { format!("{tf}k") };
            return Err(invalid_input!(
                "the VAE encodes [B, 3, {expected}, H, W] videos here, with H and W multiples of {sf}; got {:?}",
                video.dims()
            ));
        }
        let video = video.to_dtype(self.vae.dtype)?;
        let mut latents = Vec::new();
        let mut start = 0;
        while start < frames {
            let len = if self.frames + start == 0 { 1 } else { tf };
            self.caches.rewind();
            let h = self.vae.encoder.forward(&video.narrow(2, start, len)?, &mut self.caches, &mut trace)?;
            latents.push(self.vae.quant_conv.forward(&h, &mut None)?);
            start += len;
        }
        self.frames += frames;
        Ok(Tensor::cat(&latents, 2)?.to_dtype(DType::F32)?)
    }

    /// Cuts the gradient path through the carried caches: training backpropagates through the
    /// pushes after this one only (truncated backpropagation through time).
    pub fn detach(&mut self) {
        self.caches.detach();
    }
}

/// Where VAE weights live and what every VAE checkpoint holds.
const VAE_FILES: ModelFiles<'static> = ModelFiles {
    component: Component::Vae,
    subfolder: "vae",
    original_file: "Wan2.1_VAE.pth",
    signature: &["encoder.conv_in.weight", "decoder.conv_out.weight"],
    description: "a Wan VAE checkpoint (it has no encoder.conv1 / decoder head weights)",
};

/// Finds the VAE weights and config under `path`.
fn open_vae(path: &Path) -> Result<(VaeConfig, WeightStore)> {
    let found = open_model(path, &VAE_FILES)?;
    let config = match &found.config {
        Some(json) => VaeConfig::from_diffusers_json(json)?,
        None => config_from_weights(&found.location, &found.store)?,
    };
    Ok((config, found.store))
}

/// The original `.pth` carries no config: the Wan2.1 structure, with widths read off the weights.
fn config_from_weights(path: &Path, store: &WeightStore) -> Result<VaeConfig> {
    let base_dim = store.shape("encoder.conv_in.weight")?[0];
    let z_dim = store.shape("post_quant_conv.weight")?[0];
    if z_dim != WAN21_LATENTS_MEAN.len() {
        return Err(Error::BadConfig {
            path: path.to_path_buf(),
            reason: format!("{z_dim} latent channels without a config.json: only the 16-channel Wan2.1 VAE is known"),
        });
    }
    Ok(VaeConfig::wan21_shaped(base_dim, z_dim))
}
