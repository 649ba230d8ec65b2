//! Short training runs on tiny configurations: the loss must fall, and a resumed run must
//! continue exactly where the interrupted one stopped.

use candle_core::Device;
use skyreels_core::models::WanVae;
use skyreels_train::train::data::clip_video;
use skyreels_train::train::optim::AdamWConfig;
use skyreels_train::train::params::ParamStore;
use skyreels_train::train::run::{RunOptions, RunSettings};
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

fn tiny_world() -> WorldConfig {
    WorldConfig { width: 16, height: 16, frames: 9, ..WorldConfig::default() }
}

fn tiny_vae_stage() -> VaeStage {
    VaeStage { base_dim: 4, frames: 5, batch: 1, crop: 0, world: tiny_world(), ..VaeStage::default() }
}

fn fresh() -> RunOptions {
    RunOptions { quiet: true, ..RunOptions::default() }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("skyreels-smoke-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Every tensor of a safetensors file, flattened, in name order.
fn tensors_by_name(file: &std::path::Path) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let mut tensors: Vec<_> = candle_core::safetensors::load(file, &Device::Cpu)?
        .into_iter()
        .map(|(k, v)| Ok((k, v.flatten_all()?.to_vec1::<f32>()?)))
        .collect::<anyhow::Result<_>>()?;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

/// Every tensor of the run's last checkpoint (parameters, EMA, optimiser moments).
fn checkpoint_tensors(dir: &std::path::Path) -> anyhow::Result<Vec<(String, Vec<f32>)>> {
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("checkpoint.json"))?)?;
    tensors_by_name(&dir.join(info["tensors"].as_str().expect("tensors file")))
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() -> anyhow::Result<()> {
    use skyreels_train::train::vae::train_vae;
    let stage = tiny_vae_stage();
    let straight = temp_dir("straight");
    train_vae(&straight, &stage, RunSettings { checkpoint_every: 2, ..settings(4, 1e-3) }, &fresh())?;
    let split = temp_dir("split");
    train_vae(&split, &stage, RunSettings { checkpoint_every: 2, ..settings(2, 1e-3) }, &fresh())?;
    // Restarting without --resume must refuse rather than overwrite the run.
    assert!(train_vae(&split, &stage, settings(4, 1e-3), &fresh()).is_err());
    train_vae(
        &split,
        &stage,
        RunSettings { checkpoint_every: 2, ..settings(4, 1e-3) },
        &RunOptions { resume: true, quiet: true, ..RunOptions::default() },
    )?;
    assert_eq!(checkpoint_tensors(&straight)?, checkpoint_tensors(&split)?);
    let csv = std::fs::read_to_string(split.join("loss.csv"))?;
    assert_eq!(csv.lines().count(), 5, "header + one row per step:\n{csv}");
    assert!(split.join("loss.png").is_file() && split.join("export/config.json").is_file());
    std::fs::remove_dir_all(&straight)?;
    std::fs::remove_dir_all(&split)?;
    Ok(())
}

#[test]
fn warmed_up_caches_train_late_chunks_and_too_long_a_warm_up_is_refused() -> anyhow::Result<()> {
    use skyreels_train::train::vae::train_vae;
    // Clips of 9 frames: a 2-chunk warm-up (5 frames) then 4 trained frames fits exactly.
    let stage = VaeStage { warm_up_chunks: 2, ..tiny_vae_stage() };
    let dir = temp_dir("warm-up");
    train_vae(&dir, &stage, settings(3, 1e-3), &fresh())?;
    let csv = std::fs::read_to_string(dir.join("loss.csv"))?;
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(dir.join("export/config.json").is_file());
    let too_long = VaeStage { warm_up_chunks: 3, ..tiny_vae_stage() };
    let error = train_vae(&temp_dir("warm-up-long"), &too_long, settings(1, 1e-3), &fresh()).unwrap_err();
    assert!(format!("{error:#}").contains("--warm-up-chunks 3 with --frames 5 needs clips of 13 frames"), "{error:#}");
    for dir in [dir, temp_dir("warm-up-long")] {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

#[test]
fn a_second_phase_starts_from_the_first_runs_weights_with_other_clips() -> anyhow::Result<()> {
    use skyreels_train::train::vae::train_vae;
    let first = temp_dir("phase-one");
    train_vae(&first, &tiny_vae_stage(), settings(3, 1e-2), &fresh())?;
    // A second phase on longer clips, at a learning rate too small to move the weights: it must
    // hold the first phase's weights, which a fresh initialisation does not.
    let longer = VaeStage { frames: 9, ..tiny_vae_stage() };
    let second = temp_dir("phase-two");
    let from_first = RunOptions { init_from: Some(first.clone()), ..fresh() };
    train_vae(&second, &longer, settings(1, 1e-12), &from_first)?;
    let scratch = temp_dir("phase-scratch");
    train_vae(&scratch, &longer, settings(1, 1e-12), &fresh())?;
    let weights = |dir: &std::path::Path| -> anyhow::Result<Vec<f32>> {
        Ok(checkpoint_tensors(dir)?.into_iter().filter(|(k, _)| k.starts_with("param.")).flat_map(|(_, v)| v).collect())
    };
    let gap = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let (one, two, none) = (weights(&first)?, weights(&second)?, weights(&scratch)?);
    assert!(gap(&one, &two) < 1e-6, "the second phase moved away from the first: {}", gap(&one, &two));
    assert!(gap(&one, &none) > 1e-3, "the first phase's training changed nothing");
    // Its exported VAE folder, which holds the EMA, starts a second phase at that EMA.
    let from_folder = temp_dir("phase-from-folder");
    train_vae(
        &from_folder,
        &longer,
        settings(1, 1e-12),
        &RunOptions { init_from: Some(first.join("export")), ..fresh() },
    )?;
    let first_ema: Vec<f32> =
        checkpoint_tensors(&first)?.into_iter().filter(|(k, _)| k.starts_with("ema.")).flat_map(|(_, v)| v).collect();
    assert!(gap(&first_ema, &weights(&from_folder)?) < 1e-6, "the export folder did not start the run");
    let _ = std::fs::remove_dir_all(&from_folder);
    // Another structure is refused with a message, not a panic.
    let wider = VaeStage { base_dim: 8, ..longer };
    let error = train_vae(&temp_dir("phase-wider"), &wider, settings(1, 1e-3), &from_first).unwrap_err();
    assert!(format!("{error:#}").contains("structure") || format!("{error:#}").contains("differ"), "{error:#}");
    for dir in [first, second, scratch, temp_dir("phase-wider")] {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

#[test]
fn decoder_only_fine_tuning_exports_the_same_encoder_and_a_new_decoder() -> anyhow::Result<()> {
    use skyreels_train::train::vae::train_vae;
    let first = temp_dir("dec-one");
    train_vae(&first, &tiny_vae_stage(), settings(3, 1e-2), &fresh())?;
    let tuned = temp_dir("dec-two");
    let stage = VaeStage { decoder_only: true, edge_weight: 1.0, ..tiny_vae_stage() };
    train_vae(&tuned, &stage, settings(3, 1e-2), &RunOptions { init_from: Some(first.clone()), ..fresh() })?;
    let exported = |dir: &std::path::Path| tensors_by_name(&dir.join("export/diffusion_pytorch_model.safetensors"));
    let (before, after) = (exported(&first)?, exported(&tuned)?);
    assert_eq!(before.len(), after.len());
    let mut decoder_moved = false;
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        if name.starts_with("encoder.") || name.starts_with("quant_conv.") {
            assert_eq!(a, b, "the frozen encoder tensor {name} changed");
        } else {
            decoder_moved |= a != b;
        }
    }
    assert!(decoder_moved, "the decoder did not train");
    // Without a trained VAE to start from there is nothing to keep: refused.
    let error = train_vae(&temp_dir("dec-none"), &stage, settings(1, 1e-3), &fresh()).unwrap_err();
    assert!(format!("{error:#}").contains("--init-from"), "{error:#}");
    for dir in [first, tuned, temp_dir("dec-none")] {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}

#[test]
fn dit_loss_falls_and_the_export_is_a_loadable_pipeline() -> anyhow::Result<()> {
    use skyreels_train::train::dit::{bench_dit, train_dit, DitInputs, DitStage};
    use skyreels_train::train::tokenizer::{build_vocabulary, write_tokenizer};
    use skyreels_train::train::vae::train_vae;
    let dir = temp_dir("dit");
    train_vae(&dir.join("vae"), &tiny_vae_stage(), settings(2, 1e-3), &fresh())?;
    let tokenizer = dir.join("tokenizer.json");
    write_tokenizer(&tokenizer, &build_vocabulary(&tiny_world(), 200, 1)?)?;
    let stage = DitStage {
        text_dim: 16,
        text_heads: 2,
        text_len: 16,
        dim: 32,
        heads: 2,
        layers: 1,
        ffn_dim: 64,
        freq_dim: 16,
        clips: 4,
        batch: 2,
        world: tiny_world(),
        ..DitStage::default()
    };
    let vae = dir.join("vae/export");
    let inputs = DitInputs { vae: &vae, tokenizer: &tokenizer };
    train_dit(&dir.join("dit"), &inputs, &stage, settings(100, 3e-3), &fresh())?;
    let csv = std::fs::read_to_string(dir.join("dit/loss.csv"))?;
    let losses: Vec<f64> = csv.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect();
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..10]), mean(&losses[90..]));
    assert!(last < 0.8 * first, "loss did not fall: first steps {first:.3}, last steps {last:.3}");
    // Every parameter of both models learns: a layer whose kernel has no backward pass would
    // silently leave its inputs' weights with zero gradient (and zero Adam moments).
    for (name, moment) in checkpoint_tensors(&dir.join("dit"))? {
        if name.starts_with("adam.m.") {
            assert!(moment.iter().any(|m| *m != 0.0), "{name} never received a gradient");
        }
    }
    let files = skyreels_core::checkpoint::resolve_pipeline(&dir.join("dit/export").to_string_lossy())?;
    assert!(files.transformer.exists() && files.tokenizer.exists());

    // An exported model folder (such as the shipped demo model) starts a fine-tune: at a
    // learning rate too small to move anything, the fine-tune exports the same weights.
    let tuned = dir.join("dit-tuned");
    let from_export = RunOptions { init_from: Some(dir.join("dit/export")), ..fresh() };
    train_dit(&tuned, &inputs, &stage, settings(1, 1e-12), &from_export)?;
    for file in ["transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"] {
        let (before, after) =
            (tensors_by_name(&dir.join("dit/export").join(file))?, tensors_by_name(&tuned.join("export").join(file))?);
        assert_eq!(before.len(), after.len(), "{file}");
        for ((name, a), (_, b)) in before.iter().zip(&after) {
            let gap = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(gap < 1e-6, "{file}: {name} moved by {gap}");
        }
    }
    let unrelated = temp_dir("not-a-model");
    std::fs::create_dir_all(&unrelated)?;
    let error = train_dit(
        &dir.join("dit-nowhere"),
        &inputs,
        &stage,
        settings(1, 1e-3),
        &RunOptions { init_from: Some(unrelated.clone()), ..fresh() },
    )
    .unwrap_err();
    assert!(format!("{error:#}").contains("neither"), "{error:#}");
    std::fs::remove_dir_all(&unrelated)?;

    // --subject-weight reaches the loss: the same first step, with and without it.
    let first_loss_of = |name: &str, variant: DitStage| -> anyhow::Result<f64> {
        let out = dir.join(format!("dit-{name}"));
        train_dit(&out, &inputs, &variant, settings(1, 3e-3), &fresh())?;
        let csv = std::fs::read_to_string(out.join("loss.csv"))?;
        std::fs::remove_dir_all(&out)?;
        Ok(csv.lines().nth(1).and_then(|l| l.split(',').nth(1)).expect("one step logged").parse()?)
    };
    let first_loss =
        |weight: f32| first_loss_of(&format!("weight-{weight}"), DitStage { subject_weight: weight, ..stage.clone() });
    let (plain, again, weighted) = (first_loss(0.0)?, first_loss(0.0)?, first_loss(50.0)?);
    assert_eq!(plain, again, "a run is a function of its seed");
    assert!((weighted - plain).abs() > 1e-3 * plain, "the weight changed nothing: {plain} vs {weighted}");
    // Its noise power reaches the loss too, and one-cell patches train.
    let tapered =
        first_loss_of("tapered", DitStage { subject_weight: 50.0, subject_weight_noise_power: 4.0, ..stage.clone() })?;
    assert!((tapered - weighted).abs() > 1e-4 * weighted, "the power changed nothing: {weighted} vs {tapered}");
    let fine = first_loss_of("patch-1", DitStage { patch: 1, ..stage.clone() })?;
    assert!(fine.is_finite() && fine != plain, "patch 1: {fine}");

    // Data-parallel steps (a batch of 3 in shards of 1 and 2) train as the single pass does, up
    // to the order of floating-point sums.
    let odd = DitStage { batch: 3, ..stage.clone() };
    type Outcome = (Vec<f64>, Vec<(String, Vec<f32>)>);
    let run_with = |workers: usize| -> anyhow::Result<Outcome> {
        let out = dir.join(format!("dit-workers-{workers}"));
        train_dit(&out, &inputs, &odd, settings(3, 3e-3), &RunOptions { workers, ..fresh() })?;
        let csv = std::fs::read_to_string(out.join("loss.csv"))?;
        let losses = csv.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect();
        Ok((losses, checkpoint_tensors(&out)?))
    };
    let ((one_losses, one_weights), (two_losses, two_weights)) = (run_with(1)?, run_with(2)?);
    assert_eq!(one_losses.len(), 3);
    for (a, b) in one_losses.iter().zip(&two_losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "losses {one_losses:?} vs {two_losses:?}");
    }
    assert_eq!(one_weights.len(), two_weights.len());
    // AdamW divides each gradient by its own running RMS, so where a gradient is nearly zero the
    // rounding of the shards' sums moves the update by a fraction of the learning rate. A wrong
    // shard (a gradient lost or scaled) moves it by the learning rate itself: 3 steps × 3e-3.
    let lr_travel = 3.0 * 3e-3;
    for ((name, a), (_, b)) in one_weights.iter().zip(&two_weights) {
        let gap = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let size = a.iter().map(|x| x.abs()).fold(0f32, f32::max);
        assert!(gap <= 1e-4 * size + 1e-3 * lr_travel, "{name}: the two-worker run differs by {gap} (largest {size})");
    }

    // A run in stages (--until, then --resume) ends where the uninterrupted run does, bit for bit.
    let staged = dir.join("dit-staged");
    train_dit(&staged, &inputs, &odd, settings(3, 3e-3), &RunOptions { until: Some(2), workers: 1, ..fresh() })?;
    assert_eq!(
        std::fs::read_to_string(staged.join("loss.csv"))?.lines().count(),
        1 + 2,
        "the first stage stops at step 2"
    );
    train_dit(&staged, &inputs, &odd, settings(3, 3e-3), &RunOptions { resume: true, workers: 1, ..fresh() })?;
    assert_eq!(checkpoint_tensors(&staged)?, one_weights, "two stages differ from one run");

    // The step benchmark reports consistent figures and leaves no run behind.
    let bench_dir = dir.join("dit-bench");
    let bench = bench_dit(&bench_dir, &inputs, &stage, settings(1, 1e-3), &RunOptions { workers: 2, ..fresh() }, 2)?;
    assert_eq!((bench.batch, bench.workers, bench.steps), (2, 2, 2));
    assert_eq!(bench.tokens_per_sample, 3, "9 frames → 3 latent frames of 2×2 cells, one 2×2 patch each");
    assert!(bench.step_seconds > 0.0 && (bench.samples_per_second * bench.step_seconds - 2.0).abs() < 1e-9);
    assert!(
        (bench.effective_gflops - bench.gflop_per_sample * bench.samples_per_second).abs()
            < 1e-9 * bench.effective_gflops.max(1.0)
    );
    assert!(!bench_dir.join("bench").exists() && bench_dir.join("dataset.safetensors").exists());
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn a_zero_head_count_is_refused_before_any_work() {
    use skyreels_train::train::dit::{train_dit, DitInputs, DitStage};
    let dir = temp_dir("zero-heads");
    let missing = std::path::Path::new("/nonexistent");
    let inputs = DitInputs { vae: missing, tokenizer: missing };
    for stage in [DitStage { heads: 0, ..DitStage::default() }, DitStage { heads: 3, ..DitStage::default() }] {
        let error = train_dit(&dir, &inputs, &stage, settings(1, 1e-3), &fresh()).unwrap_err();
        assert!(error.to_string().contains("head counts"), "{error:#}");
    }
    assert!(!dir.exists(), "nothing is written for a refused configuration");
}

#[test]
fn noise_level_shares_outside_zero_to_one_are_refused_before_any_work() {
    use skyreels_train::noise_levels::NoiseLevelSampler;
    use skyreels_train::train::dit::{train_dit, DitInputs, DitStage};
    let dir = temp_dir("bad-shares");
    let missing = std::path::Path::new("/nonexistent");
    let inputs = DitInputs { vae: missing, tokenizer: missing };
    let with = |sync_probability, prefix_probability| DitStage {
        noise: NoiseLevelSampler { sync_probability, prefix_probability, ..NoiseLevelSampler::default() },
        ..DitStage::default()
    };
    for (stage, flag) in [
        (with(1.5, 0.3), "--sync-probability"),
        (with(0.3, -0.1), "--prefix-probability"),
        (with(f32::NAN, 0.3), "--sync-probability"),
    ] {
        let error = train_dit(&dir, &inputs, &stage, settings(1, 1e-3), &fresh()).unwrap_err();
        assert!(error.to_string().contains(flag), "{error:#}");
    }
    assert!(!dir.exists(), "nothing is written for a refused configuration");
}

#[test]
fn a_damaged_checkpoint_is_refused_naming_its_file() -> anyhow::Result<()> {
    use skyreels_train::train::vae::train_vae;
    let stage = tiny_vae_stage();
    let dir = temp_dir("damaged");
    train_vae(&dir, &stage, RunSettings { checkpoint_every: 1, ..settings(1, 1e-3) }, &fresh())?;
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("checkpoint.json"))?)?;
    let tensors = dir.join(info["tensors"].as_str().unwrap());
    std::fs::write(&tensors, b"tiny")?;
    let resume = RunOptions { resume: true, quiet: true, ..RunOptions::default() };
    let err = format!("{:#}", train_vae(&dir, &stage, settings(2, 1e-3), &resume).unwrap_err());
    assert!(err.contains(&tensors.display().to_string()) && err.contains("damaged"), "{err}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
