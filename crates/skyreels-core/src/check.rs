//! Parity self-check: replays the repository's PyTorch fixtures on a chosen device and precision
//! and measures every model and the diffusion-forcing pipeline against the reference outputs.
//!
//! This is what `skyreels check` runs, so that a machine with only the binary and the fixture
//! folder (a GPU box without a Rust toolchain, a new driver) can show that it computes what
//! PyTorch computes. The fixtures are the tiny random-weight models and recorded outputs made by
//! `tools/reference/*.py` (`crates/skyreels-core/tests/fixtures`).
//!
//! Each measurement is a relative L2 error `‖ours − reference‖ / ‖reference‖` with a bound that
//! depends on where and how it was computed; see [`tolerance`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{invalid_input, Error, Result};
use crate::models::TransformerInput;
use crate::nn::WeightFormat;
use crate::pipelines::{DfSettings, DfVideo, NoiseSource, TextConditioning, WindowPlan};
use crate::{SigmaGrid, UmT5Encoder, WanTransformer3d, WanVae};

/// What a measurement is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// The DiT's output for one recorded input.
    Transformer,
    /// umT5's last hidden state.
    TextEncoder,
    /// The Wan VAE's encoder mean or decoded video.
    Vae,
    /// All latents of a recorded diffusion-forcing generation (noise replayed).
    DfPipeline,
}

impl std::str::FromStr for Component {
    type Err = Error;

    /// `transformer`, `text-encoder`, `vae` or `df-pipeline`.
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().replace(['_', ' '], "-").as_str() {
            "transformer" | "dit" => Ok(Self::Transformer),
            "text-encoder" | "umt5" => Ok(Self::TextEncoder),
            "vae" => Ok(Self::Vae),
            "df-pipeline" | "pipeline" => Ok(Self::DfPipeline),
            _ => Err(invalid_input!("`{text}` is not a component: use transformer, text-encoder, vae or df-pipeline")),
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Transformer => "transformer",
            Self::TextEncoder => "text encoder",
            Self::Vae => "vae",
            Self::DfPipeline => "df pipeline",
        })
    }
}

/// One compared output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measurement {
    /// What was run.
    pub component: Component,
    /// The fixture case (model layout and input).
    pub case: String,
    /// `‖ours − reference‖ / ‖reference‖`.
    pub rel_l2: f64,
    /// The bound it must stay within.
    pub tolerance: f64,
}

impl Measurement {
    /// Whether the error is within its bound (a NaN never is).
    pub fn passed(&self) -> bool {
        self.rel_l2 <= self.tolerance
    }
}

/// Where and how to run the fixtures.
#[derive(Debug, Clone)]
pub struct CheckSettings {
    /// The fixture folder (`crates/skyreels-core/tests/fixtures` in the repository).
    pub fixtures: PathBuf,
    /// The device to compute on.
    pub device: Device,
    /// The DiT's compute dtype (f32 or bf16); umT5 holds its weights in it.
    pub dtype: DType,
    /// How the transformer's block matrices are held (FP8 has bounds of its own).
    pub weights: WeightFormat,
    /// The VAE's dtype (f32 or bf16).
    pub vae_dtype: DType,
    /// Run only this component's fixtures (all when `None`).
    pub only: Option<Component>,
}

/// The relative-L2 bound of a component computed as `settings` say (device, the transformer's
/// dtype and weight format, the VAE's dtype).
///
/// - **f32 on the CPU**: 1e-5 per model (the project's exactness rule), 1e-4 for whole
///   generations (errors of every step compound through the solver).
/// - **f32 on a GPU**: the same for the DiT and umT5 (candle's cuBLAS GEMMs are true FP32). An
///   f32 VAE's convolutions go through cuDNN, which uses TF32 for f32 on Ampere and newer: it
///   gets the transformer's bf16 bound scaled by the ratio of the unit roundoffs,
///   2⁻¹¹ / 2⁻⁸ = 1/8.
/// - **bf16** (transformer activations and weights, umT5 weights; norms, softmax, modulation
///   and accumulation in f32, as on a GPU): about four times the largest error the CPU's bf16
///   path measures over all fixtures, rounded up. Measured on the tiny fixture models
///   (2026-12, AMD EPYC): transformer 7.2e-3, umT5 3.7e-3, DF pipeline 1.5e-2; the VAE in bf16
///   (`vae_dtype`; its 30-odd convolutions each round to bf16) 3.1e-2.
/// - **FP8 weights** (e4m3, one scale per row; 3 mantissa bits, so each weight is rounded by
///   up to 2⁻⁴): likewise four times the largest error measured on the CPU, in f32 compute
///   (transformer 1.75e-2, DF pipeline 9.7e-3), added to the compute dtype's bound.
pub fn tolerance(component: Component, settings: &CheckSettings) -> f64 {
    let reduced = |dtype: DType| matches!(dtype, DType::BF16 | DType::F16);
    let compute = match component {
        Component::Transformer if reduced(settings.dtype) => BF16_TRANSFORMER,
        Component::TextEncoder if reduced(settings.dtype) => BF16_TEXT_ENCODER,
        Component::DfPipeline if reduced(settings.dtype) => BF16_PIPELINE,
        Component::Vae if reduced(settings.vae_dtype) => BF16_VAE,
        Component::Vae if !settings.device.is_cpu() => BF16_TRANSFORMER / 8.0,
        Component::DfPipeline => 1e-4,
        _ => 1e-5,
    };
    let storage = match (settings.weights, component) {
        (WeightFormat::Fp8, Component::Transformer) => FP8_TRANSFORMER,
        (WeightFormat::Fp8, Component::DfPipeline) => FP8_PIPELINE,
        _ => 0.0,
    };
    compute + storage
}

const BF16_TRANSFORMER: f64 = 3e-2;
const BF16_TEXT_ENCODER: f64 = 1.5e-2;
const BF16_PIPELINE: f64 = 6e-2;
const BF16_VAE: f64 = 1.3e-1;
const FP8_TRANSFORMER: f64 = 7e-2;
const FP8_PIPELINE: f64 = 4e-2;
/// Q8_0 GGUF weights: four times the 9.6e-4 measured on the fixture transformer, rounded up.
const Q8_0: f64 = 4e-3;

/// The transformer fixtures: (model folder, causal block size, case).
pub const TRANSFORMER_CASES: &[(&str, usize, &str)] = &[
    ("df_fps_diffusers", 1, "df_f5_fps24"),
    ("df_fps_diffusers", 1, "df_f5_fps16"),
    ("df_fps_diffusers", 3, "df_f6_causal3"),
    ("df_fps_diffusers", 2, "df_f4_causal2_nonsquare"),
    ("df_fps_original", 1, "df_f5_fps24"),
    ("df_fps_original", 3, "df_f6_causal3"),
    ("t2v_diffusers", 1, "t2v_scalar"),
    ("t2v_diffusers", 1, "t2v_df_f3_odd"),
    ("t2v_diffusers", 1, "t2v_df_batch2"),
    ("t2v_original", 1, "t2v_scalar"),
    ("i2v_diffusers", 1, "i2v_scalar"),
    ("i2v_original", 1, "i2v_scalar"),
    ("odd_diffusers", 1, "odd_patch2_df"),
    ("flf2v_diffusers", 1, "flf2v_scalar"),
];

/// The recorded diffusion-forcing generations (`df_<name>.safetensors`).
pub const DF_RUNS: &[&str] = &[
    "sync_f9",
    "async_f21_ar1_cb2",
    "long_f21_base13_ov5_an20",
    "long_f29_base13_ov5_an20_sync",
    "long_f29_base13_ov5_sync_nocfg",
];

/// Runs every fixture, handing each measurement to `report` as it is made.
pub fn run_all(settings: &CheckSettings, report: &mut dyn FnMut(&Measurement)) -> Result<Vec<Measurement>> {
    if !settings.fixtures.join("models").is_dir() {
        return Err(invalid_input!(
            "{} is not the fixture folder (crates/skyreels-core/tests/fixtures of the repository): it has no models/",
            settings.fixtures.display()
        ));
    }
    let mut all = Vec::new();
    let mut record = |m: Measurement| {
        report(&m);
        all.push(m);
    };
    let wanted = |c: Component| settings.only.is_none_or(|only| only == c);
    if wanted(Component::Transformer) {
        check_transformer(settings, &mut record)?;
        check_gguf_transformer(settings, &mut record)?;
    }
    if wanted(Component::TextEncoder) {
        check_text_encoder(settings, &mut record)?;
    }
    if wanted(Component::Vae) {
        check_vae(settings, &mut record)?;
    }
    for name in DF_RUNS.iter().filter(|_| wanted(Component::DfPipeline)) {
        let run = DfRun::load(&settings.fixtures, name)?;
        let ours = run.generate(&settings.fixtures, &settings.device, (settings.dtype, settings.weights))?;
        record(measure(settings, Component::DfPipeline, name.to_string(), &ours, &run.tensors["output_latents"])?);
    }
    Ok(all)
}

fn measure(
    settings: &CheckSettings,
    component: Component,
    case: String,
    ours: &Tensor,
    reference: &Tensor,
) -> Result<Measurement> {
    Ok(Measurement { component, case, rel_l2: rel_l2(ours, reference)?, tolerance: tolerance(component, settings) })
}

/// `‖a − b‖ / ‖b‖` in f64 on the CPU (the absolute error when `b` is all zeros).
pub fn rel_l2(actual: &Tensor, reference: &Tensor) -> Result<f64> {
    if actual.elem_count() != reference.elem_count() {
        return Err(invalid_input!(
            "output shape {:?} differs from the reference's {:?}",
            actual.dims(),
            reference.dims()
        ));
    }
    let flat = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
    };
    let (a, b) = (flat(actual)?, flat(reference)?);
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let norm = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    Ok(if norm == 0.0 { diff } else { diff / norm })
}

/// All tensors of a fixture file.
fn load_fixture(fixtures: &Path, name: &str) -> Result<HashMap<String, Tensor>> {
    let path = fixtures.join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .map_err(|e| Error::BadCheckpointFile { path, reason: e.to_string() })
}

fn tensor<'a>(tensors: &'a HashMap<String, Tensor>, file: &str, key: &str) -> Result<&'a Tensor> {
    tensors.get(key).ok_or_else(|| invalid_input!("fixture {file} has no tensor `{key}`"))
}

/// The inputs a `transformer_*.safetensors` fixture recorded.
fn recorded_input<'t>(t: &'t HashMap<String, Tensor>, file: &str) -> Result<TransformerInput<'t>> {
    Ok(TransformerInput {
        latents: tensor(t, file, "hidden_states")?,
        timesteps: tensor(t, file, "timestep")?,
        context: tensor(t, file, "encoder_hidden_states")?,
        image_context: t.get("encoder_hidden_states_image"),
        fps_index: t.get("fps"),
        frame_positions: None,
    })
}

/// Loads a fixture transformer on `device`, computing in `dtype`, its block matrices in `weights`.
pub fn load_transformer(
    fixtures: &Path,
    folder: &str,
    device: &Device,
    (dtype, weights): (DType, WeightFormat),
) -> Result<WanTransformer3d> {
    let mut model = WanTransformer3d::load_as(&fixtures.join("models").join(folder), device, dtype, weights)?;
    model.set_compute_dtype(dtype);
    Ok(model)
}

fn check_transformer(settings: &CheckSettings, record: &mut dyn FnMut(Measurement)) -> Result<()> {
    let mut loaded: Option<(&str, WanTransformer3d)> = None;
    for &(folder, block, case) in TRANSFORMER_CASES {
        if loaded.as_ref().is_none_or(|(name, _)| *name != folder) {
            let held = (settings.dtype, settings.weights);
            loaded = Some((folder, load_transformer(&settings.fixtures, folder, &settings.device, held)?));
        }
        let Some((_, model)) = loaded.as_mut() else { continue };
        model.set_causal_block_size(block)?;
        let file = format!("transformer_{case}.safetensors");
        let t = load_fixture(&settings.fixtures, &file)?;
        let out = model.forward(&recorded_input(&t, &file)?)?;
        record(measure(
            settings,
            Component::Transformer,
            format!("{folder} {case}"),
            &out,
            tensor(&t, &file, "output")?,
        )?);
    }
    Ok(())
}

/// The Q8_0 GGUF twin of `df_fps_original` (matrices dequantised per layer on the device),
/// against the f32 reference output: its bound adds Q8_0's rounding to the compute dtype's.
fn check_gguf_transformer(settings: &CheckSettings, record: &mut dyn FnMut(Measurement)) -> Result<()> {
    let file = "transformer_df_f5_fps24.safetensors";
    let t = load_fixture(&settings.fixtures, file)?;
    let dir = settings.fixtures.join("models/df_fps_original");
    let gguf = settings.fixtures.join("gguf/df_fps_q8_0.gguf");
    let mut model = WanTransformer3d::load_gguf(&gguf, &dir, &settings.device, settings.dtype)?;
    model.set_compute_dtype(settings.dtype);
    let out = model.forward(&recorded_input(&t, file)?)?;
    let mut m =
        measure(settings, Component::Transformer, "gguf q8_0 df_f5_fps24".into(), &out, tensor(&t, file, "output")?)?;
    let native = CheckSettings { weights: WeightFormat::Native, ..settings.clone() };
    m.tolerance = tolerance(Component::Transformer, &native) + Q8_0;
    record(m);
    Ok(())
}

fn check_text_encoder(settings: &CheckSettings, record: &mut dyn FnMut(Measurement)) -> Result<()> {
    let file = "umt5.safetensors";
    let t = load_fixture(&settings.fixtures, file)?;
    let models = settings.fixtures.join("models");
    let layouts = [
        ("umt5_hf", models.join("umt5_hf"), "last_hidden_state"),
        // The original checkpoint ships bf16 weights; its reference ran with the same weights.
        ("umt5_original", models.join("umt5_original/models_t5_umt5-xxl-enc-bf16.pth"), "last_hidden_state_bf16w"),
    ];
    for (layout, path, reference) in layouts {
        let encoder = UmT5Encoder::load(&path, &settings.device, settings.dtype)?;
        for case in ["c0", "c1", "c2"] {
            let out = encoder.forward(
                &tensor(&t, file, &format!("{case}.input_ids"))?.to_device(&settings.device)?,
                &tensor(&t, file, &format!("{case}.attention_mask"))?.to_device(&settings.device)?,
            )?;
            let expected = tensor(&t, file, &format!("{case}.{reference}"))?;
            record(measure(settings, Component::TextEncoder, format!("{layout} {case}"), &out, expected)?);
        }
    }
    Ok(())
}

fn check_vae(settings: &CheckSettings, record: &mut dyn FnMut(Measurement)) -> Result<()> {
    let file = "vae.safetensors";
    let t = load_fixture(&settings.fixtures, file)?;
    let dev = &settings.device;
    let models = settings.fixtures.join("models");
    // The generator stores the clip as 8-bit pixels; p/128 − 1 is exact in f32.
    let clip = ((tensor(&t, file, "enc.video_u8")?.to_dtype(DType::F32)? / 128.0)? - 1.0)?.to_device(dev)?;
    let decoded = tensor(&t, file, "dec.conv_out")?.clamp(-1f32, 1f32)?;
    for (layout, path) in
        [("diffusers", models.join("vae_diffusers")), ("original", models.join("vae_original/Wan2.1_VAE.pth"))]
    {
        let vae = WanVae::load_as(&path, dev, settings.vae_dtype)?;
        let mu = vae.encode(&clip)?;
        record(measure(settings, Component::Vae, format!("{layout} encode"), &mu, tensor(&t, file, "enc.mu")?)?);
        let video = vae.decode(&tensor(&t, file, "dec.z")?.to_device(dev)?)?;
        record(measure(settings, Component::Vae, format!("{layout} decode"), &video, &decoded)?);
    }
    let vae = WanVae::load_as(&models.join("vae_diffusers"), dev, settings.vae_dtype)?;
    let image = vae.encode(&tensor(&t, file, "enc1.video")?.to_device(dev)?)?;
    record(measure(settings, Component::Vae, "diffusers encode 1 frame".into(), &image, tensor(&t, file, "enc1.mu")?)?);
    let long = vae.decode(&tensor(&t, file, "dec2.z")?.to_device(dev)?)?;
    record(measure(
        settings,
        Component::Vae,
        "diffusers decode 4 latents".into(),
        &long,
        tensor(&t, file, "dec2.video")?,
    )?);
    Ok(())
}

/// Hands out a reference run's recorded noise draws in order, checking each one's shape.
struct Replay(VecDeque<Tensor>);

impl NoiseSource for Replay {
    fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let next =
            self.0.pop_front().ok_or_else(|| invalid_input!("the pipeline drew more noise than the reference did"))?;
        if next.dims() != shape {
            return Err(invalid_input!("noise draw of shape {shape:?} where the reference drew {:?}", next.dims()));
        }
        Ok(next.to_device(device)?)
    }
}

/// A recorded diffusers `SkyReelsV2DiffusionForcingPipeline` run: its settings, prompt states,
/// noise draws and output latents (`tools/reference/gen_df_pipeline_fixtures.py`).
#[derive(Debug)]
pub struct DfRun {
    /// Every tensor of the fixture.
    pub tensors: HashMap<String, Tensor>,
    /// The call's settings (the file's `settings` metadata).
    pub settings: serde_json::Value,
}

impl DfRun {
    /// Reads `df_<name>.safetensors` from the fixture folder.
    pub fn load(fixtures: &Path, name: &str) -> Result<Self> {
        let file = format!("df_{name}.safetensors");
        let path = fixtures.join(&file);
        let bytes = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let bad = |reason: String| Error::BadCheckpointFile { path: path.clone(), reason };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let text = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("settings"))
            .ok_or_else(|| bad("no `settings` metadata".into()))?;
        let settings = serde_json::from_str(text).map_err(|e| bad(format!("settings: {e}")))?;
        Ok(Self { tensors: load_fixture(fixtures, &file)?, settings })
    }

    fn setting(&self, key: &str) -> Result<u64> {
        self.settings[key].as_u64().ok_or_else(|| invalid_input!("run settings lack `{key}`"))
    }

    /// The prompt states the reference used (zeros for a missing negative prompt).
    pub fn text(&self, device: &Device) -> Result<TextConditioning> {
        let positive = tensor(&self.tensors, "df run", "prompt_embeds")?.to_device(device)?;
        let negative = match self.tensors.get("negative_prompt_embeds") {
            Some(n) => n.to_device(device)?,
            None => positive.zeros_like()?,
        };
        Ok(TextConditioning { positive, negative })
    }

    /// Runs our pipeline with the run's settings and its noise replayed, the transformer held
    /// as `held` (compute dtype, block matrix format); returns all latents `[1, C, F, h, w]`
    /// (f32, on `device`).
    pub fn generate(&self, fixtures: &Path, device: &Device, held: (DType, WeightFormat)) -> Result<Tensor> {
        let latent = |frames: u64| ((frames - 1) / 4 + 1) as usize;
        let block = self.settings["causal_block_size"].as_u64().unwrap_or(1) as usize;
        let mut model = load_transformer(fixtures, "df_pipeline", device, held)?;
        if !self.settings["causal_block_size"].is_null() {
            // diffusers turns the block-causal mask on whenever a block size is passed.
            model.set_causal_block_size(block)?;
        }
        let settings = DfSettings {
            steps: self.setting("num_inference_steps")? as usize,
            shift: 8.0,
            sigma_grid: SigmaGrid::Diffusers,
            guidance_scale: self.settings["guidance_scale"].as_f64().unwrap_or(1.0),
            ar_step: self.setting("ar_step")? as usize,
            causal_block_size: block,
            addnoise_condition: self.setting("addnoise_condition")? as u32,
            fps: self.setting("fps")? as u32,
            sampler: crate::Sampler::UniPc,
            cache: Default::default(),
        };
        let total = latent(self.setting("num_frames")?);
        let base = latent(self.setting("base_num_frames")?);
        let plan = match self.settings["overlap_history"].as_u64() {
            Some(overlap) if total > base => WindowPlan { window: base, overlap: latent(overlap), total: Some(total) },
            _ => WindowPlan { window: total, overlap: 0, total: Some(total) },
        };
        let size = (self.setting("height")? as usize / 8, self.setting("width")? as usize / 8);
        let draws: VecDeque<Tensor> = (0..).map_while(|i| self.tensors.get(&format!("noise.{i}")).cloned()).collect();
        let mut noise = Replay(draws);
        let text = self.text(device)?;
        let mut video = DfVideo::new(plan, None)?;
        let mut parts = Vec::new();
        while video.next_window(block).is_some() {
            let (spec, latents) = video.generate_window(
                &model,
                size,
                None,
                None,
                &text,
                &settings,
                &mut noise,
                &mut crate::pipelines::StepCache::off(),
                &mut |_, _| Ok(()),
            )?;
            parts.push(latents.narrow(2, spec.history, spec.frames - spec.history)?);
        }
        if !noise.0.is_empty() {
            return Err(invalid_input!("{} of the reference's noise draws were not used", noise.0.len()));
        }
        Ok(Tensor::cat(&parts, 2)?)
    }
}
