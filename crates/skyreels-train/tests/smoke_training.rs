//! Short training runs on tiny configurations: the loss must fall, and a resumed run must
//! continue exactly where the interrupted one stopped.

use candle_core::Device;
use skyreels_core::models::WanVae;
use skyreels_train::train::data::clip_video;
use skyreels_train::train::optim::AdamWConfig;
use skyreels_train::train::params::ParamStore;
use skyreels_train::train::run::RunSettings;
use skyreels_train::train::vae::VaeStage;
use skyreels_train::world::{sample_clip, Split, WorldConfig};

fn settings(steps: u64, lr: f64) -> RunSettings {
    RunSettings {
        steps,
        adamw: AdamWConfig { lr, ..AdamWConfig::default() },
        warmup: 1,
        clip_norm: 1.0,
        ema_decay: 0.9,
        checkpoint_every: 10,
        seed: 3,
    }
}

#[test]
fn vae_overfits_one_clip() -> anyhow::Result<()> {
    let stage = VaeStage { base_dim: 4, ..VaeStage::default() };
    let config = stage.vae_config();
    let world = WorldConfig { width: 16, height: 16, ..WorldConfig::default() };
    let clip = sample_clip(1, &world, Split::Train);
    let video = clip_video(&clip, 0, 5, &Device::Cpu)?;
    let params = ParamStore::new(0, &Device::Cpu);
    WanVae::from_weights(config.clone(), &params, &Device::Cpu)?;
    let vars = params.vars();
    let mut opt = skyreels_train::train::optim::AdamW::new(vars.clone(), settings(1, 2e-3).adamw)?;
    let mut losses = Vec::new();
    for _ in 0..40 {
        let vae = WanVae::from_weights(config.clone(), &params, &Device::Cpu)?;
        let z = vae.encode(&video)?;
        let out = vae.decode_stream().push_unclamped(&z)?;
        let loss = (out - &video)?.sqr()?.mean_all()?;
        losses.push(loss.to_scalar::<f32>()?);
        let grads = loss.backward()?;
        opt.step(&grads, 2e-3)?;
    }
    eprintln!("{losses:?}");
    assert!(losses[39] < 0.5 * losses[0], "{losses:?}");
    Ok(())
}
