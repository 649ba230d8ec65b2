//! Training runs the engine's own layers with gradients flowing. Where the inference kernel has
//! no backward pass (fused softmax, fused rotary embedding, the packed CPU Conv3d), the layer
//! switches to a differentiable formulation; these tests pin that both give the same values and
//! that the gradients match finite differences. Odd sizes on purpose.

use candle_core::{Device, Tensor, Var};
use skyreels_core::nn::{attention, AttentionMask, Conv3d, Rope3d, SpatialPadding};

fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let num = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    let den = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    num / den.max(1e-12)
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
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

/// Central finite difference of `f` along element `index` of `x`, against autodiff's gradient.
fn check_gradient(x: &Tensor, index: usize, f: impl Fn(&Tensor) -> Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let loss = f(var.as_tensor());
    let grads = loss.backward().unwrap();
    let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[index];
    let mut values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let h = 1e-2f32;
    values[index] += h;
    let plus = f(&Tensor::from_vec(values.clone(), x.dims(), &Device::Cpu).unwrap()).to_scalar::<f32>().unwrap();
    values[index] -= 2.0 * h;
    let minus = f(&Tensor::from_vec(values, x.dims(), &Device::Cpu).unwrap()).to_scalar::<f32>().unwrap();
    let numeric = (plus - minus) / (2.0 * h);
    assert!(
        (analytic - numeric).abs() <= 2e-2 * numeric.abs().max(1.0),
        "gradient {analytic} vs finite difference {numeric}"
    );
}

#[test]
fn attention_is_the_same_with_gradients_and_differentiable() {
    let (q, k, v) = (randn(&[2, 3, 10, 6], 1), randn(&[2, 3, 10, 6], 2), randn(&[2, 3, 10, 6], 3));
    for mask in [AttentionMask::Full, AttentionMask::BlockCausal { tokens_per_block: 5 }] {
        let plain = attention(&q, &k, &v, 0.4, mask).unwrap();
        let var = Var::from_tensor(&q).unwrap();
        let tracked = attention(var.as_tensor(), &k, &v, 0.4, mask).unwrap();
        assert!(rel_l2(&tracked, &plain) < 1e-6, "{mask:?}");
        check_gradient(&q, 17, |q| attention(q, &k, &v, 0.4, mask).unwrap().sqr().unwrap().sum_all().unwrap());
    }
}

#[test]
fn rotary_embedding_is_the_same_with_gradients_and_differentiable() {
    let rope = Rope3d::new(14, 64).unwrap();
    let (cos, sin) = rope.tables([2, 3, 5], &Device::Cpu).unwrap();
    let x = randn(&[1, 2, 30, 14], 4);
    let plain = Rope3d::apply(&x, &cos, &sin).unwrap();
    let var = Var::from_tensor(&x).unwrap();
    let tracked = Rope3d::apply(var.as_tensor(), &cos, &sin).unwrap();
    assert!(rel_l2(&tracked, &plain) < 1e-6);
    let weights = randn(&[1, 2, 30, 14], 5);
    check_gradient(&x, 101, |x| (Rope3d::apply(x, &cos, &sin).unwrap() * &weights).unwrap().sum_all().unwrap());
}

#[test]
fn conv3d_is_the_same_with_trainable_weights_and_differentiable() {
    let weight = randn(&[5, 3, 3, 3, 2], 6);
    let bias = randn(&[5], 7);
    let x = randn(&[2, 3, 6, 7, 9], 8);
    let padding = SpatialPadding { top: 1, bottom: 1, left: 0, right: 1 };
    let plain = Conv3d::new(weight.clone(), Some(bias.clone()), [1, 2, 2], padding).unwrap().forward(&x).unwrap();
    let var = Var::from_tensor(&weight).unwrap();
    let trainable = Conv3d::new(var.as_tensor().clone(), Some(bias.clone()), [1, 2, 2], padding).unwrap();
    assert!(rel_l2(&trainable.forward(&x).unwrap(), &plain) < 1e-5);
    let conv = |w: &Tensor| {
        let c = Conv3d::new(w.clone(), Some(bias.clone()), [1, 2, 2], padding).unwrap();
        c.forward(&x).unwrap().sqr().unwrap().sum_all().unwrap()
    };
    check_gradient(&weight, 23, conv);
}

/// All gradients of `sum(conv(x) · weights)`: input, weight, bias.
fn conv_gradients(conv: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor, x: &Tensor, w: &Tensor, b: &Tensor) -> [Tensor; 3] {
    let vars = [x, w, b].map(|t| Var::from_tensor(t).unwrap());
    let y = conv(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor());
    let weights = randn(y.dims(), 99);
    let grads = (y * weights).unwrap().sum_all().unwrap().backward().unwrap();
    vars.map(|v| grads.get(v.as_tensor()).unwrap().clone())
}

#[test]
fn the_unfolded_conv3d_backward_matches_the_conv2d_taps_one() {
    // Odd sizes, strides in every axis, uneven padding: the cases of the VAE and more.
    type Case = ([usize; 5], [usize; 3], [usize; 3], SpatialPadding); // input, kernel, stride, padding
    let cases: [Case; 4] = [
        ([2, 3, 6, 7, 9], [3, 3, 2], [1, 2, 2], SpatialPadding { top: 1, bottom: 1, left: 0, right: 1 }),
        ([1, 4, 5, 6, 5], [3, 3, 3], [1, 1, 1], SpatialPadding::uniform(1)),
        ([2, 5, 7, 4, 3], [3, 1, 1], [2, 1, 1], SpatialPadding::default()),
        ([1, 2, 1, 8, 6], [1, 3, 3], [1, 2, 2], SpatialPadding { top: 0, bottom: 1, left: 0, right: 1 }),
    ];
    for (i, (input, kernel, stride, padding)) in cases.into_iter().enumerate() {
        let seed = 10 * i as u64;
        let x = randn(&input, seed);
        let w = randn(&[4, input[1], kernel[0], kernel[1], kernel[2]], seed + 1);
        let b = randn(&[4], seed + 2);
        let build = |w: &Tensor, b: &Tensor| Conv3d::new(w.clone(), Some(b.clone()), stride, padding).unwrap();
        let unfolded = conv_gradients(|x, w, b| build(w, b).forward(x).unwrap(), &x, &w, &b);
        let taps = conv_gradients(|x, w, b| build(w, b).forward_taps(x).unwrap(), &x, &w, &b);
        for (what, (u, t)) in ["input", "weight", "bias"].iter().zip(unfolded.iter().zip(&taps)) {
            assert!(rel_l2(u, t) < 1e-5, "case {i}: {what} gradient differs by {}", rel_l2(u, t));
        }
    }
    let x = randn(&[1, 3, 5, 6, 7], 3);
    let w = randn(&[2, 3, 3, 3, 3], 4);
    let conv = Conv3d::new(w, None, [1, 1, 1], SpatialPadding::uniform(1)).unwrap();
    check_gradient(&x, 77, |x| conv.forward(x).unwrap().sqr().unwrap().sum_all().unwrap());
}
