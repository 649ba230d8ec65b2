//! Memory planning: will a model and its working set fit on the device, and if not, which flag
//! makes it fit. Checked before any work, so a run that cannot fit fails in one sentence
//! instead of after minutes of loading.
//!
//! The estimates are deliberately simple and slightly generous: weights are parameters times
//! their storage size; the transformer's working set is the largest per-block transient (the
//! FFN's hidden activations, q/k/v and the attention score chunk) plus the residual stream,
//! for the two guidance passes one after the other.

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::models::TransformerConfig;
use crate::nn::WeightFormat;

/// Bytes per stored value.
fn bytes_per(dtype: DType) -> u64 {
    dtype.size_in_bytes() as u64
}

/// What one model on one device needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Footprint {
    /// Resident weights.
    pub weights: u64,
    /// Peak transient memory while it runs.
    pub working: u64,
}

impl Footprint {
    /// Weights and working set together.
    pub fn total(&self) -> u64 {
        self.weights + self.working
    }
}

/// Scores the GPU attention holds at once (bf16 or f32 elements).
const ATTENTION_SCORES: u64 = crate::nn::GPU_SCORE_BUDGET as u64;

/// The transformer's footprint for windows of `tokens` latent tokens (`frames · h/2 · w/2`),
/// weights in `dtype` (`format` for the block matrices), activations in `compute`.
pub fn transformer_footprint(
    config: &TransformerConfig,
    parameters: u64,
    tokens: u64,
    (dtype, format, compute): (DType, WeightFormat, DType),
) -> Footprint {
    let dim = config.dim() as u64;
    let block_matrices = config.num_layers as u64 * (8 * dim * dim + 2 * dim * config.ffn_dim as u64);
    let block_matrices = block_matrices.min(parameters);
    let weights = match format {
        WeightFormat::Native => parameters * bytes_per(dtype),
        // One byte a value plus a scale per row, and the widest layer widened at a time.
        WeightFormat::Fp8 => {
            block_matrices + (parameters - block_matrices) * bytes_per(dtype) + dim * config.ffn_dim as u64 * 4
        }
    };
    let act = bytes_per(compute);
    let ffn_hidden = tokens * config.ffn_dim as u64 * act;
    let qkv = 3 * tokens * dim * act;
    // The residual stream in f32, its normalised copy and the attention output.
    let stream = 3 * tokens * dim * 4;
    let scores = ATTENTION_SCORES * act * 2;
    Footprint { weights, working: stream + qkv + ffn_hidden.max(scores) }
}

/// The streaming VAE decoder's footprint at `height × width` pixels (f32): its weights and the
/// caches of its causal convolutions, about 1.2 G values at 544×960 (from the layer shapes).
pub fn vae_decode_footprint(height: usize, width: usize) -> Footprint {
    const VALUES_PER_PIXEL: u64 = 1_200_000_000 / (544 * 960);
    Footprint { weights: 512 << 20, working: VALUES_PER_PIXEL * (height * width) as u64 * 4 }
}

/// Refuses, in one sentence naming `what` and the flag that would help, when `needed` bytes
/// exceed what `device` has free. On the CPU (where memory is the operating system's) it passes.
pub fn ensure_fits(device: &Device, what: &str, needed: u64, hint: &str) -> Result<()> {
    match crate::device::device_memory(device) {
        Some((free, _)) => ensure_fits_in(free, what, needed, hint),
        None => Ok(()),
    }
}

/// [`ensure_fits`] against a known amount of free memory.
pub fn ensure_fits_in(free: u64, what: &str, needed: u64, hint: &str) -> Result<()> {
    if needed <= free {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(Error::WontFit(format!(
        "{what} needs about {:.1} GiB of GPU memory but only {:.1} GiB is free: {hint}",
        gib(needed),
        gib(free)
    )))
}

/// The process's peak resident set (`VmHWM`) in MiB, where /proc provides it.
pub fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    /// DF-1.3B at 540P (25 × 34 × 60 tokens) in bf16 fits an H100 with room to spare; DF-14B in
    /// bf16 does not fit 24 GB, FP8 roughly halves its weights.
    #[test]
    fn released_sizes_give_plausible_footprints() {
        let small = TransformerConfig::preset("df-1.3b").unwrap();
        let tokens = 25 * 34 * 60;
        let held = (DType::BF16, WeightFormat::Native, DType::BF16);
        let f = transformer_footprint(&small, 1_418_000_000, tokens, held);
        assert!((2 * GIB..4 * GIB).contains(&f.weights), "{f:?}");
        assert!((GIB..8 * GIB).contains(&f.working), "{f:?}");
        let big = TransformerConfig::preset("df-14b").unwrap();
        let native = transformer_footprint(&big, 14_300_000_000, tokens, held);
        let fp8 = transformer_footprint(&big, 14_300_000_000, tokens, (DType::BF16, WeightFormat::Fp8, DType::BF16));
        assert!(native.weights > 26 * GIB && fp8.weights < native.weights * 6 / 10, "{native:?} {fp8:?}");
        assert!(ensure_fits_in(24 * GIB, "DF-14B", native.total(), "pass --weights fp8").is_err());
    }

    #[test]
    fn a_configuration_that_cannot_fit_is_one_sentence_with_the_flag() {
        assert!(ensure_fits_in(10 * GIB, "the transformer", 9 * GIB, "x").is_ok());
        let err = ensure_fits_in(10 * GIB, "the text encoder (umT5-XXL)", 11 * GIB, "pass --text-encoder-device cpu")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the text encoder (umT5-XXL) needs about 11.0 GiB of GPU memory but only 10.0 GiB is free: \
             pass --text-encoder-device cpu"
        );
        assert!(ensure_fits(&Device::Cpu, "anything", u64::MAX, "x").is_ok());
    }
}
