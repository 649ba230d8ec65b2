//! Attention as one CPU operation, forward and backward, on the `[B, L, H·Dh]` layout the
//! projections produce: no head split or merge copies, no score tensor in the autograd graph.
//!
//! Per sample, head and chunk of query rows: `S = q·kᵀ` (one GEMM into a scratch buffer), the
//! vectorised softmax of [`super::attention`] with the scale folded in, `o = P·v` (one GEMM
//! straight into the output's columns of that head). The backward pass recomputes `P` the same
//! way and accumulates `dv += Pᵀ·do`, `dS = scale·P⊙(do·vᵀ − rowsum(P⊙do·vᵀ))`, `dq = dS·k`,
//! `dk += dSᵀ·q`. Scores live one chunk of rows at a time, so memory stays bounded for long
//! sequences; block-causal masks are kept by giving each chunk only the keys its block sees.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{exponentiate_row, softmax_row_in_place};
use super::gemm_bf16::{self, rows_operand, MicroKernel, Operands, Packed, SharedMut, WithKernel, NR};
use super::gemm_f32;

/// Scores held per chunk of query rows (per thread): 256 KiB of f32.
const CHUNK_SCORES: usize = 1 << 16;

/// Attention over `q [B, Lq, H·Dh]`, `k, v [B, Lk, H·Dh]` → `[B, Lq, H·Dh]`.
#[derive(Clone)]
pub(super) struct HeadsLastAttention {
    pub heads: usize,
    pub scale: f32,
    /// Block-causal mask: a query row in block `i` (of this many tokens) sees the keys of
    /// blocks `0..=i`. `None` is full attention.
    pub causal_block: Option<usize>,
    /// Multiply with bf16 operands and f32 sums (`q·kᵀ` and `P·v`; the softmax stays f32), on
    /// CPUs with a bf16 kernel (`gemm_bf16::engine`); elsewhere the products stay f32.
    pub bf16_products: bool,
    /// Added to the scaled scores before the softmax (forward only: with a bias the operation
    /// has no backward pass).
    pub bias: Option<Arc<OffsetBiasValues>>,
}

/// An additive bias on scaled scores: `relative[h·(Lq + Lk − 1) + j − i + Lq − 1] + keys[b·Lk + j]`
/// for query row `i` and key `j` of head `h` in sample `b` (T5's relative position bias and its
/// padding mask).
#[derive(Debug)]
pub(super) struct OffsetBiasValues {
    pub relative: Vec<f32>,
    pub keys: Vec<f32>,
}

/// Query rows `(start, rows, visible keys)` handled together.
type Chunk = (usize, usize, usize);

/// The geometry of one call.
#[derive(Clone, Copy)]
struct Shapes {
    batch: usize,
    lq: usize,
    lk: usize,
    heads: usize,
    head_dim: usize,
}

impl Shapes {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// Row-major strided view for [`gemm`]: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct View {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl View {
    /// The transposed view of the same elements.
    fn t(self) -> Self {
        Self { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// `dst[m, n] (= or +=) alpha·lhs[m, k]·rhs[k, n]`, single-threaded (the callers run one task
/// per head on each core).
///
/// # Safety
/// The views must address valid `m×k`, `k×n` and `m×n` element ranges; `dst` must not alias
/// the inputs.
unsafe fn gemm((m, n, k): (usize, usize, usize), dst: View, accumulate: bool, lhs: View, rhs: View, alpha: f32) {
    gemm::gemm(
        m,
        n,
        k,
        dst.ptr as *mut f32,
        dst.cs,
        dst.rs,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        alpha,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

impl HeadsLastAttention {
    fn shapes(&self, ql: &Layout, kl: &Layout, vl: &Layout) -> candle_core::Result<Shapes> {
        let (&[batch, lq, width], &[kb, lk, kw]) = (ql.shape().dims(), kl.shape().dims()) else {
            bail!("heads-last attention takes [B, L, H·Dh] tensors, got {:?} and {:?}", ql.shape(), kl.shape())
        };
        if kb != batch
            || kw != width
            || vl.shape() != kl.shape()
            || self.heads == 0
            || !width.is_multiple_of(self.heads)
        {
            bail!(
                "heads-last attention: q {:?}, k {:?}, v {:?} with {} heads",
                ql.shape(),
                kl.shape(),
                vl.shape(),
                self.heads
            );
        }
        if let Some(block) = self.causal_block {
            if block == 0 || lq != lk || !lq.is_multiple_of(block) {
                bail!("block-causal attention needs {lq} tokens to split into blocks of {block}");
            }
        }
        if let Some(bias) = &self.bias {
            if bias.relative.len() != self.heads * (lq + lk - 1) || bias.keys.len() != batch * lk {
                bail!(
                    "heads-last attention: a bias of {} offsets and {} keys for {} heads, {lq} queries, {batch}×{lk} keys",
                    bias.relative.len(),
                    bias.keys.len(),
                    self.heads
                );
            }
        }
        Ok(Shapes { batch, lq, lk, heads: self.heads, head_dim: width / self.heads })
    }

    /// Adds the bias (if any) to the scores of rows `start..start + rows` of head `(b, h)` over
    /// `visible` keys, scaling them first, and returns the scale the softmax has left to apply.
    fn add_bias(&self, s: &Shapes, scores: &mut [f32], (b, h): (usize, usize), (start, _, visible): Chunk) -> f32 {
        let Some(bias) = &self.bias else { return self.scale };
        let span = s.lq + s.lk - 1;
        let keys = &bias.keys[b * s.lk..b * s.lk + visible];
        for (i, row) in (start..).zip(scores.chunks_exact_mut(visible)) {
            let relative = &bias.relative[h * span + s.lq - 1 - i..][..visible];
            super::activation::run_vectorised(
                #[inline(always)]
                || {
                    for ((x, r), m) in row.iter_mut().zip(relative).zip(keys) {
                        *x = *x * self.scale + r + m;
                    }
                },
            );
        }
        1.0
    }

    /// Chunks of query rows `(start, rows, visible keys)`: within one causal block each, and
    /// at most [`CHUNK_SCORES`] scores, or one multiple of `rows_multiple` rows when that is
    /// more (a whole tile of the bf16 kernel).
    fn chunks(&self, s: &Shapes, rows_multiple: usize) -> Vec<Chunk> {
        let block = self.causal_block.unwrap_or(s.lq).max(1);
        let rows = (CHUNK_SCORES / s.lk.max(1) / rows_multiple).max(1) * rows_multiple;
        let rows = rows.clamp(1, block);
        let mut chunks = Vec::new();
        for block_start in (0..s.lq).step_by(block) {
            let block_end = (block_start + block).min(s.lq);
            let visible = if self.causal_block.is_some() { block_end } else { s.lk };
            for start in (block_start..block_end).step_by(rows) {
                chunks.push((start, rows.min(block_end - start), visible));
            }
        }
        chunks
    }

    /// `P` of rows `start..start + rows` of head `(b, h)` over `visible` keys, into `probs`.
    ///
    /// # Safety
    /// `q` and `k` hold `s`-shaped tensors.
    unsafe fn probabilities(
        &self,
        s: &Shapes,
        q: &[f32],
        k: &[f32],
        (b, h): (usize, usize),
        (start, rows, visible): (usize, usize, usize),
        probs: &mut [f32],
    ) {
        let w = s.width() as isize;
        let q_view = View { ptr: q.as_ptr().add((b * s.lq + start) * s.width() + h * s.head_dim), rs: w, cs: 1 };
        let k_view = View { ptr: k.as_ptr().add(b * s.lk * s.width() + h * s.head_dim), rs: w, cs: 1 };
        let scores = View { ptr: probs.as_mut_ptr(), rs: visible as isize, cs: 1 };
        gemm((rows, visible, s.head_dim), scores, false, q_view, k_view.t(), 1.0);
        let scale = self.add_bias(s, &mut probs[..rows * visible], (b, h), (start, rows, visible));
        for row in probs[..rows * visible].chunks_exact_mut(visible) {
            super::activation::run_vectorised(
                #[inline(always)]
                || softmax_row_in_place(row, scale),
            );
        }
    }
}

/// The forward pass on a micro-kernel of `gemm_bf16` or `gemm_f32`: per head, the keys and
/// values are packed once as the kernel's panels; per chunk of query rows, `S = q·kᵀ` on the
/// kernel, the f32 softmax, then `o = P·v` on the kernel, straight into the output's columns of
/// that head. With bf16 operands `q` and `P` are rounded into copies; f32 ones are read where
/// they lie.
struct KernelForward<'a> {
    op: &'a HeadsLastAttention,
    s: Shapes,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl WithKernel for KernelForward<'_> {
    type Output = Vec<f32>;

    fn run<K: MicroKernel>(self) -> Vec<f32> {
        let Self { op, s, q, k, v } = self;
        let (d, w) = (s.head_dim, s.width());
        let d_units = K::Operands::units(d).next_multiple_of(K::PAIR_STEP);
        let key_units = K::Operands::units(s.lk).next_multiple_of(K::PAIR_STEP);
        let panels: Vec<(Vec<u32>, Vec<u32>)> = (0..s.batch * s.heads)
            .into_par_iter()
            .map(|bh| {
                let base = (bh / s.heads) * s.lk * w + (bh % s.heads) * d;
                (
                    K::Operands::panels_of_rows(&k[base..], [s.lk, d, w], d_units),
                    K::Operands::panels_of_columns(&v[base..], [s.lk, d, w], key_units),
                )
            })
            .collect();
        // Written in full by the tasks (every row of every head) before it is read.
        let mut out: Vec<f32> = Vec::with_capacity(s.batch * s.lq * w);
        let out_ptr = SharedMut(out.as_mut_ptr());
        let chunks = op.chunks(&s, K::ROWS);
        let tasks: Vec<(usize, usize, usize)> = (0..s.batch * s.heads)
            .flat_map(|bh| (0..chunks.len()).map(move |c| (bh / s.heads, bh % s.heads, c)))
            .collect();
        tasks.par_iter().for_each(|&(b, h, c)| {
            let (start, rows, visible) = chunks[c];
            let (key_panels, value_panels) = &panels[b * s.heads + h];
            let padded_rows = rows.next_multiple_of(K::ROWS);
            let q_rows = &q[(b * s.lq + start) * w + h * d..];
            let (q_rows, q_stride) = rows_operand::<K::Operands>(q_rows, [rows, d, w], [padded_rows, d_units]);
            let mut probs: Vec<f32> = Vec::with_capacity(rows * visible);
            let scores = Packed {
                a: &q_rows,
                a_pairs: q_stride,
                b: key_panels,
                b_pairs: d_units,
                pairs: d_units,
                m: rows,
                n: visible,
                bias: None,
            };
            // SAFETY: `probs` has room for `rows × visible`; the operands were packed for `K`.
            unsafe {
                gemm_bf16::multiply_tiles::<K>(
                    &scores,
                    0..rows.div_ceil(K::ROWS),
                    0..visible.div_ceil(NR),
                    probs.as_mut_ptr(),
                    visible,
                );
                // Every score was written just above (the tiles cover all rows and keys).
                probs.set_len(rows * visible);
            };
            let scale = op.add_bias(&s, &mut probs, (b, h), chunks[c]);
            let p_units = K::Operands::units(visible).next_multiple_of(K::PAIR_STEP);
            let (probs, p_stride) =
                probabilities_operand::<K::Operands>(&mut probs, visible, scale, [padded_rows, p_units]);
            let weighted = Packed {
                a: &probs,
                a_pairs: p_stride,
                b: value_panels,
                b_pairs: key_units,
                pairs: p_units,
                m: rows,
                n: d,
                bias: None,
            };
            // SAFETY: this task alone writes rows `start..start + rows` of head `h`'s columns of
            // `out` (stride `w`); `p_units ≤ key_units` because `visible ≤ lk`.
            unsafe {
                let dst = out_ptr.at((b * s.lq + start) * w + h * d);
                gemm_bf16::multiply_tiles::<K>(&weighted, 0..rows.div_ceil(K::ROWS), 0..d.div_ceil(NR), dst, w)
            };
        });
        // SAFETY: the tasks wrote all `lq` rows of every head's columns of every sample.
        unsafe { out.set_len(s.batch * s.lq * w) };
        out
    }
}

/// The softmax of each row of `visible` scores in `scores` (scaled by `scale`) as the `a` of
/// `P·v` (`rows × units` units) and its row stride: normalised in place when the operands are
/// f32 values, else rounded into a copy in the pass that normalises them (`scores` is then left
/// holding the unnormalised exponentials).
fn probabilities_operand<O: Operands>(
    scores: &mut [f32],
    visible: usize,
    scale: f32,
    [rows, units]: [usize; 2],
) -> (Cow<'_, [u32]>, usize) {
    if O::IN_PLACE {
        for row in scores.chunks_exact_mut(visible) {
            super::activation::run_vectorised(
                #[inline(always)]
                || softmax_row_in_place(row, scale),
            );
        }
        return (Cow::Borrowed(gemm_f32::as_units(scores)), visible);
    }
    let mut operand = vec![0u32; rows * units];
    for (row, dst) in scores.chunks_exact_mut(visible).zip(operand.chunks_exact_mut(units)) {
        super::activation::run_vectorised(
            #[inline(always)]
            || {
                let inverse = exponentiate_row(row, scale);
                O::row_into(row, inverse, dst);
            },
        );
    }
    (Cow::Owned(operand), units)
}

/// The contiguous f32 values behind `storage`/`layout`.
fn values<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("heads-last attention computes in f32 only") };
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("heads-last attention needs contiguous inputs") };
    Ok(&data[start..end])
}

impl CustomOp3 for HeadsLastAttention {
    fn name(&self) -> &'static str {
        "heads-last-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let s = self.shapes(ql, kl, vl)?;
        let (q, k, v) = (values(q, ql)?, values(k, kl)?, values(v, vl)?);
        let on_a_kernel = || KernelForward { op: self, s, q, k, v };
        let bf16_out = self.bf16_products.then(|| gemm_bf16::with_kernel(on_a_kernel())).flatten();
        if let Some(out) = bf16_out.or_else(|| gemm_f32::with_kernel(on_a_kernel())) {
            return Ok((CpuStorage::F32(out), ql.shape().clone()));
        }
        let mut out = vec![0f32; s.batch * s.lq * s.width()];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let chunks = self.chunks(&s, 1);
        let tasks: Vec<(usize, usize, usize)> = (0..s.batch * s.heads)
            .flat_map(|bh| (0..chunks.len()).map(move |c| (bh / s.heads, bh % s.heads, c)))
            .collect();
        tasks.par_iter().for_each(|&(b, h, c)| {
            let (start, rows, visible) = chunks[c];
            let mut probs = vec![0f32; rows * visible];
            let w = s.width() as isize;
            // SAFETY: the views stay inside q, k, v and out (shapes checked above); each task
            // writes only its own rows of its own head's columns of `out`.
            unsafe {
                self.probabilities(&s, q, k, (b, h), chunks[c], &mut probs);
                let v_view = View { ptr: v.as_ptr().add(b * s.lk * s.width() + h * s.head_dim), rs: w, cs: 1 };
                let p_view = View { ptr: probs.as_ptr(), rs: visible as isize, cs: 1 };
                let dst = View { ptr: out_ptr.at((b * s.lq + start) * s.width() + h * s.head_dim), rs: w, cs: 1 };
                gemm((rows, s.head_dim, visible), dst, false, p_view, v_view, 1.0);
            }
        });
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if self.bias.is_some() {
            bail!("heads-last attention with a score bias has no backward pass");
        }
        let backward = HeadsLastAttentionBackward { forward: self.clone() };
        let grad = grad.contiguous()?;
        // q, k, v and the output's gradient in one flat input: CustomOp3 takes three tensors.
        let flat = backward.run(q, k, v, &grad)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        Ok((
            Some(flat.narrow(0, 0, nq)?.reshape(q.shape())?),
            Some(flat.narrow(0, nq, nk)?.reshape(k.shape())?),
            Some(flat.narrow(0, nq + nk, nk)?.reshape(v.shape())?),
        ))
    }
}

/// The gradients of [`HeadsLastAttention`], flat: `[dq | dk | dv]`.
struct HeadsLastAttentionBackward {
    forward: HeadsLastAttention,
}

impl HeadsLastAttentionBackward {
    fn run(&self, q: &Tensor, k: &Tensor, v: &Tensor, grad: &Tensor) -> candle_core::Result<Tensor> {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let (
            candle_core::Storage::Cpu(qs),
            candle_core::Storage::Cpu(ks),
            candle_core::Storage::Cpu(vs),
            candle_core::Storage::Cpu(gs),
        ) = (&*qs, &*ks, &*vs, &*gs)
        else {
            bail!("heads-last attention runs on the CPU only")
        };
        let f = &self.forward;
        let s = f.shapes(ql, kl, vl)?;
        if gl.shape() != ql.shape() {
            bail!("heads-last attention: gradient {:?} for an output {:?}", gl.shape(), ql.shape());
        }
        let (q, k, v, dout) = (values(qs, ql)?, values(ks, kl)?, values(vs, vl)?, values(gs, gl)?);
        let (nq, nk) = (q.len(), k.len());
        let mut flat = vec![0f32; nq + 2 * nk];
        let ptr = SharedMut(flat.as_mut_ptr());
        let chunks = f.chunks(&s, 1);
        let w = s.width() as isize;
        (0..s.batch * s.heads).into_par_iter().for_each(|bh| {
            let (b, h) = (bh / s.heads, bh % s.heads);
            let head = h * s.head_dim;
            for &(start, rows, visible) in &chunks {
                let mut probs = vec![0f32; rows * visible];
                let mut dp = vec![0f32; rows * visible];
                // SAFETY: views inside q, k, v, dout and flat (shapes checked above); the task
                // of head (b, h) writes only that head's columns of dq, dk and dv.
                unsafe {
                    f.probabilities(&s, q, k, (b, h), (start, rows, visible), &mut probs);
                    let at =
                        |base: *const f32, row: usize| View { ptr: base.add(row * s.width() + head), rs: w, cs: 1 };
                    let p = View { ptr: probs.as_ptr(), rs: visible as isize, cs: 1 };
                    let do_rows = at(dout.as_ptr(), b * s.lq + start);
                    let q_rows = at(q.as_ptr(), b * s.lq + start);
                    let (k_all, v_all) = (at(k.as_ptr(), b * s.lk), at(v.as_ptr(), b * s.lk));
                    let dq_rows = at(ptr.at(0), b * s.lq + start);
                    let dk_all = at(ptr.at(nq), b * s.lk);
                    let dv_all = at(ptr.at(nq + nk), b * s.lk);
                    // dv[visible] += Pᵀ·do
                    gemm((visible, s.head_dim, rows), dv_all, true, p.t(), do_rows, 1.0);
                    // dP = do·vᵀ
                    let dp_view = View { ptr: dp.as_mut_ptr(), rs: visible as isize, cs: 1 };
                    gemm((rows, visible, s.head_dim), dp_view, false, do_rows, v_all.t(), 1.0);
                    // dS = scale·P⊙(dP − Σ P⊙dP), in place of dP
                    super::activation::run_vectorised(
                        #[inline(always)]
                        || {
                            for (d, p) in dp.chunks_exact_mut(visible).zip(probs.chunks_exact(visible)) {
                                let mut lanes = [0f32; 16];
                                for (d, p) in d.chunks(16).zip(p.chunks(16)) {
                                    for ((l, d), p) in lanes.iter_mut().zip(d).zip(p) {
                                        *l += d * p;
                                    }
                                }
                                let dot: f32 = lanes.iter().sum();
                                for (d, &p) in d.iter_mut().zip(p) {
                                    *d = f.scale * p * (*d - dot);
                                }
                            }
                        },
                    );
                    let ds = View { ptr: dp.as_ptr(), rs: visible as isize, cs: 1 };
                    // dq = dS·k; dk[visible] += dSᵀ·q
                    gemm((rows, s.head_dim, visible), dq_rows, false, ds, k_all, 1.0);
                    gemm((visible, s.head_dim, rows), dk_all, true, ds.t(), q_rows, 1.0);
                }
            }
        });
        let len = flat.len();
        Tensor::from_vec(flat, len, &candle_core::Device::Cpu)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::nn::{attention, AttentionMask};

    fn split(x: &Tensor, heads: usize) -> Tensor {
        let (b, l, d) = x.dims3().unwrap();
        x.reshape((b, l, heads, d / heads)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap()
    }

    fn merge(x: &Tensor) -> Tensor {
        let (b, h, l, d) = x.dims4().unwrap();
        x.transpose(1, 2).unwrap().reshape((b, l, h * d)).unwrap()
    }

    /// Values and gradients equal the split-heads path (candle's matmuls and the differentiable
    /// softmax), for full and block-causal attention, cross-attention lengths, and chunked rows.
    #[test]
    fn matches_the_split_heads_attention_with_gradients() {
        let dev = Device::Cpu;
        for (lq, lk, heads, block) in [(12, 12, 2, None), (10, 7, 3, None), (12, 12, 2, Some(4)), (600, 600, 1, None)] {
            let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, lq, heads * 8), &dev).unwrap()).unwrap();
            let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, lk, heads * 8), &dev).unwrap()).unwrap();
            let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, lk, heads * 8), &dev).unwrap()).unwrap();
            let weights = Tensor::randn(0f32, 1.0, (2, lq, heads * 8), &dev).unwrap();
            let scale = 0.35;
            let op = HeadsLastAttention {
                heads,
                scale: scale as f32,
                causal_block: block,
                bf16_products: false,
                bias: None,
            };
            let fused = q.as_tensor().apply_op3(k.as_tensor(), v.as_tensor(), op).unwrap();
            let mask = block.map_or(AttentionMask::Full, |n| AttentionMask::BlockCausal { tokens_per_block: n });
            let (qs, ks, vs) = (split(q.as_tensor(), heads), split(k.as_tensor(), heads), split(v.as_tensor(), heads));
            let reference = merge(&attention(&qs, &ks, &vs, scale, mask).unwrap());
            let gap = |a: &Tensor, b: &Tensor| {
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                d / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
            };
            assert!(gap(&fused, &reference) < 1e-5, "values, {lq}×{lk}, {heads} heads, {block:?}");
            let g_fused = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, b) = (g_fused.get(var.as_tensor()).unwrap(), g_ref.get(var.as_tensor()).unwrap());
                assert!(gap(a, b) < 1e-5, "d{name}, {lq}×{lk}, {heads} heads, {block:?}: {}", gap(a, b));
            }
        }
    }

    /// `x` rounded to bf16 (ties to even), in f64.
    fn bf16(x: f32) -> f64 {
        half::bf16::from_f32(x).to_f64()
    }

    /// Attention of head `h` in f64 from bf16-rounded q, k, v, with the probabilities rounded
    /// to bf16 before `P·v`: the arithmetic of the bf16 products, without their f32 sums.
    fn bf16_reference(q: &[f32], k: &[f32], v: &[f32], s: Shapes, scale: f64, block: Option<usize>) -> Vec<f64> {
        let (w, d) = (s.width(), s.head_dim);
        let mut out = vec![0f64; s.batch * s.lq * w];
        for b in 0..s.batch {
            for h in 0..s.heads {
                for i in 0..s.lq {
                    let visible = block.map_or(s.lk, |n| (i / n + 1) * n);
                    let at = |t: &[f32], l: usize, row: usize, c: usize| bf16(t[(b * l + row) * w + h * d + c]);
                    let scores: Vec<f64> = (0..visible)
                        .map(|j| (0..d).map(|c| at(q, s.lq, i, c) * at(k, s.lk, j, c)).sum::<f64>() * scale)
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let total: f64 = scores.iter().map(|x| (x - max).exp()).sum();
                    for c in 0..d {
                        out[(b * s.lq + i) * w + h * d + c] = (0..visible)
                            .map(|j| bf16((((scores[j] - max).exp()) / total) as f32) * at(v, s.lk, j, c))
                            .sum();
                    }
                }
            }
        }
        out
    }

    /// bf16 products (where this CPU has a bf16 kernel): equal to the bf16 arithmetic's result
    /// up to f32 sums, and visibly different from the f32 attention, for full and block-causal
    /// attention, cross-attention lengths, head sizes off the kernel's step, and several chunks.
    #[test]
    fn bf16_products_round_the_operands() {
        if crate::nn::gemm_bf16::engine().is_none() {
            eprintln!("this CPU has no bf16 kernel: the attention keeps f32 products, not tested");
            return;
        }
        let dev = Device::Cpu;
        for (lq, lk, heads, head_dim, block) in
            [(12, 12, 2, 8, None), (70, 45, 3, 24, None), (48, 48, 2, 20, Some(16)), (600, 300, 1, 40, None)]
        {
            let width = heads * head_dim;
            let q = Tensor::randn(0f32, 1.0, (2, lq, width), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (2, lk, width), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (2, lk, width), &dev).unwrap();
            let scale = 0.3;
            let op = |bf16_products| HeadsLastAttention {
                heads,
                scale: scale as f32,
                causal_block: block,
                bf16_products,
                bias: None,
            };
            let ours = q.apply_op3(&k, &v, op(true)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let f32_products = q.apply_op3(&k, &v, op(false)).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let s = Shapes { batch: 2, lq, lk, heads, head_dim };
            let exact = bf16_reference(&flat(&q), &flat(&k), &flat(&v), s, scale, block);
            let rel = |a: &[f32]| {
                let num: f64 = a.iter().zip(&exact).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
                (num / exact.iter().map(|y| y * y).sum::<f64>()).sqrt()
            };
            // A probability within an f32 rounding of a bf16 rounding boundary may round the
            // other way (about one in 10⁴): each such flip moves the output by about 2e-5
            // relative here, so this allows ten; bf16's own rounding is a hundred times more.
            assert!(rel(&ours) < 3e-4, "{lq}×{lk}, {heads}×{head_dim}, {block:?}: {:.2e}", rel(&ours));
            assert!(
                rel(&f32_products) > 1e-3,
                "the f32 products differ by bf16's rounding: {:.2e}",
                rel(&f32_products)
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_refused() {
        let x = Tensor::zeros((1, 6, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let three_heads =
            HeadsLastAttention { heads: 3, scale: 1.0, causal_block: None, bf16_products: false, bias: None };
        assert!(x.apply_op3(&x, &x, three_heads).is_err(), "8 features in 3 heads");
        let blocks_of_4 =
            HeadsLastAttention { heads: 2, scale: 1.0, causal_block: Some(4), bf16_products: false, bias: None };
        assert!(x.apply_op3(&x, &x, blocks_of_4).is_err(), "6 tokens in blocks of 4");
    }
}
