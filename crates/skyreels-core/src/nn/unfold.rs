//! The 3D im2col ("unfold") as a differentiable candle op, for training convolutions on the CPU.
//!
//! A convolution is `W[O, K] · unfold(x)[K, B·N]`, with `K = C·kt·kh·kw` kernel taps and
//! `N = T'·H'·W'` output positions per sample (batch-major columns make it one GEMM, and the
//! weight and bias gradients plain row reductions). With unfold differentiable, candle's matmul backward (GEMMs)
//! gives both gradients and the only other work is the adjoint of unfold, a scatter-add
//! ("fold"). Candle's own conv2d backward on the CPU is a direct loop nest several times slower
//! than that, and it was most of a VAE training step.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv3d::SpatialPadding;

/// Geometry shared by unfold and its adjoint: input `[B, C, T, H, W]`, kernel, strides and
/// spatial zero padding (temporal padding is the caller's, as for [`super::Conv3d`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unfold3d {
    pub input: [usize; 5],
    pub kernel: [usize; 3],
    pub stride: [usize; 3],
    pub padding: SpatialPadding,
    /// Output extent `[T', H', W']`.
    pub output: [usize; 3],
}

impl Unfold3d {
    fn taps(&self) -> usize {
        self.input[1] * self.kernel.iter().product::<usize>()
    }

    fn positions(&self) -> usize {
        self.output.iter().product()
    }

    /// For kernel tap `(dt, dh, dw)`, calls `visit(input offset within one channel plane,
    /// output position)` for every output position that reads inside the unpadded input.
    fn for_each_read(&self, [dt, dh, dw]: [usize; 3], mut visit: impl FnMut(usize, usize)) {
        let [_, _, _, h, w] = self.input;
        let [to, ho, wo] = self.output;
        let [st, sh, sw] = self.stride;
        for ot in 0..to {
            let t = ot * st + dt;
            for oh in 0..ho {
                let Some(y) = (oh * sh + dh).checked_sub(self.padding.top).filter(|&y| y < h) else { continue };
                let row = (t * h + y) * w;
                let out_row = (ot * ho + oh) * wo;
                for ow in 0..wo {
                    if let Some(x) = (ow * sw + dw).checked_sub(self.padding.left).filter(|&x| x < w) {
                        visit(row + x, out_row + ow);
                    }
                }
            }
        }
    }

    /// Splits a tap index `k = ((c·kt + dt)·kh + dh)·kw + dw` (the order of a flattened
    /// `[O, C, kt, kh, kw]` weight) into its channel and kernel offsets.
    fn split_tap(&self, k: usize) -> (usize, [usize; 3]) {
        let [kt, kh, kw] = self.kernel;
        let (dw, rest) = (k % kw, k / kw);
        let (dh, rest) = (rest % kh, rest / kh);
        (rest / kt, [rest % kt, dh, dw])
    }

    /// Columns `[K, B·N]` of a contiguous input.
    fn unfold(&self, x: &[f32]) -> Vec<f32> {
        let [b, c, t, h, w] = self.input;
        let (k, n, plane) = (self.taps(), self.positions(), t * h * w);
        let mut cols = vec![0f32; k * b * n];
        cols.par_chunks_mut(b * n).enumerate().for_each(|(tap, row)| {
            let (ci, offsets) = self.split_tap(tap);
            for (bi, out) in row.chunks_exact_mut(n).enumerate() {
                let source = &x[(bi * c + ci) * plane..(bi * c + ci + 1) * plane];
                self.for_each_read(offsets, |i, p| out[p] = source[i]);
            }
        });
        cols
    }

    /// The adjoint of [`unfold`](Self::unfold): every column value added back to the input
    /// element it was read from, giving `[B, C, T, H, W]`.
    fn fold(&self, cols: &[f32]) -> Vec<f32> {
        let [b, c, t, h, w] = self.input;
        let [kt, kh, kw] = self.kernel;
        let (n, plane) = (self.positions(), t * h * w);
        let mut x = vec![0f32; b * c * plane];
        x.par_chunks_mut(plane).enumerate().for_each(|(bc, out)| {
            let (bi, ci) = (bc / c, bc % c);
            for local in 0..kt * kh * kw {
                let tap = ci * kt * kh * kw + local;
                let source = &cols[(tap * b + bi) * n..(tap * b + bi + 1) * n];
                let (_, offsets) = self.split_tap(tap);
                self.for_each_read(offsets, |i, p| out[i] += source[p]);
            }
        });
        x
    }
}

fn f32_input<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else { candle_core::bail!("{what} computes in f32 only") };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} needs a contiguous input"),
    }
}

impl CustomOp1 for Unfold3d {
    fn name(&self) -> &'static str {
        "unfold3d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        if layout.dims() != self.input {
            candle_core::bail!("unfold3d expected an input of {:?}, got {:?}", self.input, layout.dims());
        }
        let x = f32_input(storage, layout, "unfold3d")?;
        let shape = Shape::from((self.taps(), self.input[0] * self.positions()));
        Ok((CpuStorage::F32(self.unfold(x)), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&Fold3d(*self))?))
    }
}

/// The adjoint of [`Unfold3d`] (its backward pass): columns `[K, B·N]` → input gradient.
struct Fold3d(Unfold3d);

impl CustomOp1 for Fold3d {
    fn name(&self) -> &'static str {
        "fold3d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let u = &self.0;
        if layout.dims() != [u.taps(), u.input[0] * u.positions()] {
            candle_core::bail!("fold3d got columns of {:?} for an input of {:?}", layout.dims(), u.input);
        }
        let cols = f32_input(storage, layout, "fold3d")?;
        Ok((CpuStorage::F32(u.fold(cols)), Shape::from(u.input.to_vec())))
    }
}
