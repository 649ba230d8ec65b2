//! The neural networks of SkyReels-V2, one file per model.

pub mod clip;
pub mod transformer;
pub mod transformer_config;
pub mod umt5;
pub mod vae;

pub use clip::{ClipActivation, ClipVisionConfig, ClipVisionEncoder};
pub use transformer::{BlockCache, BlockProbe, TransformerInput, WanTransformer3d};
pub use transformer_config::{TransformerConfig, TransformerKind};
pub use umt5::{UmT5Config, UmT5Encoder};
pub use vae::{DecodeStream, EncodeStream, VaeConfig, WanVae};
