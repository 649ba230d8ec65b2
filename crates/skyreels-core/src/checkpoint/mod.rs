//! Checkpoint loading: safetensors shards, the two naming schemes in the wild, and config files.
//!
//! Models ask for tensors by their *canonical* name (for the transformer the original
//! SkyReels/Wan key, `blocks.0.self_attn.q.weight`) and [`WeightStore`] finds them in whichever
//! scheme and format (safetensors shards or a PyTorch `.pth`) the checkpoint uses. All
//! knowledge of the stored names lives in [`names`].

mod locate;
pub mod names;
pub mod pipeline;
mod random;
mod store;

pub use locate::{open_model, LocatedModel, ModelFiles};
pub use names::{Component, NamingScheme};
pub use pipeline::{resolve_pipeline, PipelineFiles, PipelineLayout};
pub use random::RandomWeights;
pub use store::{list_safetensors, TensorInfo, WeightStore};

use candle_core::{DType, Device, Tensor};

/// A source of named weight tensors: models call `tensor` with the canonical name and the shape
/// their config implies.
pub trait Weights {
    /// The tensor `name` of shape `shape`, converted to `dtype` on `device`.
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> crate::Result<Tensor>;
}

impl Weights for WeightStore {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> crate::Result<Tensor> {
        WeightStore::tensor(self, name, shape, dtype, device)
    }
}
