//! # skyreels-core
//!
//! The engine of skyreels-rs: a numerically faithful Rust implementation of
//! [SkyReels-V2](https://github.com/SkyworkAI/SkyReels-V2), the diffusion-forcing video model,
//! on [candle](https://github.com/huggingface/candle).
//!
//! Data flows one way: prompt → text encoder → planner/scheduler loop over the DiT → VAE
//! decode → writer. This crate is organised the same way:
//!
//! | module | what it holds |
//! |---|---|
//! | [`models`] | the networks: [`WanTransformer3d`] (the DiT) |
//! | [`schedulers`] | flow-matching samplers: [`FlowUniPc`], [`FlowEuler`], the [`FlowSchedule`] grids |
//! | [`pipelines`] | diffusion-forcing generation: windows, continuation, seeded noise |
//! | [`planner`] | the diffusion-forcing [`generate_timestep_matrix`] |
//! | [`checkpoint`] | safetensors shards, both naming schemes, configs |
//! | [`media`] | images in; MP4 (H.264), GIF and PNG-folder video out and back in, crash-safe |
//! | [`check`] | replays the PyTorch parity fixtures on any device and precision (`skyreels check`) |
//! | [`device`] | `--device` and `--dtype` choices, device descriptions, GPU memory metering |
//! | [`memory`] | will a model fit the device: footprints and the one-sentence refusal |
//! | [`nn`] | shared layers: linear, norms, attention, 3D RoPE |
//! | [`allocator`] | the host allocator's policy for large, short-lived buffers |
//!
//! ## Running the transformer
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use skyreels_core::{TransformerInput, WanTransformer3d};
//!
//! # fn main() -> skyreels_core::Result<()> {
//! let device = Device::Cpu;
//! // A directory with config.json + *.safetensors, in SkyReels or diffusers naming.
//! let model = WanTransformer3d::load("SkyReels-V2-DF-1.3B-540P".as_ref(), &device, DType::F32)?;
//! let c = model.config();
//! let latents = Tensor::randn(0f32, 1.0, (1, c.in_channels, 5, 16, 16), &device)?;
//! // Diffusion forcing: one timestep per latent frame (a clean prefix frame gets 0).
//! let timesteps = Tensor::new(&[[0i64, 999, 999, 999, 999]], &device)?;
//! let context = Tensor::zeros((1, 512, c.text_dim), DType::F32, &device)?;
//! let fps = Tensor::new(&[skyreels_core::models::transformer::fps_index(24)], &device)?;
//! let velocity = model.forward(&TransformerInput {
//!     latents: &latents,
//!     timesteps: &timesteps,
//!     context: &context,
//!     image_context: None,
//!     fps_index: Some(&fps),
//!     frame_positions: None,
//! })?;
//! assert_eq!(velocity.dims(), latents.dims());
//! # Ok(()) }
//! ```
//!
//! Timesteps of shape `[B]` give classic per-sample conditioning; `[B, F]` gives each latent
//! frame its own noise level. The output is the flow prediction `v ≈ ε − x₀`; feed it to one
//! scheduler per frame:
//!
//! ```
//! use skyreels_core::{FlowSchedule, FlowUniPc, SigmaGrid};
//! let schedule = FlowSchedule::new(SigmaGrid::SkyReels, 30, 8.0).unwrap();
//! assert_eq!(&schedule.timesteps()[..3], &[999, 995, 991]);
//! let per_frame: Vec<FlowUniPc> = (0..25).map(|_| FlowUniPc::new(schedule.clone())).collect();
//! # assert_eq!(per_frame.len(), 25);
//! ```

pub mod allocator;
pub mod check;
pub mod checkpoint;
pub mod device;
pub mod error;
pub mod media;
pub mod memory;
pub mod models;
pub mod nn;
pub mod pipelines;
pub mod planner;
pub mod schedulers;
pub mod text;

pub use error::{Error, Result};
pub use models::{
    TransformerConfig, TransformerInput, TransformerKind, UmT5Config, UmT5Encoder, VaeConfig, WanTransformer3d, WanVae,
};
pub use planner::{generate_timestep_matrix, PlanSettings, TimestepMatrix};
pub use schedulers::{FlowEuler, FlowSchedule, FlowScheduler, FlowUniPc, Sampler, SigmaGrid};
