//! `WanTransformer3d`: the SkyReels-V2 diffusion transformer (Wan2.1 DiT) with per-frame timesteps.
//!
//! Spec §2. The model maps noisy latents `x [B, C, F, H, W]`, timesteps and text states to a
//! flow (velocity) prediction `v ≈ ε − x₀` of shape `[B, C_out, F, H, W]`. Timesteps are either one
//! per sample (`[B]`, classic T2V/I2V) or one per latent frame (`[B, F]`, diffusion forcing); the
//! latter is the general case: every frame's tokens get the adaLN modulation of that frame's
//! noise level. Modulation is applied per frame group rather than expanded to every token, which
//! is the same arithmetic without materialising `[B, L, 6, D]`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::{Component, WeightStore, Weights};
use crate::error::{invalid_input, Result};
use crate::models::transformer_config::TransformerConfig;
use crate::nn::{
    attention_heads_last, gated_residual, gelu_feed_forward, gelu_tanh, modulated_layer_norm, rotary_attention,
    timestep_sinusoid, AttentionMask, LayerNorm, Linear, RmsNorm, Rope3d, WeightFormat,
};

/// Inputs of one transformer forward pass.
#[derive(Debug, Clone, Copy)]
pub struct TransformerInput<'a> {
    /// Noisy latents `[B, in_channels, F, H, W]` (I2V: noise and conditioning already concatenated).
    pub latents: &'a Tensor,
    /// Timesteps in `[0, 1000)`: `[B]` for one per sample, `[B, F/patch_t]` for one per latent frame.
    pub timesteps: &'a Tensor,
    /// Text-encoder states `[B, L_text, text_dim]` (padded rows are zeros and are attended to).
    pub context: &'a Tensor,
    /// CLIP image tokens `[B, L_img, image_dim]`; required by image-to-video models only.
    pub image_context: Option<&'a Tensor>,
    /// Index into the fps table (`0` for 16 fps, `1` otherwise), `[B]`; required by models with
    /// the fps embedding (DF-1.3B), ignored by others. See [`fps_index`].
    pub fps_index: Option<&'a Tensor>,
    /// The temporal rotary position of each latent frame (`F/patch_t` of them); `None` numbers
    /// them 0, 1, …. SkyReels-V3 shot switching gives its clean prefix, placed after the noisy
    /// frames, positions from 1024 ([`CONTEXT_FRAME_POSITION`]).
    pub frame_positions: Option<&'a [usize]>,
}

/// Where SkyReels-V3's shot-switching model places the first frame of its clean context along
/// the rotary time axis (its table covers 2048 positions, the noisy frames start at 0).
pub const CONTEXT_FRAME_POSITION: usize = 1024;

/// The fps-table row SkyReels uses for a frame rate: 0 for 16 fps, 1 for anything else (24).
pub fn fps_index(fps: u32) -> u32 {
    if fps == 16 {
        0
    } else {
        1
    }
}

/// Receives named intermediate tensors during [`WanTransformer3d::forward_traced`].
pub type Trace<'t> = dyn FnMut(&str, &Tensor) -> Result<()> + 't;

/// A step cache standing in for the blocks (TeaCache and its relatives, spec §10.1). After its
/// [`leading_blocks`](Self::leading_blocks) have run, it sees what is about to enter the rest
/// and either returns the residual `out − in` to add instead of running them, or lets them run
/// and is handed the residual they produced.
pub trait BlockCache {
    /// Blocks that always run before the decision (0: decide on the embeddings alone; 1: on the
    /// first block's response too).
    fn leading_blocks(&self) -> usize {
        0
    }
    /// The residual `[B, L, D]` (f32) to add to the tokens instead of running the remaining
    /// blocks, or `None` to run them.
    fn reuse(&mut self, probe: &BlockProbe<'_>) -> Result<Option<Tensor>>;
    /// Receives the remaining blocks' `out − in` (f32) after they ran.
    fn remember(&mut self, residual: Tensor) -> Result<()>;
}

/// What a [`BlockCache`] sees of a forward pass before the remaining blocks run.
pub struct BlockProbe<'a> {
    /// Tokens entering the remaining blocks, `[B, L, D]` in the compute dtype, frame-major.
    pub tokens: &'a Tensor,
    /// What the leading blocks added to the embedded tokens, `[B, L, D]` (f32); `None` when
    /// none ran.
    pub leading_residual: Option<&'a Tensor>,
    /// The time modulation `[B, Ft, 6, D]` (f32), one row per latent frame column.
    pub modulation: &'a Tensor,
}

impl BlockProbe<'_> {
    /// Latent frame columns (the modulation's rows); tokens are `frames × tokens-per-frame`.
    pub fn frames(&self) -> Result<usize> {
        Ok(self.modulation.dim(1)?)
    }
}

/// The SkyReels-V2 DiT. Build with [`WanTransformer3d::load`], run with [`WanTransformer3d::forward`].
#[derive(Debug)]
pub struct WanTransformer3d {
    config: TransformerConfig,
    patch_embedding: Linear,
    time_embedding: (Linear, Linear),
    time_projection: Linear,
    text_embedding: (Linear, Linear),
    image_embedding: Option<ImageEmbedding>,
    fps_embedding: Option<FpsEmbedding>,
    blocks: Vec<WanBlock>,
    /// Where the blocks are kept between uses when they are streamed to the compute device one
    /// block at a time (`--offload blocks`); `None` when they live on the compute device.
    block_home: Option<Device>,
    head: Head,
    rope: Rope3d,
    device: Device,
    compute_dtype: DType,
}

impl WanTransformer3d {
    /// Loads a transformer from a directory holding `config.json` and `*.safetensors` shards in
    /// the original SkyReels/Wan naming or the diffusers naming. A diffusers pipeline root (with a
    /// `transformer/` folder) is accepted too. `weight_dtype` is how weights are held in memory
    /// (f32 or bf16); on CPU the arithmetic is f32 regardless, on GPUs it uses `weight_dtype`.
    pub fn load(dir: &Path, device: &Device, weight_dtype: DType) -> Result<Self> {
        Self::load_as(dir, device, weight_dtype, WeightFormat::Native)
    }

    /// [`load`](Self::load) with the blocks' matrices (attention and FFN, 97% of the weights)
    /// held in `format`; embeddings, head, norms and biases stay in `weight_dtype`.
    pub fn load_as(dir: &Path, device: &Device, weight_dtype: DType, format: WeightFormat) -> Result<Self> {
        Self::load_with_adapters(dir, device, weight_dtype, format, &[])
    }

    /// [`load_as`](Self::load_as) with LoRA `adapters` merged into the weights as they load
    /// (each at its strength, in f32 before the weights take their dtype).
    pub fn load_with_adapters(
        dir: &Path,
        device: &Device,
        weight_dtype: DType,
        format: WeightFormat,
        adapters: &[crate::checkpoint::LoraAdapter],
    ) -> Result<Self> {
        let (_, store, config) = open_checkpoint(dir)?;
        if adapters.is_empty() {
            return Self::from_weights_as(config, &store, device, weight_dtype, format);
        }
        let merged = crate::checkpoint::LoraWeights::new(&store, &store, adapters)?;
        Self::from_weights_as(config, &merged, device, weight_dtype, format)
    }

    /// Loads a quantised transformer from a GGUF file (city96's layout: original Wan names), with
    /// the configuration of `config_dir` (its `config.json`, completed from the file's shapes).
    /// Quantised matrices stay quantised on `device` and are dequantised to the compute dtype
    /// one layer at a time; plain tensors are held in `weight_dtype`.
    pub fn load_gguf(file: &Path, config_dir: &Path, device: &Device, weight_dtype: DType) -> Result<Self> {
        Self::load_gguf_with_adapters(file, config_dir, device, weight_dtype, &[])
    }

    /// [`load_gguf`](Self::load_gguf) with LoRA `adapters` merged: the matrices they change are
    /// dequantised and merged in full precision, the others stay quantised.
    pub fn load_gguf_with_adapters(
        file: &Path,
        config_dir: &Path,
        device: &Device,
        weight_dtype: DType,
        adapters: &[crate::checkpoint::LoraAdapter],
    ) -> Result<Self> {
        let gguf = crate::checkpoint::GgufFile::open(file)?;
        let config = TransformerConfig::load(&transformer_dir(config_dir), &gguf)?;
        if adapters.is_empty() {
            return Self::from_weights(config, &gguf, device, weight_dtype);
        }
        let merged = crate::checkpoint::LoraWeights::new(&gguf, &gguf, adapters)?;
        Self::from_weights(config, &merged, device, weight_dtype)
    }

    /// Builds the model from any weight source (an opened checkpoint, random weights) and a config,
    /// checking every tensor's shape.
    pub fn from_weights(
        config: TransformerConfig,
        store: &dyn Weights,
        device: &Device,
        weight_dtype: DType,
    ) -> Result<Self> {
        Self::from_weights_as(config, store, device, weight_dtype, WeightFormat::Native)
    }

    /// [`from_weights`](Self::from_weights) with the blocks' matrices held in `format`.
    pub fn from_weights_as(
        config: TransformerConfig,
        store: &dyn Weights,
        device: &Device,
        weight_dtype: DType,
        format: WeightFormat,
    ) -> Result<Self> {
        let c = &config;
        let dim = c.dim();
        let ld = |prefix: &str, i: usize, o: usize| Linear::load(store, prefix, i, o, weight_dtype, device);
        let [pt, ph, pw] = c.patch_size;
        let patch_in = c.in_channels * pt * ph * pw;
        let patch_weight = store
            .tensor("patch_embedding.weight", &[dim, c.in_channels, pt, ph, pw], weight_dtype, device)?
            .reshape((dim, patch_in))?;
        let patch_bias = store.tensor("patch_embedding.bias", &[dim], weight_dtype, device)?;
        let image_embedding = match c.image_dim {
            Some(image_dim) => {
                Some(ImageEmbedding::load(store, image_dim, dim, c.image_pos_embed_len, weight_dtype, device)?)
            }
            None => None,
        };
        let fps_embedding =
            if c.inject_sample_info { Some(FpsEmbedding::load(store, dim, weight_dtype, device)?) } else { None };
        let blocks = (0..c.num_layers)
            .map(|i| WanBlock::load(store, &format!("blocks.{i}"), c, (weight_dtype, format), device))
            .collect::<Result<Vec<_>>>()?;
        let head = Head {
            modulation: store.tensor("head.modulation", &[1, 2, dim], DType::F32, device)?,
            proj: ld("head.head", dim, c.out_channels * pt * ph * pw)?,
            eps: c.eps,
        };
        let mut model = Self {
            patch_embedding: Linear::new(patch_weight, Some(patch_bias)),
            time_embedding: (ld("time_embedding.0", c.freq_dim, dim)?, ld("time_embedding.2", dim, dim)?),
            time_projection: ld("time_projection.1", dim, 6 * dim)?,
            text_embedding: (ld("text_embedding.0", c.text_dim, dim)?, ld("text_embedding.2", dim, dim)?),
            image_embedding,
            fps_embedding,
            blocks,
            block_home: None,
            head,
            rope: Rope3d::new(c.head_dim, c.rope_max_seq_len)?,
            compute_dtype: if device.is_cpu() { DType::F32 } else { weight_dtype },
            device: device.clone(),
            config,
        };
        // On the CPU activations stay f32, but bf16 weights mean bf16 products, as on a GPU.
        let bf16_products = device.is_cpu() && weight_dtype == DType::BF16;
        for (_, linear) in model.linears_mut() {
            linear.set_bf16_products(bf16_products);
        }
        Ok(model)
    }

    /// Applies LoRA `adapters` beside the weights instead of merging them, replacing any set
    /// before (none restores the model as loaded): a server switches adapters per job without
    /// reloading. Each step then costs the adapters' low-rank products on top.
    pub fn set_adapters(&mut self, adapters: &[crate::checkpoint::LoraAdapter]) -> Result<()> {
        let mut layers = self.linears_mut();
        let shapes = ModuleShapes(
            layers.iter().map(|(name, linear)| (name.clone(), [linear.out_dim(), linear.in_dim()])).collect(),
        );
        let mut updates = crate::checkpoint::layer_adapters(adapters, &shapes)?;
        for (name, linear) in layers.iter_mut() {
            linear.set_adapters(updates.remove(name.as_str()).unwrap_or_default());
        }
        Ok(())
    }

    /// Every dense layer with its canonical module name.
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out: Vec<(String, &mut Linear)> = vec![
            ("patch_embedding".into(), &mut self.patch_embedding),
            ("time_embedding.0".into(), &mut self.time_embedding.0),
            ("time_embedding.2".into(), &mut self.time_embedding.1),
            ("time_projection.1".into(), &mut self.time_projection),
            ("text_embedding.0".into(), &mut self.text_embedding.0),
            ("text_embedding.2".into(), &mut self.text_embedding.1),
            ("head.head".into(), &mut self.head.proj),
        ];
        if let Some(image) = &mut self.image_embedding {
            out.push(("img_emb.proj.1".into(), &mut image.fc1));
            out.push(("img_emb.proj.3".into(), &mut image.fc2));
        }
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let p = format!("blocks.{i}");
            let WanBlock { self_attn, cross_attn, ffn, .. } = block;
            for (kind, proj) in [("self_attn", &mut self_attn.proj), ("cross_attn", &mut cross_attn.proj)] {
                let Projections { q, k, v, o, .. } = proj;
                for (n, linear) in [("q", q), ("k", k), ("v", v), ("o", o)] {
                    out.push((format!("{p}.{kind}.{n}"), linear));
                }
            }
            if let Some((k_img, v_img, _)) = &mut cross_attn.image {
                out.push((format!("{p}.cross_attn.k_img"), k_img));
                out.push((format!("{p}.cross_attn.v_img"), v_img));
            }
            out.push((format!("{p}.ffn.0"), &mut ffn.0));
            out.push((format!("{p}.ffn.2"), &mut ffn.1));
        }
        out
    }

    /// The model's configuration.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype activations are computed in: f32 on the CPU and the weights' dtype on a GPU,
    /// unless set otherwise.
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// Computes in `dtype` (f32, bf16 or f16) from now on, whatever the device. Norms, softmax,
    /// modulation and accumulation stay f32 as on a GPU, so bf16 on the CPU reproduces the GPU's
    /// bf16 arithmetic; `skyreels check` uses it to derive and test the bf16 bounds anywhere.
    pub fn set_compute_dtype(&mut self, dtype: DType) {
        self.compute_dtype = dtype;
    }

    /// Keeps the blocks (97% of the weights) in `home` — host memory — and copies each to the
    /// compute device just before it runs, so the device holds one block's weights at a time
    /// (`--offload blocks`). `None` brings them back to the compute device for good.
    pub fn keep_blocks_on(&mut self, home: Option<&Device>) -> Result<()> {
        let target = home.unwrap_or(&self.device).clone();
        for block in &mut self.blocks {
            *block = block.to_device(&target)?;
        }
        self.block_home = home.cloned();
        Ok(())
    }

    /// Moves the whole model to `device` (`--offload model` parks it in host memory while the
    /// VAE decodes); blocks kept elsewhere by [`keep_blocks_on`](Self::keep_blocks_on) stay there.
    pub fn move_to(&mut self, device: &Device) -> Result<()> {
        let pair = |(a, b): &(Linear, Linear)| -> Result<(Linear, Linear)> {
            Ok((a.to_device(device)?, b.to_device(device)?))
        };
        self.patch_embedding = self.patch_embedding.to_device(device)?;
        self.time_embedding = pair(&self.time_embedding)?;
        self.time_projection = self.time_projection.to_device(device)?;
        self.text_embedding = pair(&self.text_embedding)?;
        if let Some(image) = &self.image_embedding {
            self.image_embedding = Some(image.to_device(device)?);
        }
        if let Some(fps) = &self.fps_embedding {
            self.fps_embedding = Some(fps.to_device(device)?);
        }
        self.head = self.head.to_device(device)?;
        if self.block_home.is_none() {
            for block in &mut self.blocks {
                *block = block.to_device(device)?;
            }
        }
        self.device = device.clone();
        Ok(())
    }

    /// Sets how many latent frames form one causal block of self-attention (1 = full attention).
    pub fn set_causal_block_size(&mut self, frames: usize) -> Result<()> {
        if frames == 0 {
            return Err(invalid_input!("the causal block size must be at least 1"));
        }
        self.config.causal_block_size = frames;
        Ok(())
    }

    /// Predicts the flow `[B, out_channels, F, H, W]` (f32) for one set of inputs.
    pub fn forward(&self, input: &TransformerInput<'_>) -> Result<Tensor> {
        self.forward_traced(input, &mut |_, _| Ok(()))
    }

    /// [`forward`](Self::forward) that also hands every named intermediate to `trace`:
    /// `patch_embedding`, `temb`, `timestep_proj`, `fps_projection`, `text_embedder`,
    /// `image_embedder`, `blocks.{i}.{attn1_out,attn2_out,ffn_out,out}` and `proj_out`.
    pub fn forward_traced(&self, input: &TransformerInput<'_>, trace: &mut Trace<'_>) -> Result<Tensor> {
        self.run(input, trace, None)
    }

    /// [`forward`](Self::forward) with a step cache that may replace the blocks' pass by a
    /// remembered residual; embeddings and the head always run.
    pub fn forward_cached(&self, input: &TransformerInput<'_>, cache: &mut dyn BlockCache) -> Result<Tensor> {
        self.run(input, &mut |_, _| Ok(()), Some(cache))
    }

    /// Number of transformer blocks (one "block pass" each per model call).
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn run(
        &self,
        input: &TransformerInput<'_>,
        trace: &mut Trace<'_>,
        cache: Option<&mut dyn BlockCache>,
    ) -> Result<Tensor> {
        let shape = self.check_input(input)?;
        let x = input.latents.to_device(&self.device)?.to_dtype(self.compute_dtype)?;
        let tokens = self.patch_embedding.forward(&patchify(&x, self.config.patch_size)?)?;
        trace("patch_embedding", &tokens)?;

        let (temb, modulation) = self.time_conditioning(input, shape.batch, trace)?;
        let context = self.embed_context(input, trace)?;
        let image_context = match (&self.image_embedding, input.image_context) {
            (Some(embedding), Some(image)) => {
                let tokens = embedding.forward(&image.to_device(&self.device)?.to_dtype(self.compute_dtype)?)?;
                trace("image_embedder", &tokens)?;
                Some(tokens)
            }
            _ => None,
        };

        let (cos, sin) = match input.frame_positions {
            None => self.rope.tables(shape.grid, &self.device)?,
            Some(positions) if positions.len() == shape.grid[0] => {
                self.rope.tables_at(positions, shape.grid[1], shape.grid[2], &self.device)?
            }
            Some(positions) => {
                return Err(invalid_input!(
                    "{} frame positions given for {} latent frames per patch column",
                    positions.len(),
                    shape.grid[0]
                ))
            }
        };
        let mask = match self.config.causal_block_size {
            1 => AttentionMask::Full,
            block => {
                if shape.grid[0] % block != 0 {
                    return Err(invalid_input!(
                        "{} latent frames per patch column are not a multiple of the causal block size {block}",
                        shape.grid[0]
                    ));
                }
                AttentionMask::BlockCausal { tokens_per_block: block * shape.grid[1] * shape.grid[2] }
            }
        };
        let ctx = BlockContext {
            text: &context,
            image: image_context.as_ref(),
            modulation: &modulation,
            cos: &cos,
            sin: &sin,
            mask,
        };
        let all = 0..self.blocks.len();
        let x = match cache {
            None => self.run_blocks(tokens, all, &ctx, trace)?,
            Some(cache) => {
                let leading = cache.leading_blocks().min(self.blocks.len());
                let x = self.run_blocks(tokens.clone(), 0..leading, &ctx, trace)?;
                let leading_residual =
                    if leading > 0 { Some((x.to_dtype(DType::F32)? - tokens.to_dtype(DType::F32)?)?) } else { None };
                let probe =
                    BlockProbe { tokens: &x, leading_residual: leading_residual.as_ref(), modulation: &modulation };
                match cache.reuse(&probe)? {
                    Some(residual) => (x.to_dtype(DType::F32)? + residual)?.to_dtype(x.dtype())?,
                    None => {
                        let out = self.run_blocks(x.clone(), leading..all.end, &ctx, trace)?;
                        cache.remember((out.to_dtype(DType::F32)? - x.to_dtype(DType::F32)?)?)?;
                        out
                    }
                }
            }
        };
        let out = self.head.forward(&x, &temb)?;
        trace("proj_out", &out)?;
        unpatchify(&out, &shape, self.config.patch_size, self.config.out_channels)?
            .to_dtype(DType::F32)
            .map_err(Into::into)
    }

    /// Runs the blocks `range` over `x`.
    fn run_blocks(
        &self,
        mut x: Tensor,
        range: std::ops::Range<usize>,
        ctx: &BlockContext<'_>,
        trace: &mut Trace<'_>,
    ) -> Result<Tensor> {
        let streamed = self.block_home.is_some();
        for (i, block) in self.blocks.iter().enumerate().take(range.end).skip(range.start) {
            // A streamed block's device copy lives only while it runs.
            let resident;
            let block = if streamed {
                resident = block.to_device(&self.device)?;
                &resident
            } else {
                block
            };
            x = block.forward(&x, ctx, &mut |name, t| trace(&format!("blocks.{i}.{name}"), t))?;
            trace(&format!("blocks.{i}.out"), &x)?;
        }
        Ok(x)
    }

    /// Time embedding `temb [B, Ft, D]` and block modulation `[B, Ft, 6, D]` (f32), fps included.
    fn time_conditioning(
        &self,
        input: &TransformerInput<'_>,
        batch: usize,
        trace: &mut Trace<'_>,
    ) -> Result<(Tensor, Tensor)> {
        let dim = self.config.dim();
        let per_sample = input.timesteps.dims().len() == 1;
        let frames_t = if per_sample { 1 } else { input.timesteps.dims()[1] };
        let sinusoid = timestep_sinusoid(input.timesteps, self.config.freq_dim, &self.device)?;
        let (fc1, fc2) = &self.time_embedding;
        let temb = fc2.forward(&fc1.forward(&sinusoid)?.silu()?)?.reshape((batch, frames_t, dim))?;
        trace("temb", &temb)?;
        let temb = temb.to_dtype(self.compute_dtype)?;
        let projection = self.time_projection.forward(&temb.silu()?)?;
        trace("timestep_proj", &projection)?;
        let mut projection = projection.to_dtype(DType::F32)?;
        if let Some(fps) = &self.fps_embedding {
            let index = input.fps_index.ok_or_else(|| {
                invalid_input!("this model has an fps embedding (DF-1.3B): pass an fps index (0 = 16 fps, 1 = 24 fps)")
            })?;
            let fps_projection = fps.forward(index, self.compute_dtype)?;
            trace("fps_projection", &fps_projection)?;
            projection = projection.broadcast_add(&fps_projection.to_dtype(DType::F32)?.unsqueeze(1)?)?;
        }
        Ok((temb, projection.reshape((batch, frames_t, 6, dim))?))
    }

    fn embed_context(&self, input: &TransformerInput<'_>, trace: &mut Trace<'_>) -> Result<Tensor> {
        let context = input.context.to_device(&self.device)?.to_dtype(self.compute_dtype)?;
        let (fc1, fc2) = &self.text_embedding;
        let embedded = fc2.forward(&gelu_tanh(&fc1.forward(&context)?)?)?;
        trace("text_embedder", &embedded)?;
        Ok(embedded)
    }

    fn check_input(&self, input: &TransformerInput<'_>) -> Result<InputShape> {
        let c = &self.config;
        let dims = input.latents.dims();
        let &[batch, channels, frames, height, width] = dims else {
            return Err(invalid_input!("latents must be [batch, channels, frames, height, width], got shape {dims:?}"));
        };
        if channels != c.in_channels {
            return Err(invalid_input!("the model takes {} latent channels, got {channels}", c.in_channels));
        }
        let [pt, ph, pw] = c.patch_size;
        if frames % pt != 0 || height % ph != 0 || width % pw != 0 || frames == 0 || height == 0 || width == 0 {
            return Err(invalid_input!(
                "latent size {frames}x{height}x{width} (frames x height x width) must be a positive multiple of the patch size {pt}x{ph}x{pw}"
            ));
        }
        let grid = [frames / pt, height / ph, width / pw];
        match input.timesteps.dims() {
            [b] if *b == batch => {}
            [b, f] if *b == batch && *f == grid[0] => {}
            other => {
                return Err(invalid_input!(
                "timesteps must be [{batch}] (one per sample) or [{batch}, {}] (one per latent frame), got {other:?}",
                grid[0]
            ))
            }
        }
        match input.context.dims() {
            [b, l, d] if *b == batch && *d == c.text_dim && *l > 0 => {}
            other => {
                return Err(invalid_input!("text context must be [{batch}, tokens, {}], got {other:?}", c.text_dim))
            }
        }
        if let Some(d) = c.image_dim {
            let image = input
                .image_context
                .ok_or_else(|| invalid_input!("this is an image-to-video model: pass CLIP image tokens"))?;
            let fits = match (image.dims(), c.image_pos_embed_len) {
                ([b, l, e], None) => *b == batch && *e == d && *l > 0,
                // First/last-frame models take both images' tokens, merged into one sequence.
                ([b, l, e], Some(n)) => *e == d && ((*b == batch && *l == n) || (*b == 2 * batch && 2 * l == n)),
                _ => false,
            };
            if !fits {
                let tokens =
                    c.image_pos_embed_len.map_or("tokens".to_string(), |n| format!("{n} (or two images of {})", n / 2));
                return Err(invalid_input!("image context must be [{batch}, {tokens}, {d}], got {:?}", image.dims()));
            }
        }
        if self.fps_embedding.is_some() {
            if let Some(index) = input.fps_index {
                let values = index.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                if values.len() != batch || values.iter().any(|&v| v != 0.0 && v != 1.0) {
                    return Err(invalid_input!(
                        "fps index must hold {batch} values, each 0 (16 fps) or 1 (24 fps), got {values:?}"
                    ));
                }
            }
        }
        Ok(InputShape { batch, grid })
    }
}

/// What `skyreels info` reports about a transformer checkpoint, read without loading weights.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransformerSummary {
    /// Directory holding `config.json` and the shards.
    pub dir: std::path::PathBuf,
    /// What the model is for.
    pub kind: crate::models::TransformerKind,
    /// The released model name recorded in the checkpoint (`model_type.<name>` key), if any.
    pub model_name: Option<String>,
    /// "1.3B" or "14B" when the shape matches a release.
    pub size_class: Option<&'static str>,
    /// Key naming of the checkpoint.
    pub naming: String,
    /// Number of safetensors shards.
    pub shards: usize,
    /// Scalar parameters over all weight tensors.
    pub parameters: usize,
    /// Scalar parameters per stored dtype.
    pub parameters_by_dtype: std::collections::BTreeMap<String, usize>,
    /// The full configuration.
    pub config: TransformerConfig,
    /// The pipeline the folder is for, when it is a whole pipeline (not a bare transformer).
    pub pipeline: Option<crate::checkpoint::PipelineKind>,
    /// The folder's CLIP image encoder (image-to-video models).
    pub image_encoder: Option<crate::models::clip::ImageEncoderSummary>,
}

/// Reads the config and every shard header of a transformer directory (validating that no
/// shard is truncated or corrupted) without loading any weights.
pub fn inspect(dir: &Path) -> Result<TransformerSummary> {
    let root = dir;
    let (dir, store, config) = open_checkpoint(dir)?;
    let pipeline = root.to_str().and_then(|r| crate::checkpoint::resolve_pipeline(r).ok());
    let image_encoder = match pipeline.as_ref().and_then(|p| p.image_encoder.as_ref()) {
        Some(path) => Some(crate::models::clip::inspect_image_encoder(path)?),
        None => None,
    };
    Ok(TransformerSummary {
        pipeline: pipeline.map(|p| p.kind),
        image_encoder,
        kind: config.kind(),
        model_name: store.model_name().map(str::to_string),
        size_class: config.size_class(),
        naming: store.scheme().to_string(),
        shards: store.files().len(),
        parameters: store.parameter_count(),
        parameters_by_dtype: store.parameters_by_dtype(),
        config,
        dir,
    })
}

/// Resolves the transformer directory, opens its shards and reads its config.
fn open_checkpoint(dir: &Path) -> Result<(std::path::PathBuf, WeightStore, TransformerConfig)> {
    let dir = transformer_dir(dir);
    let store = WeightStore::open(&dir, Component::Transformer)?;
    let config = TransformerConfig::load(&dir, &store)?;
    Ok((dir, store, config))
}

/// A diffusers pipeline root keeps the transformer in `transformer/`; other layouts are flat.
fn transformer_dir(dir: &Path) -> std::path::PathBuf {
    let nested = dir.join("transformer");
    if !dir.join("config.json").is_file() && nested.join("config.json").is_file() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// Batch size and patch grid (frames, rows, columns) of one forward pass.
struct InputShape {
    batch: usize,
    grid: [usize; 3],
}

/// `[B, C, F, H, W]` → `[B, f·h·w, C·pt·ph·pw]`, tokens frame-major then row then column, and
/// features ordered like a Conv3d weight `[C, pt, ph, pw]`.
fn patchify(x: &Tensor, [pt, ph, pw]: [usize; 3]) -> Result<Tensor> {
    let (b, c, f, h, w) = x.dims5()?;
    let (f, h, w) = (f / pt, h / ph, w / pw);
    Ok(x.reshape(vec![b, c, f, pt, h, ph, w, pw])?.permute([0, 2, 4, 6, 1, 3, 5, 7])?.reshape((
        b,
        f * h * w,
        c * pt * ph * pw,
    ))?)
}

/// `[B, f·h·w, pt·ph·pw·C]` → `[B, C, f·pt, h·ph, w·pw]` (features ordered (pt, ph, pw, C)).
fn unpatchify(x: &Tensor, shape: &InputShape, [pt, ph, pw]: [usize; 3], channels: usize) -> Result<Tensor> {
    let [f, h, w] = shape.grid;
    Ok(x.reshape(vec![shape.batch, f, h, w, pt, ph, pw, channels])?.permute([0, 7, 1, 4, 2, 5, 3, 6])?.reshape((
        shape.batch,
        channels,
        f * pt,
        h * ph,
        w * pw,
    ))?)
}

/// How a block's weights are held: the load dtype, and the format of its matrices.
type Held = (DType, WeightFormat);

/// What every block needs besides its own input.
struct BlockContext<'a> {
    text: &'a Tensor,
    image: Option<&'a Tensor>,
    modulation: &'a Tensor,
    cos: &'a Tensor,
    sin: &'a Tensor,
    mask: AttentionMask,
}

/// One DiT block: modulated self-attention, cross-attention to text (and image), modulated FFN.
#[derive(Debug)]
struct WanBlock {
    modulation: Tensor,
    self_attn: SelfAttention,
    cross_norm: Option<LayerNorm>,
    cross_attn: CrossAttention,
    ffn: (Linear, Linear),
    eps: f64,
}

impl WanBlock {
    fn load(store: &dyn Weights, p: &str, c: &TransformerConfig, held: Held, device: &Device) -> Result<Self> {
        let dim = c.dim();
        let (dtype, format) = held;
        let cross_norm = if c.cross_attn_norm {
            Some(LayerNorm::load(store, &format!("{p}.norm3"), dim, c.eps, device)?)
        } else {
            None
        };
        Ok(Self {
            modulation: store.tensor(&format!("{p}.modulation"), &[1, 6, dim], DType::F32, device)?,
            self_attn: SelfAttention::load(store, &format!("{p}.self_attn"), c, held, device)?,
            cross_norm,
            cross_attn: CrossAttention::load(store, &format!("{p}.cross_attn"), c, held, device)?,
            ffn: (
                Linear::load_as(store, &format!("{p}.ffn.0"), [dim, c.ffn_dim], dtype, format, device)?,
                Linear::load_as(store, &format!("{p}.ffn.2"), [c.ffn_dim, dim], dtype, format, device)?,
            ),
            eps: c.eps,
        })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            modulation: self.modulation.to_device(device)?,
            self_attn: self.self_attn.to_device(device)?,
            cross_norm: self.cross_norm.as_ref().map(|n| n.to_device(device)).transpose()?,
            cross_attn: self.cross_attn.to_device(device)?,
            ffn: (self.ffn.0.to_device(device)?, self.ffn.1.to_device(device)?),
            eps: self.eps,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &BlockContext<'_>, trace: &mut Trace<'_>) -> Result<Tensor> {
        let dtype = x.dtype();
        // [B, Ft, 6, D] → six [B, Ft, 1, D] tensors: shift/scale/gate for attention, then for the FFN.
        let e = ctx.modulation.broadcast_add(&self.modulation.unsqueeze(0)?)?;
        let part = |i: usize| e.narrow(2, i, 1);
        let (shift_sa, scale_sa, gate_sa) = (part(0)?, part(1)?, part(2)?);
        let (shift_ff, scale_ff, gate_ff) = (part(3)?, part(4)?, part(5)?);

        let h = modulated_layer_norm(x, &shift_sa, &scale_sa, self.eps)?.to_dtype(dtype)?;
        let y = self.self_attn.forward(&h, ctx.cos, ctx.sin, ctx.mask)?;
        trace("attn1_out", &y)?;
        let x = gated_residual(x, &y, &gate_sa)?;

        let h = match &self.cross_norm {
            Some(norm) => norm.forward(&x)?.to_dtype(dtype)?,
            None => x.clone(),
        };
        let y = self.cross_attn.forward(&h, ctx.text, ctx.image)?;
        trace("attn2_out", &y)?;
        let x = (x + y)?;

        let h = modulated_layer_norm(&x, &shift_ff, &scale_ff, self.eps)?.to_dtype(dtype)?;
        let y = gelu_feed_forward(&h, &self.ffn.0, &self.ffn.1)?;
        trace("ffn_out", &y)?;
        gated_residual(&x, &y, &gate_ff)
    }
}

/// The projections every attention has: q, k, v, o and the RMS norms of q and k over the full
/// width.
#[derive(Debug)]
struct Projections {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
}

impl Projections {
    fn load(store: &dyn Weights, p: &str, c: &TransformerConfig, held: Held, device: &Device) -> Result<Self> {
        let dim = c.dim();
        let (dtype, format) = held;
        let ld = |n: &str| Linear::load_as(store, &format!("{p}.{n}"), [dim, dim], dtype, format, device);
        Ok(Self {
            q: ld("q")?,
            k: ld("k")?,
            v: ld("v")?,
            o: ld("o")?,
            norm_q: RmsNorm::load(store, &format!("{p}.norm_q"), dim, c.eps, device)?,
            norm_k: RmsNorm::load(store, &format!("{p}.norm_k"), dim, c.eps, device)?,
        })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            q: self.q.to_device(device)?,
            k: self.k.to_device(device)?,
            v: self.v.to_device(device)?,
            o: self.o.to_device(device)?,
            norm_q: self.norm_q.to_device(device)?,
            norm_k: self.norm_k.to_device(device)?,
        })
    }
}

/// Self-attention with RMS-normalised q/k over the full width and 3D RoPE.
#[derive(Debug)]
struct SelfAttention {
    proj: Projections,
    heads: usize,
}

impl SelfAttention {
    fn load(store: &dyn Weights, p: &str, c: &TransformerConfig, held: Held, device: &Device) -> Result<Self> {
        Ok(Self { proj: Projections::load(store, p, c, held, device)?, heads: c.num_heads })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self { proj: self.proj.to_device(device)?, heads: self.heads })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: AttentionMask) -> Result<Tensor> {
        let p = &self.proj;
        let q = p.norm_q.forward(&p.q.forward(x)?)?;
        let k = p.norm_k.forward(&p.k.forward(x)?)?;
        let v = p.v.forward(x)?;
        let products = p.q.products_dtype(x.dtype());
        p.o.forward(&rotary_attention(&q, &k, &v, self.heads, (cos, sin), mask, products)?)
    }
}

/// Cross-attention from video tokens to text tokens, plus CLIP image tokens for I2V models
/// (two attentions summed before the output projection).
#[derive(Debug)]
struct CrossAttention {
    proj: Projections,
    image: Option<(Linear, Linear, RmsNorm)>,
    heads: usize,
}

impl CrossAttention {
    fn load(store: &dyn Weights, p: &str, c: &TransformerConfig, held: Held, device: &Device) -> Result<Self> {
        let dim = c.dim();
        let (dtype, format) = held;
        let ld = |n: &str| Linear::load_as(store, &format!("{p}.{n}"), [dim, dim], dtype, format, device);
        let image = match c.image_dim {
            Some(_) => Some((
                ld("k_img")?,
                ld("v_img")?,
                RmsNorm::load(store, &format!("{p}.norm_k_img"), dim, c.eps, device)?,
            )),
            None => None,
        };
        Ok(Self { proj: Projections::load(store, p, c, held, device)?, image, heads: c.num_heads })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        let image = match &self.image {
            Some((k, v, norm)) => Some((k.to_device(device)?, v.to_device(device)?, norm.to_device(device)?)),
            None => None,
        };
        Ok(Self { proj: self.proj.to_device(device)?, image, heads: self.heads })
    }

    fn forward(&self, x: &Tensor, text: &Tensor, image: Option<&Tensor>) -> Result<Tensor> {
        let dtype = x.dtype();
        let p = &self.proj;
        let q = p.norm_q.forward(&p.q.forward(x)?)?.to_dtype(dtype)?;
        let scale = 1.0 / ((q.dim(2)? / self.heads) as f64).sqrt();
        let attend = |keys: &Tensor, k_norm: &RmsNorm, k_proj: &Linear, v_proj: &Linear| -> Result<Tensor> {
            let k = k_norm.forward(&k_proj.forward(keys)?)?.to_dtype(dtype)?;
            let v = v_proj.forward(keys)?;
            attention_heads_last(&q, &k, &v, self.heads, scale, AttentionMask::Full, p.q.products_dtype(dtype))
        };
        let mut out = attend(text, &p.norm_k, &p.k, &p.v)?;
        if let (Some((k_img, v_img, norm_k_img)), Some(image)) = (&self.image, image) {
            out = (out + attend(image, norm_k_img, k_img, v_img)?)?;
        }
        p.o.forward(&out)
    }
}

/// Output head: modulated LayerNorm then a projection to `pt·ph·pw·C` features per token.
#[derive(Debug)]
struct Head {
    modulation: Tensor,
    proj: Linear,
    eps: f64,
}

impl Head {
    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self { modulation: self.modulation.to_device(device)?, proj: self.proj.to_device(device)?, eps: self.eps })
    }

    /// `temb [B, Ft, D]` supplies the per-frame shift/scale (the time embedding, not `e0`).
    fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let e = temb.to_dtype(DType::F32)?.unsqueeze(2)?.broadcast_add(&self.modulation.unsqueeze(0)?)?;
        let (shift, scale) = (e.narrow(2, 0, 1)?, e.narrow(2, 1, 1)?);
        let h = modulated_layer_norm(x, &shift, &scale, self.eps)?.to_dtype(x.dtype())?;
        self.proj.forward(&h)
    }
}

/// CLIP image tokens → model width: LayerNorm, Linear, GELU (erf), Linear, LayerNorm.
#[derive(Debug)]
struct ImageEmbedding {
    pos_embed: Option<Tensor>,
    norm_in: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    norm_out: LayerNorm,
}

impl ImageEmbedding {
    fn load(
        store: &dyn Weights,
        image_dim: usize,
        dim: usize,
        pos_len: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        // These LayerNorms use PyTorch's default eps, not the model's.
        const EPS: f64 = 1e-5;
        let pos_embed = match pos_len {
            Some(n) => Some(store.tensor("img_emb.emb_pos", &[1, n, image_dim], DType::F32, device)?),
            None => None,
        };
        Ok(Self {
            pos_embed,
            norm_in: LayerNorm::load(store, "img_emb.proj.0", image_dim, EPS, device)?,
            fc1: Linear::load(store, "img_emb.proj.1", image_dim, image_dim, dtype, device)?,
            fc2: Linear::load(store, "img_emb.proj.3", image_dim, dim, dtype, device)?,
            norm_out: LayerNorm::load(store, "img_emb.proj.4", dim, EPS, device)?,
        })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            pos_embed: self.pos_embed.as_ref().map(|p| p.to_device(device)).transpose()?,
            norm_in: self.norm_in.to_device(device)?,
            fc1: self.fc1.to_device(device)?,
            fc2: self.fc2.to_device(device)?,
            norm_out: self.norm_out.to_device(device)?,
        })
    }

    fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let dtype = image.dtype();
        let image = match &self.pos_embed {
            Some(pos) => {
                let (b, l, e) = image.dims3()?;
                let merged = if l == pos.dims()[1] { image.clone() } else { image.reshape((b / 2, 2 * l, e))? };
                merged.to_dtype(DType::F32)?.broadcast_add(pos)?
            }
            None => image.clone(),
        };
        let h = self.norm_in.forward(&image)?.to_dtype(dtype)?;
        let h = self.fc2.forward(&self.fc1.forward(&h)?.gelu_erf()?)?;
        Ok(self.norm_out.forward(&h)?.to_dtype(dtype)?)
    }
}

/// DF-1.3B's fps conditioning: a 2-row table and an MLP to a modulation offset `[B, 6·D]`.
#[derive(Debug)]
struct FpsEmbedding {
    table: Tensor,
    fc1: Linear,
    fc2: Linear,
}

impl FpsEmbedding {
    fn load(store: &dyn Weights, dim: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self {
            table: store.tensor("fps_embedding.weight", &[2, dim], dtype, device)?,
            fc1: Linear::load(store, "fps_projection.0", dim, dim, dtype, device)?,
            fc2: Linear::load(store, "fps_projection.2", dim, 6 * dim, dtype, device)?,
        })
    }

    fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            table: self.table.to_device(device)?,
            fc1: self.fc1.to_device(device)?,
            fc2: self.fc2.to_device(device)?,
        })
    }

    fn forward(&self, index: &Tensor, dtype: DType) -> Result<Tensor> {
        let index = index.flatten_all()?.to_dtype(DType::U32)?.to_device(self.table.device())?;
        let emb = self.table.index_select(&index, 0)?.to_dtype(dtype)?;
        self.fc2.forward(&self.fc1.forward(&emb)?.silu()?)
    }
}

/// The `[out, in]` shapes of a loaded model's dense layers, by canonical module name: what
/// binding adapters to it needs.
struct ModuleShapes(std::collections::BTreeMap<String, [usize; 2]>);

impl crate::checkpoint::TensorShapes for ModuleShapes {
    fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        let found = match (name.strip_suffix(".weight"), name.strip_suffix(".bias")) {
            (Some(module), _) => self.0.get(module).map(|s| s.to_vec()),
            (_, Some(module)) => self.0.get(module).map(|s| vec![s[0]]),
            _ => None,
        };
        found.ok_or_else(|| invalid_input!("the model has no dense layer named {name}"))
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.tensor_shape(name).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_round_trips_through_unpatchify() -> Result<()> {
        let x = Tensor::arange(0f32, 2. * 3. * 4. * 6. * 10., &Device::Cpu)?.reshape((2, 3, 4, 6, 10))?;
        for patch in [[1, 2, 2], [2, 3, 5], [1, 1, 1]] {
            let tokens = patchify(&x, patch)?;
            let shape = InputShape { batch: 2, grid: [4 / patch[0], 6 / patch[1], 10 / patch[2]] };
            // unpatchify orders features (pt, ph, pw, C); patchify orders them (C, pt, ph, pw).
            let (b, l, _) = tokens.dims3()?;
            let reordered = tokens
                .reshape(vec![b, l, 3, patch[0], patch[1], patch[2]])?
                .permute([0, 1, 3, 4, 5, 2])?
                .reshape((b, l, 3 * patch.iter().product::<usize>()))?;
            let back = unpatchify(&reordered, &shape, patch, 3)?;
            assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, x.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn fps_index_matches_reference_buckets() {
        assert_eq!(fps_index(16), 0);
        assert_eq!(fps_index(24), 1);
        assert_eq!(fps_index(30), 1);
    }
}
