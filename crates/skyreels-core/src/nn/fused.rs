//! Fused CPU kernels, with their backward passes, for the per-token operations every DiT and
//! umT5 layer repeats: LayerNorm with a per-group affine (the DiT's modulation), RMSNorm, the
//! gated residual, interleaved rotary embedding and the bias of a linear layer.
//!
//! Composed from candle's primitives, a LayerNorm with its modulation is about fifteen
//! full-size tensors forward and as many backward (candle's autograd also zero-fills and adds
//! one gradient buffer per node), mostly single-threaded and some strided. Here each is one
//! vectorised, threaded pass forward and one backward. The arithmetic is the reference's (two
//! passes for the LayerNorm's variance), summed in lanes, so results differ from the composed
//! forms by rounding only (tested against them, values and gradients).
//!
//! The ops take contiguous f32 CPU tensors; the callers in this module's parent route other
//! devices and dtypes to the composed forms.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::activation::run_vectorised;

/// Independent partial sums, so that reductions vectorise.
const LANES: usize = 16;

/// Rows per rayon task in the row-parallel kernels.
const ROWS_PER_TASK: usize = 16;

/// The contiguous f32 values behind `storage`/`layout`.
fn values<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("{op} computes in f32 only") };
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("{op} needs contiguous inputs") };
    Ok(&data[start..end])
}

/// `Σ x`, in lanes.
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
}

/// `Σ x·y`, in lanes.
#[inline(always)]
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (mut xs, mut ys) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    for (a, b) in (&mut xs).zip(&mut ys) {
        for ((s, &u), &v) in acc.iter_mut().zip(a).zip(b) {
            *s += u * v;
        }
    }
    xs.remainder().iter().zip(ys.remainder()).map(|(u, v)| u * v).sum::<f32>() + acc.iter().sum::<f32>()
}

/// `Σ (x − c)²`, in lanes.
#[inline(always)]
fn centred_squares(x: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += (v - c) * (v - c);
        }
    }
    chunks.remainder().iter().map(|&v| (v - c) * (v - c)).sum::<f32>() + acc.iter().sum::<f32>()
}

/// `Σ h·(x − c)`, in lanes.
#[inline(always)]
fn centred_dot(h: &[f32], x: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let (mut hs, mut xs) = (h.chunks_exact(LANES), x.chunks_exact(LANES));
    for (a, b) in (&mut hs).zip(&mut xs) {
        for ((s, &h), &x) in acc.iter_mut().zip(a).zip(b) {
            *s += h * (x - c);
        }
    }
    hs.remainder().iter().zip(xs.remainder()).map(|(h, x)| h * (x - c)).sum::<f32>() + acc.iter().sum::<f32>()
}

/// Mean and `1/√(var + eps)` of one row, the variance of the centred values (two passes).
#[inline(always)]
fn row_moments(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = sum(x) / d;
    let var = centred_squares(x, mean) / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Splits a flat backward result `[first | rest…]` into tensors shaped like `shapes`.
fn split_flat(flat: &Tensor, shapes: &[&Shape]) -> candle_core::Result<Vec<Tensor>> {
    let mut offset = 0;
    shapes
        .iter()
        .map(|shape| {
            let n = shape.elem_count();
            let part = flat.narrow(0, offset, n)?.reshape(*shape)?;
            offset += n;
            Ok(part)
        })
        .collect()
}

/// Group layout of a modulated tensor `x [B, L, D]` with `[Bm, G, D]` vectors (`Bm` is `B` or 1).
#[derive(Clone, Copy)]
struct Groups {
    batch: usize,
    groups: usize,
    rows_per_group: usize,
    dim: usize,
    /// Whether the vectors have one row per sample (`Bm = B`) or one shared by all (`Bm = 1`).
    per_sample: bool,
}

impl Groups {
    fn of(x: &Layout, vector: &Layout) -> candle_core::Result<Self> {
        let (&[batch, len, dim], &[vb, groups, vd]) = (x.shape().dims(), vector.shape().dims()) else {
            bail!(
                "a modulated tensor is [B, L, D] with [B or 1, G, D] vectors, got {:?} and {:?}",
                x.shape(),
                vector.shape()
            )
        };
        if vd != dim || groups == 0 || !len.is_multiple_of(groups) || (vb != batch && vb != 1) {
            bail!("vectors {:?} do not modulate a tensor {:?}", vector.shape(), x.shape());
        }
        Ok(Self { batch, groups, rows_per_group: len / groups, dim, per_sample: vb == batch })
    }

    /// Offset of the vector that modulates row `row` of the flattened `[B·L, D]`.
    #[inline(always)]
    fn vector_of_row(&self, row: usize) -> usize {
        let group = row / self.rows_per_group;
        let (b, g) = (group / self.groups, group % self.groups);
        (if self.per_sample { b * self.groups + g } else { g }) * self.dim
    }

    fn vector_len(&self) -> usize {
        (if self.per_sample { self.batch } else { 1 }) * self.groups * self.dim
    }
}

/// `LayerNorm(x)·mul + add` over the last axis, `mul`/`add` one row per group of tokens
/// ([`Groups`]). Forward is row-parallel; backward gives all three gradients in one pass.
pub(super) struct NormAffine {
    pub eps: f32,
}

impl CustomOp3 for NormAffine {
    fn name(&self) -> &'static str {
        "norm-affine"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        mul: &CpuStorage,
        ml: &Layout,
        add: &CpuStorage,
        al: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Groups::of(xl, ml)?;
        let (x, mul, add) = (values(x, xl, self.name())?, values(mul, ml, self.name())?, values(add, al, self.name())?);
        if mul.len() != add.len() || mul.len() != g.vector_len() {
            bail!("norm-affine: scale and shift differ in shape");
        }
        let (d, eps) = (g.dim, self.eps);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ROWS_PER_TASK * d).zip(x.par_chunks(ROWS_PER_TASK * d)).enumerate().for_each(
            |(task, (out, x))| {
                run_vectorised(
                    #[inline(always)]
                    || {
                        for (i, (o, x)) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                            let v = g.vector_of_row(task * ROWS_PER_TASK + i);
                            let (m, a) = (&mul[v..v + d], &add[v..v + d]);
                            let (mean, rstd) = row_moments(x, eps);
                            for (((o, &x), &m), &a) in o.iter_mut().zip(x).zip(m).zip(a) {
                                *o = (x - mean) * rstd * m + a;
                            }
                        }
                    },
                )
            },
        );
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        mul: &Tensor,
        add: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let flat = x.apply_op3_no_bwd(mul, &grad.contiguous()?, &NormAffineBackward { eps: self.eps })?;
        let mut parts = split_flat(&flat, &[x.shape(), mul.shape(), add.shape()])?.into_iter();
        Ok((parts.next(), parts.next(), parts.next()))
    }
}

/// The gradients of [`NormAffine`], flat: `[dx | dmul | dadd]`.
struct NormAffineBackward {
    eps: f32,
}

impl CustomOp3 for NormAffineBackward {
    fn name(&self) -> &'static str {
        "norm-affine-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        mul: &CpuStorage,
        ml: &Layout,
        grad: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Groups::of(xl, ml)?;
        let (x, mul, grad) =
            (values(x, xl, self.name())?, values(mul, ml, self.name())?, values(grad, gl, self.name())?);
        let (d, eps) = (g.dim, self.eps);
        let block = g.rows_per_group * d;
        let mut dx = vec![0f32; x.len()];
        // One task per group of rows: its dx rows and its partial dmul, dadd.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .zip(grad.par_chunks(block))
            .enumerate()
            .map(|(group, ((dx, x), grad))| {
                let v = g.vector_of_row(group * g.rows_per_group);
                let m = &mul[v..v + d];
                let mut partial = vec![0f32; 2 * d];
                run_vectorised(
                    #[inline(always)]
                    || {
                        let mut h = vec![0f32; d];
                        let (dmul, dadd) = partial.split_at_mut(d);
                        for ((dx, x), grad) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(grad.chunks_exact(d)) {
                            let (mean, rstd) = row_moments(x, eps);
                            for ((h, &gr), &m) in h.iter_mut().zip(grad).zip(m) {
                                *h = gr * m;
                            }
                            // n = (x − mean)·rstd; dx = rstd·(h − mean(h) − n·mean(h·n)).
                            let mean_h = sum(&h) / d as f32;
                            let mean_hn = centred_dot(&h, x, mean) * rstd / d as f32;
                            for ((((dx, &h), &x), &gr), (dm, da)) in
                                dx.iter_mut().zip(&h).zip(x).zip(grad).zip(dmul.iter_mut().zip(dadd.iter_mut()))
                            {
                                let n = (x - mean) * rstd;
                                *dx = rstd * (h - mean_h - n * mean_hn);
                                *dm += gr * n;
                                *da += gr;
                            }
                        }
                    },
                );
                partial
            })
            .collect();
        let mut vectors = vec![0f32; 2 * g.vector_len()];
        let (dmul, dadd) = vectors.split_at_mut(g.vector_len());
        for (group, partial) in partials.iter().enumerate() {
            let v = g.vector_of_row(group * g.rows_per_group);
            for (t, s) in dmul[v..v + d].iter_mut().zip(&partial[..d]) {
                *t += s;
            }
            for (t, s) in dadd[v..v + d].iter_mut().zip(&partial[d..]) {
                *t += s;
            }
        }
        dx.extend_from_slice(&vectors);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// `x·rsqrt(mean(x²) + eps)·w` over the last axis, `w [D]`.
pub(super) struct RmsNormOp {
    pub eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (values(x, xl, self.name())?, values(w, wl, self.name())?);
        let (d, eps) = (w.len(), self.eps);
        if d == 0 || xl.shape().dims().last() != Some(&d) {
            bail!("rms-norm: weight of {d} for rows of {:?}", xl.shape());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ROWS_PER_TASK * d).zip(x.par_chunks(ROWS_PER_TASK * d)).for_each(|(out, x)| {
            run_vectorised(
                #[inline(always)]
                || {
                    for (o, x) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                        let r = 1.0 / (dot(x, x) / d as f32 + eps).sqrt();
                        for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                            *o = x * r * w;
                        }
                    }
                },
            )
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let flat = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBackward { eps: self.eps })?;
        let mut parts = split_flat(&flat, &[x.shape(), w.shape()])?.into_iter();
        Ok((parts.next(), parts.next()))
    }
}

/// The gradients of [`RmsNormOp`], flat: `[dx | dw]`.
struct RmsNormBackward {
    eps: f32,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        grad: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, grad) = (values(x, xl, self.name())?, values(w, wl, self.name())?, values(grad, gl, self.name())?);
        let (d, eps) = (w.len(), self.eps);
        let chunk = ROWS_PER_TASK * d;
        let mut dx = vec![0f32; x.len()];
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(grad.par_chunks(chunk))
            .map(|((dx, x), grad)| {
                let mut dw = vec![0f32; d];
                run_vectorised(
                    #[inline(always)]
                    || {
                        let mut h = vec![0f32; d];
                        for ((dx, x), grad) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(grad.chunks_exact(d)) {
                            let r = 1.0 / (dot(x, x) / d as f32 + eps).sqrt();
                            // h = g·w; dx = r·h − x·r³·mean(h·x).
                            for ((h, &g), &w) in h.iter_mut().zip(grad).zip(w) {
                                *h = g * w;
                            }
                            let c = dot(&h, x) / d as f32 * r * r * r;
                            for ((((dx, &g), &h), &x), dw) in dx.iter_mut().zip(grad).zip(&h).zip(x).zip(dw.iter_mut())
                            {
                                *dx = r * h - x * c;
                                *dw += g * x * r;
                            }
                        }
                    },
                );
                dw
            })
            .collect();
        let mut dw = vec![0f32; d];
        for partial in &partials {
            for (t, s) in dw.iter_mut().zip(partial) {
                *t += s;
            }
        }
        dx.extend_from_slice(&dw);
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

/// `x + y·gate`, `x, y [B, L, D]`, `gate [B or 1, G, D]` one row per group of tokens.
pub(super) struct GatedResidual;

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "gated-residual"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        y: &CpuStorage,
        yl: &Layout,
        gate: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Groups::of(yl, gl)?;
        if xl.shape() != yl.shape() {
            bail!("gated-residual: {:?} and {:?} differ", xl.shape(), yl.shape());
        }
        let (x, y, gate) = (values(x, xl, self.name())?, values(y, yl, self.name())?, values(gate, gl, self.name())?);
        let d = g.dim;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ROWS_PER_TASK * d)
            .zip(x.par_chunks(ROWS_PER_TASK * d))
            .zip(y.par_chunks(ROWS_PER_TASK * d))
            .enumerate()
            .for_each(|(task, ((out, x), y))| {
                run_vectorised(
                    #[inline(always)]
                    || {
                        for (i, ((o, x), y)) in
                            out.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(y.chunks_exact(d)).enumerate()
                        {
                            let v = g.vector_of_row(task * ROWS_PER_TASK + i);
                            for (((o, &x), &y), &m) in o.iter_mut().zip(x).zip(y).zip(&gate[v..v + d]) {
                                *o = x + y * m;
                            }
                        }
                    },
                )
            });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        y: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let flat = y.apply_op3_no_bwd(gate, &grad.contiguous()?, &GatedResidualBackward)?;
        let mut parts = split_flat(&flat, &[y.shape(), gate.shape()])?.into_iter();
        Ok((Some(grad.clone()), parts.next(), parts.next()))
    }
}

/// The gradients of [`GatedResidual`] for `y` and `gate`, flat: `[dy | dgate]`.
struct GatedResidualBackward;

impl CustomOp3 for GatedResidualBackward {
    fn name(&self) -> &'static str {
        "gated-residual-backward"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        yl: &Layout,
        gate: &CpuStorage,
        gl: &Layout,
        grad: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Groups::of(yl, gl)?;
        let (y, gate, grad) =
            (values(y, yl, self.name())?, values(gate, gl, self.name())?, values(grad, dl, self.name())?);
        let (d, block) = (g.dim, g.rows_per_group * g.dim);
        let mut dy = vec![0f32; y.len()];
        let partials: Vec<Vec<f32>> = dy
            .par_chunks_mut(block)
            .zip(y.par_chunks(block))
            .zip(grad.par_chunks(block))
            .enumerate()
            .map(|(group, ((dy, y), grad))| {
                let v = g.vector_of_row(group * g.rows_per_group);
                let m = &gate[v..v + d];
                let mut dgate = vec![0f32; d];
                run_vectorised(
                    #[inline(always)]
                    || {
                        for ((dy, y), grad) in dy.chunks_exact_mut(d).zip(y.chunks_exact(d)).zip(grad.chunks_exact(d)) {
                            for ((((dy, &y), &gr), &m), dg) in
                                dy.iter_mut().zip(y).zip(grad).zip(m).zip(dgate.iter_mut())
                            {
                                *dy = gr * m;
                                *dg += gr * y;
                            }
                        }
                    },
                );
                dgate
            })
            .collect();
        let mut dgate = vec![0f32; g.vector_len()];
        for (group, partial) in partials.iter().enumerate() {
            let v = g.vector_of_row(group * g.rows_per_group);
            for (t, s) in dgate[v..v + d].iter_mut().zip(partial) {
                *t += s;
            }
        }
        dy.extend_from_slice(&dgate);
        let len = dy.len();
        Ok((CpuStorage::F32(dy), Shape::from(len)))
    }
}

/// Interleaved rotary embedding of `x [B, H, T, Dh]` (or heads-last `[B, T, H·Dh]`) by the
/// angles whose `cos`, `sin` are `[T, Dh/2]`: `(a, b) → (a·cos − b·sin, a·sin + b·cos)` per pair. Its gradient is the rotation
/// back (`inverse`), and the tables get none.
pub(super) struct RotaryInterleaved {
    pub inverse: bool,
}

impl CustomOp3 for RotaryInterleaved {
    fn name(&self) -> &'static str {
        "rotary-interleaved"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        cos: &CpuStorage,
        cl: &Layout,
        sin: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, cos, sin) = (values(x, xl, self.name())?, values(cos, cl, self.name())?, values(sin, sl, self.name())?);
        // [B, H, T, Dh] rotates rows of one head; [B, T, H·Dh] rows of H heads side by side.
        let (t, row) = match *xl.shape().dims() {
            [_, _, t, d] => (t, d),
            [_, t, width] => (t, width),
            _ => bail!("rotary-interleaved takes [B, H, T, Dh] or [B, T, H·Dh], got {:?}", xl.shape()),
        };
        let half = cl.shape().dims().last().copied().unwrap_or(0);
        if half == 0 || !row.is_multiple_of(2 * half) || cos.len() != t * half || sin.len() != cos.len() {
            bail!("rotary-interleaved: tables {:?} for {:?}", cl.shape(), xl.shape());
        }
        let sign = if self.inverse { -1f32 } else { 1.0 };
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(t * row).zip(x.par_chunks(t * row)).for_each(|(out, x)| {
            run_vectorised(
                #[inline(always)]
                || {
                    for (position, (out, x)) in out.chunks_exact_mut(row).zip(x.chunks_exact(row)).enumerate() {
                        let (cos, sin) = (&cos[position * half..][..half], &sin[position * half..][..half]);
                        for (out, x) in out.chunks_exact_mut(2 * half).zip(x.chunks_exact(2 * half)) {
                            for ((o, x), (&c, &s)) in
                                out.chunks_exact_mut(2).zip(x.chunks_exact(2)).zip(cos.iter().zip(sin))
                            {
                                let s = sign * s;
                                o[0] = x[0] * c - x[1] * s;
                                o[1] = x[0] * s + x[1] * c;
                            }
                        }
                    }
                },
            )
        });
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let back = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &RotaryInterleaved { inverse: !self.inverse })?;
        Ok((Some(back), None, None))
    }
}

/// `m + bias` for `m [N, out]`, `bias [out]`. Its bias gradient sums the rows in one
/// vectorised pass (candle reduces a broadcast's gradient with a strided scalar loop).
pub(super) struct BiasAdd;

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "bias-add"
    }

    fn cpu_fwd(
        &self,
        m: &CpuStorage,
        ml: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, b) = (values(m, ml, self.name())?, values(b, bl, self.name())?);
        let d = b.len();
        if d == 0 || ml.shape().dims().last() != Some(&d) {
            bail!("bias-add: a bias of {d} for rows of {:?}", ml.shape());
        }
        let mut out = vec![0f32; m.len()];
        out.par_chunks_mut(ROWS_PER_TASK * d).zip(m.par_chunks(ROWS_PER_TASK * d)).for_each(|(out, m)| {
            run_vectorised(
                #[inline(always)]
                || {
                    for (o, m) in out.chunks_exact_mut(d).zip(m.chunks_exact(d)) {
                        for ((o, &m), &b) in o.iter_mut().zip(m).zip(b) {
                            *o = m + b;
                        }
                    }
                },
            )
        });
        Ok((CpuStorage::F32(out), ml.shape().clone()))
    }

    fn bwd(
        &self,
        _m: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let columns = grad.contiguous()?.apply_op1_no_bwd(&ColumnSums { width: b.elem_count() })?;
        Ok((Some(grad.clone()), Some(columns.reshape(b.shape())?)))
    }
}

/// Sums the rows of a contiguous `[N, width]` tensor into `[width]`.
struct ColumnSums {
    width: usize,
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(storage, layout, self.name())?;
        let d = self.width;
        let partials: Vec<Vec<f32>> = x
            .par_chunks(ROWS_PER_TASK * 8 * d)
            .map(|rows| {
                let mut acc = vec![0f32; d];
                run_vectorised(
                    #[inline(always)]
                    || {
                        for row in rows.chunks_exact(d) {
                            for (a, &v) in acc.iter_mut().zip(row) {
                                *a += v;
                            }
                        }
                    },
                );
                acc
            })
            .collect();
        let mut out = vec![0f32; d];
        for partial in &partials {
            for (t, s) in out.iter_mut().zip(partial) {
                *t += s;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(d)))
    }
}

/// Whether `x` is a tensor these kernels take (CPU, f32).
pub(super) fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var, D};

    use super::*;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        // A fixed pseudo-random fill: the tests do not depend on candle's RNG.
        let n: usize = shape.iter().product();
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let values: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let norm = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        (diff / norm.max(1e-30)).sqrt()
    }

    /// Values and the gradients of `Σ y·r` for every input agree between the fused and the
    /// composed formulation.
    fn agree(
        what: &str,
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
        composed: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
    ) {
        let run = |f: &dyn Fn(&[Tensor]) -> candle_core::Result<Tensor>| {
            let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
            let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&tensors).unwrap();
            let r = random(y.dims(), 99);
            let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g: Vec<Tensor> = vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect();
            (y, g)
        };
        let (y_fused, g_fused) = run(&fused);
        let (y_composed, g_composed) = run(&composed);
        assert!(rel(&y_fused, &y_composed) < 1e-6, "{what}: values differ by {}", rel(&y_fused, &y_composed));
        for (i, (a, b)) in g_fused.iter().zip(&g_composed).enumerate() {
            assert_eq!(a.dims(), b.dims(), "{what}: gradient {i} shape");
            assert!(rel(a, b) < 1e-5, "{what}: gradient {i} differs by {}", rel(a, b));
        }
    }

    fn composed_layer_norm(x: &Tensor) -> candle_core::Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred.broadcast_div(&(var + 1e-6)?.sqrt()?)
    }

    #[test]
    fn norm_affine_matches_the_composed_form_with_per_sample_and_shared_vectors() {
        // Three groups of 5 tokens, width 20 (not a multiple of the lanes); a large mean.
        let x = random(&[2, 15, 20], 1).affine(3.0, 7.0).unwrap();
        for vector_batch in [2, 1] {
            let (mul, add) =
                (random(&[vector_batch, 3, 20], 2).affine(1.0, 1.0).unwrap(), random(&[vector_batch, 3, 20], 3));
            agree(
                &format!("norm-affine, vectors of batch {vector_batch}"),
                &[x.clone(), mul, add],
                |t| t[0].apply_op3(&t[1], &t[2], NormAffine { eps: 1e-6 }),
                |t| {
                    let n = composed_layer_norm(&t[0])?.reshape((2, 3, 5, 20))?;
                    n.broadcast_mul(&t[1].unsqueeze(2)?)?.broadcast_add(&t[2].unsqueeze(2)?)?.reshape((2, 15, 20))
                },
            );
        }
    }

    #[test]
    fn rms_norm_matches_the_composed_form() {
        agree(
            "rms-norm",
            &[random(&[3, 7, 36], 4), random(&[36], 5).affine(0.5, 1.0).unwrap()],
            |t| t[0].apply_op2(&t[1], RmsNormOp { eps: 1e-6 }),
            |t| {
                let inv = (t[0].sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?.recip()?;
                t[0].broadcast_mul(&inv)?.broadcast_mul(&t[1])
            },
        );
    }

    #[test]
    fn gated_residual_matches_the_composed_form() {
        agree(
            "gated-residual",
            &[random(&[2, 12, 24], 6), random(&[2, 12, 24], 7), random(&[2, 4, 24], 8)],
            |t| t[0].apply_op3(&t[1], &t[2], GatedResidual),
            |t| t[0].add(&t[1].reshape((2, 4, 3, 24))?.broadcast_mul(&t[2].unsqueeze(2)?)?.reshape((2, 12, 24))?),
        );
    }

    #[test]
    fn interleaved_rotary_matches_the_composed_form() {
        let (t, d) = (6, 8);
        let angles = random(&[t, d / 2], 9).affine(3.0, 0.0).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        agree(
            "rotary",
            &[random(&[2, 3, t, d], 10)],
            |x| x[0].apply_op3(&cos, &sin, RotaryInterleaved { inverse: false }),
            |x| {
                let pairs = x[0].reshape((2, 3, t, d / 2, 2))?;
                let (a, b) = (pairs.narrow(4, 0, 1)?, pairs.narrow(4, 1, 1)?);
                let (c, s) = (cos.reshape((1, 1, t, d / 2, 1))?, sin.reshape((1, 1, t, d / 2, 1))?);
                let even = (a.broadcast_mul(&c)? - b.broadcast_mul(&s)?)?;
                let odd = (a.broadcast_mul(&s)? + b.broadcast_mul(&c)?)?;
                Tensor::cat(&[even, odd], 4)?.reshape((2, 3, t, d))
            },
        );
    }

    #[test]
    fn bias_add_matches_the_broadcast_and_sums_many_rows() {
        // 300 rows: several rayon tasks' partial sums.
        agree(
            "bias-add",
            &[random(&[300, 40], 11), random(&[40], 12)],
            |t| t[0].apply_op2(&t[1], BiasAdd),
            |t| t[0].broadcast_add(&t[1]),
        );
    }

    #[test]
    fn malformed_inputs_are_refused() {
        let x = random(&[2, 6, 4], 13);
        let vectors = random(&[2, 4, 4], 14); // 4 groups do not divide 6 tokens
        assert!(x.apply_op3(&vectors, &vectors, NormAffine { eps: 1e-6 }).is_err());
        assert!(x.apply_op2(&random(&[3], 15), BiasAdd).is_err());
        assert!(x.to_dtype(DType::BF16).unwrap().apply_op2(&random(&[4], 16), RmsNormOp { eps: 1e-6 }).is_err());
    }
}
