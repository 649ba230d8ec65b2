//! Checkpoint loading: safetensors shards, the two naming schemes in the wild, and config files.
//!
//! Models ask for tensors by their *canonical* name (for the transformer the original
//! SkyReels/Wan key, `blocks.0.self_attn.q.weight`) and [`WeightStore`] finds them in whichever
//! scheme and format (safetensors shards or a PyTorch `.pth`) the checkpoint uses. All
//! knowledge of the stored names lives in [`names`]. Quantised transformers come as GGUF files
//! ([`GgufFile`]), whose matrices stay quantised in memory ([`Weights::quantized`]).

mod gguf;
mod image_encoder;
mod locate;
mod lora;
pub mod names;
pub mod pipeline;
mod random;
mod store;

pub use gguf::{GgufFile, GgufTensor};
pub use image_encoder::ClipVisionWeights;
pub use locate::{open_model, LocatedModel, ModelFiles};
pub use lora::{declared_sampling, layer_adapters, DistilledSampling, LoraAdapter, LoraWeights, SAMPLING_METADATA_KEY};
pub use names::{Component, NamingScheme};
pub use pipeline::{resolve_pipeline, PipelineFiles, PipelineKind, PipelineLayout};
pub use random::RandomWeights;
pub use store::{list_safetensors, TensorInfo, WeightStore};

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

/// A source of named weight tensors: models call `tensor` with the canonical name and the shape
/// their config implies.
pub trait Weights {
    /// The tensor `name` of shape `shape`, converted to `dtype` on `device`.
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> crate::Result<Tensor>;

    /// The tensor as stored, when it is block-quantised (GGUF), to be dequantised per use;
    /// `None` for sources of plain tensors.
    fn quantized(&self, _name: &str, _shape: &[usize], _device: &Device) -> Option<crate::Result<QTensor>> {
        None
    }
}

/// Shape lookups a config reader needs, from safetensors folders and GGUF files alike.
pub trait TensorShapes {
    /// The stored shape of a tensor (canonical name), or the error naming what is missing.
    fn tensor_shape(&self, name: &str) -> crate::Result<Vec<usize>>;
    /// Whether the tensor exists.
    fn has_tensor(&self, name: &str) -> bool;
}

impl TensorShapes for WeightStore {
    fn tensor_shape(&self, name: &str) -> crate::Result<Vec<usize>> {
        Ok(self.shape(name)?.to_vec())
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

impl Weights for WeightStore {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> crate::Result<Tensor> {
        WeightStore::tensor(self, name, shape, dtype, device)
    }
}

/// Reads a small text file (a config, a story), refusing anything that is not a regular file:
/// a FIFO or a device named `config.json` would otherwise block or never end.
pub fn read_text(path: &std::path::Path) -> crate::Result<String> {
    use std::io::{Error as IoError, ErrorKind};
    let io = |source| crate::Error::Io { path: path.to_path_buf(), source };
    let metadata = std::fs::metadata(path).map_err(io)?;
    if !metadata.is_file() {
        return Err(io(IoError::new(ErrorKind::InvalidInput, "not a regular file")));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| io(IoError::new(ErrorKind::InvalidData, "not UTF-8 text")))
}
