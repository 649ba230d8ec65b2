//! Stage 2: the umT5 text encoder and the diffusion-forcing DiT, trained together with the
//! flow-matching loss on VAE latents of film-world clips.
//!
//! Per sample: noise levels per latent frame from [`NoiseLevelSampler`] (per block,
//! non-decreasing, with full-sequence and clean-prefix samples), `x_σ = (1−σ)·x₀ + σ·ε`, target
//! `v = ε − x₀`, MSE over the frames that are not clean conditioning. A fraction of prompts is
//! replaced by the empty prompt so classifier-free guidance has an unconditional model.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use skyreels_core::checkpoint::Weights;
use skyreels_core::models::{TransformerConfig, TransformerInput, UmT5Config, UmT5Encoder, WanTransformer3d, WanVae};
use skyreels_core::text::PromptTokenizer;

use super::data::{clip_video, gaussian, latent_subject_coverage};
use super::export::{write_json, write_pipeline_index, write_text_encoder, write_transformer};
use super::parallel::{sum_gradients, Workers};
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

    /// Model FLOPs of one training sample, forward and backward (3× the forward: the backward
    /// pass computes two matrix products per forward one), for latents of `z_dim` channels on a
    /// `[frames, height, width]` latent grid. Counted: every matrix product of the umT5 encoder
    /// and the DiT (projections, attention scores and values, feed-forward, patch embedding and
    /// head), at 2 FLOPs per multiply-add; the elementwise work (norms, softmax, activations)
    /// and the per-frame time embedding are left out, as is usual.
    pub fn training_flops(&self, z_dim: usize, [frames, height, width]: [usize; 3]) -> f64 {
        let f = |x: usize| x as f64;
        let (d, t, dt) = (f(self.dim), f(self.text_len), f(self.text_dim));
        let tokens = f(frames * (height / self.patch) * (width / self.patch));
        let patch_features = f(z_dim * self.patch * self.patch);
        let self_attention = 4.0 * tokens * d * d + 2.0 * tokens * tokens * d;
        let cross_attention = 2.0 * tokens * d * d + 2.0 * t * d * d + 2.0 * tokens * t * d;
        let feed_forward = 2.0 * tokens * d * f(self.ffn_dim);
        let blocks = f(self.layers) * (self_attention + cross_attention + feed_forward);
        let embeddings = 2.0 * tokens * patch_features * d + t * (dt * d + d * d);
        let text_dff = 2.0 * dt;
        let text = f(self.text_layers) * (4.0 * t * dt * dt + 2.0 * t * t * dt + 3.0 * t * dt * text_dff);
        let forward_macs = blocks + embeddings + text;
        3.0 * 2.0 * forward_macs
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
fn dataset(dir: &Path, stage: &DitStage, vae: &WanVae, workers: &Workers, quiet: bool) -> anyhow::Result<Dataset> {
    let tensors_path = dir.join("dataset.safetensors");
    let prompts_path = dir.join("dataset.json");
    if let Some(cached) = cached_dataset(&tensors_path, &prompts_path, stage.clips) {
        if encodes_like(&cached, stage, vae)? {
            return Ok(cached);
        }
    }
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(stage.clips as u64) };
    bar.set_message("encoding the training clips");
    let (t, s) = (vae.config().temporal_factor(), vae.config().spatial_factor());
    let indices: Vec<usize> = (0..stage.clips).collect();
    let encoded = workers.map(&indices, |&i| {
        let clip = sample_clip(FIRST_CLIP_SEED + i as u64, &stage.world, Split::Train);
        let video = clip_video(&clip, 0, clip.frames(), &Device::Cpu)?;
        let encoded = (vae.encode_latents(&video)?, latent_subject_coverage(&clip, t, s)?, clip.prompt());
        bar.inc(1);
        Ok(encoded)
    })?;
    bar.finish_and_clear();
    let mut latents = Vec::with_capacity(stage.clips);
    let mut coverage = Vec::with_capacity(stage.clips);
    let mut prompts = Vec::with_capacity(stage.clips);
    for (l, c, p) in encoded {
        latents.push(l);
        coverage.push(c);
        prompts.push(p);
    }
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

/// Everything random in one step, drawn in the same order whatever the number of workers.
struct Draw {
    /// Training clips `[B]`.
    picks: Tensor,
    /// Their prompts, or the empty prompt for the unconditional share.
    prompts: Vec<String>,
    /// Noise level per latent frame `[B, 1, F, 1, 1]`.
    sigma: Tensor,
    /// The same as timesteps `[B, F]`.
    timesteps: Tensor,
    /// Loss weight per latent cell `[B, 1, F, h, w]`: 0 on clean conditioning frames.
    weight: Tensor,
    /// `ε [B, z, F, h, w]`.
    noise: Tensor,
    /// Sum of the weights times the channels: what the loss is divided by.
    denominator: f64,
}

impl Trainer<'_> {
    /// Draws one step's clips, prompts, noise levels and noise from `rng`.
    fn draw(&self, rng: &mut Rng) -> anyhow::Result<Draw> {
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
            prompts.push(if rng.unit() < s.uncond_probability { String::new() } else { self.data.prompts[i].clone() });
            let levels = s.noise.sample(rng, frames, s.causal_block);
            sigmas.extend(levels.sigmas.iter().copied());
            timesteps.extend(levels.timesteps.iter().copied());
            weights.extend((0..frames).map(|f| if f < levels.prefix { 0f32 } else { 1.0 }));
            subject_weights.extend(levels.sigmas.iter().map(|&sigma| s.subject_weight_at(sigma)));
        }
        let picks = Tensor::new(picks.as_slice(), &device)?;
        let mut shape = self.data.latents.dims().to_vec();
        shape[0] = s.batch;
        let noise = gaussian(rng, &shape)?;
        let per_frame = |v: Vec<f32>| Tensor::from_vec(v, (s.batch, 1, frames, 1, 1), &device);
        // Weights per latent cell, shared by its channels; the mean is over the weights, so the
        // loss keeps its scale whatever the subject weight.
        let coverage = self.data.coverage.index_select(&picks, 0)?;
        let weight =
            per_frame(weights)?.broadcast_mul(&(coverage.broadcast_mul(&per_frame(subject_weights)?)? + 1.0)?)?;
        let denominator = (weight.sum_all()?.to_scalar::<f32>()? as f64 * shape[1] as f64).max(1.0);
        Ok(Draw {
            picks,
            prompts,
            sigma: per_frame(sigmas)?,
            timesteps: Tensor::from_vec(timesteps, (s.batch, frames), &device)?,
            weight,
            noise,
            denominator,
        })
    }

    /// The flow-matching loss of the samples `rows` of `draw`, divided by the whole batch's
    /// denominator: the shards' losses add up to the batch's.
    fn shard_loss(&self, params: &dyn Weights, draw: &Draw, rows: std::ops::Range<usize>) -> anyhow::Result<Tensor> {
        let device = Device::Cpu;
        let (start, len) = (rows.start, rows.len());
        let x0 = self.data.latents.index_select(&draw.picks.narrow(0, start, len)?, 0)?;
        let noise = draw.noise.narrow(0, start, len)?;
        let sigma = draw.sigma.narrow(0, start, len)?;
        let xt = (x0.broadcast_mul(&(1.0 - &sigma)?)? + noise.broadcast_mul(&sigma)?)?;
        let target = (&noise - &x0)?;

        let prompts: Vec<&str> = draw.prompts[rows].iter().map(String::as_str).collect();
        let (ids, mask) = tokenize(&self.tokenizer, &prompts, self.stage.text_len)?;
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
        let fps = Tensor::zeros(len, DType::U32, &device)?;
        let prediction = dit.forward(&TransformerInput {
            latents: &xt,
            timesteps: &draw.timesteps.narrow(0, start, len)?,
            context: &context,
            image_context: None,
            fps_index: Some(&fps),
            frame_positions: None,
        })?;
        let squared = (prediction - target)?.sqr()?.broadcast_mul(&draw.weight.narrow(0, start, len)?)?;
        Ok((squared.sum_all()? / draw.denominator)?)
    }

    /// One step's loss and gradients: the batch drawn from `rng`, its shards' forward and
    /// backward passes run by `workers`, their gradients summed.
    fn step(&self, params: &ParamStore, rng: &mut Rng, workers: &Workers) -> anyhow::Result<(f64, GradStore)> {
        let draw = self.draw(rng)?;
        let vars = params.vars();
        if workers.count() == 1 {
            let loss = self.shard_loss(params, &draw, 0..self.stage.batch)?;
            return Ok((loss.to_scalar::<f32>()? as f64, loss.backward()?));
        }
        let shared = params.for_workers();
        let shards = workers.map_shards(self.stage.batch, |rows| {
            let loss = self.shard_loss(&shared, &draw, rows)?;
            Ok((loss.to_scalar::<f32>()? as f64, loss.backward()?))
        })?;
        let value = shards.iter().map(|(v, _)| v).sum();
        Ok((value, sum_gradients(shards.into_iter().map(|(_, g)| g).collect(), &vars)?))
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
    let (trainer, workers) = prepare(dir, inputs, stage, options)?;
    let mut run = start_run(dir, &trainer, settings, options)?;
    while !run.done() {
        let (loss, grads) = trainer.step(&run.params, &mut run.rng, &workers)?;
        run.apply_gradients(loss, grads, &[])?;
    }
    run.finish();
    export_pipeline(&run, &trainer, inputs, &dir.join("export"))
}

/// What [`bench_dit`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepBench {
    /// Samples per step.
    pub batch: usize,
    /// Data-parallel workers.
    pub workers: usize,
    /// DiT tokens per sample.
    pub tokens_per_sample: usize,
    /// Timed steps (after two untimed ones).
    pub steps: usize,
    /// Median seconds per step: forward, backward, clipping, AdamW and EMA.
    pub step_seconds: f64,
    /// `batch / step_seconds`.
    pub samples_per_second: f64,
    /// Model FLOPs of one sample's forward and backward pass ([`DitStage::training_flops`]).
    pub gflop_per_sample: f64,
    /// Model FLOPs per second: what the step achieves of the machine's arithmetic.
    pub effective_gflops: f64,
}

/// Clips the training-step benchmark encodes at most (the step's cost does not depend on them).
pub const BENCH_CLIPS: usize = 64;

/// Times `steps` training steps of `stage` (after two untimed ones) on the first
/// [`BENCH_CLIPS`] clips. The encoded clips are cached in `dir` like a run's; the run itself is
/// made in `dir/bench` and removed afterwards.
pub fn bench_dit(
    dir: &Path,
    inputs: &DitInputs<'_>,
    stage: &DitStage,
    settings: RunSettings,
    options: &RunOptions,
    steps: usize,
) -> anyhow::Result<StepBench> {
    if steps == 0 {
        bail!("the benchmark needs at least one timed step");
    }
    let stage = DitStage { clips: stage.clips.min(BENCH_CLIPS), ..stage.clone() };
    let (trainer, workers) = prepare(dir, inputs, &stage, options)?;
    let run_dir = dir.join("bench");
    if run_dir.exists() {
        std::fs::remove_dir_all(&run_dir)?;
    }
    let settings = RunSettings { steps: steps as u64 + 2, checkpoint_every: u64::MAX, ..settings };
    let options = RunOptions { resume: false, init_from: None, ..options.clone() };
    let mut run = start_run(&run_dir, &trainer, settings, &options)?;
    let mut times = Vec::with_capacity(steps);
    for i in 0..steps + 2 {
        let started = std::time::Instant::now();
        let (loss, grads) = trainer.step(&run.params, &mut run.rng, &workers)?;
        run.apply_gradients(loss, grads, &[])?;
        if i >= 2 {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    run.finish();
    drop(run);
    std::fs::remove_dir_all(&run_dir)?;
    times.sort_by(f64::total_cmp);
    let step_seconds = times[times.len() / 2];
    let &[_, z, frames, h, w] = trainer.data.latents.dims() else { bail!("the encoded clips are not 5-D") };
    let flops = stage.training_flops(z, [frames, h, w]);
    Ok(StepBench {
        batch: stage.batch,
        workers: workers.count(),
        tokens_per_sample: frames * (h / stage.patch) * (w / stage.patch),
        steps,
        step_seconds,
        samples_per_second: stage.batch as f64 / step_seconds,
        gflop_per_sample: flops / 1e9,
        effective_gflops: flops * stage.batch as f64 / step_seconds / 1e9,
    })
}

/// Checks the stage, loads the VAE and tokenizer, and encodes (or reads back) the training set.
fn prepare<'a>(
    dir: &Path,
    inputs: &DitInputs<'_>,
    stage: &'a DitStage,
    options: &RunOptions,
) -> anyhow::Result<(Trainer<'a>, Workers)> {
    if stage.heads == 0
        || stage.text_heads == 0
        || !stage.dim.is_multiple_of(stage.heads)
        || !stage.text_dim.is_multiple_of(stage.text_heads)
        || stage.batch == 0
        || stage.clips == 0
    {
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
    for (name, p) in
        [("--sync-probability", stage.noise.sync_probability), ("--prefix-probability", stage.noise.prefix_probability)]
    {
        if !(0.0..=1.0).contains(&p) {
            bail!("{name} must be between 0 and 1, not {p}");
        }
    }
    let device = Device::Cpu;
    let vae =
        WanVae::load(inputs.vae, &device).with_context(|| format!("cannot load the VAE {}", inputs.vae.display()))?;
    let tokenizer = PromptTokenizer::load(inputs.tokenizer)?;
    let text = stage.text_config(tokenizer.vocab_size());
    let dit = stage.transformer_config(vae.config().z_dim);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let workers = Workers::new(options.workers)?;
    let data = dataset(dir, stage, &vae, &workers, options.quiet)?;
    Ok((Trainer { stage, data, tokenizer, text, dit }, workers))
}

/// Starts (or resumes) the run, creating every parameter of the text encoder and the DiT.
fn start_run(dir: &Path, trainer: &Trainer<'_>, settings: RunSettings, options: &RunOptions) -> anyhow::Result<Run> {
    let device = Device::Cpu;
    Run::start(dir, "dit", serde_json::to_value(trainer.stage)?, settings, options, |params| {
        UmT5Encoder::from_weights(
            trainer.text.clone(),
            &Prefixed { store: params, prefix: TEXT },
            &device,
            DType::F32,
        )?;
        WanTransformer3d::from_weights(
            trainer.dit.clone(),
            &Prefixed { store: params, prefix: DIT },
            &device,
            DType::F32,
        )?;
        Ok(())
    })
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
        let workers = Workers::new(2)?;
        let encoded = dataset(&dir, &stage, &first, &workers, true)?;
        assert!(encodes_like(&encoded, &stage, &first)?);
        assert!(!encodes_like(&encoded, &stage, &second)?);
        let again = dataset(&dir, &stage, &second, &workers, true)?;
        let changed = (&again.latents - &encoded.latents)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(changed > 0.0, "the second VAE's latents replace the first's");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn the_subject_weight_follows_its_noise_and_clean_powers() {
        let stage = |noise, clean| DitStage {
            subject_weight: 8.0,
            subject_weight_noise_power: noise,
            subject_weight_clean_power: clean,
            ..DitStage::default()
        };
        assert_eq!(stage(0.0, 0.0).subject_weight_at(0.9), 8.0, "constant by default");
        assert!((stage(2.0, 0.0).subject_weight_at(0.5) - 2.0).abs() < 1e-6);
        assert!((stage(0.0, 1.0).subject_weight_at(0.75) - 2.0).abs() < 1e-6);
        assert_eq!(stage(2.0, 0.0).subject_weight_at(0.0), 0.0, "noise-only weight vanishes on clean frames");
        assert_eq!(stage(0.0, 2.0).subject_weight_at(1.0), 0.0, "clean-only weight vanishes on pure noise");
    }

    #[test]
    fn the_training_flop_count_adds_up_every_matrix_product() {
        // Counted by hand for a configuration small enough to list every product: 2 tokens of
        // width 8 (2 latent channels, 1×1 patches), 2 text tokens of width 4, one layer each.
        let stage = DitStage {
            dim: 8,
            heads: 2,
            layers: 1,
            ffn_dim: 16,
            text_dim: 4,
            text_heads: 1,
            text_layers: 1,
            text_len: 2,
            patch: 1,
            ..DitStage::default()
        };
        let self_attention = 4 * 2 * 64 + 2 * 4 * 8; // q, k, v, o; scores and values
        let cross_attention = 2 * 2 * 64 + 2 * 2 * 64 + 2 * 2 * 2 * 8; // q, o; k, v of the text; scores and values
        let feed_forward = 2 * 2 * 8 * 16;
        let embeddings = 2 * 2 * 2 * 8 + 2 * (4 * 8 + 8 * 8); // patches and head; text embedding
        let text_encoder = 4 * 2 * 16 + 2 * 4 * 4 + 3 * 2 * 4 * 8;
        let macs = self_attention + cross_attention + feed_forward + embeddings + text_encoder;
        assert_eq!(stage.training_flops(2, [1, 1, 2]), (6 * macs) as f64);
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
