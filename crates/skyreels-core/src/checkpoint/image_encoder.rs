//! CLIP vision weights by canonical name, whichever layout holds them.
//!
//! Two differences go beyond names (those are in [`super::names`]): the original open-clip file
//! fuses each block's query, key and value projections into one `to_qkv` matrix (rows: all
//! query heads, then all key heads, then all value heads), and stores the class and position
//! embeddings with leading unit dimensions (`[1, 1, W]`, `[1, N, W]`).

use candle_core::{DType, Device, Tensor};

use super::{TensorShapes, WeightStore, Weights};
use crate::error::Result;

/// A [`WeightStore`] of a CLIP vision tower, seen in the canonical (`CLIPVisionModel`) layout.
pub struct ClipVisionWeights(pub WeightStore);

/// For `encoder.layers.N.self_attn.{q,k,v}_proj.{weight,bias}`: the fused tensor's name and
/// which third of it this is.
fn fused_part(name: &str) -> Option<(String, usize)> {
    let (block, rest) = name.split_once("self_attn.")?;
    let (projection, suffix) = rest.split_once('.')?;
    let part = ["q_proj", "k_proj", "v_proj"].iter().position(|p| *p == projection)?;
    Some((format!("{block}self_attn.qkv_proj.{suffix}"), part))
}

impl Weights for ClipVisionWeights {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let store = &self.0;
        if !store.contains(name) {
            if let Some((fused, part)) = fused_part(name).filter(|(fused, _)| store.contains(fused)) {
                let rows = shape.first().copied().unwrap_or(0);
                let mut fused_shape = shape.to_vec();
                if let Some(first) = fused_shape.first_mut() {
                    *first *= 3;
                }
                let all = store.tensor(&fused, &fused_shape, dtype, device)?;
                return Ok(all.narrow(0, part * rows, rows)?.contiguous()?);
            }
        }
        // The same values with leading unit dimensions (`[1, N, W]` for `[N, W]`).
        if let Ok(stored) = store.shape(name) {
            let squeezed: Vec<usize> = stored.iter().copied().skip_while(|&d| d == 1).collect();
            if stored != shape && squeezed == shape.iter().copied().skip_while(|&d| d == 1).collect::<Vec<_>>() {
                let stored = stored.to_vec();
                return Ok(store.tensor(name, &stored, dtype, device)?.reshape(shape)?);
            }
        }
        store.tensor(name, shape, dtype, device)
    }
}

impl TensorShapes for ClipVisionWeights {
    fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        self.0.tensor_shape(name)
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.0.has_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_parts_are_found_for_projections_only() {
        let fused = "encoder.layers.3.self_attn.qkv_proj.weight".to_string();
        assert_eq!(fused_part("encoder.layers.3.self_attn.k_proj.weight"), Some((fused, 1)));
        assert_eq!(fused_part("encoder.layers.3.self_attn.v_proj.bias").map(|p| p.1), Some(2));
        assert_eq!(fused_part("encoder.layers.3.self_attn.out_proj.weight"), None);
        assert_eq!(fused_part("encoder.layers.3.mlp.fc1.weight"), None);
    }
}
