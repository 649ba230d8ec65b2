//! The models a generation runs, opened on their devices and kept loaded across jobs.
//!
//! A service runs job after job on the same checkpoint: loading a 14B transformer takes longer
//! than a short clip. [`ModelCache`] keeps the last few loaded transformer + VAE pairs, keyed by
//! everything that changes the weights in memory (model, dtypes, weight format, device,
//! offload). The text encoder is loaded per job and dropped after the prompts are encoded, so
//! that umT5-XXL's 11 GB are not held while the transformer runs.

use std::cell::RefCell;
use std::path::Path;

use candle_core::{DType, Device, DeviceLocation};

use super::settings::GenerateParams;
use super::GenerationError;
use crate::checkpoint::{Component, GgufFile, PipelineFiles, WeightStore};
use crate::device::{DeviceChoice, DeviceInfo, Offload};
use crate::nn::WeightFormat;
use crate::{WanTransformer3d, WanVae};

type Result<T> = std::result::Result<T, GenerationError>;

/// Where a generation computes, chosen by the caller (not part of the video's settings: the
/// same settings give the same video on any device, up to the device's arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// The device of the transformer and the VAE.
    pub device: DeviceChoice,
    /// Where the text encoder runs (default: `device`).
    pub text_encoder_device: Option<DeviceChoice>,
    /// How the transformer is kept off the GPU between uses.
    pub offload: Offload,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self { device: DeviceChoice::Auto, text_encoder_device: None, offload: Offload::None }
    }
}

/// The devices of a run, opened (and so checked) before any work.
#[derive(Debug, Clone)]
pub struct Devices {
    /// Runs the transformer and the VAE.
    pub compute: Device,
    /// Describes `compute` for the sidecar.
    pub info: DeviceInfo,
    /// Runs the text encoder.
    pub text_encoder: Device,
    /// How the transformer is kept off the GPU.
    pub offload: Offload,
}

impl Devices {
    /// Opens the chosen devices, or says in one sentence why one cannot be used.
    pub fn open(options: &RunOptions) -> Result<Self> {
        let open = |choice: DeviceChoice| choice.open().map_err(|e| GenerationError::Device(e.to_string()));
        let compute = open(options.device)?;
        let info = DeviceInfo::of(&compute);
        let text_encoder = match options.text_encoder_device {
            Some(choice) if choice != options.device => open(choice)?,
            _ => compute.clone(),
        };
        if options.offload != Offload::None && compute.is_cpu() {
            return Err(GenerationError::Device(format!(
                "--offload {} moves the transformer between host and GPU memory, but this run computes on the CPU",
                options.offload
            )));
        }
        Ok(Self { compute, info, text_encoder, offload: options.offload })
    }
}

/// What identifies a loaded transformer + VAE pair.
#[derive(Debug, Clone, PartialEq)]
struct ModelKey {
    model: String,
    /// The transformer folder: a video-extension release holds two.
    transformer: std::path::PathBuf,
    /// LoRA files merged into it, with their strengths' bits.
    loras: Vec<(std::path::PathBuf, u64)>,
    dtype: DType,
    weights: WeightFormat,
    vae_dtype: DType,
    device: DeviceLocation,
    offload: Offload,
}

/// A transformer and a VAE on their device, ready for any number of jobs.
pub struct LoadedModels {
    /// The device they compute on.
    pub device: Device,
    /// Describes `device` for the sidecar.
    pub device_info: DeviceInfo,
    offload: Offload,
    /// Mutable only to be parked in host memory around decodes (`--offload model`) and to
    /// switch block-causal attention per job.
    pub(super) transformer: RefCell<WanTransformer3d>,
    /// The causal block size the checkpoint's config gives (restored for jobs that do not ask
    /// for block-causal attention).
    checkpoint_causal_block: usize,
    /// The adapters applied beside the weights (files and strengths' bits), when not merged.
    applied_adapters: RefCell<Vec<(std::path::PathBuf, u64)>>,
    /// The VAE.
    pub vae: WanVae,
}

impl LoadedModels {
    /// Applies the job's adapters beside the transformer's weights unless they already are.
    fn switch_adapters(&self, params: &GenerateParams) -> Result<()> {
        let wanted = lora_key(params);
        if *self.applied_adapters.borrow() == wanted {
            return Ok(());
        }
        let adapters = read_adapters(params)?;
        self.transformer
            .borrow_mut()
            .set_adapters(&adapters)
            .map_err(|e| GenerationError::Model(format!("LoRA: {e}")))?;
        *self.applied_adapters.borrow_mut() = wanted;
        Ok(())
    }
}

impl LoadedModels {
    /// With `--offload model`, moves the transformer to host memory (`parked`) or back to the
    /// GPU around a decode; otherwise does nothing.
    pub(super) fn park_transformer(&self, parked: bool) -> Result<()> {
        if self.offload != Offload::Model {
            return Ok(());
        }
        let target = if parked { Device::Cpu } else { self.device.clone() };
        self.transformer.borrow_mut().move_to(&target).map_err(|e| GenerationError::Engine(format!("transformer: {e}")))
    }

    /// Sets the attention mask a job asks for.
    pub(super) fn configure_attention(&self, params: &GenerateParams) -> Result<()> {
        let block =
            if params.causal_attention { params.sampler.causal_block_size } else { self.checkpoint_causal_block };
        self.transformer.borrow_mut().set_causal_block_size(block).map_err(|e| GenerationError::Settings(e.to_string()))
    }
}

/// Loaded models, most recently used last; at most `capacity` are kept.
pub struct ModelCache {
    capacity: usize,
    entries: Vec<(ModelKey, LoadedModels)>,
}

impl ModelCache {
    /// A cache keeping up to `capacity` loaded models (0 loads afresh for every job).
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: Vec::new() }
    }

    /// How many loaded models are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every loaded model (e.g. to free the GPU).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The models `params` needs on `devices`, loaded now unless already held. LoRA adapters
    /// are merged into the weights when the cache keeps nothing (one job per process: no cost
    /// per step); a cache that keeps models applies them beside the weights, switched per job
    /// without reloading the base model.
    pub fn get_or_load(
        &mut self,
        files: &PipelineFiles,
        params: &GenerateParams,
        devices: &Devices,
    ) -> Result<&LoadedModels> {
        let key = ModelKey {
            model: params.model.clone(),
            transformer: files.transformer.clone(),
            loras: if self.merges_adapters() { lora_key(params) } else { Vec::new() },
            dtype: transformer_dtype(files, &params.dtype, &devices.compute)?,
            weights: params.weights,
            vae_dtype: if params.vae_dtype == "bf16" { DType::BF16 } else { DType::F32 },
            device: devices.compute.location(),
            offload: devices.offload,
        };
        if let Some(i) = self.entries.iter().position(|(k, _)| *k == key) {
            let entry = self.entries.remove(i);
            self.entries.push(entry);
        } else {
            // Free what is evicted before loading, so two models never share the device.
            while !self.entries.is_empty() && self.entries.len() >= self.capacity.max(1) {
                self.entries.remove(0);
            }
            let models = load_models(files, params, devices, &key)?;
            self.entries.push((key, models));
        }
        let merged = self.merges_adapters();
        let (_, models) = self.entries.last().expect("an entry was just pushed or moved to the end");
        if !merged {
            models.switch_adapters(params)?;
        }
        Ok(models)
    }

    /// Whether adapters are merged at load (see [`get_or_load`](Self::get_or_load)).
    fn merges_adapters(&self) -> bool {
        self.capacity == 0
    }

    /// Forgets everything when the cache should hold nothing between jobs.
    pub(super) fn trim(&mut self) {
        if self.capacity == 0 {
            self.entries.clear();
        }
    }
}

/// The adapters `params` asks for, as a cache key: files and strengths' bits.
fn lora_key(params: &GenerateParams) -> Vec<(std::path::PathBuf, u64)> {
    params.loras.iter().map(|l| (l.path.clone(), l.strength.to_bits())).collect()
}

/// Reads the adapter files `params` names.
fn read_adapters(params: &GenerateParams) -> Result<Vec<crate::checkpoint::LoraAdapter>> {
    params
        .loras
        .iter()
        .map(|lora| crate::checkpoint::LoraAdapter::load(&lora.path, lora.strength))
        .collect::<crate::Result<Vec<_>>>()
        .map_err(|e| GenerationError::Model(format!("LoRA: {e}")))
}

fn load_models(
    files: &PipelineFiles,
    params: &GenerateParams,
    devices: &Devices,
    key: &ModelKey,
) -> Result<LoadedModels> {
    let model_error = |what: &'static str| move |e: crate::Error| GenerationError::Model(format!("{what}: {e}"));
    let device = devices.compute.clone();
    let dtype = key.dtype;
    ensure_models_fit(files, params, (dtype, &device), devices.offload)?;
    // Streamed blocks are loaded into host memory: the GPU never holds them all.
    let load_on = if devices.offload == Offload::Blocks { Device::Cpu } else { device.clone() };
    // Adapters are merged only when they are part of the key (a cache that keeps nothing).
    let adapters = if key.loras.is_empty() { Vec::new() } else { read_adapters(params)? };
    let mut transformer = match &files.transformer_gguf {
        Some(gguf) => WanTransformer3d::load_gguf_with_adapters(gguf, &files.transformer, &load_on, dtype, &adapters),
        None => WanTransformer3d::load_with_adapters(&files.transformer, &load_on, dtype, params.weights, &adapters),
    }
    .map_err(model_error("transformer"))?;
    if devices.offload == Offload::Blocks {
        transformer.keep_blocks_on(Some(&Device::Cpu)).map_err(model_error("transformer"))?;
        transformer.move_to(&device).map_err(model_error("transformer"))?;
        // Loaded on the host, it would otherwise keep the CPU's f32 arithmetic.
        transformer.set_compute_dtype(dtype);
    }
    let vae = WanVae::load_as(&files.vae, &device, key.vae_dtype).map_err(model_error("VAE"))?;
    check_compatible(&transformer, &vae)?;
    let checkpoint_causal_block = transformer.config().causal_block_size;
    Ok(LoadedModels {
        device,
        device_info: devices.info.clone(),
        offload: devices.offload,
        transformer: RefCell::new(transformer),
        checkpoint_causal_block,
        applied_adapters: RefCell::new(Vec::new()),
        vae,
    })
}

/// The text encoder's weight dtype on `device`.
pub(super) fn text_encoder_dtype(files: &PipelineFiles, device: &Device) -> DType {
    // umT5-XXL (5.7B parameters) does not fit 24 GB in f32; small encoders stay exact in f32.
    // On a GPU the weights are held in bf16 (activations stay f32: it runs once per prompt).
    let bytes = dir_size(&files.text_encoder);
    if bytes > 4 << 30 || !device.is_cpu() {
        DType::BF16
    } else {
        DType::F32
    }
}

fn transformer_dtype(files: &PipelineFiles, flag: &str, device: &Device) -> Result<DType> {
    Ok(match flag {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        _ if !device.is_cpu() => DType::BF16,
        _ if transformer_parameters(files)? > 2_000_000_000 => DType::BF16,
        _ => DType::F32,
    })
}

/// Scalar parameters of the transformer, read from the file headers.
fn transformer_parameters(files: &PipelineFiles) -> Result<u64> {
    let count = match &files.transformer_gguf {
        Some(gguf) => GgufFile::open(gguf).map(|g| g.parameter_count()),
        None => WeightStore::open(&files.transformer, Component::Transformer).map(|s| s.parameter_count()),
    };
    count.map(|n| n as u64).map_err(|e| GenerationError::Model(format!("transformer: {e}")))
}

/// Refuses before loading when what the GPU must hold at once — per `offload`: the
/// transformer's weights (all, or two blocks), the VAE, and the larger of their working sets —
/// exceeds its free memory (nothing to check on the CPU).
fn ensure_models_fit(
    files: &PipelineFiles,
    params: &GenerateParams,
    (dtype, device): (DType, &Device),
    offload: Offload,
) -> Result<()> {
    use crate::memory::{ensure_fits, transformer_footprint, vae_decode_footprint};
    if device.is_cpu() {
        return Ok(());
    }
    let model_error = |e: crate::Error| GenerationError::Model(format!("transformer: {e}"));
    let store = WeightStore::open(&files.transformer, Component::Transformer).map_err(model_error)?;
    let config = crate::TransformerConfig::load(&files.transformer, &store).map_err(model_error)?;
    let tokens = params.window_plan().window * (params.height / 16) * (params.width / 16);
    let held = (dtype, params.weights, dtype);
    let dit = transformer_footprint(&config, store.parameter_count() as u64, tokens as u64, held);
    let vae = vae_decode_footprint(params.height, params.width);
    let block_weights = dit.weights / config.num_layers.max(1) as u64;
    let needed = match offload {
        Offload::None => dit.weights + vae.weights + dit.working.max(vae.working),
        Offload::Model => (dit.weights + dit.working).max(vae.working) + vae.weights,
        // Two blocks: the one running and the copy of the next being made.
        Offload::Blocks => 2 * block_weights + vae.weights + dit.working.max(vae.working),
    };
    let hint = match (offload, params.weights) {
        (Offload::None, _) => "pass --offload blocks (or --offload model, or --weights fp8)",
        (_, WeightFormat::Native) => "pass --weights fp8 as well, or a smaller --height/--width",
        _ => "use a smaller --height/--width or --base-frames, or a GPU with more memory",
    };
    ensure_fits(device, "the transformer and the VAE", needed, hint).map_err(|e| GenerationError::Device(e.to_string()))
}

fn dir_size(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(entries) => entries.flatten().map(|e| dir_size(&e.path())).sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

fn check_compatible(transformer: &WanTransformer3d, vae: &WanVae) -> Result<()> {
    let c = transformer.config();
    let z = vae.config().z_dim;
    // Image-to-video models take the noise and a condition of 4 mask channels + the latents.
    let expected = if c.image_dim.is_some() { 2 * z + 4 } else { z };
    if c.in_channels != expected || c.out_channels != z {
        return Err(GenerationError::Model(format!(
            "the transformer takes {} input channels and makes {} but the VAE's latents have {z} channels",
            c.in_channels, c.out_channels
        )));
    }
    Ok(())
}

/// Refuses text states whose width the transformer does not take.
pub(super) fn check_text_width(transformer: &WanTransformer3d, text_dim: usize) -> Result<()> {
    let c = transformer.config();
    if c.text_dim != text_dim {
        return Err(GenerationError::Model(format!(
            "the transformer expects text states of width {} but the text encoder makes {text_dim}",
            c.text_dim
        )));
    }
    Ok(())
}
