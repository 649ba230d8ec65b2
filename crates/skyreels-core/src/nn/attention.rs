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

/// Upper bound on the number of attention scores held at once on the CPU (f32, 256 MiB).
const SCORE_BUDGET: usize = 64 * 1024 * 1024;

/// Upper bound on the attention scores held at once on a GPU (bf16, 512 MiB): longer query chunks keep the tensor cores busy and
/// cut kernel launches (a 540P window has ~51k keys: ~420 query rows per chunk at 12 heads).
pub const GPU_SCORE_BUDGET: usize = 256 * 1024 * 1024;

/// `softmax(q·kᵀ·scale)·v` for `q` `[B, H, Lq, D]` and `k`, `v` `[B, H, Lk, D]`.
///
/// Queries are processed in chunks so the score matrix never exceeds a fixed budget, whatever
/// the sequence length; the block-causal mask is applied by limiting each query block to its
/// key prefix (frame-major tokens make the allowed keys a prefix), which needs no mask tensor.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, mask: AttentionMask) -> Result<Tensor> {
    let budget = if q.device().is_cpu() { SCORE_BUDGET } else { GPU_SCORE_BUDGET };
    attention_within(q, k, v, scale, mask, budget)
}

/// Attention over heads-last tensors (`q [B, Lq, H·Dh]`, `k, v [B, Lk, H·Dh]`, as the
/// projections produce them) → `[B, Lq, H·Dh]`. On the CPU in f32 one fused operation with its
/// own backward pass ([`super::fused_attention`]); elsewhere split into heads for [`attention`].
/// `products` is the dtype of the two matrix products' operands: bf16 with f32 inputs on the
/// CPU multiplies them as bf16 with f32 sums (where the CPU has a bf16 kernel), as bf16
/// activations would; otherwise the inputs' dtype.
pub fn attention_heads_last(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    mask: AttentionMask,
    products: DType,
) -> Result<Tensor> {
    if [q, k, v].iter().all(|t| super::fused::applies(t)) {
        let causal_block = match mask {
            AttentionMask::Full => None,
            AttentionMask::BlockCausal { tokens_per_block } => Some(tokens_per_block),
        };
        let bf16_products = products == DType::BF16;
        let op = super::fused_attention::HeadsLastAttention {
            heads,
            scale: scale as f32,
            causal_block,
            bf16_products,
            bias: None,
        };
        return Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?);
    }
    merge_heads(&attention(&split_heads(q, heads)?, &split_heads(k, heads)?, &split_heads(v, heads)?, scale, mask)?)
}

/// An additive bias on attention scores: a per-head function of the key–query offset plus a
/// per-key term — T5's relative position bias and its padding mask — which never needs an
/// `Lq × Lk` tensor.
#[derive(Debug, Clone)]
pub struct OffsetBias {
    /// `[H, Lq + Lk − 1]`: the bias of key `j` for query `i` at `j − i + Lq − 1`.
    pub relative: Tensor,
    /// `[B, Lk]`: added to every query's score of key `j` (a large negative value on padding).
    pub keys: Tensor,
}

/// `softmax(q·kᵀ·scale + bias)·v` over heads-last tensors (`q [B, Lq, H·Dh]`, `k, v
/// [B, Lk, H·Dh]`) → `[B, Lq, H·Dh]`: on the CPU in f32 the fused operation with the bias added
/// to each chunk of scores; elsewhere, or when gradients flow through any input or the bias
/// (training umT5), split into heads with the bias expanded to `[H, Lq, Lk]`, which candle
/// differentiates.
pub fn biased_attention_heads_last(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    bias: &OffsetBias,
) -> Result<Tensor> {
    let (b, lq, _) = q.dims3()?;
    let lk = k.dim(1)?;
    let expected = (bias.relative.dims() == [heads, lq + lk - 1], bias.keys.dims() == [b, lk]);
    if expected != (true, true) {
        return Err(invalid_input!(
            "a score bias of {:?} offsets and {:?} keys for {heads} heads, {lq} queries and {b}×{lk} keys",
            bias.relative.dims(),
            bias.keys.dims()
        ));
    }
    let tracked = [q, k, v, &bias.relative, &bias.keys].iter().any(|t| t.track_op());
    if tracked || ![q, k, v].iter().all(|t| super::fused::applies(t)) {
        return biased_attention_split(q, k, v, heads, scale, bias);
    }
    let values = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
    let bias =
        super::fused_attention::OffsetBiasValues { relative: values(&bias.relative)?, keys: values(&bias.keys)? };
    let op = super::fused_attention::HeadsLastAttention {
        heads,
        scale: scale as f32,
        causal_block: None,
        bf16_products: false,
        bias: Some(std::sync::Arc::new(bias)),
    };
    Ok(q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?)
}

/// [`biased_attention_heads_last`] with the heads split and the bias expanded (any device).
fn biased_attention_split(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
    bias: &OffsetBias,
) -> Result<Tensor> {
    let (b, lq, _) = q.dims3()?;
    let lk = k.dim(1)?;
    let offsets: Vec<u32> = (0..lq * lk).map(|n| (n % lk + lq - 1 - n / lk) as u32).collect();
    let offsets = Tensor::from_vec(offsets, lq * lk, bias.relative.device())?;
    let expanded = bias.relative.index_select(&offsets, 1)?.reshape((1, heads, lq, lk))?;
    let (q, k, v) = (split_heads(q, heads)?, split_heads(k, heads)?, split_heads(v, heads)?);
    let scores = (q.matmul(&k.t()?)? * scale)?
        .broadcast_add(&expanded.to_dtype(q.dtype())?)?
        .broadcast_add(&bias.keys.reshape((b, 1, 1, lk))?.to_dtype(q.dtype())?)?;
    merge_heads(&softmax_last_dim(&scores)?.matmul(&v)?)
}

/// The DiT's self-attention core on heads-last tensors: the 3-D rotary embedding of `q` and `k`
/// (tables `[L, Dh/2]` from [`super::Rope3d`]), cast to `dtype`, then attention scaled by
/// `1/√Dh` → `[B, L, H·Dh]`. On the CPU in f32 both run fused, without splitting the heads, and
/// `dtype` bf16 only sets the products' operands ([`attention_heads_last`]'s `products`).
pub fn rotary_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    (cos, sin): (&Tensor, &Tensor),
    mask: AttentionMask,
    dtype: DType,
) -> Result<Tensor> {
    let head_dim = q.dim(candle_core::D::Minus1)? / heads.max(1);
    let scale = 1.0 / (head_dim as f64).sqrt();
    if matches!(dtype, DType::F32 | DType::BF16) && [q, k, v].iter().all(|t| super::fused::applies(t)) {
        let rotate = |x: &Tensor| -> Result<Tensor> {
            let op = super::fused::RotaryInterleaved { inverse: false };
            Ok(x.contiguous()?.apply_op3(
                &cos.to_dtype(DType::F32)?.contiguous()?,
                &sin.to_dtype(DType::F32)?.contiguous()?,
                op,
            )?)
        };
        return attention_heads_last(&rotate(q)?, &rotate(k)?, v, heads, scale, mask, dtype);
    }
    let q = super::Rope3d::apply(&split_heads(q, heads)?, cos, sin)?.to_dtype(dtype)?;
    let k = super::Rope3d::apply(&split_heads(k, heads)?, cos, sin)?.to_dtype(dtype)?;
    merge_heads(&attention(&q, &k, &split_heads(v, heads)?, scale, mask)?)
}

/// Splits `[B, L, H·Dh]` into `[B, H, L, Dh]`.
fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    Ok(x.reshape((b, l, heads, d / heads))?.transpose(1, 2)?.contiguous()?)
}

/// `[B, H, L, Dh]` → `[B, L, H·Dh]`.
fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.reshape((b, l, h * d))?)
}

/// [`attention`] holding at most `budget` scores at once.
fn attention_within(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: AttentionMask,
    budget: usize,
) -> Result<Tensor> {
    let (b, h, lq, _) = q.dims4()?;
    let lk = k.dims4()?.2;
    #[cfg(feature = "flash-attn")]
    if mask == AttentionMask::Full && q.device().is_cuda() && matches!(q.dtype(), DType::BF16 | DType::F16) {
        return flash(q, k, v, scale);
    }
    let k_t = k.transpose(2, 3)?.contiguous()?;
    let v = v.contiguous()?;
    match mask {
        AttentionMask::Full => chunked(q, &k_t, &v, scale, Rows { start: 0, len: lq, keys: lk }, b * h, budget),
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
                let rows = Rows { start, len: tokens_per_block, keys: visible };
                outs.push(chunked(q, &k_vis, &v_vis, scale, rows, b * h, budget)?);
            }
            Ok(Tensor::cat(&outs, 2)?)
        }
    }
}

/// A run of query rows and the number of keys they see.
#[derive(Debug, Clone, Copy)]
struct Rows {
    start: usize,
    len: usize,
    keys: usize,
}

/// Attention for query rows `start..start+len` against all keys given, in budget-sized chunks.
fn chunked(
    q: &Tensor,
    k_t: &Tensor,
    v: &Tensor,
    scale: f64,
    rows: Rows,
    heads: usize,
    budget: usize,
) -> Result<Tensor> {
    let Rows { start, len, keys } = rows;
    let rows_per_chunk = (budget / (keys * heads).max(1)).clamp(1, len.max(1));
    let mut outs = Vec::with_capacity(len.div_ceil(rows_per_chunk));
    let mut row = start;
    while row < start + len {
        let n = rows_per_chunk.min(start + len - row);
        let q_chunk = q.narrow(2, row, n)?.contiguous()?;
        let scores = q_chunk.matmul(k_t)?;
        let probs = if scores.device().is_cpu() {
            scaled_softmax_last_dim(&scores.to_dtype(DType::F32)?, scale)?.to_dtype(v.dtype())?
        } else {
            let scores = (scores * scale)?;
            // The GPU kernels accumulate bf16/f16 softmax in f32 and round the result once: the
            // arithmetic of the CPU line above, without an f32 copy of the scores.
            softmax_last_dim(&scores)?.to_dtype(v.dtype())?
        };
        outs.push(probs.matmul(v)?);
        row += n;
    }
    Ok(if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 2)? })
}

/// `softmax(x·scale)` over the last axis; on the CPU in f32 without gradients, one fused,
/// vectorised pass per row ([`ScaledSoftmax`]).
fn scaled_softmax_last_dim(x: &Tensor, scale: f64) -> Result<Tensor> {
    match fused_cpu_softmax(x, scale) {
        Some(probs) => probs,
        None => softmax_last_dim(&(x * scale)?),
    }
}

/// [`ScaledSoftmax`] where it applies (a CPU f32 tensor), else `None`.
fn fused_cpu_softmax(x: &Tensor, scale: f64) -> Option<Result<Tensor>> {
    let applies = x.device().is_cpu() && x.dtype() == DType::F32;
    let op = ScaledSoftmax { scale: scale as f32 };
    applies.then(|| {
        let x = x.contiguous()?;
        Ok(if x.track_op() { x.apply_op1(op)? } else { x.apply_op1_no_bwd(&op)? })
    })
}

/// Softmax over the last axis: [`ScaledSoftmax`] on the CPU in f32, candle's fused kernel on
/// other devices, or — when gradients flow through `x` (training) — the same maths from
/// differentiable primitives, since the fused kernels have no backward pass.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if let Some(probs) = fused_cpu_softmax(x, 1.0) {
        probs
    } else if x.track_op() {
        Ok(candle_nn::ops::softmax(x, candle_core::D::Minus1)?)
    } else {
        Ok(candle_nn::ops::softmax_last_dim(x)?)
    }
}

/// Rows per rayon task: the score rows of a DiT chunk hold thousands of keys each.
const SOFTMAX_ROWS: usize = 8;

/// Lanes of the independent partial maxima and sums, so that the reductions vectorise (a
/// sequential f32 sum cannot be reordered by the compiler).
const LANES: usize = 16;

/// `softmax(x·scale)` over the last axis of a contiguous f32 CPU tensor: scale, maximum,
/// exponentials ([`super::activation`]'s polynomial `exp`) and normalisation in one pass over
/// each row, vectorised and threaded. candle's kernel takes the exponentials through libm one
/// at a time (4% of a DiT forward), and the separate scaling was another pass over the scores.
struct ScaledSoftmax {
    scale: f32,
}

impl candle_core::CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "scaled-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let candle_core::CpuStorage::F32(data) = storage else { candle_core::bail!("scaled-softmax is f32 only") };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("scaled-softmax needs a contiguous input")
        };
        let input = &data[start..end];
        let len = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; input.len()];
        let scale = self.scale;
        out.par_chunks_mut(SOFTMAX_ROWS * len).zip(input.par_chunks(SOFTMAX_ROWS * len)).for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(len).zip(x.chunks_exact(len)) {
                super::activation::run_vectorised(
                    #[inline(always)]
                    || softmax_row(x, o, scale),
                );
            }
        });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    /// `dx = scale·p·(g − Σ g·p)` per row, from the probabilities `p` it produced.
    fn bwd(&self, _x: &Tensor, probs: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(probs.apply_op2_no_bwd(&grad.contiguous()?, &ScaledSoftmaxBackward { scale: self.scale })?))
    }
}

/// The gradient of [`ScaledSoftmax`] from its output and the output's gradient.
struct ScaledSoftmaxBackward {
    scale: f32,
}

impl candle_core::CustomOp2 for ScaledSoftmaxBackward {
    fn name(&self) -> &'static str {
        "scaled-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        probs: &candle_core::CpuStorage,
        pl: &candle_core::Layout,
        grad: &candle_core::CpuStorage,
        gl: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let contiguous = |s: &'_ candle_core::CpuStorage, l: &candle_core::Layout| -> candle_core::Result<Vec<f32>> {
            let candle_core::CpuStorage::F32(data) = s else { candle_core::bail!("scaled-softmax is f32 only") };
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("scaled-softmax needs contiguous input")
            };
            Ok(data[start..end].to_vec())
        };
        let (p, mut out) = (contiguous(probs, pl)?, contiguous(grad, gl)?);
        let len = pl.shape().dims().last().copied().unwrap_or(1).max(1);
        let scale = self.scale;
        out.par_chunks_mut(SOFTMAX_ROWS * len).zip(p.par_chunks(SOFTMAX_ROWS * len)).for_each(|(g, p)| {
            for (g, p) in g.chunks_exact_mut(len).zip(p.chunks_exact(len)) {
                super::activation::run_vectorised(
                    #[inline(always)]
                    || {
                        let mut acc = [0f32; LANES];
                        for (g, p) in g.chunks(LANES).zip(p.chunks(LANES)) {
                            for ((a, &g), &p) in acc.iter_mut().zip(g).zip(p) {
                                *a += g * p;
                            }
                        }
                        let dot: f32 = acc.iter().sum();
                        for (g, &p) in g.iter_mut().zip(p) {
                            *g = scale * p * (*g - dot);
                        }
                    },
                );
            }
        });
        Ok((candle_core::CpuStorage::F32(out), pl.shape().clone()))
    }
}

/// `softmax(x·scale)` of one row into `out`.
#[inline(always)]
pub(super) fn softmax_row(x: &[f32], out: &mut [f32], scale: f32) {
    out.copy_from_slice(x);
    softmax_row_in_place(out, scale);
}

/// `softmax(row·scale)` in place.
#[inline(always)]
pub(super) fn softmax_row_in_place(row: &mut [f32], scale: f32) {
    let inverse = exponentiate_row(row, scale);
    for o in row.iter_mut() {
        *o *= inverse;
    }
}

/// Replaces `row` by `exp(row·scale − max)` (the maximum of `row·scale`) and returns the
/// inverse of their sum: a softmax short of its normalisation, which callers fold into their
/// next pass. Maximum and sum in lanes, so both vectorise.
#[inline(always)]
pub(super) fn exponentiate_row(row: &mut [f32], scale: f32) -> f32 {
    let mut max = [f32::NEG_INFINITY; LANES];
    for x in row.chunks(LANES) {
        for (m, &x) in max.iter_mut().zip(x) {
            let scaled = x * scale;
            *m = if scaled > *m { scaled } else { *m };
        }
    }
    let max = max.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let mut sum = [0f32; LANES];
    for o in row.chunks_mut(LANES) {
        for (s, o) in sum.iter_mut().zip(o) {
            *o = super::activation::exp(*o * scale - max);
            *s += *o;
        }
    }
    1.0 / sum.iter().sum::<f32>()
}

/// FlashAttention-2 on CUDA (bf16/f16, no mask); expects and returns `[B, H, L, D]`.
#[cfg(feature = "flash-attn")]
fn flash(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let to_blhd = |t: &Tensor| t.transpose(1, 2).and_then(|t| t.contiguous());
    let out = candle_flash_attn::flash_attn(&to_blhd(q)?, &to_blhd(k)?, &to_blhd(v)?, scale as f32, false)?;
    Ok(out.transpose(1, 2)?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// `softmax(q·kᵀ·scale)·v` by the definition, in f64, with the block-causal rule spelt out.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, block: Option<usize>) -> Tensor {
        let as_f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec3::<f64>().unwrap();
        let (b, h, lq, d) = q.dims4().unwrap();
        let flat = |t: &Tensor| t.reshape((b * h, t.dim(2).unwrap(), d)).unwrap();
        let (q, k, v) = (as_f64(&flat(q)), as_f64(&flat(k)), as_f64(&flat(v)));
        let mut out = vec![0f64; b * h * lq * d];
        for bh in 0..b * h {
            for i in 0..lq {
                let visible = block.map_or(k[bh].len(), |n| (i / n + 1) * n);
                let scores: Vec<f64> = (0..visible)
                    .map(|j| q[bh][i].iter().zip(&k[bh][j]).map(|(a, b)| a * b).sum::<f64>() * scale)
                    .collect();
                let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for (j, w) in weights.iter().enumerate() {
                    for c in 0..d {
                        out[(bh * lq + i) * d + c] += w / total * v[bh][j][c];
                    }
                }
            }
        }
        Tensor::from_vec(out, (b, h, lq, d), &Device::Cpu).unwrap()
    }

    fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
        let (a, b) = (a.to_dtype(DType::F64).unwrap(), b.to_dtype(DType::F64).unwrap());
        let diff = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
        (diff / b.sqr().unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap()).sqrt()
    }

    /// The fused softmax's backward pass (taken when the scores need gradients) gives candle's
    /// gradients of `softmax(x·scale)`, also for rows longer than its lanes with a remainder.
    /// The offset bias by its definition in f64, heads-last: `softmax(q·kᵀ·scale + r[h][j − i + Lq
    /// − 1] + m[b][j])·v`.
    fn naive_biased(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64, bias: &OffsetBias) -> Tensor {
        let as_f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec3::<f64>().unwrap();
        let (q, k, v) = (as_f64(q), as_f64(k), as_f64(v));
        let relative = bias.relative.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        let keys = bias.keys.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
        let (b, lq, lk, width) = (q.len(), q[0].len(), k[0].len(), q[0][0].len());
        let d = width / heads;
        let mut out = vec![0f64; b * lq * width];
        for bi in 0..b {
            for h in 0..heads {
                for i in 0..lq {
                    let scores: Vec<f64> = (0..lk)
                        .map(|j| {
                            let dot: f64 = (0..d).map(|c| q[bi][i][h * d + c] * k[bi][j][h * d + c]).sum();
                            dot * scale + relative[h][j + lq - 1 - i] + keys[bi][j]
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for (j, w) in weights.iter().enumerate() {
                        for c in 0..d {
                            out[(bi * lq + i) * width + h * d + c] += w / total * v[bi][j][h * d + c];
                        }
                    }
                }
            }
        }
        Tensor::from_vec(out, (b, lq, width), &Device::Cpu).unwrap()
    }

    /// The fused CPU path (chunks of rows, the kernel's tiles) and the split one a GPU takes,
    /// against the definition: self- and cross-attention lengths, masked keys, a scale.
    #[test]
    fn offset_bias_attention_matches_the_definition() {
        let dev = Device::Cpu;
        for (b, lq, lk, heads, scale) in [(2, 13, 13, 3, 1.0), (1, 7, 20, 2, 0.3), (2, 300, 300, 2, 1.0)] {
            let q = Tensor::randn(0f32, 1.0, (b, lq, heads * 8), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (b, lk, heads * 8), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (b, lk, heads * 8), &dev).unwrap();
            let relative = Tensor::randn(0f32, 2.0, (heads, lq + lk - 1), &dev).unwrap();
            // The last sample's last three keys are padding.
            let keys: Vec<f32> = (0..b * lk).map(|n| if n >= b * lk - 3 { f32::MIN } else { 0.0 }).collect();
            let bias = OffsetBias { relative, keys: Tensor::from_vec(keys, (b, lk), &dev).unwrap() };
            let exact = naive_biased(&q, &k, &v, heads, scale, &bias);
            let fused = biased_attention_heads_last(&q, &k, &v, heads, scale, &bias).unwrap();
            let split = biased_attention_split(&q, &k, &v, heads, scale, &bias).unwrap();
            for (path, ours) in [("fused", &fused), ("split", &split)] {
                let err = rel_l2(ours, &exact);
                assert!(err < 1e-5, "{path}, {b}×{lq}×{lk}, {heads} heads: relative error {err:e}");
            }
        }
        // With gradients flowing (umT5 in training) every input and the bias table get theirs.
        let (b, lq, heads) = (1, 5, 2);
        let var = |dims: (usize, usize, usize)| candle_core::Var::randn(0f32, 1.0, dims, &dev).unwrap();
        let (q, k, v) = (var((b, lq, heads * 4)), var((b, lq, heads * 4)), var((b, lq, heads * 4)));
        let relative = candle_core::Var::randn(0f32, 1.0, (heads, 2 * lq - 1), &dev).unwrap();
        let bias = OffsetBias {
            relative: relative.as_tensor().clone(),
            keys: Tensor::zeros((b, lq), DType::F32, &dev).unwrap(),
        };
        let out = biased_attention_heads_last(&q, &k, &v, heads, 1.0, &bias).unwrap();
        let grads = (out.sqr().unwrap().sum_all().unwrap()).backward().unwrap();
        for (name, t) in
            [("q", q.as_tensor()), ("k", k.as_tensor()), ("v", v.as_tensor()), ("bias", relative.as_tensor())]
        {
            let g = grads.get(t).unwrap_or_else(|| panic!("no gradient for {name}"));
            assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name}'s gradient is zero");
        }
        let q = Tensor::zeros((1, 4, 8), DType::F32, &dev).unwrap();
        let wrong = OffsetBias {
            relative: Tensor::zeros((2, 6), DType::F32, &dev).unwrap(),
            keys: Tensor::zeros((1, 4), DType::F32, &dev).unwrap(),
        };
        assert!(biased_attention_heads_last(&q, &q, &q, 2, 1.0, &wrong).is_err(), "7 offsets are needed, not 6");
    }

    #[test]
    fn fused_softmax_gradient_matches_candles() {
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 4, 37), &Device::Cpu).unwrap()).unwrap();
        let weights = Tensor::randn(0f32, 1.0, (3, 4, 37), &Device::Cpu).unwrap();
        let gradient = |probs: Tensor| {
            let grads = (probs * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            grads.get(x.as_tensor()).unwrap().clone()
        };
        let ours = gradient(scaled_softmax_last_dim(x.as_tensor(), 0.3).unwrap());
        let candle =
            gradient(candle_nn::ops::softmax(&(x.as_tensor() * 0.3).unwrap(), candle_core::D::Minus1).unwrap());
        let diff = (&ours - &candle).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let size = candle.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-5 * size, "softmax gradients differ by {diff} (largest {size})");
    }

    #[test]
    fn the_fused_softmax_matches_candles() {
        for (rows, len, scale) in [(3, 1, 1.0), (5, 37, 0.125), (17, 1950, 0.088), (2, 16, -2.0)] {
            let x = (Tensor::randn(0f32, 3.0, (rows, len), &Device::Cpu).unwrap() + 40.0).unwrap();
            let ours = scaled_softmax_last_dim(&x, scale).unwrap();
            let theirs = candle_nn::ops::softmax_last_dim(&(&x * scale).unwrap()).unwrap();
            let err = rel_l2(&ours, &theirs);
            assert!(err < 1e-6, "{rows}x{len}: {err:.2e}");
            let sums = ours.sum(1).unwrap().to_vec1::<f32>().unwrap();
            assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "rows sum to 1: {sums:?}");
        }
    }

    /// Chunked down to one query row at a time, both masks, f32 exact and bf16 (the GPU's
    /// dtype: bf16 scores and probabilities, f32 softmax accumulation) within bf16's rounding.
    #[test]
    fn chunked_attention_matches_the_definition_in_f32_and_bf16() {
        let dev = Device::Cpu;
        let (b, h, l, d) = (2, 3, 12, 8);
        let q = Tensor::randn(0f32, 1.0, (b, h, l, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (b, h, l, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (b, h, l, d), &dev).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        for (mask, block) in
            [(AttentionMask::Full, None), (AttentionMask::BlockCausal { tokens_per_block: 4 }, Some(4))]
        {
            let expected = naive(&q, &k, &v, scale, block);
            for budget in [1, 7 * b * h, SCORE_BUDGET] {
                let out = attention_within(&q, &k, &v, scale, mask, budget).unwrap();
                let err = rel_l2(&out, &expected);
                assert!(err < 1e-6, "{mask:?}, budget {budget}: f32 error {err:.2e}");
            }
            let bf16 = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
            let out = attention_within(&bf16(&q), &bf16(&k), &bf16(&v), scale, mask, 7 * b * h).unwrap();
            assert_eq!(out.dtype(), DType::BF16);
            let err = rel_l2(&out, &expected);
            assert!(err < 1.5e-2, "{mask:?}: bf16 error {err:.2e}");
        }
    }
}
