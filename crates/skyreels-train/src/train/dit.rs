//! Stage 2: the umT5 text encoder and the diffusion-forcing DiT, trained together with the
//! flow-matching loss on VAE latents of film-world clips.
//!
//! Per sample: noise levels per latent frame from [`NoiseLevelSampler`] (per block,
//! non-decreasing, with full-sequence and clean-prefix samples), `x_σ = (1−σ)·x₀ + σ·ε`, target
//! `v = ε − x₀`, MSE over the frames that are not clean conditioning. A fraction of prompts is
//! replaced by the empty prompt so classifier-free guidance has an unconditional model.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use skyreels_core::checkpoint::Weights;
use skyreels_core::models::{TransformerConfig, TransformerInput, UmT5Config, UmT5Encoder, WanTransformer3d, WanVae};
use skyreels_core::text::PromptTokenizer;

use super::data::{clip_video, gaussian, latent_subject_coverage};
use super::export::{write_json, write_pipeline_index, write_text_encoder, write_transformer};
use super::params::{save_tensors, ParamStore};
use super::run::{with_prefix, Run, RunOptions, RunSettings};
use crate::noise_levels::NoiseLevelSampler;
use crate::world::{sample_clip, Rng, Split, WorldConfig};

/// What the DiT stage trains, beyond the shared [`RunSettings`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DitStage {
    /// umT5 width (also the DiT's `text_dim`).
    pub text_dim: usize,
    /// umT5 layers.
    pub text_layers: usize,
    /// umT5 heads.
    pub text_heads: usize,
    /// Tokens per prompt (with `</s>` and padding), as generation will use.
    pub text_len: usize,
    /// DiT width.
    pub dim: usize,
    /// DiT heads.
    pub heads: usize,
    /// DiT blocks.
    pub layers: usize,
    /// DiT feed-forward width.
    pub ffn_dim: usize,
    /// Sinusoidal timestep features.
    pub freq_dim: usize,
    /// Clips in the (pre-encoded) training set.
    pub clips: usize,
    /// Samples per step.
    pub batch: usize,
    /// Latent frames per causal block of the noise levels.
    pub causal_block: usize,
    /// Noise-level sampling.
    pub noise: NoiseLevelSampler,
    /// Probability of training on the empty prompt.
    pub uncond_probability: f32,
    /// Extra loss weight on latent cells that show a subject: a cell's weight is
    /// `1 + subject_weight × coverage`. The subjects are a few cells of each frame, so with
    /// plain MSE the backdrop dominates the loss.
    #[serde(default)]
    pub subject_weight: f32,
    /// Shapes the subject weight over the noise level σ: a cell weighs
    /// `1 + subject_weight × σ^noise_power × (1 − σ)^clean_power × coverage`. A weight that
    /// depends on the data tilts the learned mean towards the subject wherever the model is
    /// unsure whether a cell shows one. At high noise that tilt is what makes a sample commit to
    /// a subject at all; near σ = 0 it only makes the outline grow by the cell the model is
    /// unsure about. 0 and 0 keep the weight constant.
    #[serde(default)]
    pub subject_weight_noise_power: f32,
    /// See [`DitStage::subject_weight_noise_power`].
    #[serde(default)]
    pub subject_weight_clean_power: f32,
    /// Spatial patch size of the DiT (Wan uses 2; 1 gives one token per latent cell).
    #[serde(default = "default_patch")]
    pub patch: usize,
    /// The world clips come from.
    pub world: WorldConfig,
}

impl Default for DitStage {
    fn default() -> Self {
        Self {
            text_dim: 64,
            text_layers: 2,
            text_heads: 4,
            text_len: 32,
            dim: 128,
            heads: 4,
            layers: 4,
            ffn_dim: 384,
            freq_dim: 64,
            clips: 3000,
            batch: 8,
            causal_block: 1,
            noise: NoiseLevelSampler::default(),
            uncond_probability: 0.1,
            subject_weight: 0.0,
            subject_weight_noise_power: 0.0,
            subject_weight_clean_power: 0.0,
            patch: default_patch(),
            world: WorldConfig::default(),
        }
    }
}

fn default_patch() -> usize {
    2
}

impl DitStage {
    /// The text encoder's structure for a vocabulary of `vocab_size`.
    pub fn text_config(&self, vocab_size: usize) -> UmT5Config {
        UmT5Config {
            vocab_size,
            d_model: self.text_dim,
            d_kv: self.text_dim / self.text_heads,
            num_heads: self.text_heads,
            d_ff: 2 * self.text_dim,
            num_layers: self.text_layers,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
        }
    }

    /// The subject weight at noise level `sigma` (see [`DitStage::subject_weight_noise_power`]).
    pub fn subject_weight_at(&self, sigma: f32) -> f32 {
        self.subject_weight
            * sigma.powf(self.subject_weight_noise_power)
            * (1.0 - sigma).powf(self.subject_weight_clean_power)
    }

    /// The DiT's structure (a DF model with the 16/24 fps embedding, like DF-1.3B).
    pub fn transformer_config(&self, z_dim: usize) -> TransformerConfig {
        TransformerConfig {
            patch_size: [1, self.patch, self.patch],
            num_heads: self.heads,
            head_dim: self.dim / self.heads,
            in_channels: z_dim,
            out_channels: z_dim,
            text_dim: self.text_dim,
            freq_dim: self.freq_dim,
            ffn_dim: self.ffn_dim,
            num_layers: self.layers,
            cross_attn_norm: true,
            eps: 1e-6,
            image_dim: None,
            image_pos_embed_len: None,
            inject_sample_info: true,
            rope_max_seq_len: 1024,
            causal_block_size: 1,
        }
    }
}

/// Parameter names of one model inside a shared store get a prefix, so the text encoder's and
/// the DiT's `blocks.N…` cannot collide.
struct Prefixed<'a> {
    store: &'a dyn Weights,
    prefix: &'static str,
}

impl Weights for Prefixed<'_> {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> skyreels_core::Result<Tensor> {
        self.store.tensor(&format!("{}{name}", self.prefix), shape, dtype, device)
    }
}

const TEXT: &str = "text_encoder.";
const DIT: &str = "transformer.";

/// The training set: normalised latents `[N, z, T, h, w]`, the share of each latent cell that
/// shows a subject `[N, 1, T, h, w]` and the prompt of each clip.
struct Dataset {
    latents: Tensor,
    coverage: Tensor,
    prompts: Vec<String>,
}

/// World seed of the first training clip; clip `i` uses this + `i`.
const FIRST_CLIP_SEED: u64 = 0x0D17_0000;

/// Encodes `stage.clips` training clips with the VAE, caching the result in `dir` (it is a pure
/// function of the world, the clip count and the VAE, so a resumed run reuses it).
fn dataset(dir: &Path, stage: &DitStage, vae: &WanVae, quiet: bool) -> anyhow::Result<Dataset> {
    let tensors_path = dir.join("dataset.safetensors");
    let prompts_path = dir.join("dataset.json");
    if let Some(cached) = cached_dataset(&tensors_path, &prompts_path, stage.clips) {
        if encodes_like(&cached, stage, vae)? {
            return Ok(cached);
        }
    }
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(stage.clips as u64) };
    bar.set_message("encoding the training clips");
    let mut latents = Vec::with_capacity(stage.clips);
    let mut coverage = Vec::with_capacity(stage.clips);
    let mut prompts = Vec::with_capacity(stage.clips);
    let (t, s) = (vae.config().temporal_factor(), vae.config().spatial_factor());
    for i in 0..stage.clips {
        let clip = sample_clip(FIRST_CLIP_SEED + i as u64, &stage.world, Split::Train);
        let video = clip_video(&clip, 0, clip.frames(), &Device::Cpu)?;
        latents.push(vae.encode_latents(&video)?);
        coverage.push(latent_subject_coverage(&clip, t, s)?);
        prompts.push(clip.prompt());
        bar.inc(1);
    }
    bar.finish_and_clear();
    let latents = Tensor::cat(&latents, 0)?;
    let coverage = Tensor::cat(&coverage, 0)?;
    save_tensors(
        &tensors_path,
        [("latents".to_string(), latents.clone()), ("subject_coverage".to_string(), coverage.clone())],
    )?;
    write_json(&prompts_path, &serde_json::to_value(&prompts)?)?;
    Ok(Dataset { latents, coverage, prompts })
}

/// Whether `cached` came from this VAE and world: its first clip, encoded again, must match (a
/// resumed run given another `--vae` would otherwise train on the old VAE's latents).
fn encodes_like(cached: &Dataset, stage: &DitStage, vae: &WanVae) -> anyhow::Result<bool> {
    let clip = sample_clip(FIRST_CLIP_SEED, &stage.world, Split::Train);
    let fresh = vae.encode_latents(&clip_video(&clip, 0, clip.frames(), &Device::Cpu)?)?;
    let stored = cached.latents.narrow(0, 0, 1)?;
    if fresh.dims() != stored.dims() || cached.prompts[0] != clip.prompt() {
        return Ok(false);
    }
    let difference = (fresh - &stored)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let scale = stored.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(difference <= 1e-4 * scale)
}

/// The encoded training set from an earlier run, if both files are there, readable and of
/// `clips` clips; anything else (say, files cut short by a crash) means encoding again.
fn cached_dataset(tensors_path: &Path, prompts_path: &Path, clips: usize) -> Option<Dataset> {
    let prompts: Vec<String> = serde_json::from_slice(&std::fs::read(prompts_path).ok()?).ok()?;
    let mut tensors = candle_core::safetensors::load(tensors_path, &Device::Cpu).ok()?;
    let (latents, coverage) = (tensors.remove("latents")?, tensors.remove("subject_coverage")?);
    let whole = prompts.len() == clips && latents.dim(0).ok()? == clips && coverage.dim(0).ok()? == clips;
    whole.then_some(Dataset { latents, coverage, prompts })
}

/// Token ids and masks `[B, text_len]` for a batch of prompts.
fn tokenize(tokenizer: &PromptTokenizer, prompts: &[&str], len: usize) -> anyhow::Result<(Tensor, Tensor)> {
    let mut ids = Vec::with_capacity(prompts.len() * len);
    let mut mask = Vec::with_capacity(prompts.len() * len);
    for prompt in prompts {
        let t = tokenizer.encode(prompt, len)?;
        ids.extend(t.ids);
        mask.extend(t.mask);
    }
    let shape = (prompts.len(), len);
    Ok((Tensor::from_vec(ids, shape, &Device::Cpu)?, Tensor::from_vec(mask, shape, &Device::Cpu)?))
}

/// Everything a DiT training step needs besides the parameters.
struct Trainer<'a> {
    stage: &'a DitStage,
    data: Dataset,
    tokenizer: PromptTokenizer,
    text: UmT5Config,
    dit: TransformerConfig,
}

impl Trainer<'_> {
    /// The flow-matching loss of one random batch.
    fn loss(&self, params: &ParamStore, rng: &mut Rng) -> anyhow::Result<Tensor> {
        let s = self.stage;
        let device = Device::Cpu;
        let frames = self.data.latents.dim(2)?;
        let mut picks = Vec::with_capacity(s.batch);
        let mut prompts = Vec::with_capacity(s.batch);
        let mut sigmas = Vec::with_capacity(s.batch * frames);
        let mut timesteps = Vec::with_capacity(s.batch * frames);
        let mut weights = Vec::with_capacity(s.batch * frames);
        let mut subject_weights = Vec::with_capacity(s.batch * frames);
        for _ in 0..s.batch {
            let i = rng.below(self.data.prompts.len());
            picks.push(i as u32);
            prompts.push(if rng.unit() < s.uncond_probability { "" } else { self.data.prompts[i].as_str() });
            let levels = s.noise.sample(rng, frames, s.causal_block);
            sigmas.extend(levels.sigmas.iter().copied());
            timesteps.extend(levels.timesteps.iter().copied());
            weights.extend((0..frames).map(|f| if f < levels.prefix { 0f32 } else { 1.0 }));
            subject_weights.extend(levels.sigmas.iter().map(|&sigma| s.subject_weight_at(sigma)));
        }
        let picks = Tensor::new(picks.as_slice(), &device)?;
        let x0 = self.data.latents.index_select(&picks, 0)?;
        let noise = gaussian(rng, x0.dims())?;
        let per_frame = |v: Vec<f32>| Tensor::from_vec(v, (s.batch, 1, frames, 1, 1), &device);
        let sigma = per_frame(sigmas)?;
        let xt = (x0.broadcast_mul(&(1.0 - &sigma)?)? + noise.broadcast_mul(&sigma)?)?;
        let target = (&noise - &x0)?;

        let (ids, mask) = tokenize(&self.tokenizer, &prompts, s.text_len)?;
        let encoder = UmT5Encoder::from_weights(
            self.text.clone(),
            &Prefixed { store: params, prefix: TEXT },
            &device,
            DType::F32,
        )?;
        let context = encoder.encode(&ids, &mask)?;
        let dit = WanTransformer3d::from_weights(
            self.dit.clone(),
            &Prefixed { store: params, prefix: DIT },
            &device,
            DType::F32,
        )?;
        let t = Tensor::from_vec(timesteps, (s.batch, frames), &device)?;
        let fps = Tensor::zeros(s.batch, DType::U32, &device)?;
        let prediction = dit.forward(&TransformerInput {
            latents: &xt,
            timesteps: &t,
            context: &context,
            image_context: None,
            fps_index: Some(&fps),
            frame_positions: None,
        })?;
        // Weights per latent cell, shared by its channels; the mean is over the weights, so the
        // loss keeps its scale whatever the subject weight.
        let coverage = self.data.coverage.index_select(&picks, 0)?;
        let weight = per_frame(weights)?.broadcast_mul(&(coverage.broadcast_mul(&per_frame(subject_weights)?)? + 1.0)?)?;
        let squared = (prediction - target)?.sqr()?.broadcast_mul(&weight)?;
        let denominator = (weight.sum_all()?.to_scalar::<f32>()? as f64 * x0.dim(1)? as f64).max(1.0);
        Ok((squared.sum_all()? / denominator)?)
    }
}

/// Where stage 2 finds the outputs of the earlier stages.
pub struct DitInputs<'a> {
    /// The exported VAE folder (`<vae run>/export`).
    pub vae: &'a Path,
    /// The word-level `tokenizer.json`.
    pub tokenizer: &'a Path,
}

/// Trains the text encoder and DiT in `dir` (fresh, resumed, or from another run's weights with
/// `options.init_from`), then exports the whole pipeline to `dir/export`.
pub fn train_dit(
    dir: &Path,
    inputs: &DitInputs<'_>,
    stage: &DitStage,
    settings: RunSettings,
    options: &RunOptions,
) -> anyhow::Result<()> {
    if stage.heads == 0 || stage.text_heads == 0 || !stage.dim.is_multiple_of(stage.heads) || !stage.text_dim.is_multiple_of(stage.text_heads) || stage.batch == 0 || stage.clips == 0 {
        bail!("the head counts must be positive and divide the widths, and --batch and --clips must be positive");
    }
    if !(stage.subject_weight.is_finite() && stage.subject_weight >= 0.0) {
        bail!("--subject-weight must be a finite number ≥ 0");
    }
    for power in [stage.subject_weight_noise_power, stage.subject_weight_clean_power] {
        if !(power.is_finite() && power >= 0.0) {
            bail!("the subject weight's powers must be finite numbers ≥ 0");
        }
    }
    if stage.patch == 0 {
        bail!("--patch must be at least 1");
    }
    for (name, p) in [("--sync-probability", stage.noise.sync_probability), ("--prefix-probability", stage.noise.prefix_probability)] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{name} must be between 0 and 1, not {p}");
        }
    }
    let device = Device::Cpu;
    let vae = WanVae::load(inputs.vae, &device).with_context(|| format!("cannot load the VAE {}", inputs.vae.display()))?;
    let tokenizer = PromptTokenizer::load(inputs.tokenizer)?;
    let text = stage.text_config(tokenizer.vocab_size());
    let dit = stage.transformer_config(vae.config().z_dim);
    let mut run = Run::start(dir, "dit", serde_json::to_value(stage)?, settings, options, |params| {
        UmT5Encoder::from_weights(text.clone(), &Prefixed { store: params, prefix: TEXT }, &device, DType::F32)?;
        WanTransformer3d::from_weights(dit.clone(), &Prefixed { store: params, prefix: DIT }, &device, DType::F32)?;
        Ok(())
    })?;
    let trainer = Trainer { stage, data: dataset(dir, stage, &vae, options.quiet)?, tokenizer, text, dit };
    while !run.done() {
        let loss = trainer.loss(&run.params, &mut run.rng)?;
        run.apply(&loss, &[])?;
    }
    run.finish();
    export_pipeline(&run, &trainer, inputs, &dir.join("export"))
}

/// Writes a complete diffusers-layout pipeline: the trained text encoder and DiT, the VAE and
/// tokenizer they were trained with, the scheduler and the demo's generation defaults.
fn export_pipeline(run: &Run, trainer: &Trainer<'_>, inputs: &DitInputs<'_>, out: &Path) -> anyhow::Result<()> {
    let weights = run.ema_weights();
    write_text_encoder(&out.join("text_encoder"), &trainer.text, &with_prefix(weights, TEXT))?;
    write_transformer(&out.join("transformer"), &trainer.dit, &with_prefix(weights, DIT))?;
    std::fs::create_dir_all(out.join("tokenizer"))?;
    std::fs::copy(inputs.tokenizer, out.join("tokenizer/tokenizer.json"))?;
    std::fs::create_dir_all(out.join("vae"))?;
    for file in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(inputs.vae.join(file), out.join("vae").join(file))
            .with_context(|| format!("cannot copy {}", inputs.vae.join(file).display()))?;
    }
    write_pipeline_index(out, 3.0)?;
    let world = &trainer.stage.world;
    let defaults = serde_json::json!({
        "about": "The skyreels-rs demo model, trained from scratch on the synthetic film world by `skyreels train`.",
        "generation_defaults": {
            "height": world.height,
            "width": world.width,
            "fps": world.fps,
            // A 5-second clip unless --frames says otherwise.
            "frames": 5 * world.fps as usize + 1,
            "base_frames": world.frames,
            "overlap_history": world.frames / 2 + 1,
            "steps": 20,
            "shift": 3.0,
            "guidance": 4.0,
            "text_length": trainer.stage.text_len,
            "negative_prompt": "",
        }
    });
    write_json(&out.join("skyreels.json"), &defaults)?;
    // Check the export loads through the same code as any released checkpoint.
    WanTransformer3d::load(&out.join("transformer"), &Device::Cpu, DType::F32)?;
    UmT5Encoder::load(&out.join("text_encoder"), &Device::Cpu, DType::F32)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_training_set_is_used_only_when_whole() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("skyreels-dataset-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (tensors, prompts) = (dir.join("dataset.safetensors"), dir.join("dataset.json"));
        assert!(cached_dataset(&tensors, &prompts, 2).is_none(), "no files");
        save_tensors(
            &tensors,
            [
                ("latents".to_string(), Tensor::zeros((2, 4, 3, 2, 2), DType::F32, &Device::Cpu)?),
                ("subject_coverage".to_string(), Tensor::zeros((2, 1, 3, 2, 2), DType::F32, &Device::Cpu)?),
            ],
        )?;
        write_json(&prompts, &serde_json::json!(["a red circle", "a blue square"]))?;
        assert_eq!(cached_dataset(&tensors, &prompts, 2).map(|d| d.prompts.len()), Some(2));
        assert!(cached_dataset(&tensors, &prompts, 3).is_none(), "another clip count");
        std::fs::write(&prompts, "[\"a red ci")?;
        assert!(cached_dataset(&tensors, &prompts, 2).is_none(), "prompts cut short");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn a_cached_training_set_from_another_vae_is_encoded_again() -> anyhow::Result<()> {
        use skyreels_core::checkpoint::RandomWeights;
        let dir = std::env::temp_dir().join(format!("skyreels-dataset-vae-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let world = WorldConfig { width: 16, height: 16, frames: 5, ..WorldConfig::default() };
        let stage = DitStage { clips: 2, world, ..DitStage::default() };
        let config = super::super::vae::VaeStage { base_dim: 4, ..Default::default() }.vae_config();
        let first = WanVae::from_weights(config.clone(), &RandomWeights::new(1), &Device::Cpu)?;
        let second = WanVae::from_weights(config, &RandomWeights::new(2), &Device::Cpu)?;
        let encoded = dataset(&dir, &stage, &first, true)?;
        assert!(encodes_like(&encoded, &stage, &first)?);
        assert!(!encodes_like(&encoded, &stage, &second)?);
        let again = dataset(&dir, &stage, &second, true)?;
        let changed = (&again.latents - &encoded.latents)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(changed > 0.0, "the second VAE's latents replace the first's");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn the_subject_weight_follows_its_noise_and_clean_powers() {
        let stage = |noise, clean| DitStage { subject_weight: 8.0, subject_weight_noise_power: noise, subject_weight_clean_power: clean, ..DitStage::default() };
        assert_eq!(stage(0.0, 0.0).subject_weight_at(0.9), 8.0, "constant by default");
        assert!((stage(2.0, 0.0).subject_weight_at(0.5) - 2.0).abs() < 1e-6);
        assert!((stage(0.0, 1.0).subject_weight_at(0.75) - 2.0).abs() < 1e-6);
        assert_eq!(stage(2.0, 0.0).subject_weight_at(0.0), 0.0, "noise-only weight vanishes on clean frames");
        assert_eq!(stage(0.0, 2.0).subject_weight_at(1.0), 0.0, "clean-only weight vanishes on pure noise");
    }

    #[test]
    fn the_head_count_sets_the_transformer_head_size() {
        let config = DitStage { heads: 2, ..DitStage::default() }.transformer_config(16);
        assert_eq!((config.num_heads, config.head_dim), (2, 64));
    }

    #[test]
    fn the_patch_size_reaches_the_transformer() {
        assert_eq!(DitStage::default().transformer_config(16).patch_size, [1, 2, 2]);
        assert_eq!(DitStage { patch: 1, ..DitStage::default() }.transformer_config(16).patch_size, [1, 1, 1]);
        // Runs saved before the field existed keep Wan's 2×2 patches.
        let mut old = serde_json::to_value(DitStage::default()).unwrap();
        old.as_object_mut().unwrap().remove("patch");
        assert_eq!(serde_json::from_value::<DitStage>(old).unwrap().patch, 2);
    }
}
