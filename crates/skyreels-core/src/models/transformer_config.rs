//! The configuration of a SkyReels-V2 / Wan2.1 DiT, read from either config format.
//!
//! The original `config.json` (SkyReels/Wan `WanModel`) omits the patch size, text width and image
//! width — the code hard-codes them — so those are read off the weight shapes instead, which also
//! makes tiny test models and real checkpoints go through the same path.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::TensorShapes;
use crate::error::{Error, Result};

/// Hyper-parameters of a [`crate::models::WanTransformer3d`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransformerConfig {
    /// Patch size (frames, rows, columns) of the patch embedding; (1, 2, 2) in every release.
    pub patch_size: [usize; 3],
    /// Attention heads.
    pub num_heads: usize,
    /// Width of one head (128 in every release).
    pub head_dim: usize,
    /// Latent channels in (16; 36 for I2V, which concatenates 20 conditioning channels).
    pub in_channels: usize,
    /// Latent channels out (16).
    pub out_channels: usize,
    /// Width of the text-encoder states (4096 for umT5-XXL).
    pub text_dim: usize,
    /// Width of the sinusoidal timestep code (256).
    pub freq_dim: usize,
    /// Hidden width of the feed-forward layers.
    pub ffn_dim: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Whether cross-attention has an affine LayerNorm in front (true in every release).
    pub cross_attn_norm: bool,
    /// Epsilon of the norms inside the blocks.
    pub eps: f64,
    /// Width of CLIP image tokens for image-to-video models (1280), `None` otherwise.
    pub image_dim: Option<usize>,
    /// Length of the learned position table added to image tokens (FLF2V variants only).
    pub image_pos_embed_len: Option<usize>,
    /// Whether the model has the fps embedding of DF-1.3B (`inject_sample_info`).
    pub inject_sample_info: bool,
    /// Positions covered by the rotary table per axis (1024).
    pub rope_max_seq_len: usize,
    /// Frames per causal block of self-attention; 1 = full attention (the released default).
    pub causal_block_size: usize,
}

/// What a checkpoint is for, as far as the weights tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TransformerKind {
    /// Text-to-video DiT, usable for diffusion forcing (T2V-14B, DF-14B).
    TextToVideo,
    /// Diffusion-forcing DiT with the fps embedding (DF-1.3B).
    DiffusionForcingWithFps,
    /// Image-to-video DiT with the CLIP image branch.
    ImageToVideo,
}

impl std::fmt::Display for TransformerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransformerKind::TextToVideo => "text-to-video / diffusion-forcing DiT",
            TransformerKind::DiffusionForcingWithFps => "diffusion-forcing DiT with fps embedding",
            TransformerKind::ImageToVideo => "image-to-video DiT (CLIP image branch)",
        })
    }
}

impl TransformerConfig {
    /// The configuration of a released model: `df-1.3b`, `df-14b`, `t2v-14b`, `i2v-1.3b`, `i2v-14b`.
    pub fn preset(name: &str) -> Option<Self> {
        let small = Self {
            patch_size: [1, 2, 2],
            num_heads: 12,
            head_dim: 128,
            in_channels: 16,
            out_channels: 16,
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 8960,
            num_layers: 30,
            cross_attn_norm: true,
            eps: 1e-6,
            image_dim: None,
            image_pos_embed_len: None,
            inject_sample_info: false,
            rope_max_seq_len: 1024,
            causal_block_size: 1,
        };
        let large = Self { num_heads: 40, ffn_dim: 13824, num_layers: 40, ..small.clone() };
        let i2v = |c: Self| Self { in_channels: 36, image_dim: Some(1280), ..c };
        match name {
            "df-1.3b" => Some(Self { inject_sample_info: true, ..small }),
            "df-14b" | "t2v-14b" => Some(large),
            "i2v-1.3b" => Some(i2v(small)),
            "i2v-14b" => Some(i2v(large)),
            _ => None,
        }
    }

    /// Model width (`num_heads · head_dim`).
    pub fn dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// The kind of model this config describes.
    pub fn kind(&self) -> TransformerKind {
        if self.image_dim.is_some() {
            TransformerKind::ImageToVideo
        } else if self.inject_sample_info {
            TransformerKind::DiffusionForcingWithFps
        } else {
            TransformerKind::TextToVideo
        }
    }

    /// The released size this matches ("1.3B", "14B"), if any.
    pub fn size_class(&self) -> Option<&'static str> {
        match (self.dim(), self.num_layers, self.head_dim) {
            (1536, 30, 128) => Some("1.3B"),
            (5120, 40, 128) => Some("14B"),
            _ => None,
        }
    }

    /// Reads `dir/config.json` (either format) and completes it from the weight shapes in `store`.
    pub fn load(dir: &Path, store: &dyn TensorShapes) -> Result<Self> {
        let path = dir.join("config.json");
        let text = crate::checkpoint::read_text(&path)?;
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(&path, format!("not valid JSON ({e})")))?;
        let config = if json.get("num_attention_heads").is_some() {
            Self::from_diffusers(&json, &path)?
        } else {
            Self::from_original(&json, &path, store)?
        };
        config.validate(&path)?;
        Ok(config)
    }

    fn from_diffusers(json: &Value, path: &Path) -> Result<Self> {
        let patch = match json.get("patch_size") {
            Some(Value::Array(a)) if a.len() == 3 => {
                let mut p = [0; 3];
                for (slot, v) in p.iter_mut().zip(a) {
                    *slot = v.as_u64().ok_or_else(|| bad(path, "`patch_size` must hold integers".into()))? as usize;
                }
                p
            }
            None => [1, 2, 2],
            _ => return Err(bad(path, "`patch_size` must be a list of 3 integers".into())),
        };
        Ok(Self {
            patch_size: patch,
            num_heads: req_usize(json, "num_attention_heads", path)?,
            head_dim: opt_usize(json, "attention_head_dim", path)?.unwrap_or(128),
            in_channels: opt_usize(json, "in_channels", path)?.unwrap_or(16),
            out_channels: opt_usize(json, "out_channels", path)?.unwrap_or(16),
            text_dim: opt_usize(json, "text_dim", path)?.unwrap_or(4096),
            freq_dim: opt_usize(json, "freq_dim", path)?.unwrap_or(256),
            ffn_dim: opt_usize(json, "ffn_dim", path)?.unwrap_or(8192),
            num_layers: opt_usize(json, "num_layers", path)?.unwrap_or(32),
            cross_attn_norm: json.get("cross_attn_norm").and_then(Value::as_bool).unwrap_or(true),
            eps: json.get("eps").and_then(Value::as_f64).unwrap_or(1e-6),
            image_dim: match (opt_usize(json, "image_dim", path)?, opt_usize(json, "added_kv_proj_dim", path)?) {
                (Some(_), None) => {
                    return Err(bad(
                        path,
                        "`image_dim` without `added_kv_proj_dim` is not a SkyReels/Wan layout".into(),
                    ))
                }
                (image_dim, _) => image_dim,
            },
            image_pos_embed_len: opt_usize(json, "pos_embed_seq_len", path)?,
            inject_sample_info: json.get("inject_sample_info").and_then(Value::as_bool).unwrap_or(false),
            rope_max_seq_len: opt_usize(json, "rope_max_seq_len", path)?.unwrap_or(1024),
            causal_block_size: opt_usize(json, "num_frame_per_block", path)?.unwrap_or(1),
        })
    }

    fn from_original(json: &Value, path: &Path, store: &dyn TensorShapes) -> Result<Self> {
        let dim = req_usize(json, "dim", path)?;
        let num_heads = req_usize(json, "num_heads", path)?;
        if num_heads == 0 || dim % num_heads != 0 {
            return Err(bad(path, format!("`dim` {dim} is not divisible by `num_heads` {num_heads}")));
        }
        let patch = store.tensor_shape("patch_embedding.weight")?;
        if patch.len() != 5 {
            return Err(bad(path, format!("patch_embedding.weight has shape {patch:?}, expected 5 dims")));
        }
        let text_dim = store.tensor_shape("text_embedding.0.weight")?.get(1).copied().unwrap_or(0);
        let is_i2v =
            json.get("model_type").and_then(Value::as_str) == Some("i2v") || store.has_tensor("img_emb.proj.0.weight");
        let image_dim = if is_i2v { store.tensor_shape("img_emb.proj.0.weight")?.first().copied() } else { None };
        let image_pos_embed_len = match store.has_tensor("img_emb.emb_pos") {
            true => store.tensor_shape("img_emb.emb_pos")?.get(1).copied(),
            false => None,
        };
        Ok(Self {
            patch_size: [patch[2], patch[3], patch[4]],
            num_heads,
            head_dim: dim / num_heads,
            in_channels: opt_usize(json, "in_dim", path)?.unwrap_or(16),
            out_channels: opt_usize(json, "out_dim", path)?.unwrap_or(16),
            text_dim,
            freq_dim: opt_usize(json, "freq_dim", path)?.unwrap_or(256),
            ffn_dim: req_usize(json, "ffn_dim", path)?,
            num_layers: req_usize(json, "num_layers", path)?,
            cross_attn_norm: true,
            eps: json.get("eps").and_then(Value::as_f64).unwrap_or(1e-6),
            image_dim,
            image_pos_embed_len,
            inject_sample_info: json.get("inject_sample_info").and_then(Value::as_bool).unwrap_or(false),
            rope_max_seq_len: 1024,
            causal_block_size: 1,
        })
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let positive = [
            ("num_heads", self.num_heads),
            ("head_dim", self.head_dim),
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("text_dim", self.text_dim),
            ("freq_dim", self.freq_dim),
            ("ffn_dim", self.ffn_dim),
            ("rope_max_seq_len", self.rope_max_seq_len),
            ("causal_block_size", self.causal_block_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(bad(path, format!("`{name}` must be positive")));
        }
        if self.patch_size.contains(&0) {
            return Err(bad(path, "`patch_size` entries must be positive".into()));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(bad(path, format!("head dim {} must be even for the 3D rotary embedding", self.head_dim)));
        }
        if !self.freq_dim.is_multiple_of(2) {
            return Err(bad(path, format!("`freq_dim` {} must be even", self.freq_dim)));
        }
        Ok(())
    }
}

fn bad(path: &Path, reason: String) -> Error {
    Error::BadConfig { path: PathBuf::from(path), reason }
}

fn opt_usize(json: &Value, key: &str, path: &Path) -> Result<Option<usize>> {
    match json.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| bad(path, format!("`{key}` must be a non-negative integer, got {v}"))),
    }
}

fn req_usize(json: &Value, key: &str, path: &Path) -> Result<usize> {
    opt_usize(json, key, path)?.ok_or_else(|| bad(path, format!("`{key}` is missing")))
}
