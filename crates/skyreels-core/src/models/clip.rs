//! CLIP's vision transformer: the image encoder of the image-to-video models (spec §4).
//!
//! SkyReels-V2 I2V (like Wan2.1) encodes the first frame with the vision tower of open-clip's
//! XLM-RoBERTa ViT-H/14 and feeds the **penultimate** block's hidden states `[B, 257, 1280]` to
//! the transformer's image cross-attention: patch embedding (no bias), a class token, learned
//! positions, a LayerNorm before the blocks, then pre-norm blocks
//! `x += attn(LN1(x)); x += mlp(LN2(x))` — the last block and the post-norm are not used.
//! Both the original `.pth` (`visual.*`) and transformers' `CLIPVisionModel` load
//! ([`ClipVisionWeights`] hides the difference).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::checkpoint::{open_model, ClipVisionWeights, Component, ModelFiles, TensorShapes, Weights};
use crate::error::{invalid_input, Error, Result};
use crate::nn::{attention, AttentionMask, LayerNorm, Linear};

/// open-clip's normalisation of `[0, 1]` pixels (per RGB channel).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// See [`CLIP_MEAN`].
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// The MLP's nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// `x·Φ(x)` with the exact error function (ViT-H/14).
    Gelu,
    /// `x·σ(1.702·x)` (OpenAI's original CLIP).
    QuickGelu,
}

/// The structure of a CLIP vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Blocks in the checkpoint (the encoder runs all but the last).
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// The MLP's nonlinearity.
    pub activation: ClipActivation,
}

/// The head width of open-clip's ViT-H/14, used to infer the head count of an original
/// checkpoint (its file stores no configuration).
const VIT_H_HEAD_DIM: usize = 80;

impl ClipVisionConfig {
    /// open-clip's XLM-RoBERTa ViT-H/14 vision tower, as SkyReels-V2 and Wan2.1 use it.
    pub fn vit_h_14() -> Self {
        Self {
            image_size: 224,
            patch_size: 14,
            hidden_size: 1280,
            intermediate_size: 5120,
            num_layers: 32,
            num_heads: 16,
            layer_norm_eps: 1e-5,
            activation: ClipActivation::Gelu,
        }
    }

    /// Reads transformers' `CLIPVisionConfig` (`config.json` of a diffusers `image_encoder/`).
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Raw {
            image_size: usize,
            patch_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            #[serde(default = "default_eps")]
            layer_norm_eps: f64,
            #[serde(default = "default_act")]
            hidden_act: String,
        }
        fn default_eps() -> f64 {
            1e-5
        }
        fn default_act() -> String {
            "quick_gelu".into()
        }
        let text = crate::checkpoint::read_text(path)?;
        let bad = |reason: String| Error::BadModelFile { path: path.to_path_buf(), reason };
        let raw: Raw = serde_json::from_str(&text).map_err(|e| bad(format!("not a CLIP vision config: {e}")))?;
        let activation = match raw.hidden_act.as_str() {
            "gelu" => ClipActivation::Gelu,
            "quick_gelu" => ClipActivation::QuickGelu,
            other => return Err(bad(format!("activation `{other}` is not gelu or quick_gelu"))),
        };
        let config = Self {
            image_size: raw.image_size,
            patch_size: raw.patch_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            layer_norm_eps: raw.layer_norm_eps,
            activation,
        };
        config.check().map_err(|e| bad(e.to_string()))?;
        Ok(config)
    }

    /// Infers the structure from the tensor shapes of a checkpoint without a configuration (the
    /// original `.pth`): heads are counted in ViT-H/14's width of 80.
    pub fn from_weights(w: &dyn TensorShapes) -> Result<Self> {
        let patch = w.tensor_shape("embeddings.patch_embedding.weight")?;
        let positions: usize = w.tensor_shape("embeddings.position_embedding.weight")?.iter().rev().skip(1).product();
        let fc1 = w.tensor_shape("encoder.layers.0.mlp.fc1.weight")?;
        let (hidden_size, patch_size) = (patch[0], *patch.last().unwrap_or(&0));
        let grid = (positions.saturating_sub(1) as f64).sqrt().round() as usize;
        let num_layers = (0..).take_while(|i| w.has_tensor(&format!("encoder.layers.{i}.layer_norm1.weight"))).count();
        if grid * grid + 1 != positions || !hidden_size.is_multiple_of(VIT_H_HEAD_DIM) {
            return Err(invalid_input!(
                "a CLIP checkpoint with {positions} positions and width {hidden_size} is not a ViT with heads of {VIT_H_HEAD_DIM}: \
                 use the diffusers image_encoder folder, whose config.json says its shape"
            ));
        }
        let config = Self {
            image_size: grid * patch_size,
            patch_size,
            hidden_size,
            intermediate_size: fc1[0],
            num_layers,
            num_heads: hidden_size / VIT_H_HEAD_DIM,
            layer_norm_eps: 1e-5,
            activation: ClipActivation::Gelu,
        };
        config.check()?;
        Ok(config)
    }

    /// Patches along one side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens of one image: the class token and one per patch.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    fn check(&self) -> Result<()> {
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return Err(invalid_input!(
                "CLIP image size {} is not a multiple of its patch size {}",
                self.image_size,
                self.patch_size
            ));
        }
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return Err(invalid_input!("CLIP width {} does not split into {} heads", self.hidden_size, self.num_heads));
        }
        if self.num_layers < 2 {
            return Err(invalid_input!("a CLIP encoder needs at least 2 blocks (the last one is not used)"));
        }
        Ok(())
    }
}

/// One pre-norm transformer block.
struct ClipBlock {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl ClipBlock {
    fn load(c: &ClipVisionConfig, w: &dyn Weights, i: usize, dtype: DType, device: &Device) -> Result<Self> {
        let p = format!("encoder.layers.{i}");
        let (h, m) = (c.hidden_size, c.intermediate_size);
        let linear = |name: &str, i, o| Linear::load(w, &format!("{p}.{name}"), i, o, dtype, device);
        Ok(Self {
            norm1: LayerNorm::load(w, &format!("{p}.layer_norm1"), h, c.layer_norm_eps, device)?,
            q: linear("self_attn.q_proj", h, h)?,
            k: linear("self_attn.k_proj", h, h)?,
            v: linear("self_attn.v_proj", h, h)?,
            out: linear("self_attn.out_proj", h, h)?,
            norm2: LayerNorm::load(w, &format!("{p}.layer_norm2"), h, c.layer_norm_eps, device)?,
            fc1: linear("mlp.fc1", h, m)?,
            fc2: linear("mlp.fc2", m, h)?,
        })
    }

    fn forward(&self, x: &Tensor, c: &ClipVisionConfig) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let (heads, d) = (c.num_heads, c.hidden_size / c.num_heads);
        let y = self.norm1.forward(x)?;
        let split = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((b, l, heads, d))?.transpose(1, 2)?.contiguous()?) };
        let (q, k, v) = (split(self.q.forward(&y)?)?, split(self.k.forward(&y)?)?, split(self.v.forward(&y)?)?);
        let a = attention(&q, &k, &v, 1.0 / (d as f64).sqrt(), AttentionMask::Full)?;
        let a = a.transpose(1, 2)?.reshape((b, l, h))?;
        let x = x.add(&self.out.forward(&a)?)?;
        let y = self.fc1.forward(&self.norm2.forward(&x)?)?;
        let y = match c.activation {
            ClipActivation::Gelu => y.gelu_erf()?,
            ClipActivation::QuickGelu => (&y * candle_nn::ops::sigmoid(&(&y * 1.702)?)?)?,
        };
        Ok(x.add(&self.fc2.forward(&y)?)?)
    }
}

/// Where CLIP vision weights live and what every such checkpoint holds.
const CLIP_FILES: ModelFiles<'static> = ModelFiles {
    component: Component::ImageEncoder,
    subfolder: "image_encoder",
    original_file: "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    signature: &["embeddings.patch_embedding.weight", "embeddings.class_embedding", "pre_layrnorm.weight"],
    description: "a CLIP vision encoder checkpoint (no patch embedding, class token or pre-norm)",
};

/// What `skyreels info` says about an image encoder, read from headers only.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageEncoderSummary {
    /// Where the weights are.
    pub location: std::path::PathBuf,
    /// `original SkyReels/Wan` or `diffusers`.
    pub naming: String,
    /// Scalar parameters of the vision tower (an original file's text tower not counted).
    pub parameters: usize,
    /// Side of the input image in pixels.
    pub image_size: usize,
    /// Side of a patch in pixels.
    pub patch_size: usize,
    /// Width of the hidden states (the tokens the transformer attends to).
    pub hidden_size: usize,
    /// Blocks in the checkpoint (all but the last are run).
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
}

/// Describes the CLIP vision tower at `path` (see [`ClipVisionEncoder::load`]) without loading
/// any weights.
pub fn inspect_image_encoder(path: &Path) -> Result<ImageEncoderSummary> {
    let found = open_model(path, &CLIP_FILES)?;
    let weights = ClipVisionWeights(found.store);
    let config = match &found.config {
        Some(json) => ClipVisionConfig::from_hf_json(json)?,
        None => ClipVisionConfig::from_weights(&weights)?,
    };
    let tower = ["embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm."];
    let parameters = weights
        .0
        .iter()
        .filter(|(name, _)| tower.iter().any(|prefix| name.starts_with(prefix)))
        .map(|(_, info)| info.shape.iter().product::<usize>())
        .sum();
    Ok(ImageEncoderSummary {
        location: found.location,
        naming: weights.0.scheme().to_string(),
        parameters,
        image_size: config.image_size,
        patch_size: config.patch_size,
        hidden_size: config.hidden_size,
        num_layers: config.num_layers,
        num_heads: config.num_heads,
    })
}

/// CLIP's vision transformer up to its penultimate block.
pub struct ClipVisionEncoder {
    config: ClipVisionConfig,
    patch_embedding: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    /// All blocks but the last.
    blocks: Vec<ClipBlock>,
}

impl ClipVisionEncoder {
    /// Loads the original `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (or a folder
    /// holding it), a transformers `CLIPVisionModel` folder, or a diffusers pipeline root with
    /// `image_encoder/`. Weights are held in `dtype`; activations are f32.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let found = open_model(path, &CLIP_FILES)?;
        let weights = ClipVisionWeights(found.store);
        let config = match &found.config {
            Some(json) => ClipVisionConfig::from_hf_json(json)?,
            None => ClipVisionConfig::from_weights(&weights)?,
        };
        Self::from_weights(config, &weights, device, dtype)
    }

    /// Builds the encoder from any weight source using canonical (`CLIPVisionModel`) names.
    pub fn from_weights(config: ClipVisionConfig, w: &dyn Weights, device: &Device, dtype: DType) -> Result<Self> {
        config.check()?;
        let (h, p) = (config.hidden_size, config.patch_size);
        let patch_embedding = w.tensor("embeddings.patch_embedding.weight", &[h, 3, p, p], DType::F32, device)?;
        let class_embedding = w.tensor("embeddings.class_embedding", &[h], DType::F32, device)?;
        let position_embedding =
            w.tensor("embeddings.position_embedding.weight", &[config.tokens(), h], DType::F32, device)?;
        let pre_norm = LayerNorm::load(w, "pre_layrnorm", h, config.layer_norm_eps, device)?;
        let blocks =
            (0..config.num_layers - 1).map(|i| ClipBlock::load(&config, w, i, dtype, device)).collect::<Result<_>>()?;
        Ok(Self { config, patch_embedding, class_embedding, position_embedding, pre_norm, blocks })
    }

    /// The structure this encoder was built with.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// The penultimate block's hidden states `[B, tokens, hidden]` (f32) of normalised pixels
    /// `[B, 3, image_size, image_size]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, height, width) = pixels.dims4()?;
        let s = self.config.image_size;
        if c != 3 || height != s || width != s {
            return Err(invalid_input!("the CLIP encoder takes [B, 3, {s}, {s}] pixels, got {:?}", pixels.dims()));
        }
        let pixels = pixels.to_dtype(DType::F32)?;
        let patches = pixels.conv2d(&self.patch_embedding, 0, self.config.patch_size, 1, 1)?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?;
        let class = self.class_embedding.reshape((1, 1, self.config.hidden_size))?.repeat((b, 1, 1))?;
        let x = Tensor::cat(&[class, patches], 1)?.broadcast_add(&self.position_embedding.unsqueeze(0)?)?;
        let mut x = self.pre_norm.forward(&x)?;
        for block in &self.blocks {
            x = block.forward(&x, &self.config)?;
        }
        Ok(x)
    }

    /// Encodes images `[B, 3, H, W]` in `[-1, 1]` as the original `CLIPModel.encode_video` does:
    /// squashed to the model's square size by bicubic interpolation ([`resize_bicubic`]), mapped
    /// to `[0, 1]`, normalised ([`CLIP_MEAN`], [`CLIP_STD`]), then [`forward`](Self::forward).
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        let s = self.config.image_size;
        let pixels = resize_bicubic(&images.to_dtype(DType::F32)?, s, s)?;
        let pixels = ((pixels * 0.5)? + 0.5)?;
        let device = pixels.device();
        let mean = Tensor::new(&CLIP_MEAN, device)?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&CLIP_STD, device)?.reshape((1, 3, 1, 1))?;
        self.forward(&pixels.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }
}

/// PyTorch's `F.interpolate(mode="bicubic", align_corners=False)` (no antialiasing) of
/// `[B, C, H, W]` f32 images to `[B, C, height, width]`: Keys' cubic with a = −0.75 over the
/// 4×4 neighbourhood, source positions `(i + ½)·in/out − ½`, edge pixels repeated.
pub fn resize_bicubic(images: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (b, c, in_h, in_w) = images.dims4()?;
    if height == 0 || width == 0 || in_h == 0 || in_w == 0 {
        return Err(invalid_input!("cannot resize {in_w}x{in_h} images to {width}x{height}"));
    }
    let device = images.device().clone();
    let data = images.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let rows = taps(in_h, height);
    let cols = taps(in_w, width);
    let mut out = Vec::with_capacity(b * c * height * width);
    for plane in data.chunks_exact(in_h * in_w) {
        for (ys, wy) in &rows {
            for (xs, wx) in &cols {
                // Rows first, as PyTorch sums them: each of the 4 rows across, then down.
                let mut value = 0f32;
                for (y, wy) in ys.iter().zip(wy) {
                    let row = &plane[y * in_w..(y + 1) * in_w];
                    let across = row[xs[0]] * wx[0] + row[xs[1]] * wx[1] + row[xs[2]] * wx[2] + row[xs[3]] * wx[3];
                    value += across * wy;
                }
                out.push(value);
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, c, height, width), &device)?)
}

/// For each output position along one axis: the 4 source indices (clamped) and their weights.
fn taps(input: usize, output: usize) -> Vec<([usize; 4], [f32; 4])> {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let source = scale * (i as f32 + 0.5) - 0.5;
            let base = source.floor();
            let t = source - base;
            let index = |k: i64| (base as i64 + k).clamp(0, input as i64 - 1) as usize;
            ([index(-1), index(0), index(1), index(2)], [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)])
        })
        .collect()
}
