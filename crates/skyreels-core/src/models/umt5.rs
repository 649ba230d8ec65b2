//! The umT5 text encoder (spec §3): a T5 encoder whose every layer has its own relative
//! position bias (candle-transformers' T5 shares layer 0's, so it cannot run umT5).
//!
//! Per layer, pre-norm: `x += Attn(RMS(x))`, `x += FFN(RMS(x))`; attention is **unscaled**,
//! with the layer's bucketed relative bias and an additive padding mask on the keys; the FFN is
//! `wo(gelu_tanh(wi_0 x) · wi_1 x)`. A final RMS norm closes the stack.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::checkpoint::{open_model, Component, ModelFiles, WeightStore, Weights};
use crate::error::{invalid_input, Error, Result};
use crate::nn::{biased_attention_heads_last, gelu_tanh, Linear, OffsetBias, RmsNorm};

/// Structure of a umT5 encoder (HF `UMT5Config` names).
#[derive(Debug, Clone, PartialEq)]
pub struct UmT5Config {
    /// Token vocabulary (256384 for umT5-XXL).
    pub vocab_size: usize,
    /// Hidden width (4096).
    pub d_model: usize,
    /// Width of one attention head (64).
    pub d_kv: usize,
    /// Attention heads (64).
    pub num_heads: usize,
    /// FFN width (10240).
    pub d_ff: usize,
    /// Encoder layers (24).
    pub num_layers: usize,
    /// Relative position buckets (32).
    pub num_buckets: usize,
    /// Distance beyond which relative positions share a bucket (128).
    pub max_distance: usize,
    /// RMS norm epsilon (1e-6).
    pub eps: f64,
}

impl UmT5Config {
    /// umT5-XXL, the encoder of every SkyReels-V2 model.
    pub fn umt5_xxl() -> Self {
        Self {
            vocab_size: 256_384,
            d_model: 4096,
            d_kv: 64,
            num_heads: 64,
            d_ff: 10_240,
            num_layers: 24,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
        }
    }

    /// Reads an HF `config.json` (`UMT5Config`).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadConfig { path: path.to_path_buf(), reason };
        let text = crate::checkpoint::read_text(path)?;
        let json: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        if let Some(proj) = json.get("feed_forward_proj").and_then(Value::as_str) {
            if proj != "gated-gelu" {
                return Err(bad(format!("feed_forward_proj `{proj}` is not umT5's gated-gelu")));
            }
        }
        let defaults = Self::umt5_xxl();
        let field = |name: &str, default: usize| -> Result<usize> {
            match json.get(name) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| bad(format!("`{name}` must be an integer"))),
            }
        };
        Ok(Self {
            vocab_size: field("vocab_size", defaults.vocab_size)?,
            d_model: field("d_model", defaults.d_model)?,
            d_kv: field("d_kv", defaults.d_kv)?,
            num_heads: field("num_heads", defaults.num_heads)?,
            d_ff: field("d_ff", defaults.d_ff)?,
            num_layers: field("num_layers", defaults.num_layers)?,
            num_buckets: field("relative_attention_num_buckets", defaults.num_buckets)?,
            max_distance: field("relative_attention_max_distance", defaults.max_distance)?,
            eps: json.get("layer_norm_epsilon").and_then(Value::as_f64).unwrap_or(defaults.eps),
        })
    }

    /// Reads the structure off the weights (the original `.pth` ships no config).
    fn from_weights(store: &WeightStore) -> Result<Self> {
        let embedding = store.shape("token_embedding.weight")?;
        let bias = store.shape("blocks.0.pos_embedding.embedding.weight")?;
        let q = store.shape("blocks.0.attn.q.weight")?;
        let num_layers = (0..).take_while(|i| store.contains(&format!("blocks.{i}.attn.q.weight"))).count();
        let defaults = Self::umt5_xxl();
        Ok(Self {
            vocab_size: embedding[0],
            d_model: embedding[1],
            d_kv: q[0] / bias[1].max(1),
            num_heads: bias[1],
            d_ff: store.shape("blocks.0.ffn.fc1.weight")?[0],
            num_layers,
            num_buckets: bias[0],
            ..defaults
        })
    }
}

/// The bucket of a relative position `key − query` (bidirectional T5 bucketing).
///
/// Half the buckets are for keys after the query. Within a half, distances below a quarter of
/// the buckets get their own bucket; larger ones are spaced logarithmically up to
/// `max_distance`. The logarithm is taken in f32, as the reference does, so that the
/// truncation lands in the same bucket at every boundary.
pub fn relative_position_bucket(relative: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let base = if relative > 0 { half } else { 0 };
    let distance = relative.unsigned_abs() as usize;
    let exact = half / 2;
    if distance < exact {
        return base + distance;
    }
    let log_ratio = (distance as f32 / exact as f32).ln() / (max_distance as f32 / exact as f32).ln();
    let large = exact + (log_ratio * (half - exact) as f32) as usize;
    base + large.min(half - 1)
}

struct EncoderLayer {
    norm1: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// `[buckets, heads]`.
    relative_bias: Tensor,
    norm2: RmsNorm,
    gate: Linear,
    fc1: Linear,
    fc2: Linear,
}

fn linear(w: &dyn Weights, name: &str, in_dim: usize, out_dim: usize, dtype: DType, device: &Device) -> Result<Linear> {
    Ok(Linear::new(w.tensor(&format!("{name}.weight"), &[out_dim, in_dim], dtype, device)?, None))
}

impl EncoderLayer {
    fn load(c: &UmT5Config, w: &dyn Weights, i: usize, dtype: DType, device: &Device) -> Result<Self> {
        let p = format!("blocks.{i}");
        let inner = c.num_heads * c.d_kv;
        Ok(Self {
            norm1: RmsNorm::load(w, &format!("{p}.norm1"), c.d_model, c.eps, device)?,
            q: linear(w, &format!("{p}.attn.q"), c.d_model, inner, dtype, device)?,
            k: linear(w, &format!("{p}.attn.k"), c.d_model, inner, dtype, device)?,
            v: linear(w, &format!("{p}.attn.v"), c.d_model, inner, dtype, device)?,
            o: linear(w, &format!("{p}.attn.o"), inner, c.d_model, dtype, device)?,
            relative_bias: w.tensor(
                &format!("{p}.pos_embedding.embedding.weight"),
                &[c.num_buckets, c.num_heads],
                DType::F32,
                device,
            )?,
            norm2: RmsNorm::load(w, &format!("{p}.norm2"), c.d_model, c.eps, device)?,
            gate: linear(w, &format!("{p}.ffn.gate.0"), c.d_model, c.d_ff, dtype, device)?,
            fc1: linear(w, &format!("{p}.ffn.fc1"), c.d_model, c.d_ff, dtype, device)?,
            fc2: linear(w, &format!("{p}.ffn.fc2"), c.d_ff, c.d_model, dtype, device)?,
        })
    }

    /// `x` `[B, L, D]` f32; `offset_buckets` `[2L − 1]` u32, the bucket of each key–query
    /// offset `j − i` at `j − i + L − 1`; `mask_bias` `[B, L]`.
    fn forward(&self, x: &Tensor, offset_buckets: &Tensor, mask_bias: &Tensor, heads: usize) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let project = |layer: &Linear| -> Result<Tensor> { Ok(layer.forward(&h)?.to_dtype(DType::F32)?) };
        let (q, k, v) = (project(&self.q)?, project(&self.k)?, project(&self.v)?);
        // [2L − 1, heads] → [heads, 2L − 1]
        let relative = self.relative_bias.index_select(offset_buckets, 0)?.t()?.contiguous()?;
        let bias = OffsetBias { relative, keys: mask_bias.clone() };
        let attended = biased_attention_heads_last(&q, &k, &v, heads, 1.0, &bias)?;
        let x = (x + self.o.forward(&attended)?.to_dtype(DType::F32)?)?;
        let h = self.norm2.forward(&x)?;
        let gated = (gelu_tanh(&self.gate.forward(&h)?)? * self.fc1.forward(&h)?)?;
        Ok((&x + self.fc2.forward(&gated)?.to_dtype(DType::F32)?)?)
    }
}

/// The umT5 encoder stack with its token embedding.
pub struct UmT5Encoder {
    config: UmT5Config,
    embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_norm: RmsNorm,
}

impl UmT5Encoder {
    /// Loads an HF `UMT5EncoderModel` folder (config.json + safetensors), a diffusers pipeline
    /// root holding `text_encoder/`, or the original `models_t5_umt5-xxl-enc-bf16.pth`.
    /// Weights are held in `weight_dtype`; activations are f32.
    pub fn load(path: &Path, device: &Device, weight_dtype: DType) -> Result<Self> {
        let (config, store) = open_umt5(path)?;
        Self::from_weights(config, &store, device, weight_dtype)
    }

    /// Builds the encoder from any weight source using canonical (original Wan) names.
    pub fn from_weights(config: UmT5Config, w: &dyn Weights, device: &Device, weight_dtype: DType) -> Result<Self> {
        let embedding =
            w.tensor("token_embedding.weight", &[config.vocab_size, config.d_model], weight_dtype, device)?;
        let layers = (0..config.num_layers)
            .map(|i| EncoderLayer::load(&config, w, i, weight_dtype, device))
            .collect::<Result<_>>()?;
        let final_norm = RmsNorm::load(w, "norm", config.d_model, config.eps, device)?;
        Ok(Self { config, embedding, layers, final_norm })
    }

    /// The structure this encoder was built with.
    pub fn config(&self) -> &UmT5Config {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embedding.device()
    }

    /// Encodes token ids `[B, L]` with attention mask `[B, L]` (1 = token, 0 = padding) to
    /// `[B, L, d_model]` f32 (padded rows are *not* zeroed; see [`encode`](Self::encode)).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.forward_traced(ids, mask, None)
    }

    /// [`forward`](Self::forward), collecting each layer's output in `trace`.
    pub fn forward_traced(&self, ids: &Tensor, mask: &Tensor, mut trace: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let (b, l) = ids.dims2().map_err(|_| invalid_input!("token ids must be [B, L], got {:?}", ids.dims()))?;
        if mask.dims() != [b, l] || l == 0 {
            return Err(invalid_input!("the attention mask must match the ids [{b}, {l}], got {:?}", mask.dims()));
        }
        let ids = ids.to_dtype(DType::U32)?;
        let too_large = ids.max_all()?.to_scalar::<u32>()? as usize;
        if too_large >= self.config.vocab_size {
            return Err(invalid_input!("token id {too_large} is outside the vocabulary of {}", self.config.vocab_size));
        }
        let device = self.embedding.device();
        let mut x = self.embedding.index_select(&ids.flatten_all()?, 0)?.reshape((b, l, ()))?.to_dtype(DType::F32)?;
        let buckets = self.offset_buckets(l, device)?;
        let keep = mask.to_dtype(DType::F32)?.to_device(device)?;
        // 0 where attended, the most negative f32 on padding keys (as transformers does).
        let mask_bias = ((keep - 1.0)? * -(f32::MIN as f64))?;
        for layer in &self.layers {
            x = layer.forward(&x, &buckets, &mask_bias, self.config.num_heads)?;
            if let Some(trace) = trace.as_deref_mut() {
                trace.push(x.clone());
            }
        }
        self.final_norm.forward(&x)
    }

    /// Text embeddings as the pipelines use them: [`forward`](Self::forward) with the rows of
    /// padding tokens set to zero.
    pub fn encode(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let hidden = self.forward(ids, mask)?;
        let keep = mask.to_dtype(DType::F32)?.to_device(hidden.device())?.unsqueeze(2)?;
        Ok(hidden.broadcast_mul(&keep)?)
    }

    /// The relative-position bucket of each key–query offset `j − i` of `l` tokens, at
    /// `j − i + l − 1` (`[2l − 1]`).
    fn offset_buckets(&self, l: usize, device: &Device) -> Result<Tensor> {
        let (n, max) = (self.config.num_buckets, self.config.max_distance);
        let buckets: Vec<u32> =
            (0..2 * l - 1).map(|o| relative_position_bucket(o as i64 - (l as i64 - 1), n, max) as u32).collect();
        Ok(Tensor::from_vec(buckets, 2 * l - 1, device)?)
    }
}

/// Where umT5 weights live and what every umT5 checkpoint holds.
const UMT5_FILES: ModelFiles<'static> = ModelFiles {
    component: Component::TextEncoder,
    subfolder: "text_encoder",
    original_file: "models_t5_umt5-xxl-enc-bf16.pth",
    signature: &["token_embedding.weight", "blocks.0.pos_embedding.embedding.weight"],
    description: "a umT5 encoder checkpoint (no token embedding / per-layer relative position bias)",
};

/// Finds the umT5 weights and config under `path`.
fn open_umt5(path: &Path) -> Result<(UmT5Config, WeightStore)> {
    let found = open_model(path, &UMT5_FILES)?;
    let config = match &found.config {
        Some(json) => UmT5Config::from_hf_json(json)?,
        None => UmT5Config::from_weights(&found.store)?,
    };
    Ok((config, found.store))
}
