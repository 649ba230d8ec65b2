//! Checkpoint loading: safetensors shards, the two naming schemes in the wild, and config files.
//!
//! Models ask for tensors by their *canonical* name — the original SkyReels/Wan key
//! (`blocks.0.self_attn.q.weight`) — and [`WeightStore`] finds them in whichever scheme the
//! directory uses. All knowledge of the diffusers names lives in [`names`].

pub mod names;
mod store;

pub use names::NamingScheme;
pub use store::{list_safetensors, TensorInfo, WeightStore};
