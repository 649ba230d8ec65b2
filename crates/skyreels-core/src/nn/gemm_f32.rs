//! f32 products on the tiled product of [`super::gemm_bf16`] with an AVX-512 FMA micro-kernel:
//! the products of the CPU's fused attention (`q·kᵀ` and `P·v`, per head and chunk of rows).
//!
//! Those products are small (a few dozen rows by 128 values) and many, and the general GEMM
//! (the `gemm` crate) packs both operands again on every call: on a DF-1.3B-width DiT forward it
//! ran the scores at about 50 GFLOP/s a core where its kernel reaches 175. Here the keys and
//! values are packed into panels once per head, the rows of `q` and of `P` are the kernel's
//! operand where they lie (each step broadcasts one value of each of 12 rows), and the same
//! tiling runs them at about 165 GFLOP/s a core. The large products of the linear layers stay
//! with the `gemm` crate, which is faster there (a 1950 × 1536 × 1536 product: 175 against this
//! kernel's 130 GFLOP/s a core on a Sapphire Rapids Xeon).
//!
//! Where the CPU lacks AVX-512F, [`with_kernel`] gives `None` and the caller keeps the general
//! GEMM; `SKYREELS_F32_KERNEL=gemm` does so too, for measuring.

use super::gemm_bf16::{Operands, WithKernel, NR};

/// Whether this CPU runs the f32 micro-kernel (AVX-512F, not overridden).
fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        let present = is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let present = false;
        present && std::env::var("SKYREELS_F32_KERNEL").as_deref() != Ok("gemm")
    })
}

/// [`WithKernel::run`] with the f32 micro-kernel, or `None` where this CPU has none.
pub(crate) fn with_kernel<W: WithKernel>(work: W) -> Option<W::Output> {
    if !available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    return Some(work.run::<fma::Lanes>());
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// f32 values as the units of a product: their own bits.
pub(crate) fn as_units(values: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment, and every bit pattern is a u32.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u32>(), values.len()) }
}

/// Operands that are f32 values, unrounded.
pub(crate) struct F32Values;

impl Operands for F32Values {
    const VALUES_PER_UNIT: usize = 1;
    const IN_PLACE: bool = true;

    #[inline(always)]
    fn row_into(src: &[f32], factor: f32, dst: &mut [u32]) {
        for (o, v) in dst.iter_mut().zip(src) {
            *o = (v * factor).to_bits();
        }
    }

    fn panels_of_rows(src: &[f32], [n, k, ld]: [usize; 3], units: usize) -> Vec<u32> {
        /// Values transposed at a time: a block of the panel (2 KiB) stays in L1 while all its
        /// columns are written.
        const BLOCK: usize = 16;
        let mut out = vec![0u32; n.div_ceil(NR) * units * NR];
        for (panel, dst) in out.chunks_mut(units * NR).enumerate() {
            let (col0, cols) = (panel * NR, NR.min(n - panel * NR));
            for p0 in (0..k).step_by(BLOCK) {
                let p1 = (p0 + BLOCK).min(k);
                for c in 0..cols {
                    let row = &src[(col0 + c) * ld..];
                    for p in p0..p1 {
                        dst[p * NR + c] = row[p].to_bits();
                    }
                }
            }
        }
        out
    }

    fn panels_of_columns(src: &[f32], [k, n, ld]: [usize; 3], units: usize) -> Vec<u32> {
        let mut out = vec![0u32; n.div_ceil(NR) * units * NR];
        for (panel, dst) in out.chunks_mut(units * NR).enumerate() {
            let (col0, cols) = (panel * NR, NR.min(n - panel * NR));
            for p in 0..k {
                let row = &src[p * ld + col0..p * ld + col0 + cols];
                for (o, v) in dst[p * NR..p * NR + cols].iter_mut().zip(row) {
                    *o = v.to_bits();
                }
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
mod fma {
    use std::arch::x86_64::*;

    use super::super::gemm_bf16::{lanes, MicroKernel, Start, NR};
    use super::F32Values;

    /// `VFMADD231PS` with `12 × 2` accumulators of 16 lanes (24 of the 32 vector registers):
    /// per step two loads of the panel and one broadcast of each row's value.
    pub(super) struct Lanes;

    impl MicroKernel for Lanes {
        type Operands = F32Values;
        const ROWS: usize = 12;
        const PAIR_STEP: usize = 1;
        const KC: usize = 256;

        #[target_feature(enable = "avx512f")]
        unsafe fn tile(kc: usize, a: *const u32, lda: usize, b: *const u32, c: *mut f32, ldc: usize, start: Start) {
            let (a, b) = (a.cast::<f32>(), b.cast::<f32>());
            let mut acc = lanes::start_sums::<{ Self::ROWS }>(c, ldc, start);
            for p in 0..kc {
                let b0 = _mm512_loadu_ps(b.add(p * NR));
                let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*a.add(r * lda + p));
                    acc[0] = _mm512_fmadd_ps(a, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(a, b1, acc[1]);
                }
            }
            lanes::store_sums(&acc, c, ldc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::gemm_bf16::tests::random;
    use super::super::gemm_bf16::{multiply_tiles, rows_operand, MicroKernel, Packed};
    use super::*;

    /// `a·B` for `a` `[m, k]` (rows at stride `lda`, used in place) and `B` `[k, n]` (packed
    /// from rows or from columns), against f64 sums, over shapes with every edge: rows short of
    /// a tile, `k` longer than a pass, columns short of a panel, a bias.
    struct Check;

    impl WithKernel for Check {
        type Output = ();

        fn run<K: MicroKernel>(self) {
            for (s, &[m, k, n]) in
                [[1, 1, 1], [13, 7, 33], [12, 300, 32], [25, 513, 70], [40, 128, 1950]].iter().enumerate()
            {
                let lda = k + 3;
                let a = random(m * lda, s as u64);
                let b_rows = random(n * k, 10 + s as u64); // B as n rows of k (Bᵀ)
                let b_cols: Vec<f32> = (0..k * n).map(|i| b_rows[(i % n) * k + i / n]).collect();
                let bias = (s % 2 == 1).then(|| random(n.next_multiple_of(NR), 20 + s as u64));
                let exact: Vec<f64> = (0..m * n)
                    .map(|i| {
                        let (r, j) = (i / n, i % n);
                        let sum: f64 = (0..k).map(|p| a[r * lda + p] as f64 * b_rows[j * k + p] as f64).sum();
                        sum + bias.as_ref().map_or(0.0, |b| b[j] as f64)
                    })
                    .collect();
                let (rows, stride) = rows_operand::<K::Operands>(&a, [m, k, lda], [m.next_multiple_of(K::ROWS), k]);
                assert_eq!(stride, lda, "f32 rows are used where they lie");
                for panels in [
                    K::Operands::panels_of_rows(&b_rows, [n, k, k], k),
                    K::Operands::panels_of_columns(&b_cols, [k, n, n], k),
                ] {
                    let packed = Packed {
                        a: &rows,
                        a_pairs: stride,
                        b: &panels,
                        b_pairs: k,
                        pairs: k,
                        m,
                        n,
                        bias: bias.as_deref(),
                    };
                    let mut out = vec![f32::NAN; m * n];
                    // SAFETY: `out` holds `m × n`; the operands were packed for `K`.
                    unsafe {
                        multiply_tiles::<K>(&packed, 0..m.div_ceil(K::ROWS), 0..n.div_ceil(NR), out.as_mut_ptr(), n)
                    };
                    let num: f64 = out.iter().zip(&exact).map(|(&o, &e)| (o as f64 - e).powi(2)).sum();
                    let den: f64 = exact.iter().map(|e| e * e).sum();
                    let err = (num / den).sqrt();
                    assert!(err < 1e-6, "{m}×{k}×{n}: relative error {err}");
                }
            }
        }
    }

    #[test]
    fn fma_kernel_gives_the_f32_sums() {
        if with_kernel(Check).is_none() {
            eprintln!("this CPU has no AVX-512F: the f32 micro-kernel is not tested");
        }
    }
}
