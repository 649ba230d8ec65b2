//! `Conv3d` against a plain six-loop convolution, over shapes, strides, paddings and both executions.

mod common;

use candle_core::{DType, Device, Tensor};
use skyreels_core::nn::{Conv3d, SpatialPadding};

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

struct Case {
    input: [usize; 5],
    out_channels: usize,
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: SpatialPadding,
}

/// The definition of a 3D cross-correlation with spatial zero padding, in f64.
fn naive(x: &[f32], w: &[f32], bias: &[f32], case: &Case) -> (Vec<f64>, [usize; 5]) {
    let [b, c, t, h, wd] = case.input;
    let [kt, kh, kw] = case.kernel;
    let [st, sh, sw] = case.stride;
    let p = case.padding;
    let o = case.out_channels;
    let to = (t - kt) / st + 1;
    let ho = (h + p.top + p.bottom - kh) / sh + 1;
    let wo = (wd + p.left + p.right - kw) / sw + 1;
    let mut out = vec![0f64; b * o * to * ho * wo];
    for bi in 0..b {
        for oi in 0..o {
            for ti in 0..to {
                for hi in 0..ho {
                    for wi in 0..wo {
                        let mut acc = bias[oi] as f64;
                        for ci in 0..c {
                            for dt in 0..kt {
                                for dh in 0..kh {
                                    for dw in 0..kw {
                                        let (y, xx) = (
                                            (hi * sh + dh) as isize - p.top as isize,
                                            (wi * sw + dw) as isize - p.left as isize,
                                        );
                                        if y < 0 || xx < 0 || y >= h as isize || xx >= wd as isize {
                                            continue;
                                        }
                                        let xi =
                                            (((bi * c + ci) * t + ti * st + dt) * h + y as usize) * wd + xx as usize;
                                        let wi_ = (((oi * c + ci) * kt + dt) * kh + dh) * kw + dw;
                                        acc += x[xi] as f64 * w[wi_] as f64;
                                    }
                                }
                            }
                        }
                        out[(((bi * o + oi) * to + ti) * ho + hi) * wo + wi] = acc;
                    }
                }
            }
        }
    }
    (out, [b, o, to, ho, wo])
}

fn check(case: Case, seed: u64, taps_too: bool) {
    let [b, c, t, h, w] = case.input;
    let [kt, kh, kw] = case.kernel;
    let o = case.out_channels;
    let xv = values(b * c * t * h * w, seed);
    let wv = values(o * c * kt * kh * kw, seed + 1);
    let bv = values(o, seed + 2);
    let (expected, shape) = naive(&xv, &wv, &bv, &case);
    let expected = Tensor::from_vec(expected, shape.to_vec(), &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let x = Tensor::from_vec(xv, case.input.to_vec(), &Device::Cpu).unwrap();
    let weight = Tensor::from_vec(wv, vec![o, c, kt, kh, kw], &Device::Cpu).unwrap();
    let bias = Tensor::from_vec(bv, o, &Device::Cpu).unwrap();
    let conv = Conv3d::new(weight, Some(bias), case.stride, case.padding).unwrap();
    assert_eq!(conv.output_shape(x.dims()).unwrap(), shape);
    let what = format!("{:?} k{:?} s{:?} {:?}", case.input, case.kernel, case.stride, case.padding);
    common::assert_close(&format!("implicit gemm {what}"), &conv.forward(&x).unwrap(), &expected);
    common::assert_close(&format!("unfolded {what}"), &conv.forward_unfolded(&x).unwrap(), &expected);
    if taps_too {
        common::assert_close(&format!("conv2d taps {what}"), &conv.forward_taps(&x).unwrap(), &expected);
        let unfolded = conv.forward_temporal_unfold(&x).unwrap();
        common::assert_close(&format!("temporal unfold {what}"), &unfolded, &expected);
    }
}

#[test]
fn causal_3x3x3_with_padding_matches_the_definition() {
    let case = Case {
        input: [1, 5, 4, 7, 9],
        out_channels: 6,
        kernel: [3, 3, 3],
        stride: [1, 1, 1],
        padding: SpatialPadding::uniform(1),
    };
    check(case, 1, true);
}

#[test]
fn batch_and_odd_kernel_sizes() {
    let case = Case {
        input: [2, 3, 6, 5, 8],
        out_channels: 4,
        kernel: [2, 3, 1],
        stride: [1, 1, 1],
        padding: SpatialPadding::uniform(0),
    };
    check(case, 2, true);
}

#[test]
fn pointwise_kernel() {
    let case = Case {
        input: [1, 7, 3, 4, 5],
        out_channels: 9,
        kernel: [1, 1, 1],
        stride: [1, 1, 1],
        padding: SpatialPadding::uniform(0),
    };
    check(case, 3, true);
}

#[test]
fn spatial_stride_two_with_asymmetric_padding() {
    // The Wan VAE's downsample: ZeroPad2d(0, 1, 0, 1) then a stride-2 3x3 conv.
    for (h, w) in [(8, 12), (7, 9), (5, 6)] {
        let padding = SpatialPadding { top: 0, bottom: 1, left: 0, right: 1 };
        let case = Case { input: [1, 4, 2, h, w], out_channels: 3, kernel: [1, 3, 3], stride: [1, 2, 2], padding };
        check(case, 4 + h as u64, true);
    }
}

#[test]
fn temporal_stride_two() {
    // The Wan VAE's downsample time_conv: kernel (3,1,1), stride (2,1,1).
    let case = Case {
        input: [1, 6, 7, 3, 5],
        out_channels: 6,
        kernel: [3, 1, 1],
        stride: [2, 1, 1],
        padding: SpatialPadding::uniform(0),
    };
    check(case, 5, true);
}

#[test]
fn unequal_strides_and_large_padding() {
    let padding = SpatialPadding { top: 2, bottom: 0, left: 1, right: 3 };
    let case = Case { input: [2, 3, 5, 6, 7], out_channels: 5, kernel: [2, 3, 2], stride: [3, 2, 1], padding };
    check(case, 6, false);
    let case = Case { input: [1, 2, 3, 9, 4], out_channels: 2, kernel: [1, 2, 3], stride: [1, 1, 3], padding };
    check(case, 7, false);
}

#[test]
fn wide_layer_uses_the_threaded_path() {
    let case = Case {
        input: [1, 24, 3, 16, 20],
        out_channels: 32,
        kernel: [3, 3, 3],
        stride: [1, 1, 1],
        padding: SpatialPadding::uniform(1),
    };
    check(case, 8, true);
}

/// The VAE's cached causal decode hands the GPU path exactly `kt` frames: the unfold is a free
/// reshape there, and must still be the same convolution.
#[test]
fn temporal_unfold_with_exactly_one_window_of_frames() {
    for (input, stride) in [([2, 4, 3, 6, 5], [1, 1, 1]), ([1, 3, 3, 8, 8], [1, 2, 2])] {
        let padding = SpatialPadding::uniform(1);
        let case = Case { input, out_channels: 5, kernel: [3, 3, 3], stride, padding };
        check(case, 9, true);
    }
}

#[test]
fn bad_shapes_are_errors() {
    let weight = Tensor::zeros((4, 3, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    let conv = Conv3d::new(weight, None, [1, 1, 1], SpatialPadding::uniform(1)).unwrap();
    let wrong_channels = Tensor::zeros((1, 2, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(conv.forward(&wrong_channels).unwrap_err().to_string().contains("input channels"));
    let too_short = Tensor::zeros((1, 3, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(conv.forward(&too_short).unwrap_err().to_string().contains("smaller than the kernel"));
    let not_5d = Tensor::zeros((3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(conv.forward(&not_5d).is_err());
    let empty = Tensor::zeros((4, 3, 0, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(Conv3d::new(empty, None, [1, 1, 1], SpatialPadding::default()).is_err());
    let weight = Tensor::zeros((4, 3, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
    assert!(Conv3d::new(weight, None, [1, 0, 1], SpatialPadding::default()).is_err());
}

#[test]
fn last_temporal_tap_equals_the_full_kernel_after_zero_frames() {
    let (o, c, kt, kh, kw) = (5, 3, 3, 3, 2);
    let x = Tensor::from_vec(values(2 * c * 6 * 7, 11), vec![2, c, 1, 6, 7], &Device::Cpu).unwrap();
    let weight =
        candle_core::Var::from_vec(values(o * c * kt * kh * kw, 12), vec![o, c, kt, kh, kw], &Device::Cpu).unwrap();
    let bias = Tensor::from_vec(values(o, 13), o, &Device::Cpu).unwrap();
    let padding = SpatialPadding { top: 1, bottom: 1, left: 0, right: 1 };
    let conv = Conv3d::new(weight.as_tensor().clone(), Some(bias), [1, 1, 1], padding).unwrap();
    let full = conv.forward(&x.pad_with_zeros(2, kt - 1, 0).unwrap()).unwrap();
    let tap = conv.last_temporal_tap().unwrap().forward(&x).unwrap();
    common::assert_close("last tap", &tap, &full);
    let grad_full = full.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let grad_tap = tap.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g_full = grad_full.get(weight.as_tensor()).unwrap();
    let g_tap = grad_tap.get(weight.as_tensor()).unwrap();
    common::assert_close("weight gradient", g_tap, g_full);
    let past = g_full.narrow(2, 0, kt - 1).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(past, 0.0, "taps over zero frames get no gradient");
}

#[test]
fn joined_frames_equal_the_convolution_of_the_joined_tensor() {
    let (o, c, h, w) = (11, 10, 9, 13);
    let weight = Tensor::from_vec(values(o * c * 27, 21), vec![o, c, 3, 3, 3], &Device::Cpu).unwrap();
    let bias = Tensor::from_vec(values(o, 22), o, &Device::Cpu).unwrap();
    let conv = Conv3d::new(weight, Some(bias), [1, 1, 1], SpatialPadding::uniform(1)).unwrap();
    let past = Tensor::from_vec(values(2 * c * 3 * h * w, 23), vec![2, c, 3, h, w], &Device::Cpu).unwrap();
    let x = Tensor::from_vec(values(2 * c * 4 * h * w, 24), vec![2, c, 4, h, w], &Device::Cpu).unwrap();
    for (zeros, from) in [(0, 1), (1, 2), (2, 3), (0, 0)] {
        let joined = Tensor::cat(&[&past.narrow(2, from, 3 - from).unwrap(), &x], 2).unwrap();
        let expected = conv.forward(&joined.pad_with_zeros(2, zeros, 0).unwrap()).unwrap();
        let got = conv.forward_joined(zeros, Some((&past, from)), &x).unwrap();
        assert_eq!(got.dims(), expected.dims());
        let same = got.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(same, "{zeros} zero frames, past from {from}: the CPU path reads the same values");
    }
    // A strided view of the past is read where it lies too, and no past at all works.
    let view = past.narrow(2, 1, 2).unwrap();
    let expected = conv.forward(&Tensor::cat(&[&view, &x], 2).unwrap()).unwrap();
    common::assert_close("strided past", &conv.forward_joined(0, Some((&view, 0)), &x).unwrap(), &expected);
    let expected = conv.forward(&x.pad_with_zeros(2, 2, 0).unwrap()).unwrap();
    common::assert_close("zeros only", &conv.forward_joined(2, None, &x).unwrap(), &expected);
    let other = Tensor::zeros((2, c, 2, h + 1, w), DType::F32, &Device::Cpu).unwrap();
    assert!(conv.forward_joined(0, Some((&other, 0)), &x).is_err(), "frames of another size are refused");
}

#[test]
fn the_packed_copy_is_the_only_one_kept_and_gives_the_weight_back_exactly() {
    for dtype in [DType::F32, DType::BF16] {
        let weight = Tensor::from_vec(values(7 * 5 * 3 * 2 * 4, 31), vec![7, 5, 3, 2, 4], &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let conv = Conv3d::new(weight.clone(), None, [1, 1, 1], SpatialPadding::default()).unwrap();
        let back = conv.weight().unwrap();
        assert_eq!(back.dtype(), dtype);
        let bits = |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(bits(&back), bits(&weight));
        assert!(!conv.is_trainable());
    }
}
