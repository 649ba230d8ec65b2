//! 3D convolution, which candle lacks.
//!
//! One type, [`Conv3d`], with two executions:
//! - **CPU, f32**: row-folded im2col + GEMM. For one output frame and a band of output rows,
//!   every padded input position stores the `kt·kh·C` values (temporal tap, row tap, channel)
//!   its kernel column reads, contiguously; the `kw` column taps are then just `kw` shifted
//!   views of the same buffer — a third of a full im2col's copying — and each view feeds one
//!   GEMM with positions as the long axis. Columns are computed over the padded width and the
//!   few extra ones are dropped, which keeps every view a plain strided matrix, also for
//!   strides > 1. Bands keep the buffer at 16 MiB at any resolution.
//! - **CPU, f32, when gradients flow (training)**: a differentiable im2col ([`super::unfold`])
//!   times the weight matrix, so that the backward pass is GEMMs plus a scatter-add.
//! - **Any other device (GPU)**: a temporal unfold into one candle `conv2d` (cuDNN with the
//!   `cudnn` feature, im2col + cuBLAS otherwise). The `kt` input frames each output frame reads
//!   are stacked into the channel axis and the weight is viewed as `[O, I·kt, kh, kw]`; in the
//!   VAE's cached causal decode the input holds exactly `kt` frames, so the unfold is a free
//!   reshape. candle differentiates both ops, so training on a GPU takes the same path.
//! - A sum of candle `conv2d` calls, one per temporal tap ([`Conv3d::forward_taps`]), kept as a
//!   second device-independent formulation for comparison in benchmarks.
//!
//! Temporal padding is never done here: causal models pad (or feed cached frames) themselves.

use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Storage, Tensor};

use super::unfold::Unfold3d;
use crate::error::{invalid_input, Result};

/// Zero padding of the two spatial axes (top, bottom, left, right), like `ZeroPad2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpatialPadding {
    /// Rows added above.
    pub top: usize,
    /// Rows added below.
    pub bottom: usize,
    /// Columns added on the left.
    pub left: usize,
    /// Columns added on the right.
    pub right: usize,
}

impl SpatialPadding {
    /// The same padding `p` on all four sides (PyTorch's `padding=p`).
    pub fn uniform(p: usize) -> Self {
        Self { top: p, bottom: p, left: p, right: p }
    }
}

/// A 3D convolution `[B, I, T, H, W] → [B, O, T', H', W']` with weight `[O, I, kt, kh, kw]`.
#[derive(Debug, Clone)]
pub struct Conv3d {
    /// The weight `[O, I, kt, kh, kw]`, or `None` where the packed copy is the only one kept
    /// (CPU inference: holding both doubled the VAE's weight memory).
    weight: Option<Tensor>,
    /// The weight's shape and dtype, whichever copy is kept.
    shape: [usize; 5],
    dtype: DType,
    bias: Option<Tensor>,
    stride: [usize; 3],
    padding: SpatialPadding,
    /// CPU weights re-laid out as `[kw][kt][kh][I][O]`, so each column tap is a `[kt·kh·I, O]` matrix.
    packed: Option<Arc<PackedWeight>>,
}

#[derive(Debug)]
struct PackedWeight {
    taps: Vec<f32>,
    bias: Vec<f32>,
}

/// Output extent of a strided, unpadded window over `len` positions.
fn output_len(len: usize, kernel: usize, stride: usize) -> Option<usize> {
    (len >= kernel).then(|| (len - kernel) / stride + 1)
}

impl Conv3d {
    /// Builds the convolution; `stride` is `[t, h, w]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>, stride: [usize; 3], padding: SpatialPadding) -> Result<Self> {
        let dims = weight.dims();
        if dims.len() != 5 {
            return Err(invalid_input!("a Conv3d weight must be [O, I, kt, kh, kw], got {dims:?}"));
        }
        if dims.contains(&0) {
            return Err(invalid_input!("a Conv3d weight cannot have an empty axis, got {dims:?}"));
        }
        if stride.contains(&0) {
            return Err(invalid_input!("Conv3d stride must be positive, got {stride:?}"));
        }
        if let Some(b) = &bias {
            if b.dims() != [dims[0]] {
                return Err(invalid_input!("Conv3d bias must be [{}], got {:?}", dims[0], b.dims()));
            }
        }
        // Trainable weights change every step, so a packed copy would go stale; they take the
        // differentiable path anyway.
        let packed = match weight.device() {
            Device::Cpu if !weight.track_op() => Some(Arc::new(pack_weight(&weight, bias.as_ref())?)),
            _ => None,
        };
        let shape = [dims[0], dims[1], dims[2], dims[3], dims[4]];
        let dtype = weight.dtype();
        let weight = if packed.is_some() { None } else { Some(weight) };
        Ok(Self { weight, shape, dtype, bias, stride, padding, packed })
    }

    /// Number of output channels.
    pub fn out_channels(&self) -> usize {
        self.shape[0]
    }

    /// Number of input channels.
    pub fn in_channels(&self) -> usize {
        self.shape[1]
    }

    /// Kernel extent `[kt, kh, kw]`.
    pub fn kernel(&self) -> [usize; 3] {
        [self.shape[2], self.shape[3], self.shape[4]]
    }

    /// The weight `[O, I, kt, kh, kw]` (rebuilt, exactly, from the packed copy where that is the
    /// only one kept).
    pub fn weight(&self) -> Result<Tensor> {
        match (&self.weight, &self.packed) {
            (Some(weight), _) => Ok(weight.clone()),
            (None, Some(packed)) => Ok(unpack_weight(packed, self.shape)?.to_dtype(self.dtype)?),
            (None, None) => Err(invalid_input!("a Conv3d lost its weight")),
        }
    }

    /// Whether the weight takes gradients (a training variable or computed from one).
    pub fn is_trainable(&self) -> bool {
        self.weight.as_ref().is_some_and(Tensor::track_op)
    }

    /// The convolution restricted to its last temporal tap: equal to this one on an input whose
    /// other taps only meet zero frames (a causal convolution's lone first frame), at `1/kt` of
    /// the cost, with the same gradients for that tap (the others get none, as they would).
    pub fn last_temporal_tap(&self) -> Result<Conv3d> {
        let kt = self.kernel()[0];
        Conv3d::new(self.weight()?.narrow(2, kt - 1, 1)?, self.bias.clone(), self.stride, self.padding)
    }

    /// Output shape for an input shape, or a clear error when the input does not fit.
    pub fn output_shape(&self, input: &[usize]) -> Result<[usize; 5]> {
        let [b, c, t, h, w] = match input {
            &[b, c, t, h, w] => [b, c, t, h, w],
            _ => return Err(invalid_input!("Conv3d expects a [B, C, T, H, W] input, got {input:?}")),
        };
        if c != self.in_channels() {
            return Err(invalid_input!("Conv3d expects {} input channels, got {c}", self.in_channels()));
        }
        let [kt, kh, kw] = self.kernel();
        let p = self.padding;
        let too_small = || {
            invalid_input!(
                "Conv3d input {input:?} is smaller than the kernel {:?} (spatial padding {p:?})",
                self.kernel()
            )
        };
        let to = output_len(t, kt, self.stride[0]).ok_or_else(too_small)?;
        let ho = output_len(h + p.top + p.bottom, kh, self.stride[1]).ok_or_else(too_small)?;
        let wo = output_len(w + p.left + p.right, kw, self.stride[2]).ok_or_else(too_small)?;
        Ok([b, self.out_channels(), to, ho, wo])
    }

    /// Applies the convolution. CPU inputs of any float dtype are computed in f32 and returned
    /// in the input dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let out_shape = self.output_shape(x.dims())?;
        let training = x.track_op() || self.is_trainable() || self.bias.as_ref().is_some_and(Tensor::track_op);
        match (&self.packed, x.device()) {
            (Some(packed), Device::Cpu) if !training => {
                let x32 = x.to_dtype(DType::F32)?.contiguous()?;
                let y = self.forward_cpu(&[Segment::frames(&x32)?], packed, out_shape)?;
                Ok(y.to_dtype(x.dtype())?)
            }
            (_, Device::Cpu) if x.dtype() == DType::F32 && self.dtype == DType::F32 => self.forward_unfolded(x),
            _ => self.forward_temporal_unfold(x),
        }
    }

    /// The convolution of `zeros` zero frames, then the frames of `past` from `past_from` on,
    /// then `x`, joined along time (all `[B, C, ·, H, W]`): a causal convolution's input. The
    /// CPU inference path reads each frame where it lies instead of joining and padding copies
    /// of the activations first; the other paths join, then call [`forward`](Self::forward).
    pub fn forward_joined(&self, zeros: usize, past: Option<(&Tensor, usize)>, x: &Tensor) -> Result<Tensor> {
        let past = match past {
            Some((p, from)) if from < p.dim(2)? => Some((p, from)),
            _ => None,
        };
        let training = x.track_op()
            || past.is_some_and(|(p, _)| p.track_op())
            || self.is_trainable()
            || self.bias.as_ref().is_some_and(Tensor::track_op);
        if let (Some(packed), Device::Cpu, false) = (&self.packed, x.device(), training) {
            let dtype = x.dtype();
            let x32 = x.to_dtype(DType::F32)?.contiguous()?;
            let past32 = past.map(|(p, from)| Ok::<_, crate::Error>((p.to_dtype(DType::F32)?.contiguous()?, from)));
            let past32 = past32.transpose()?;
            let mut segments = vec![Segment::Zeros(zeros)];
            if let Some((p, from)) = &past32 {
                segments.push(Segment::frames_from(p, *from)?);
            }
            segments.push(Segment::frames(&x32)?);
            let (b, c, _, h, w) = x32.dims5()?;
            let t = segments.iter().map(Segment::len).sum();
            for segment in &segments {
                if let Segment::Frames { dims, .. } = segment {
                    if dims[0] != b || dims[1] != c || dims[3] != h || dims[4] != w {
                        return Err(invalid_input!(
                            "Conv3d frames to join differ in shape: {dims:?} and {:?}",
                            x.dims()
                        ));
                    }
                }
            }
            let out_shape = self.output_shape(&[b, c, t, h, w])?;
            return Ok(self.forward_cpu(&segments, packed, out_shape)?.to_dtype(dtype)?);
        }
        let joined = match past {
            Some((p, from)) => Tensor::cat(&[&p.narrow(2, from, p.dim(2)? - from)?, x], 2)?,
            None => x.clone(),
        };
        self.forward(&joined.pad_with_zeros(2, zeros, 0)?)
    }

    /// The differentiable CPU execution (f32): `weight[O, K] · unfold(x)[K, B·N]`.
    pub fn forward_unfolded(&self, x: &Tensor) -> Result<Tensor> {
        let [b, o, to, ho, wo] = self.output_shape(x.dims())?;
        let unfold = Unfold3d {
            input: x.dims5()?.into(),
            kernel: self.kernel(),
            stride: self.stride,
            padding: self.padding,
            output: [to, ho, wo],
        };
        let cols = x.contiguous()?.apply_op1(unfold)?;
        let mut y = self.weight()?.reshape((o, ()))?.matmul(&cols)?; // [O, B·N]
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.reshape((o, 1))?)?;
        }
        let y = y.reshape((o, b, to, ho, wo))?;
        Ok(if b == 1 { y.reshape((b, o, to, ho, wo))? } else { y.transpose(0, 1)?.contiguous()? })
    }

    /// The one spatial stride candle's `conv2d` takes: the executions built on it need the row
    /// and column strides equal.
    fn conv2d_stride(&self, execution: &str) -> Result<usize> {
        let (sh, sw) = (self.stride[1], self.stride[2]);
        if sh != sw {
            return Err(invalid_input!("{execution} needs equal spatial strides, got {sh} and {sw}"));
        }
        Ok(sh)
    }

    /// The GPU execution: the `kt` frames each output frame reads, stacked into channels, through
    /// one candle `conv2d` with the weight viewed as `[O, I·kt, kh, kw]` (channel `i·kt + dt`).
    pub fn forward_temporal_unfold(&self, x: &Tensor) -> Result<Tensor> {
        let [b, o, to, _, _] = self.output_shape(x.dims())?;
        let [kt, kh, kw] = self.kernel();
        let (_, c, t, h, w) = x.dims5()?;
        let p = self.padding;
        let sh = self.conv2d_stride("the GPU Conv3d")?;
        // [B, C, To·kt, H, W] with frame `o·st + dt` at position `o·kt + dt`; when the input is
        // exactly one kernel's worth of frames, that is the input itself.
        let windows = if to == 1 && t == kt {
            x.clone()
        } else {
            let frames: Vec<u32> =
                (0..to).flat_map(|o| (0..kt).map(move |dt| (o * self.stride[0] + dt) as u32)).collect();
            x.index_select(&Tensor::new(frames.as_slice(), x.device())?, 2)?
        };
        let stacked = if to == 1 {
            windows.reshape((b, c * kt, h, w))?
        } else {
            windows.reshape((b, c, to, kt, h, w))?.permute((0, 2, 1, 3, 4, 5))?.reshape((b * to, c * kt, h, w))?
        };
        let stacked = stacked.pad_with_zeros(2, p.top, p.bottom)?.pad_with_zeros(3, p.left, p.right)?.contiguous()?;
        let weight = self.weight()?.reshape((o, self.in_channels() * kt, kh, kw))?.to_dtype(x.dtype())?;
        let y = stacked.conv2d(&weight, 0, sh, 1, 1)?;
        let (_, _, ho, wo) = y.dims4()?;
        let mut y = if to == 1 {
            y.reshape((b, o, 1, ho, wo))?
        } else {
            y.reshape((b, to, o, ho, wo))?.permute((0, 2, 1, 3, 4))?
        };
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.to_dtype(y.dtype())?.reshape((1, o, 1, 1, 1))?)?;
        }
        Ok(y.contiguous()?)
    }

    /// A device-independent execution: one candle `conv2d` per temporal tap, summed.
    pub fn forward_taps(&self, x: &Tensor) -> Result<Tensor> {
        let [_, _, to, _, _] = self.output_shape(x.dims())?;
        let [kt, _, _] = self.kernel();
        let (b, c, _, h, w) = x.dims5()?;
        let p = self.padding;
        let sh = self.conv2d_stride("the conv2d-tap Conv3d")?;
        let x = x.pad_with_zeros(3, p.top, p.bottom)?.pad_with_zeros(4, p.left, p.right)?.contiguous()?;
        let weight = self.weight()?.to_dtype(x.dtype())?;
        let mut sum: Option<Tensor> = None;
        for dt in 0..kt {
            let frames: Vec<u32> = (0..to).map(|o| (o * self.stride[0] + dt) as u32).collect();
            let frames = Tensor::new(frames.as_slice(), x.device())?;
            let xs = x.index_select(&frames, 2)?.permute((0, 2, 1, 3, 4))?.reshape((
                b * to,
                c,
                h + p.top + p.bottom,
                w + p.left + p.right,
            ))?;
            let y = xs.conv2d(&weight.i((.., .., dt))?.contiguous()?, 0, sh, 1, 1)?;
            sum = Some(match sum {
                None => y,
                Some(s) => (s + y)?,
            });
        }
        let y = sum.ok_or_else(|| invalid_input!("a Conv3d kernel needs at least one temporal tap"))?;
        let (_, o, ho, wo) = y.dims4()?;
        let mut y = y.reshape((b, to, o, ho, wo))?.permute((0, 2, 1, 3, 4))?;
        if let Some(bias) = &self.bias {
            y = y.broadcast_add(&bias.to_dtype(y.dtype())?.reshape((1, o, 1, 1, 1))?)?;
        }
        Ok(y.contiguous()?)
    }

    /// The CPU path over the input frames `segments` (f32, contiguous), joined along time.
    fn forward_cpu(&self, segments: &[Segment<'_>], packed: &PackedWeight, out_shape: [usize; 5]) -> Result<Tensor> {
        let [b, o, to, ho, wo] = out_shape;
        let Some(Segment::Frames { dims: [_, c, _, h, w], .. }) =
            segments.iter().find(|s| matches!(s, Segment::Frames { .. }))
        else {
            return Err(invalid_input!("a Conv3d input needs at least one real frame"));
        };
        let (c, h, w) = (*c, *h, *w);
        let tiles = RowTiles::new([c, h, w], self.padding, self.kernel(), self.stride, ho);
        let storages: Vec<_> = segments.iter().map(Segment::storage).collect();
        let mut sources = Vec::with_capacity(segments.len());
        for (segment, storage) in segments.iter().zip(&storages) {
            sources.push(match (segment, storage) {
                (Segment::Zeros(n), _) => FrameSource { data: &[], frames: *n, first: 0, count: *n },
                (Segment::Frames { dims, first, offset, .. }, Some(storage)) => {
                    let Storage::Cpu(cpu) = &**storage else {
                        return Err(invalid_input!("the CPU Conv3d was handed a tensor on another device"));
                    };
                    let data = &cpu.as_slice::<f32>()?[*offset..*offset + dims.iter().product::<usize>()];
                    FrameSource { data, frames: dims[2], first: *first, count: dims[2] - first }
                }
                (Segment::Frames { .. }, None) => unreachable!("a frames segment always has storage"),
            });
        }
        let mut out = vec![0f32; b * o * to * ho * wo];
        let mut cols = vec![0f32; tiles.cols_len()];
        let mut tile_out = vec![0f32; o * tiles.rows * tiles.q];
        let threads = candle_core::utils::get_num_threads();
        let [_, _, kw] = self.kernel();
        let (k, sw) = (tiles.k(), self.stride[2]);
        for bi in 0..b {
            let frame_rows = |frame: usize| frame_rows(&sources, bi, (c, h * w), frame);
            for ti in 0..to {
                for r0 in (0..ho).step_by(tiles.rows) {
                    let rows = tiles.rows.min(ho - r0);
                    tiles.fill(&mut cols, &frame_rows, ti, r0, rows);
                    let n = rows * tiles.q;
                    for position in tile_out[..o * n].chunks_exact_mut(o) {
                        position.copy_from_slice(&packed.bias);
                    }
                    let parallelism = if o * n * k >= 1 << 18 && threads > 1 {
                        gemm::Parallelism::Rayon(threads)
                    } else {
                        gemm::Parallelism::None
                    };
                    for dw in 0..kw {
                        let weight = &packed.taps[dw * o * k..(dw + 1) * o * k];
                        debug_assert!((dw + sw * (n - 1)) * k + k <= cols.len());
                        // out[n, o] = cols[n, k] · weight[k, o]: positions are the long GEMM
                        // axis and both inputs have k contiguous, which gemm packs fastest.
                        // SAFETY: the cols view (row stride sw·k, offset dw·k) stays inside
                        // `cols`, whose `kw` slack positions cover the over-computed columns;
                        // weight is [k, o] row-major; dst is `tile_out` as [n, o] row-major.
                        unsafe {
                            gemm::gemm(
                                n,
                                o,
                                k,
                                tile_out.as_mut_ptr(),
                                1,
                                o as isize,
                                true,
                                cols.as_ptr().add(dw * k),
                                1,
                                (sw * k) as isize,
                                weight.as_ptr(),
                                1,
                                o as isize,
                                1.0,
                                1.0,
                                false,
                                false,
                                false,
                                parallelism,
                            );
                        }
                    }
                    for oi in 0..o {
                        for r in 0..rows {
                            let dst = (((bi * o + oi) * to + ti) * ho + r0 + r) * wo;
                            let first = r * tiles.q * o + oi;
                            for (wi, value) in out[dst..dst + wo].iter_mut().enumerate() {
                                *value = tile_out[first + wi * o];
                            }
                        }
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (b, o, to, ho, wo), &Device::Cpu)?)
    }
}

/// A run of input frames for the CPU path: zero frames, or the frames of a contiguous f32
/// tensor `[B, C, T, H, W]` from `first` on.
enum Segment<'a> {
    Zeros(usize),
    Frames { tensor: &'a Tensor, dims: [usize; 5], first: usize, offset: usize },
}

impl<'a> Segment<'a> {
    fn frames(tensor: &'a Tensor) -> Result<Self> {
        Self::frames_from(tensor, 0)
    }

    fn frames_from(tensor: &'a Tensor, first: usize) -> Result<Self> {
        let (b, c, t, h, w) = tensor.dims5()?;
        if !tensor.is_contiguous() || tensor.dtype() != DType::F32 {
            return Err(invalid_input!("the CPU Conv3d reads contiguous f32 frames"));
        }
        let offset = tensor.layout().start_offset();
        Ok(Self::Frames { tensor, dims: [b, c, t, h, w], first: first.min(t), offset })
    }

    fn len(&self) -> usize {
        match self {
            Self::Zeros(n) => *n,
            Self::Frames { dims, first, .. } => dims[2] - first,
        }
    }

    fn storage(&self) -> Option<impl std::ops::Deref<Target = Storage> + 'a> {
        match self {
            Self::Zeros(_) => None,
            Self::Frames { tensor, .. } => Some(tensor.storage_and_layout().0),
        }
    }
}

/// A segment's values, borrowed for the duration of one convolution.
struct FrameSource<'a> {
    /// The whole tensor `[B, C, frames, H, W]`; empty for zero frames.
    data: &'a [f32],
    frames: usize,
    first: usize,
    count: usize,
}

/// Input frame `frame` of sample `bi` across the joined segments (`c` channels of `hw` values
/// per frame): its channel-0 values and the stride between channels, or `None` where the frame
/// is zero.
fn frame_rows<'a>(
    sources: &[FrameSource<'a>],
    bi: usize,
    (c, hw): (usize, usize),
    frame: usize,
) -> Option<(&'a [f32], usize)> {
    let mut frame = frame;
    for source in sources {
        if frame < source.count {
            if source.data.is_empty() {
                return None;
            }
            let plane = source.frames * hw;
            return Some((&source.data[bi * c * plane + (source.first + frame) * hw..], plane));
        }
        frame -= source.count;
    }
    None
}

/// Elements of one column tile the CPU path aims for (16 MiB of f32): large enough for
/// efficient GEMMs, small enough to stay bounded at any resolution.
const TILE_ELEMENTS: usize = 4 << 20;

/// The CPU path's column buffer: for one output frame and a band of output rows, every padded
/// input position holds the `kt·kh·C` values (temporal tap, row tap, channel) its column of the
/// kernel reads. Position-major with those values contiguous, so the `kw` column taps are just
/// `kw` shifted views of the same buffer, a third of a full im2col's copying.
struct RowTiles {
    c: usize,
    h: usize,
    w: usize,
    padding: SpatialPadding,
    kernel: [usize; 3],
    stride: [usize; 3],
    /// Padded width, rounded up to a multiple of the column stride.
    wp: usize,
    /// Over-computed output columns per output row (`wp / sw`).
    q: usize,
    /// Output rows per tile.
    rows: usize,
}

impl RowTiles {
    fn new(input: [usize; 3], padding: SpatialPadding, kernel: [usize; 3], stride: [usize; 3], ho: usize) -> Self {
        let [c, h, w] = input;
        let wp = (w + padding.left + padding.right).div_ceil(stride[2]) * stride[2];
        let k = kernel[0] * c * kernel[1];
        let rows = (TILE_ELEMENTS / (k * wp)).clamp(1, ho);
        Self { c, h, w, padding, kernel, stride, wp, q: wp / stride[2], rows }
    }

    /// GEMM inner dimension: temporal taps × row taps × channels.
    fn k(&self) -> usize {
        self.kernel[0] * self.kernel[1] * self.c
    }

    /// Buffer length: a full tile plus the slack positions the last column tap reads past it.
    fn cols_len(&self) -> usize {
        (self.rows * self.wp + self.kernel[2]) * self.k()
    }

    /// Writes the columns for output frame `ti`, output rows `r0..r0 + rows`, with the spatial
    /// zero padding made explicit. `frame_rows(f)` gives input frame `f` of the sample as
    /// (its first value of channel 0, the stride between channels), or `None` for a zero frame.
    fn fill<'a>(
        &self,
        cols: &mut [f32],
        frame_rows: &(dyn Fn(usize) -> Option<(&'a [f32], usize)> + Sync),
        ti: usize,
        r0: usize,
        rows: usize,
    ) {
        use rayon::prelude::*;
        let [kt, kh, _] = self.kernel;
        let (k, c) = (self.k(), self.c);
        cols[..rows * self.wp * k].par_chunks_mut(self.wp * k).enumerate().for_each(|(r, row)| {
            for dt in 0..kt {
                let frame = frame_rows(ti * self.stride[0] + dt);
                for dh in 0..kh {
                    let y = ((r0 + r) * self.stride[1] + dh) as isize - self.padding.top as isize;
                    let offset = (dt * kh + dh) * c;
                    let Some((frame, plane)) = frame.filter(|_| y >= 0 && y < self.h as isize) else {
                        for position in row.chunks_exact_mut(k) {
                            position[offset..offset + c].fill(0.0);
                        }
                        continue;
                    };
                    let source = &frame[y as usize * self.w..];
                    let (left, w) = (self.padding.left, self.w);
                    // Only the padding columns on either side are zero; the rest is the row.
                    let (before, inside) = row.split_at_mut(left * k);
                    for position in before.chunks_exact_mut(k).chain(inside[w * k..].chunks_exact_mut(k)) {
                        position[offset..offset + c].fill(0.0);
                    }
                    transpose_channels(source, plane, c, w, Slots { row: inside, stride: k, offset });
                }
            }
        });
    }
}

/// Where [`transpose_channels`] writes: position `x`'s `c` values go to
/// `row[x·stride + offset..][..c]`.
struct Slots<'a> {
    row: &'a mut [f32],
    stride: usize,
    offset: usize,
}

/// Copies `c` channel rows of `w` values (`source[ci·plane + x]`) into position-major slots:
/// the im2col fill's transposition. 8×8 blocks go through AVX registers where the CPU has AVX
/// (a strided scalar gather was 14% of a VAE decode); the edges are copied one by one.
fn transpose_channels(source: &[f32], plane: usize, c: usize, w: usize, slots: Slots<'_>) {
    assert!(c == 0 || w == 0 || source.len() >= (c - 1) * plane + w, "channel rows out of range");
    assert!(c == 0 || w == 0 || slots.row.len() >= (w - 1) * slots.stride + slots.offset + c, "slots out of range");
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX, and both ranges were checked above.
            unsafe { transpose_channels_avx(source, plane, c, w, slots) };
            return;
        }
    }
    transpose_block(source, plane, (0, c), (0, w), slots);
}

/// The scalar transposition of channels `cs` × positions `xs`.
fn transpose_block(source: &[f32], plane: usize, cs: (usize, usize), xs: (usize, usize), slots: Slots<'_>) {
    for x in xs.0..xs.1 {
        let dst = &mut slots.row[x * slots.stride + slots.offset..];
        for ci in cs.0..cs.1 {
            dst[ci] = source[ci * plane + x];
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_channels_avx(source: &[f32], plane: usize, c: usize, w: usize, slots: Slots<'_>) {
    use std::arch::x86_64::*;
    let (cb, wb) = (c / 8 * 8, w / 8 * 8);
    let (src, dst) = (source.as_ptr(), slots.row.as_mut_ptr());
    for x0 in (0..wb).step_by(8) {
        for c0 in (0..cb).step_by(8) {
            // SAFETY (all loads and stores): channel c0 + 7 < c and position x0 + 7 < w, inside
            // the ranges `transpose_channels` checked.
            let load = |i: usize| _mm256_loadu_ps(src.add((c0 + i) * plane + x0));
            let (r0, r1, r2, r3) = (load(0), load(1), load(2), load(3));
            let (r4, r5, r6, r7) = (load(4), load(5), load(6), load(7));
            let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
            let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
            let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
            let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
            let (u0, u1) = (_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2));
            let (u2, u3) = (_mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3));
            let (u4, u5) = (_mm256_shuffle_ps::<0x44>(t4, t6), _mm256_shuffle_ps::<0xEE>(t4, t6));
            let (u6, u7) = (_mm256_shuffle_ps::<0x44>(t5, t7), _mm256_shuffle_ps::<0xEE>(t5, t7));
            let columns = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (j, column) in columns.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add((x0 + j) * slots.stride + slots.offset + c0), column);
            }
        }
    }
    let Slots { row, stride, offset } = slots;
    transpose_block(source, plane, (cb, c), (0, wb), Slots { row, stride, offset });
    transpose_block(source, plane, (0, c), (wb, w), Slots { row, stride, offset });
}

/// The inverse of [`pack_weight`]: `[kw][kt][kh][I][O]` back to `[O, I, kt, kh, kw]` (f32).
fn unpack_weight(packed: &PackedWeight, [o, i, kt, kh, kw]: [usize; 5]) -> Result<Tensor> {
    let k = kt * i * kh;
    let mut w = vec![0f32; packed.taps.len()];
    for oi in 0..o {
        for ii in 0..i {
            for dt in 0..kt {
                for dh in 0..kh {
                    for dw in 0..kw {
                        let dst = (((oi * i + ii) * kt + dt) * kh + dh) * kw + dw;
                        w[dst] = packed.taps[(dw * k + (dt * kh + dh) * i + ii) * o + oi];
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(w, (o, i, kt, kh, kw), &Device::Cpu)?)
}

/// Re-lays out the weight for the CPU path: `[O, I, kt, kh, kw]` → `[kw][kt][kh][I][O]`, so each
/// column tap is a `[kt·kh·I, O]` matrix matching [`RowTiles`]' value order.
fn pack_weight(weight: &Tensor, bias: Option<&Tensor>) -> Result<PackedWeight> {
    let (o, i, kt, kh, kw) = weight.dims5()?;
    let w = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let k = kt * i * kh;
    let mut taps = vec![0f32; w.len()];
    for oi in 0..o {
        for ii in 0..i {
            for dt in 0..kt {
                for dh in 0..kh {
                    for dw in 0..kw {
                        let src = (((oi * i + ii) * kt + dt) * kh + dh) * kw + dw;
                        let dst = (dw * k + (dt * kh + dh) * i + ii) * o + oi;
                        taps[dst] = w[src];
                    }
                }
            }
        }
    }
    let bias = match bias {
        Some(b) => b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        None => vec![0.0; o],
    };
    Ok(PackedWeight { taps, bias })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocked_transposition_matches_the_scalar_one() {
        for (c, w, plane, stride, offset) in
            [(8, 8, 8, 8, 0), (19, 37, 41, 60, 3), (96, 418, 500, 900, 96), (3, 5, 5, 4, 1)]
        {
            let source: Vec<f32> = (0..(c - 1) * plane + w).map(|i| i as f32 * 0.5 - 7.0).collect();
            let len = (w - 1) * stride + offset + c;
            let mut fast = vec![f32::NAN; len + 5];
            let mut slow = vec![f32::NAN; len + 5];
            transpose_channels(&source, plane, c, w, Slots { row: &mut fast, stride, offset });
            transpose_block(&source, plane, (0, c), (0, w), Slots { row: &mut slow, stride, offset });
            let same = fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "c {c} w {w}");
            assert_eq!(slow[offset + c - 1], source[(c - 1) * plane]);
        }
    }
}
