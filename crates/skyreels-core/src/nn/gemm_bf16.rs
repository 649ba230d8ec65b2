//! `y = x·Wᵀ` with bf16 operands and f32 accumulation: the CPU's bf16 matrix product.
//!
//! Both operands are bf16 (an f32 `x` is rounded to nearest-even first), every product of two
//! bf16 values is exact in f32 and the sums are f32 — the arithmetic of a GPU's bf16 tensor
//! cores and of PyTorch's bf16 GEMM on a CPU. Two instruction sets do this faster than widening
//! to f32 and using the f32 GEMM:
//!
//! - **AMX** (Intel Xeon since Sapphire Rapids): `TDPBF16PS` multiplies a 16 × 32 tile of bf16
//!   values by a 32 × 16 one into 16 × 16 f32 sums in one instruction.
//! - **AVX-512 BF16** (`VDPBF16PS`): 16 pairs of bf16 products added into 16 f32 lanes, twice
//!   the products of an f32 FMA on AMD Zen 4 and later. On Intel cores, which have two 512-bit
//!   FMA units, it measured slower than the f32 GEMM (106 against 150 GFLOP/s a core on a
//!   Sapphire Rapids Xeon), so it is used on AMD only.
//!
//! Elsewhere [`engine`] is `None` and the caller widens the bf16 operands to f32 (the same
//! products, summed in another order).
//!
//! Operands are held as *pairs*: two consecutive `k` values of one row in a `u32`, the even one
//! in the low half, which is both instruction sets' operand format. A row of `x` rounded to
//! bf16 is a row of pairs; `W` is repacked per call into panels of [`NR`] output columns,
//! `[pair][column]`, which is AMX's layout for its second operand and two vector loads for
//! `VDPBF16PS`. The product is tiled as in GotoBLAS: each task owns a block of rows and a block
//! of panels and walks the pairs `KC` at a time, so that its rows' and panels' segments stay
//! in the caches. The same tiling runs the f32 kernel of [`super::gemm_f32`], whose operand
//! units are f32 values ([`Operands`]).

use std::mem::MaybeUninit;

use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, Layout, Shape};
use half::bf16;
use rayon::prelude::*;

/// Output columns of one micro-tile and of one packed panel of `W`.
pub(crate) const NR: usize = 32;

/// Output columns per task (in panels).
const PANELS_PER_TASK: usize = 8;
/// Rows per task, about.
const ROWS_PER_TASK: usize = 192;

/// The instruction set that multiplies bf16 operands on this CPU, if any is faster than
/// widening them (decided once per process; `SKYREELS_BF16_KERNEL=amx|dot-pair|widen` overrides
/// it for measurements, except with a kernel the CPU lacks, which leaves the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    /// AMX tiles (`TDPBF16PS`).
    Amx,
    /// AVX-512 BF16 (`VDPBF16PS`).
    DotPair,
}

/// See [`Engine`].
pub(crate) fn engine() -> Option<Engine> {
    static ENGINE: std::sync::OnceLock<Option<Engine>> = std::sync::OnceLock::new();
    *ENGINE.get_or_init(|| {
        let (amx, dot_pair) = (amx_available(), dot_pair_available());
        match std::env::var("SKYREELS_BF16_KERNEL").as_deref() {
            Ok("amx") if amx => Some(Engine::Amx),
            Ok("dot-pair") if dot_pair => Some(Engine::DotPair),
            Ok("widen") => None,
            _ if amx => Some(Engine::Amx),
            _ if dot_pair && cpu_is_amd() => Some(Engine::DotPair),
            _ => None,
        }
    })
}

/// Whether the CPU has AVX-512F and AVX-512 BF16.
fn dot_pair_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has AMX tiles with bf16 and the kernel lets this process use them (Linux
/// grants the tile state on request, `arch_prctl(ARCH_REQ_XCOMP_PERM)`).
fn amx_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // CPUID.(EAX=7, ECX=0):EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
        // SAFETY: CPUID leaf 7 exists on every x86-64 CPU this code runs on (the intrinsic is
        // safe from Rust 1.94 on, unsafe before).
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
        if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
            return false;
        }
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a request for a permission; it changes no memory of this process.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    false
}

/// Whether the CPU's vendor is AMD.
fn cpu_is_amd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: CPUID leaf 0 exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
        // "AuthenticAMD" in EBX, EDX, ECX.
        (leaf.ebx, leaf.edx, leaf.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The left operand: `m × k` values, row-major, as f32 (rounded here) or already bf16.
#[derive(Clone, Copy)]
pub(crate) enum Lhs<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

/// `x·Wᵀ (+ bias)` for `x` `[m, k]`, `w` `[n, k]` (both row-major) and `bias` `[n]` into a new
/// `[m, n]` f32 buffer, or `None` when [`engine`] is (the caller then widens to f32).
pub(crate) fn matmul_wt(x: Lhs, w: &[bf16], bias: Option<&[f32]>, shape: [usize; 3]) -> Option<Vec<f32>> {
    match engine()? {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Engine::Amx => Some(product::<amx::Tiles>(x, w, bias, shape)),
        #[cfg(target_arch = "x86_64")]
        Engine::DotPair => Some(product::<dot_pair::Lanes>(x, w, bias, shape)),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// `x·Wᵀ (+ bias)` as a candle op: `x` `[m, k]` (f32 or bf16), `W` `[n, k]` (bf16) and, as
/// a third operand, the bias `[n]` (f32 or bf16), all contiguous on the CPU, give `[m, n]`.
/// The bias is the sums' starting value. Only where [`engine`] is some; no backward.
pub(crate) enum MatmulWt {
    /// The sums, in f32.
    Sums,
    /// `gelu_tanh` of the sums rounded to bf16 ([`matmul_wt_gelu_bf16`]), in bf16.
    GeluBf16,
}

impl MatmulWt {
    fn run(
        &self,
        (x, xl): (&CpuStorage, &Layout),
        (w, wl): (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets()) else {
            bail!("bf16-matmul needs contiguous operands")
        };
        let (&[m, k], &[n, wk]) = (xl.dims(), wl.dims()) else {
            bail!("bf16-matmul multiplies matrices, not {:?} by {:?}", xl.dims(), wl.dims())
        };
        if k != wk {
            bail!("bf16-matmul: rows of {k} against weights of {wk}")
        }
        let CpuStorage::BF16(w) = w else { bail!("bf16-matmul takes bf16 weights") };
        let x = match x {
            CpuStorage::F32(x) => Lhs::F32(&x[x0..x1]),
            CpuStorage::BF16(x) => Lhs::Bf16(&x[x0..x1]),
            _ => bail!("bf16-matmul takes f32 or bf16 inputs"),
        };
        let bias: Option<Vec<f32>> = match bias {
            None => None,
            Some((b, bl)) => {
                let Some((b0, b1)) = bl.contiguous_offsets() else { bail!("bf16-matmul needs a contiguous bias") };
                let values = match b {
                    CpuStorage::F32(b) => b[b0..b1].to_vec(),
                    CpuStorage::BF16(b) => b[b0..b1].iter().map(|v| v.to_f32()).collect(),
                    _ => bail!("bf16-matmul takes an f32 or bf16 bias"),
                };
                if values.len() != n {
                    bail!("bf16-matmul: a bias of {} for {n} outputs", values.len())
                }
                Some(values)
            }
        };
        let (w, bias, shape) = (&w[w0..w1], bias.as_deref(), [m, k, n]);
        let out = match self {
            Self::Sums => matmul_wt(x, w, bias, shape).map(CpuStorage::F32),
            Self::GeluBf16 => matmul_wt_gelu_bf16(x, w, bias, shape).map(CpuStorage::BF16),
        };
        match out {
            Some(out) => Ok((out, Shape::from((m, n)))),
            None => bail!("bf16-matmul needs a CPU with AMX or AVX-512 BF16"),
        }
    }
}

impl CustomOp2 for MatmulWt {
    fn name(&self) -> &'static str {
        "bf16-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((x, xl), (w, wl), None)
    }
}

impl CustomOp3 for MatmulWt {
    fn name(&self) -> &'static str {
        "bf16-matmul-bias"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run((x, xl), (w, wl), Some((b, bl)))
    }
}

/// The inner loop of the product: one `ROWS × NR` tile of results over `kc` pairs.
pub(crate) trait MicroKernel {
    /// Rows of a tile.
    const ROWS: usize;
    /// `kc` and the operands' pairs per row are multiples of this.
    const PAIR_STEP: usize;
    /// Pairs per pass over a tile (a multiple of `PAIR_STEP`): the results stay in registers
    /// for this long, and a task's rows and panels of this many pairs stay in the caches.
    const KC: usize;
    /// How f32 values become this kernel's operands.
    type Operands: Operands;

    /// Prepares this thread for [`tile`](Self::tile) calls (AMX: loads the tile configuration).
    ///
    /// # Safety
    /// The kernel's instructions must be present; [`end`](Self::end) must follow.
    unsafe fn begin() {}

    /// Releases what [`begin`](Self::begin) took.
    ///
    /// # Safety
    /// After [`begin`](Self::begin) on this thread.
    unsafe fn end() {}

    /// `c[r][j] = s[r][j] + Σ_p a[r·lda + p]·b[p·NR + j]` for `r < ROWS`, `j < NR`, `p < kc`,
    /// where `s` is what `start` says (row stride of `c`: `ldc`).
    ///
    /// # Safety
    /// `a` must be readable for `ROWS` rows of `kc` pairs at stride `lda`, `b` for `kc × NR`
    /// pairs, `c` writable for `ROWS` rows of `NR` values at stride `ldc`, the kernel's
    /// instructions present (checked by [`engine`]) and [`begin`](Self::begin) called.
    unsafe fn tile(kc: usize, a: *const u32, lda: usize, b: *const u32, c: *mut f32, ldc: usize, start: Start);
}

/// How f32 values become a micro-kernel's operand units (`u32`s): pairs of bf16 values rounded
/// from them ([`Bf16Pairs`]), or the f32 values' own bits (`gemm_f32::F32Values`).
pub(crate) trait Operands {
    /// Values per unit: 2 (a pair) or 1.
    const VALUES_PER_UNIT: usize;
    /// Whether a unit is an f32 value's bits, so that rows of f32 values are a product's `a`
    /// where they lie (at their own stride).
    const IN_PLACE: bool;

    /// `src` times `factor` as units into the start of `dst`.
    fn row_into(src: &[f32], factor: f32, dst: &mut [u32]);
    /// Panels whose columns are the `n` rows (of `k` values at stride `ld`) of `src`, `units`
    /// units deep: `W` of `x·Wᵀ` held as f32, e.g. the keys of attention scores `q·kᵀ`.
    fn panels_of_rows(src: &[f32], shape: [usize; 3], units: usize) -> Vec<u32>;
    /// Panels whose columns are the `n` columns of `src` (`k` rows at stride `ld`), `units`
    /// units deep: `B` of `a·B` held row-major, e.g. the values of attention `P·v`.
    fn panels_of_columns(src: &[f32], shape: [usize; 3], units: usize) -> Vec<u32>;

    /// Units for `len` values.
    fn units(len: usize) -> usize {
        len.div_ceil(Self::VALUES_PER_UNIT)
    }
}

/// `m` rows of `k` values of `src` (stride `ld`) as a product's `a` of `rows × units` units and
/// that operand's row stride: the rows where they lie when [`Operands::IN_PLACE`], else a
/// zero-padded copy.
pub(crate) fn rows_operand<O: Operands>(
    src: &[f32],
    [m, k, ld]: [usize; 3],
    [rows, units]: [usize; 2],
) -> (std::borrow::Cow<'_, [u32]>, usize) {
    if O::IN_PLACE {
        let len = m.checked_sub(1).map_or(0, |last| last * ld + k);
        return (std::borrow::Cow::Borrowed(super::gemm_f32::as_units(&src[..len])), ld);
    }
    let mut out = vec![0u32; rows * units];
    super::activation::run_vectorised(
        #[inline(always)]
        || {
            for (i, row) in out.chunks_mut(units).take(m).enumerate() {
                O::row_into(&src[i * ld..i * ld + k], 1.0, row);
            }
        },
    );
    (std::borrow::Cow::Owned(out), units)
}

/// Pairs of bf16 values, rounded to nearest-even from f32.
pub(crate) struct Bf16Pairs;

impl Operands for Bf16Pairs {
    const VALUES_PER_UNIT: usize = 2;
    const IN_PLACE: bool = false;

    #[inline(always)]
    fn row_into(src: &[f32], factor: f32, dst: &mut [u32]) {
        let round = |v: f32| round_to_bf16_bits(v * factor) as u32;
        let mut chunks = src.chunks_exact(2);
        for (o, p) in dst.iter_mut().zip(&mut chunks) {
            *o = round(p[0]) | round(p[1]) << 16;
        }
        if let [last] = chunks.remainder() {
            dst[src.len() / 2] = round(*last);
        }
    }

    fn panels_of_rows(src: &[f32], shape: [usize; 3], units: usize) -> Vec<u32> {
        panels_of_rows(src, shape, units)
    }

    fn panels_of_columns(src: &[f32], shape: [usize; 3], units: usize) -> Vec<u32> {
        panels_of_columns(src, shape, units)
    }
}

/// What a tile's sums start from.
#[derive(Clone, Copy)]
pub(crate) enum Start {
    /// Zero.
    Zero,
    /// The results already in `c` (a later pass over `k`).
    Results,
    /// The same `NR` values in every row (a bias, at the tile's first column).
    Bias(*const f32),
}

/// A raw pointer shared by tasks that write disjoint parts of one buffer (tiles of a product,
/// heads of an attention, rows of a finished product).
pub(crate) struct SharedMut<T = f32>(pub *mut T);
// Not derived: a derive would ask `T: Copy`, and a pointer is copied whatever it points to.
impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}
// SAFETY: every use writes elements no other task touches (see the callers' SAFETY notes).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer moved by `offset` elements (a method, so that closures capture the `Send`
    /// wrapper rather than its raw field).
    ///
    /// # Safety
    /// `offset` must stay inside the buffer.
    pub(crate) unsafe fn at(self, offset: usize) -> *mut T {
        self.0.add(offset)
    }

    /// The `len` elements at `offset`, maybe not yet written, as a slice to write.
    ///
    /// # Safety
    /// In bounds, and touched by no one else meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, offset: usize, len: usize) -> &mut [MaybeUninit<T>] {
        std::slice::from_raw_parts_mut(self.0.add(offset).cast(), len)
    }
}

/// Packed operands of one product `c = a·b` (`m × n`, over `pairs` pairs, a multiple of the
/// kernel's step): `a` as rows of `a_pairs` pairs (at least `m` rows; when a last tile of rows
/// runs past its end, that tile is read from a zero-padded copy), `b` as panels of `b_pairs`
/// pairs each (at least `pairs`). For an f32 kernel a "pair" is one f32 value.
#[derive(Clone, Copy)]
pub(crate) struct Packed<'a> {
    pub a: &'a [u32],
    pub a_pairs: usize,
    pub b: &'a [u32],
    pub b_pairs: usize,
    pub pairs: usize,
    pub m: usize,
    pub n: usize,
    /// Added to every row (`n` rounded up to whole panels of values), or none.
    pub bias: Option<&'a [f32]>,
}

/// Writes the tiles `row_tiles × panels` of `c = a·b` into `c` (row stride `ldc`), overwriting
/// what was there: GotoBLAS order, `K::KC` pairs at a time.
///
/// # Safety
/// `c` must be writable for `m` rows of `n` values at stride `ldc` (the tiles' part of it not
/// written by anyone else meanwhile), `o` consistent (`a` holds `m` rows of `a_pairs`, `b` the
/// panels of `n` columns), and `K`'s instructions present.
pub(crate) unsafe fn multiply_tiles<K: MicroKernel>(
    o: &Packed,
    row_tiles: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
) {
    multiply_tiles_at::<K>(o, row_tiles, panels, c, ldc, [0, 0])
}

/// [`multiply_tiles`] into a block of the results that starts at row and column `origin` of
/// the product (`c` points at that element): a task's scratch block.
///
/// # Safety
/// As [`multiply_tiles`], for the tiles' rows and columns less `origin`.
unsafe fn multiply_tiles_at<K: MicroKernel>(
    o: &Packed,
    row_tiles: std::ops::Range<usize>,
    panels: std::ops::Range<usize>,
    c: *mut f32,
    ldc: usize,
    [origin_row, origin_col]: [usize; 2],
) {
    let mut edge_tile = vec![0f32; K::ROWS * NR];
    let short_tile = short_row_tile::<K>(o, &row_tiles);
    K::begin();
    for pc in (0..o.pairs).step_by(K::KC) {
        let kc = K::KC.min(o.pairs - pc);
        for rt in row_tiles.clone() {
            let row0 = rt * K::ROWS;
            let rows = K::ROWS.min(o.m - row0);
            let a = match &short_tile {
                Some((tile_index, rows)) if *tile_index == rt => rows[pc..].as_ptr(),
                _ => o.a[row0 * o.a_pairs + pc..].as_ptr(),
            };
            for pt in panels.clone() {
                let col0 = pt * NR;
                let cols = NR.min(o.n - col0);
                let b = o.b[(pt * o.b_pairs + pc) * NR..].as_ptr();
                let tile = c.add((row0 - origin_row) * ldc + col0 - origin_col);
                let start = match (pc, o.bias) {
                    (0, Some(bias)) => Start::Bias(bias[col0..col0 + NR].as_ptr()),
                    (0, None) => Start::Zero,
                    _ => Start::Results,
                };
                if rows == K::ROWS && cols == NR {
                    K::tile(kc, a, o.a_pairs, b, tile, ldc, start);
                } else {
                    for r in (0..rows).filter(|_| pc > 0) {
                        std::ptr::copy_nonoverlapping(tile.add(r * ldc), edge_tile[r * NR..].as_mut_ptr(), cols);
                    }
                    K::tile(kc, a, o.a_pairs, b, edge_tile.as_mut_ptr(), NR, start);
                    for r in 0..rows {
                        std::ptr::copy_nonoverlapping(edge_tile[r * NR..].as_ptr(), tile.add(r * ldc), cols);
                    }
                }
            }
        }
    }
    K::end();
}

/// The last of `row_tiles` with its rows zero-padded to `K::ROWS`, when `o.a` ends before the
/// kernel's reads of that tile do (an unpadded `a`, e.g. f32 rows used in place): its last row
/// is read up to `pairs`, not to the row stride `a_pairs`.
fn short_row_tile<K: MicroKernel>(o: &Packed, row_tiles: &std::ops::Range<usize>) -> Option<(usize, Vec<u32>)> {
    let last = row_tiles.clone().last()?;
    let start = last * K::ROWS * o.a_pairs;
    let end = (last * K::ROWS + K::ROWS - 1) * o.a_pairs + o.pairs;
    (o.a.len() < end).then(|| {
        let mut rows = o.a[start.min(o.a.len())..].to_vec();
        rows.resize(K::ROWS * o.a_pairs, 0);
        (last, rows)
    })
}

/// The tiled product with `K` as the inner loop, on all threads.
fn product<K: MicroKernel>(x: Lhs, w: &[bf16], bias: Option<&[f32]>, [m, k, n]: [usize; 3]) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        let row = bias.map_or_else(|| vec![0f32; n], <[f32]>::to_vec);
        return row.repeat(m);
    }
    with_packed::<K, _>(x, w, bias, [m, k, n], multiply_packed::<K>)
}

/// `run` on the operands of `x·Wᵀ (+ bias)` packed for `K` (`m`, `n` and `k` not zero).
fn with_packed<K: MicroKernel, R>(
    x: Lhs,
    w: &[bf16],
    bias: Option<&[f32]>,
    [m, k, n]: [usize; 3],
    run: impl FnOnce(&Packed) -> R,
) -> R {
    let pairs = k.div_ceil(2).next_multiple_of(K::PAIR_STEP);
    let (lhs, a_pairs) = lhs_operand(x, [m, k], [m.next_multiple_of(K::ROWS), pairs]);
    let panels = pack_panels(w, [n, k], pairs);
    let bias = bias.map(|b| padded_bias(b, n));
    run(&Packed { a: &lhs, a_pairs, b: &panels, b_pairs: pairs, pairs, m, n, bias: bias.as_deref() })
}

/// `round_bf16(gelu_tanh(x·Wᵀ + bias))` `[m, n]`, or `None` where [`engine`] is: a
/// feed-forward's hidden activations for a next product that rounds them to bf16 anyway. Each
/// task's block of sums gets GELU and rounding while it is in cache, so the f32 activations are
/// never written out (half the bytes of an f32 output, and no pass of GELU over them).
pub(crate) fn matmul_wt_gelu_bf16(x: Lhs, w: &[bf16], bias: Option<&[f32]>, shape: [usize; 3]) -> Option<Vec<bf16>> {
    let finish = |sums: &[f32], out: &mut [MaybeUninit<bf16>]| super::activation::gelu_rounded_into(sums, out);
    match engine()? {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Engine::Amx => Some(product_finished::<amx::Tiles, _>(x, w, bias, shape, &finish)),
        #[cfg(target_arch = "x86_64")]
        Engine::DotPair => Some(product_finished::<dot_pair::Lanes, _>(x, w, bias, shape, &finish)),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// What a finished product does with a row of a task's sums: writes that row's columns of the
/// output from them.
type RowFinish<T> = dyn Fn(&[f32], &mut [MaybeUninit<T>]) + Sync;

/// [`product`] whose results pass through `finish` (a row of a task's sums into the same
/// columns of that row of the output) instead of being stored as f32.
fn product_finished<K: MicroKernel, T: Copy + Send + Sync>(
    x: Lhs,
    w: &[bf16],
    bias: Option<&[f32]>,
    [m, k, n]: [usize; 3],
    finish: &RowFinish<T>,
) -> Vec<T> {
    if m == 0 || n == 0 || k == 0 {
        let sums = bias.map_or_else(|| vec![0f32; n], <[f32]>::to_vec);
        let mut row = vec![MaybeUninit::uninit(); n];
        finish(&sums, &mut row);
        // SAFETY: `finish` wrote all `n` values of the row.
        let row: Vec<T> = row.into_iter().map(|v| unsafe { v.assume_init() }).collect();
        return row.repeat(m);
    }
    with_packed::<K, _>(x, w, bias, [m, k, n], |packed| multiply_packed_finished::<K, T>(packed, finish))
}

/// `bias` zero-padded to whole panels of `n` columns (what [`Packed::bias`] holds).
fn padded_bias(bias: &[f32], n: usize) -> Vec<f32> {
    let mut padded = bias.to_vec();
    padded.resize(n.next_multiple_of(NR), 0.0);
    padded
}

/// `c = a·b (+ bias)` of packed operands into a new `m × n` buffer, the tiles shared out among
/// all threads in blocks of rows and panels.
fn multiply_packed<K: MicroKernel>(packed: &Packed) -> Vec<f32> {
    let (m, n) = (packed.m, packed.n);
    // Written in full by the tiles below before it is read, so it is not zeroed first.
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let c = SharedMut(out.as_mut_ptr());
    tasks::<K>(m, n).into_par_iter().for_each(|(row_tiles, panels)| {
        // SAFETY: each task writes its own tiles of `out` (capacity `m × n`); the operands were
        // packed for `K`, whose instructions the caller checked.
        unsafe { multiply_tiles::<K>(packed, row_tiles, panels, c.at(0), n) };
    });
    // SAFETY: the tasks' tiles cover all `m` rows and `n` columns, each written on the first
    // pass over `k` (which reads nothing of `out`).
    unsafe { out.set_len(m * n) };
    out
}

/// A task of a product: its row tiles and its panels.
type Task = (std::ops::Range<usize>, std::ops::Range<usize>);

/// The tasks of an `m × n` product: blocks of row tiles and of panels.
fn tasks<K: MicroKernel>(m: usize, n: usize) -> Vec<Task> {
    let tiles_per_task = (ROWS_PER_TASK / K::ROWS).max(1);
    let (row_tiles, panel_count) = (m.div_ceil(K::ROWS), n.div_ceil(NR));
    (0..row_tiles)
        .step_by(tiles_per_task)
        .flat_map(|rt| {
            (0..panel_count)
                .step_by(PANELS_PER_TASK)
                .map(move |pt| (rt..(rt + tiles_per_task).min(row_tiles), pt..(pt + PANELS_PER_TASK).min(panel_count)))
        })
        .collect()
}

thread_local! {
    /// A task's block of sums in [`multiply_packed_finished`], kept per thread: it is written
    /// in full by each task before it is read.
    static TASK_SUMS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`multiply_packed`] whose tasks form their sums in a per-thread block (in cache) and hand
/// each row of it to `finish`, which writes that row's columns of the output.
fn multiply_packed_finished<K: MicroKernel, T: Copy + Send + Sync>(packed: &Packed, finish: &RowFinish<T>) -> Vec<T> {
    let (m, n) = (packed.m, packed.n);
    let mut out: Vec<T> = Vec::with_capacity(m * n);
    let shared = SharedMut(out.as_mut_ptr());
    tasks::<K>(m, n).into_par_iter().for_each(|(row_tiles, panels)| {
        let ldc = panels.len() * NR;
        let (row0, col0) = (row_tiles.start * K::ROWS, panels.start * NR);
        let (rows, cols) = ((row_tiles.end * K::ROWS).min(m) - row0, (panels.end * NR).min(n) - col0);
        TASK_SUMS.with_borrow_mut(|sums| {
            sums.resize(sums.len().max(row_tiles.len() * K::ROWS * ldc), 0.0);
            // SAFETY: `sums` holds the task's tiles (whole tiles, stride `ldc`) from its first
            // row and column; the operands were packed for `K`.
            unsafe { multiply_tiles_at::<K>(packed, row_tiles, panels, sums.as_mut_ptr(), ldc, [row0, col0]) };
            for (r, row_sums) in sums.chunks(ldc).take(rows).enumerate() {
                // SAFETY: row `row0 + r`, columns `col0..col0 + cols` are this task's alone, and
                // inside the `m × n` capacity.
                finish(&row_sums[..cols], unsafe { shared.slice((row0 + r) * n + col0, cols) });
            }
        });
    });
    // SAFETY: the tasks covered all `m` rows and `n` columns, each written by `finish`.
    unsafe { out.set_len(m * n) };
    out
}

/// Runs a computation with the micro-kernel of [`engine`], if there is one.
pub(crate) trait WithKernel {
    type Output;
    /// The computation with kernel `K`, whose instructions are present.
    fn run<K: MicroKernel>(self) -> Self::Output;
}

/// [`WithKernel::run`] with [`engine`]'s kernel, or `None` when there is none.
pub(crate) fn with_kernel<W: WithKernel>(work: W) -> Option<W::Output> {
    match engine()? {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Engine::Amx => Some(work.run::<amx::Tiles>()),
        #[cfg(target_arch = "x86_64")]
        Engine::DotPair => Some(work.run::<dot_pair::Lanes>()),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Panels whose columns are the `n` rows (of `k` values at stride `ld`) of `src`, rounded to
/// bf16: `W` of `x·Wᵀ` held as f32, e.g. the keys of attention scores `q·kᵀ`.
fn panels_of_rows(src: &[f32], [n, k, ld]: [usize; 3], pairs: usize) -> Vec<u32> {
    let mut out = vec![0u32; n.div_ceil(NR) * pairs * NR];
    let mut row_pairs = vec![0u32; k.div_ceil(2)];
    for (panel, dst) in out.chunks_mut(pairs * NR).enumerate() {
        for c in 0..NR.min(n - panel * NR) {
            let j = panel * NR + c;
            round_row_into_pairs(&src[j * ld..j * ld + k], &mut row_pairs);
            for (p, &v) in row_pairs.iter().enumerate() {
                dst[p * NR + c] = v;
            }
        }
    }
    out
}

/// Panels whose columns are the `n` columns of `src` (`k` rows at stride `ld`), pairs taken
/// down the rows, rounded to bf16: `B` of `a·B` held row-major, e.g. the values of attention.
fn panels_of_columns(src: &[f32], [k, n, ld]: [usize; 3], pairs: usize) -> Vec<u32> {
    let mut out = vec![0u32; n.div_ceil(NR) * pairs * NR];
    for (panel, dst) in out.chunks_mut(pairs * NR).enumerate() {
        let (col0, cols) = (panel * NR, NR.min(n - panel * NR));
        for p in 0..k.div_ceil(2) {
            let even = &src[2 * p * ld + col0..2 * p * ld + col0 + cols];
            let odd = (2 * p + 1 < k).then(|| &src[(2 * p + 1) * ld + col0..(2 * p + 1) * ld + col0 + cols]);
            let dst = &mut dst[p * NR..p * NR + cols];
            for (c, o) in dst.iter_mut().enumerate() {
                let hi = odd.map_or(0, |odd| round_to_bf16_bits(odd[c]));
                *o = round_to_bf16_bits(even[c]) as u32 | (hi as u32) << 16;
            }
        }
    }
    out
}

/// `src` rounded to bf16 as pairs into the start of `dst` (an odd length pads with a zero),
/// vectorised.
fn round_row_into_pairs(src: &[f32], dst: &mut [u32]) {
    super::activation::run_vectorised(
        #[inline(always)]
        || Bf16Pairs::row_into(src, 1.0, dst),
    )
}

/// `x` `[m, k]` as a product's rows of `pairs` pairs and their stride: a bf16 `x` where it lies
/// when its rows are already whole steps of pairs (its last tile of rows is then read from a
/// padded copy, see [`Packed`]), else a copy of `rows × pairs` pairs, zero past `m` rows and
/// past `k`.
fn lhs_operand<'a>(x: Lhs<'a>, [m, k]: [usize; 2], [rows, pairs]: [usize; 2]) -> (std::borrow::Cow<'a, [u32]>, usize) {
    if let Lhs::Bf16(values) = x {
        if k == 2 * pairs {
            if let borrowed @ std::borrow::Cow::Borrowed(_) = as_pairs(&values[..m * k]) {
                return (borrowed, pairs);
            }
        }
    }
    let mut out = vec![0u32; rows * pairs];
    out.par_chunks_mut(pairs).take(m).enumerate().for_each(|(i, row)| match x {
        Lhs::F32(values) => round_row_into_pairs(&values[i * k..(i + 1) * k], row),
        Lhs::Bf16(values) => pair_up(&values[i * k..(i + 1) * k], row),
    });
    (std::borrow::Cow::Owned(out), pairs)
}

/// Writes `src` as pairs into the start of `dst` (an odd length pads with a zero).
#[inline(always)]
fn pair_up(src: &[bf16], dst: &mut [u32]) {
    let mut chunks = src.chunks_exact(2);
    for (o, p) in dst.iter_mut().zip(&mut chunks) {
        *o = p[0].to_bits() as u32 | (p[1].to_bits() as u32) << 16;
    }
    if let [last] = chunks.remainder() {
        dst[src.len() / 2] = last.to_bits() as u32;
    }
}

/// The bits of `v` rounded to the nearest bf16, ties to even (as `half::bf16::from_f32`), in a
/// form the compiler vectorises; NaN stays a (quiet) NaN.
#[inline(always)]
pub(crate) fn round_to_bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits >> 16) | 0x40;
    (if v.is_nan() { nan } else { rounded }) as u16
}

/// `W` `[n, k]` as panels of `NR` output columns, `[panel][pair][column]` with `pairs` pairs,
/// zero past `n` and `k`.
fn pack_panels(w: &[bf16], [n, k]: [usize; 2], pairs: usize) -> Vec<u32> {
    /// Pairs transposed at a time: a block of the panel (2 KiB) stays in L1 while all its
    /// columns are written.
    const BLOCK: usize = 16;
    let real_pairs = k.div_ceil(2);
    let mut out = vec![0u32; n.div_ceil(NR) * pairs * NR];
    #[cfg(target_arch = "x86_64")]
    let gather = match as_pairs(w) {
        std::borrow::Cow::Borrowed(all) if k % 2 == 0 && NR * real_pairs < i32::MAX as usize => {
            std::arch::is_x86_feature_detected!("avx512f").then_some(all)
        }
        _ => None,
    };
    out.par_chunks_mut(pairs * NR).enumerate().for_each(|(panel, dst)| {
        let col0 = panel * NR;
        let cols = NR.min(n - col0);
        #[cfg(target_arch = "x86_64")]
        if let (Some(all), NR) = (gather, cols) {
            // SAFETY: AVX-512F is present (checked above); the panel's `NR` rows of
            // `real_pairs` pairs lie in `all`, and `dst` holds `pairs ≥ real_pairs` lines.
            return unsafe { gather_panel(&all[col0 * real_pairs..(col0 + NR) * real_pairs], real_pairs, dst) };
        }
        let rows: Vec<std::borrow::Cow<'_, [u32]>> =
            (col0..col0 + cols).map(|j| as_pairs(&w[j * k..(j + 1) * k])).collect();
        for p0 in (0..real_pairs).step_by(BLOCK) {
            let p1 = (p0 + BLOCK).min(real_pairs);
            for (c, row) in rows.iter().enumerate() {
                for (p, &v) in (p0..p1).zip(&row[p0..p1]) {
                    dst[p * NR + c] = v;
                }
            }
        }
    });
    out
}

/// One panel's first `real_pairs` lines from its `NR` rows of pairs (`rows`, row after row),
/// each line two 16-lane gathers down the rows: the transposition in vector registers, where
/// the scalar loop spent about five cycles a value.
///
/// # Safety
/// AVX-512F must be present; `rows` holds `NR × real_pairs` pairs and `dst` at least
/// `real_pairs` lines of `NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_panel(rows: &[u32], real_pairs: usize, dst: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(rows.len() >= NR * real_pairs && dst.len() >= NR * real_pairs);
    let stride = _mm512_set1_epi32(real_pairs as i32);
    let low = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), stride);
    let high = _mm512_add_epi32(low, _mm512_slli_epi32::<4>(stride));
    for (p, line) in dst.chunks_exact_mut(NR).take(real_pairs).enumerate() {
        let column = rows.as_ptr().add(p).cast::<i32>();
        _mm512_storeu_si512(line.as_mut_ptr().cast(), _mm512_i32gather_epi32::<4>(low, column));
        _mm512_storeu_si512(line.as_mut_ptr().add(16).cast(), _mm512_i32gather_epi32::<4>(high, column));
    }
}

/// A row of bf16 values as pairs: the same bytes when the length is even and the start is
/// aligned for `u32`, else a copy (an odd length pads with a zero).
fn as_pairs(row: &[bf16]) -> std::borrow::Cow<'_, [u32]> {
    if cfg!(target_endian = "little")
        && row.len().is_multiple_of(2)
        && (row.as_ptr() as usize).is_multiple_of(std::mem::align_of::<u32>())
    {
        // SAFETY: an even number of bf16 values is half as many u32 in the same bytes (the even
        // value in the low half on a little-endian CPU), and the start is aligned.
        return std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(row.as_ptr().cast::<u32>(), row.len() / 2)
        });
    }
    let mut pairs = vec![0u32; row.len().div_ceil(2)];
    pair_up(row, &mut pairs);
    std::borrow::Cow::Owned(pairs)
}

/// What the AVX-512 kernels share: a tile's sums as `ROWS × 2` vectors of 16 lanes.
#[cfg(target_arch = "x86_64")]
pub(crate) mod lanes {
    use std::arch::x86_64::*;

    use super::{Start, NR};

    /// The sums a tile of `ROWS` rows starts from (`c` at row stride `ldc` for
    /// [`Start::Results`]).
    ///
    /// # Safety
    /// AVX-512F present; `c` (or the bias) readable as [`super::MicroKernel::tile`] says.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn start_sums<const ROWS: usize>(
        c: *const f32,
        ldc: usize,
        start: Start,
    ) -> [[__m512; NR / 16]; ROWS] {
        let mut acc = [[_mm512_setzero_ps(); NR / 16]; ROWS];
        for (r, acc) in acc.iter_mut().enumerate() {
            for (v, lane) in acc.iter_mut().enumerate() {
                match start {
                    Start::Zero => {}
                    Start::Results => *lane = _mm512_loadu_ps(c.add(r * ldc + 16 * v)),
                    Start::Bias(bias) => *lane = _mm512_loadu_ps(bias.add(16 * v)),
                }
            }
        }
        acc
    }

    /// Writes a tile's sums to `c` (row stride `ldc`).
    ///
    /// # Safety
    /// AVX-512F present; `c` writable for the tile.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn store_sums<const ROWS: usize>(acc: &[[__m512; NR / 16]; ROWS], c: *mut f32, ldc: usize) {
        for (r, acc) in acc.iter().enumerate() {
            for (v, lane) in acc.iter().enumerate() {
                _mm512_storeu_ps(c.add(r * ldc + 16 * v), *lane);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod dot_pair {
    use std::arch::x86_64::*;

    use super::{MicroKernel, Start, NR};

    /// `VDPBF16PS` with `12 × 2` accumulators of 16 lanes (24 of the 32 vector registers).
    pub(super) struct Lanes;

    impl MicroKernel for Lanes {
        type Operands = super::Bf16Pairs;
        const ROWS: usize = 12;
        const PAIR_STEP: usize = 1;
        const KC: usize = 256;

        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn tile(kc: usize, a: *const u32, lda: usize, b: *const u32, c: *mut f32, ldc: usize, start: Start) {
            let mut acc = super::lanes::start_sums::<{ Self::ROWS }>(c, ldc, start);
            for p in 0..kc {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
                }
            }
            super::lanes::store_sums(&acc, c, ldc);
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;

    use super::{MicroKernel, Start, NR};

    /// `TDPBF16PS` on a 32 × 32 tile of results held in four tile registers (tmm0–3), with two
    /// tiles of `x` (tmm4–5, 16 rows × 16 pairs) and two of a panel (tmm6–7, 16 pairs × 16
    /// columns) per 16 pairs.
    pub(super) struct Tiles;

    /// How far ahead of a step its operands are fetched into L1, in pairs (two steps): a tile
    /// load that misses L1 stalls the tile unit (tiles are not renamed), and the 32 rows of `a`
    /// lie on 32 lines a row stride apart, which the hardware prefetcher does not follow.
    const PREFETCH_PAIRS: usize = 32;

    /// Fetches into L1 the lines of `a` (32 rows at stride `lda`) and of `b` (a step's panel
    /// rows, 2 KiB) that the step [`PREFETCH_PAIRS`] ahead of these will load. Prefetches do not
    /// fault, so addresses past the operands (after the last step) are harmless.
    #[inline(always)]
    fn prefetch_ahead(a: *const u32, lda: usize, b: *const u32) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let (a, b) = (a.wrapping_add(PREFETCH_PAIRS), b.wrapping_add(PREFETCH_PAIRS * NR));
        for line in 0..(Tiles::PAIR_STEP * NR * 4 / 64) {
            // SAFETY: a prefetch is a hint; it reads nothing and never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(line * 16).cast()) };
        }
        for row in 0..Tiles::ROWS {
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(row * lda).cast()) };
        }
    }

    /// The tile configuration (palette 1): all eight tiles 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    const CONFIG: Config = {
        let mut bytes = [0u8; 64];
        bytes[0] = 1;
        let mut t = 0;
        while t < 8 {
            bytes[16 + 2 * t] = 64;
            bytes[48 + t] = 16;
            t += 1;
        }
        Config(bytes)
    };

    impl MicroKernel for Tiles {
        type Operands = super::Bf16Pairs;
        const ROWS: usize = 32;
        const PAIR_STEP: usize = 16;
        // One pass over the DiT's 1536-wide inputs, so that each tile's sums are stored once:
        // 512 → 1024 measured +20–30% on its products (with the prefetch below).
        const KC: usize = 1024;

        unsafe fn begin() {
            asm!("ldtilecfg [{cfg}]", cfg = in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        }

        unsafe fn end() {
            asm!("tilerelease", options(nostack, nomem));
        }

        unsafe fn tile(kc: usize, a: *const u32, lda: usize, b: *const u32, c: *mut f32, ldc: usize, start: Start) {
            let (lda_bytes, ldb_bytes, ldc_bytes) = (lda * 4, NR * 4, ldc * 4);
            let c_low = c.add(16 * ldc);
            match start {
                Start::Zero => {
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem))
                }
                Start::Results => asm!(
                    "tileloadd tmm0, [{c0} + {s}*1]",
                    "tileloadd tmm1, [{c0} + {s}*1 + 64]",
                    "tileloadd tmm2, [{c1} + {s}*1]",
                    "tileloadd tmm3, [{c1} + {s}*1 + 64]",
                    c0 = in(reg) c, c1 = in(reg) c_low, s = in(reg) ldc_bytes,
                    options(nostack, readonly),
                ),
                // A row stride of zero loads the same 16 values into every row of a tile.
                Start::Bias(bias) => asm!(
                    "tileloadd tmm0, [{b} + {zero}*1]",
                    "tileloadd tmm1, [{b} + {zero}*1 + 64]",
                    "tileloadd tmm2, [{b} + {zero}*1]",
                    "tileloadd tmm3, [{b} + {zero}*1 + 64]",
                    b = in(reg) bias, zero = in(reg) 0usize,
                    options(nostack, readonly),
                ),
            }
            for step in (0..kc).step_by(Self::PAIR_STEP) {
                prefetch_ahead(a.wrapping_add(step), lda, b.wrapping_add(step * NR));
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm7, [{b0} + {sb}*1 + 64]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a.add(step), a1 = in(reg) a.add(16 * lda + step), sa = in(reg) lda_bytes,
                    b0 = in(reg) b.add(step * NR), sb = in(reg) ldb_bytes,
                    options(nostack, readonly),
                );
            }
            asm!(
                "tilestored [{c0} + {s}*1], tmm0",
                "tilestored [{c0} + {s}*1 + 64], tmm1",
                "tilestored [{c1} + {s}*1], tmm2",
                "tilestored [{c1} + {s}*1 + 64], tmm3",
                c0 = in(reg) c, c1 = in(reg) c_low, s = in(reg) ldc_bytes,
                options(nostack),
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The sums both instruction sets form, one output at a time in plain f32 (products of bf16
    /// values are exact), with any tile height and pair step.
    struct Portable<const ROWS: usize, const STEP: usize>;

    impl<const ROWS: usize, const STEP: usize> MicroKernel for Portable<ROWS, STEP> {
        type Operands = Bf16Pairs;
        const ROWS: usize = ROWS;
        const PAIR_STEP: usize = STEP;
        const KC: usize = 16 * STEP;

        unsafe fn tile(kc: usize, a: *const u32, lda: usize, b: *const u32, c: *mut f32, ldc: usize, start: Start) {
            assert_eq!(kc % STEP, 0, "kc is a multiple of the pair step");
            let half = |bits: u32| f32::from_bits(bits << 16);
            for r in 0..ROWS {
                for j in 0..NR {
                    let mut acc = match start {
                        Start::Zero => 0.0,
                        Start::Results => *c.add(r * ldc + j),
                        Start::Bias(bias) => *bias.add(j),
                    };
                    for p in 0..kc {
                        let (x, w) = (*a.add(r * lda + p), *b.add(p * NR + j));
                        acc += half(x >> 16) * half(w >> 16);
                        acc += half(x & 0xffff) * half(w & 0xffff);
                    }
                    *c.add(r * ldc + j) = acc;
                }
            }
        }
    }

    /// `len` values in [-1, 1) from a seeded LCG (the f32 kernel's tests share it).
    pub(crate) fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `x·Wᵀ` in f64 from the bf16-rounded operands.
    fn reference(x: &[f32], w: &[bf16], [m, k, n]: [usize; 3]) -> Vec<f64> {
        let x: Vec<f64> = x.iter().map(|&v| bf16::from_f32(v).to_f64()).collect();
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| x[i * k + p] * w[j * k + p].to_f64()).sum();
            }
        }
        out
    }

    fn rel_l2(ours: &[f32], exact: &[f64]) -> f64 {
        let num: f64 = ours.iter().zip(exact).map(|(&a, &b)| (a as f64 - b).powi(2)).sum();
        let den: f64 = exact.iter().map(|b| b * b).sum();
        (num / den.max(f64::MIN_POSITIVE)).sqrt()
    }

    /// Shapes that exercise every edge: rows short of a tile and of a task, an odd `k`, pairs
    /// short of a step and more than a `KC` pass, columns short of a panel and of a task.
    const SHAPES: [[usize; 3]; 9] = [
        [1, 2, 1],
        [13, 7, 33],
        [12, 64, 32],
        [32, 64, 32],
        [25, 513, 70],
        [200, 600, 300],
        [3, 1, 5],
        [197, 96, 257],
        [40, 2101, 45],
    ];

    fn weights(n: usize, k: usize, seed: u64) -> Vec<bf16> {
        random(n * k, seed).into_iter().map(bf16::from_f32).collect()
    }

    fn check_tiling<K: MicroKernel>() {
        for (s, &[m, k, n]) in SHAPES.iter().enumerate() {
            let x = random(m * k, s as u64);
            let w = weights(n, k, 100 + s as u64);
            let bias = (s % 2 == 1).then(|| random(n, 300 + s as u64));
            let ours = product::<K>(Lhs::F32(&x), &w, bias.as_deref(), [m, k, n]);
            let mut exact = reference(&x, &w, [m, k, n]);
            if let Some(bias) = &bias {
                for (i, e) in exact.iter_mut().enumerate() {
                    *e += bias[i % n] as f64;
                }
            }
            let err = rel_l2(&ours, &exact);
            // Only the f32 accumulation rounds: about √k·2⁻²⁴ relative.
            assert!(err < 1e-6, "{m}×{k}×{n}: relative error {err}");
            let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
            assert_eq!(ours, product::<K>(Lhs::Bf16(&xb), &w, bias.as_deref(), [m, k, n]), "bf16 input, {m}×{k}×{n}");
        }
    }

    #[test]
    fn tiling_packing_and_edges_give_the_exact_sums() {
        check_tiling::<Portable<5, 1>>();
        check_tiling::<Portable<12, 1>>();
        check_tiling::<Portable<32, 16>>();
    }

    #[test]
    fn rounding_matches_half_ties_to_even() {
        let specials = [0.0f32, -0.0, 1.0, -1.5, f32::MAX, f32::MIN_POSITIVE, 1e-40, f32::INFINITY, -f32::INFINITY];
        let ties = [f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), f32::from_bits(0xbf80_8001)];
        for v in specials.into_iter().chain(ties).chain(random(10_000, 7).into_iter().map(|v| v * 1e3)) {
            assert_eq!(round_to_bf16_bits(v), bf16::from_f32(v).to_bits(), "{v:e}");
        }
        assert!(bf16::from_bits(round_to_bf16_bits(f32::NAN)).is_nan());
    }

    /// Each instruction set this CPU has against the portable kernel of the same tiling: the
    /// same products, summed in the instruction's order.
    fn check_against_portable<K: MicroKernel, P: MicroKernel>() {
        for (s, &[m, k, n]) in SHAPES.iter().enumerate() {
            let x = random(m * k, 20 + s as u64);
            let w = weights(n, k, 200 + s as u64);
            let bias = (s % 2 == 0).then(|| random(n, 400 + s as u64));
            let portable = product::<P>(Lhs::F32(&x), &w, bias.as_deref(), [m, k, n]);
            let ours = product::<K>(Lhs::F32(&x), &w, bias.as_deref(), [m, k, n]);
            let exact: Vec<f64> = portable.iter().map(|&v| v as f64).collect();
            let err = rel_l2(&ours, &exact);
            assert!(err < 1e-6, "{m}×{k}×{n}: relative difference {err}");
        }
    }

    /// A product finished per task (GELU and rounding to bf16) against the plain product
    /// followed by candle's GELU and rounding, bit for bit, over the edge shapes.
    fn check_finished<K: MicroKernel>() {
        let finish =
            |sums: &[f32], out: &mut [MaybeUninit<bf16>]| super::super::activation::gelu_rounded_into(sums, out);
        for (s, &[m, k, n]) in SHAPES.iter().enumerate() {
            let x = random(m * k, 40 + s as u64);
            let w = weights(n, k, 500 + s as u64);
            let bias = (s % 2 == 0).then(|| random(n, 600 + s as u64));
            let sums = product::<K>(Lhs::F32(&x), &w, bias.as_deref(), [m, k, n]);
            let sums = candle_core::Tensor::from_vec(sums, m * n, &candle_core::Device::Cpu).unwrap();
            let expected = crate::nn::gelu_tanh(&sums).unwrap().to_dtype(candle_core::DType::BF16).unwrap();
            let ours = product_finished::<K, bf16>(Lhs::F32(&x), &w, bias.as_deref(), [m, k, n], &finish);
            assert_eq!(ours, expected.to_vec1::<bf16>().unwrap(), "{m}×{k}×{n}");
        }
    }

    #[test]
    fn finished_products_are_the_product_then_gelu_and_rounding() {
        check_finished::<Portable<5, 1>>();
        check_finished::<Portable<32, 16>>();
        #[cfg(target_arch = "x86_64")]
        if dot_pair_available() {
            check_finished::<dot_pair::Lanes>();
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        if amx_available() {
            check_finished::<amx::Tiles>();
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn dot_pair_instruction_matches_the_portable_kernel() {
        if !dot_pair_available() {
            eprintln!("this CPU has no AVX-512 BF16: VDPBF16PS not tested");
            return;
        }
        check_against_portable::<dot_pair::Lanes, Portable<12, 1>>();
    }

    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn amx_tiles_match_the_portable_kernel() {
        if !amx_available() {
            eprintln!("this CPU has no AMX (or the kernel refused it): TDPBF16PS not tested");
            return;
        }
        check_against_portable::<amx::Tiles, Portable<32, 16>>();
    }
}
