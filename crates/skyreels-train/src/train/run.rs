//! One training run: parameters, optimiser, EMA, learning-rate schedule, loss log, progress bar
//! and crash-safe checkpoints with `--resume`. The stages ([`super::vae`], [`super::dit`]) only
//! say how to compute a loss.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use skyreels_core::checkpoint::{Component, WeightStore};

use super::export::write_json;
use super::log::LossLog;
use super::optim::{clip_grad_norm, AdamW, AdamWConfig, Ema};
use super::params::{save_tensors, ParamStore};
use crate::world::Rng;

/// Settings shared by every training stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// Optimiser steps in total.
    pub steps: u64,
    /// Optimiser settings (`lr` is the peak).
    pub adamw: AdamWConfig,
    /// Linear warm-up steps before the cosine decay (to 10% of the peak at the last step).
    pub warmup: u64,
    /// Gradients are rescaled to at most this global L2 norm.
    pub clip_norm: f64,
    /// EMA decay of the exported weights.
    pub ema_decay: f64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Seed of initialisation and data.
    pub seed: u64,
}

impl RunSettings {
    /// Learning rate at `step` (0-based): linear warm-up, then cosine decay to 10%.
    pub fn learning_rate(&self, step: u64) -> f64 {
        let peak = self.adamw.lr;
        if step < self.warmup {
            return peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
    }
}

/// What `checkpoint.json` records next to the tensors.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointInfo {
    /// Stage name ("vae", "dit"), so a directory is not resumed by the wrong stage.
    stage: String,
    step: u64,
    rng_state: u64,
    ema_updates: u64,
    /// The tensors file of this checkpoint (inside the run directory).
    tensors: String,
    settings: RunSettings,
    /// The stage's own configuration, compared on resume.
    stage_config: serde_json::Value,
}

/// How a run begins and reports, beyond its settings.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue the run in the directory from its last checkpoint.
    pub resume: bool,
    /// Start from the weights (and EMA) of another run of the same stage, with a fresh optimiser,
    /// schedule and step count: a second phase on other data, e.g. longer clips.
    pub init_from: Option<PathBuf>,
    /// No progress bar.
    pub quiet: bool,
    /// Stop at this step (with a checkpoint), short of `steps`: one stage of a long run that is
    /// continued with `resume`. The schedule stays that of the whole run.
    pub until: Option<u64>,
    /// Worker threads of a data-parallel step (each runs a shard of the batch with
    /// single-threaded kernels; see [`super::parallel`]); 0 or 1 runs the batch in one pass.
    pub workers: usize,
}

/// Reads the latest checkpoint of the `stage` run in `dir`.
fn read_checkpoint(dir: &Path, stage: &str) -> anyhow::Result<(CheckpointInfo, BTreeMap<String, Tensor>)> {
    let info_path = dir.join("checkpoint.json");
    let bytes = std::fs::read(&info_path).with_context(|| format!("cannot read {}", info_path.display()))?;
    let info: CheckpointInfo = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a training checkpoint", info_path.display()))?;
    if info.stage != stage {
        bail!("{} holds a `{}` run, not `{stage}`", dir.display(), info.stage);
    }
    let path = dir.join(&info.tensors);
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("the training checkpoint {} is damaged", path.display()))?
        .into_iter()
        .collect();
    Ok((info, tensors))
}

/// Where an `--init-from` run starts: weights, their EMA, and how many updates that EMA holds.
struct StartingWeights {
    weights: BTreeMap<String, Tensor>,
    ema: BTreeMap<String, Tensor>,
    ema_updates: u64,
}

/// EMA updates credited to an exported model's weights: enough that the average keeps its full
/// decay from the first step, as it had when the model was exported.
const EXPORTED_EMA_UPDATES: u64 = 10_000;

/// The models a stage trains, as (parameter prefix, folder of an exported model, component).
fn exported_components(stage: &str) -> &'static [(&'static str, &'static str, Component)] {
    match stage {
        "dit" => &[
            ("transformer.", "transformer", Component::Transformer),
            ("text_encoder.", "text_encoder", Component::TextEncoder),
        ],
        "vae" => &[("", "vae", Component::Vae)],
        _ => &[],
    }
}

/// The starting weights in `source`: another run's directory (its weights and EMA), or an
/// exported model folder — a pipeline such as the shipped demo model, or for the VAE a VAE
/// folder — whose weights (the EMA its run exported) start both.
fn starting_weights(source: &Path, stage: &str) -> anyhow::Result<StartingWeights> {
    if source.join("checkpoint.json").exists() {
        let (info, tensors) = read_checkpoint(source, stage)?;
        let weights = with_prefix(&tensors, "param.");
        return Ok(StartingWeights { weights, ema: with_prefix(&tensors, "ema."), ema_updates: info.ema_updates });
    }
    let components = exported_components(stage);
    let folder_of = |sub: &str| {
        let nested = source.join(sub);
        if nested.is_dir() || components.len() > 1 {
            nested
        } else {
            source.to_path_buf()
        }
    };
    if components.is_empty() || !folder_of(components[0].1).join("config.json").exists() {
        bail!(
            "{} is neither a `{stage}` training run (no checkpoint.json) nor an exported model folder",
            source.display()
        );
    }
    let mut weights = BTreeMap::new();
    for &(prefix, sub, component) in components {
        let folder = folder_of(sub);
        let store = WeightStore::open(&folder, component)
            .with_context(|| format!("cannot read the {sub} weights in {}", folder.display()))?;
        for (name, info) in store.iter() {
            let tensor = store.tensor(name, &info.shape, DType::F32, &Device::Cpu)?;
            weights.insert(format!("{prefix}{name}"), tensor);
        }
    }
    Ok(StartingWeights { ema: weights.clone(), weights, ema_updates: EXPORTED_EMA_UPDATES })
}

/// The tensors named `prefix…`, with the prefix removed.
pub(crate) fn with_prefix(tensors: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
}

/// A training run in progress.
pub struct Run {
    dir: PathBuf,
    stage: String,
    stage_config: serde_json::Value,
    settings: RunSettings,
    /// The trainable parameters (models are rebuilt from these every step).
    pub params: ParamStore,
    /// Data and noise randomness; saved with checkpoints so a resumed run continues identically.
    pub rng: Rng,
    optimizer: AdamW,
    ema: Ema,
    step: u64,
    /// Where this stage stops ([`RunOptions::until`]).
    until: Option<u64>,
    log: LossLog,
    bar: indicatif::ProgressBar,
    started: Instant,
}

impl Run {
    /// Starts a run in `dir`, continues the one there (`options.resume`), or starts from another
    /// run's weights (`options.init_from`). `build` creates every parameter by building the
    /// stage's models once against the store.
    pub fn start(
        dir: &Path,
        stage: &str,
        stage_config: serde_json::Value,
        settings: RunSettings,
        options: &RunOptions,
        build: impl Fn(&ParamStore) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let (resume, quiet) = (options.resume, options.quiet);
        let info_path = dir.join("checkpoint.json");
        if !resume && info_path.exists() {
            bail!(
                "{} already holds a training run; pass --resume to continue it or choose another --out",
                dir.display()
            );
        }
        if resume && !info_path.exists() {
            bail!(
                "there is no training run to resume in {} (no checkpoint.json); drop --resume to start one",
                dir.display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let device = Device::Cpu;
        let params = ParamStore::new(settings.seed, &device);
        build(&params)?;
        let vars = params.vars();
        let mut optimizer = AdamW::new(vars.clone(), settings.adamw)?;
        let mut ema = Ema::new(&vars, settings.ema_decay);
        let mut rng = Rng::new(settings.seed ^ 0xD1CE_5EED);
        let mut step = 0;
        if resume && info_path.exists() {
            let (info, tensors) = read_checkpoint(dir, stage)?;
            if info.stage_config != stage_config || info.settings.seed != settings.seed {
                bail!("the run in {} was started with other settings; resume it with the same ones", dir.display());
            }
            params.assign(&with_prefix(&tensors, "param."))?;
            optimizer.restore(info.step, &tensors)?;
            ema.restore(info.ema_updates, with_prefix(&tensors, "ema."));
            rng = Rng::from_state(info.rng_state);
            step = info.step;
        } else if let Some(source) = &options.init_from {
            let start = starting_weights(source, stage)?;
            if start.weights.len() != vars.len() {
                bail!(
                    "{} holds {} parameters, this {stage} has {}: the models differ",
                    source.display(),
                    start.weights.len(),
                    vars.len()
                );
            }
            params
                .assign(&start.weights)
                .with_context(|| format!("the {stage} in {} has another structure", source.display()))?;
            ema.restore(start.ema_updates, start.ema);
        }
        let log = LossLog::open(dir, step)?;
        let bar = progress_bar(settings.steps, step, quiet);
        Ok(Self {
            dir: dir.to_path_buf(),
            stage: stage.to_string(),
            stage_config,
            settings,
            params,
            rng,
            optimizer,
            ema,
            step,
            until: options.until,
            log,
            bar,
            started: Instant::now(),
        })
    }

    /// Whether every planned step is done, or this stage's (`RunOptions::until`).
    pub fn done(&self) -> bool {
        self.step >= self.settings.steps || self.until.is_some_and(|until| self.step >= until)
    }

    /// The step the run has reached.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Back-propagates `loss`, clips, updates the weights and the EMA, logs, and checkpoints
    /// when due. `extra` are further named scalars for the log (e.g. loss parts).
    pub fn apply(&mut self, loss: &Tensor, extra: &[(&str, f64)]) -> anyhow::Result<f64> {
        let value = loss.to_scalar::<f32>()? as f64;
        self.check_finite(value)?;
        let grads = loss.backward()?;
        self.apply_gradients(value, grads, extra)
    }

    /// [`apply`](Self::apply) for a loss whose gradients are already computed (e.g. summed over
    /// data-parallel shards).
    pub fn apply_gradients(&mut self, value: f64, mut grads: GradStore, extra: &[(&str, f64)]) -> anyhow::Result<f64> {
        self.check_finite(value)?;
        let vars = self.params.vars();
        let grad_norm = clip_grad_norm(&mut grads, &vars, self.settings.clip_norm)?;
        let lr = self.settings.learning_rate(self.step);
        self.optimizer.step(&grads, lr)?;
        self.ema.update(&vars)?;
        self.step += 1;
        self.log.record(self.step, value, grad_norm, lr, self.started.elapsed().as_secs_f64(), extra)?;
        self.bar.set_position(self.step);
        self.bar.set_message(format!("loss {:.4}", self.log.smoothed()));
        if self.step.is_multiple_of(self.settings.checkpoint_every) || self.done() {
            self.checkpoint()?;
        }
        Ok(value)
    }

    fn check_finite(&self, value: f64) -> anyhow::Result<()> {
        if !value.is_finite() {
            bail!("the loss became {value} at step {}; lower the learning rate (--lr) and resume", self.step + 1);
        }
        Ok(())
    }

    /// Writes the checkpoint (atomically: tensors first under a new name, then the JSON that
    /// points at them) and refreshes the loss plot.
    pub fn checkpoint(&mut self) -> anyhow::Result<()> {
        let name = format!("checkpoint-{:07}.safetensors", self.step);
        let mut tensors: Vec<(String, Tensor)> =
            self.params.snapshot().into_iter().map(|(k, v)| (format!("param.{k}"), v)).collect();
        tensors.extend(self.ema.weights().iter().map(|(k, v)| (format!("ema.{k}"), v.clone())));
        tensors.extend(self.optimizer.state());
        save_tensors(&self.dir.join(&name), tensors)?;
        let info = CheckpointInfo {
            stage: self.stage.clone(),
            step: self.step,
            rng_state: self.rng.state(),
            ema_updates: self.ema.updates(),
            tensors: name.clone(),
            settings: self.settings.clone(),
            stage_config: self.stage_config.clone(),
        };
        write_json(&self.dir.join("checkpoint.json"), &serde_json::to_value(&info)?)?;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if file.starts_with("checkpoint-") && file.ends_with(".safetensors") && file != name {
                std::fs::remove_file(&path)?;
            }
        }
        self.log.flush()?;
        self.log.plot(&self.dir.join("loss.png"))?;
        Ok(())
    }

    /// The EMA weights (what gets exported), by parameter name.
    pub fn ema_weights(&self) -> &BTreeMap<String, Tensor> {
        self.ema.weights()
    }

    /// Ends the progress bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn progress_bar(total: u64, done: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total).with_position(done);
    let style =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps, {msg}, eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar
}
