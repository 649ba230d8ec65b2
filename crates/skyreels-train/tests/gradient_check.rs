//! End-to-end gradient checks: the gradient autograd gives every parameter of a whole model
//! (built from trainable parameters exactly as training builds it) must match central finite
//! differences of the loss. A detached or kernel-only op anywhere on the path shows up here as a
//! zero or wrong gradient for the parameters before it.

use candle_core::{Device, Tensor, Var};
use skyreels_core::models::WanVae;
use skyreels_train::train::data::clip_video;
use skyreels_train::train::params::ParamStore;
use skyreels_train::train::vae::VaeStage;
use skyreels_train::world::{sample_clip, Split, WorldConfig};

fn vae_loss(stage: &VaeStage, params: &ParamStore, video: &Tensor) -> anyhow::Result<Tensor> {
    let vae = WanVae::from_weights(stage.vae_config(), params, &Device::Cpu)?;
    let moments = vae.encode_moments(video)?;
    let mean = moments.narrow(1, 0, stage.z_dim)?;
    let out = vae.decode_stream().push_unclamped(&mean)?;
    Ok((out - video)?.sqr()?.mean_all()?)
}

/// Central difference of the loss in one element of `var`.
fn finite_difference(
    stage: &VaeStage,
    params: &ParamStore,
    video: &Tensor,
    var: &Var,
    index: usize,
    eps: f32,
) -> anyhow::Result<f64> {
    let original = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    let eval = |delta: f32| -> anyhow::Result<f64> {
        let mut values = original.clone();
        values[index] += delta;
        var.set(&Tensor::from_vec(values, var.dims(), &Device::Cpu)?)?;
        Ok(vae_loss(stage, params, video)?.to_scalar::<f32>()? as f64)
    };
    let fd = (eval(eps)? - eval(-eps)?) / (2.0 * eps as f64);
    var.set(&Tensor::from_vec(original, var.dims(), &Device::Cpu)?)?;
    Ok(fd)
}

#[test]
fn whole_vae_gradients_match_finite_differences() -> anyhow::Result<()> {
    let stage = VaeStage { base_dim: 4, ..VaeStage::default() };
    let world = WorldConfig { width: 16, height: 16, ..WorldConfig::default() };
    let video = clip_video(&sample_clip(5, &world, Split::Train), 0, 5, &Device::Cpu)?;
    let params = ParamStore::new(1, &Device::Cpu);
    let loss = vae_loss(&stage, &params, &video)?;
    let grads = loss.backward()?;
    let vars = params.vars();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (name, var) in &vars {
        let grad = grads.get(var.as_tensor()).ok_or_else(|| anyhow::anyhow!("no gradient for {name}"))?;
        let grad = grad.flatten_all()?.to_vec1::<f32>()?;
        // The element with the largest gradient, where a finite difference is most reliable.
        let (index, &analytic) =
            grad.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).expect("non-empty");
        let numeric = finite_difference(&stage, &params, &video, var, index, 1e-4)?;
        eprintln!("{name}[{index}]: autograd {analytic:.6e}, finite difference {numeric:.6e}");
        let tolerance = 0.1 * numeric.abs().max(analytic.abs() as f64) + 2e-4;
        if (analytic as f64 - numeric).abs() > tolerance {
            failures.push(format!("{name}[{index}]: autograd {analytic} vs finite difference {numeric}"));
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "wrong gradients:\n{}", failures.join("\n"));
    assert!(checked >= 10, "only {checked} parameters checked");
    Ok(())
}
