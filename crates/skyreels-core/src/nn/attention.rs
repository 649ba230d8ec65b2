//! Scaled dot-product attention with bounded memory and the block-causal mask of diffusion forcing.

use candle_core::{DType, Tensor};

use crate::error::{invalid_input, Result};

/// Which keys a query may attend to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMask {
    /// Every query sees every key.
    Full,
    /// Tokens form consecutive blocks of `tokens_per_block`; a query in block `b` sees the keys of
    /// blocks `0..=b` only. With frame-major tokens and `causal_block_size · h·w` tokens per block
    /// this is SkyReels' block-causal frame mask.
    BlockCausal {
        /// Number of tokens in one causal block.
        tokens_per_block: usize,
    },
}

/// Upper bound on the number of attention scores held at once (f32 elements, 256 MiB).
const SCORE_BUDGET: usize = 64 * 1024 * 1024;

/// `softmax(q·kᵀ·scale)·v` for `q` `[B, H, Lq, D]` and `k`, `v` `[B, H, Lk, D]`.
///
/// Queries are processed in chunks so the score matrix never exceeds a fixed budget, whatever
/// the sequence length; the block-causal mask is applied by limiting each query block to its
/// key prefix (frame-major tokens make the allowed keys a prefix), which needs no mask tensor.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: AttentionMask) -> Result<Tensor> {
    let (b, h, lq, _) = q.dims4()?;
    let lk = k.dims4()?.2;
    #[cfg(feature = "flash-attn")]
    if mask == AttentionMask::Full && q.device().is_cuda() && matches!(q.dtype(), DType::BF16 | DType::F16) {
        return flash(q, k, v, scale);
    }
    let k_t = k.transpose(2, 3)?.contiguous()?;
    let v = v.contiguous()?;
    match mask {
        AttentionMask::Full => chunked(q, &k_t, &v, scale, 0, lq, lk, b * h),
        AttentionMask::BlockCausal { tokens_per_block } => {
            if tokens_per_block == 0 || lq != lk || lq % tokens_per_block != 0 {
                return Err(invalid_input!(
                    "block-causal attention needs {lq} tokens to split into blocks of {tokens_per_block}"
                ));
            }
            let mut outs = Vec::with_capacity(lq / tokens_per_block);
            for start in (0..lq).step_by(tokens_per_block) {
                let visible = start + tokens_per_block;
                let k_vis = k_t.narrow(3, 0, visible)?;
                let v_vis = v.narrow(2, 0, visible)?;
                outs.push(chunked(q, &k_vis, &v_vis, scale, start, tokens_per_block, visible, b * h)?);
            }
            Ok(Tensor::cat(&outs, 2)?)
        }
    }
}

/// Attention for query rows `start..start+len` against all keys given, in budget-sized chunks.
#[allow(clippy::too_many_arguments)]
fn chunked(
    q: &Tensor,
    k_t: &Tensor,
    v: &Tensor,
    scale: f64,
    start: usize,
    len: usize,
    keys: usize,
    heads: usize,
) -> Result<Tensor> {
    let rows_per_chunk = (SCORE_BUDGET / (keys * heads).max(1)).clamp(1, len.max(1));
    let mut outs = Vec::with_capacity(len.div_ceil(rows_per_chunk));
    let mut row = start;
    while row < start + len {
        let n = rows_per_chunk.min(start + len - row);
        let q_chunk = q.narrow(2, row, n)?.contiguous()?;
        let scores = (q_chunk.matmul(k_t)? * scale)?;
        let probs = softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        outs.push(probs.matmul(v)?);
        row += n;
    }
    Ok(if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 2)? })
}

/// Softmax over the last axis: candle's fused kernel, or — when gradients flow through `x`
/// (training) — the same maths from differentiable primitives, since the fused kernel has no
/// backward pass.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() {
        Ok(candle_nn::ops::softmax(x, candle_core::D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

/// FlashAttention-2 on CUDA (bf16/f16, no mask); expects and returns `[B, H, L, D]`.
#[cfg(feature = "flash-attn")]
fn flash(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let to_blhd = |t: &Tensor| t.transpose(1, 2).and_then(|t| t.contiguous());
    let out = candle_flash_attn::flash_attn(&to_blhd(q)?, &to_blhd(k)?, &to_blhd(v)?, scale as f32, false)?;
    Ok(out.transpose(1, 2)?.contiguous()?)
}
