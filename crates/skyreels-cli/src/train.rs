//! `skyreels train`: the demo model's training recipe, one subcommand per stage.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use skyreels_train::noise_levels::NoiseLevelSampler;
use skyreels_train::train::dit::{bench_dit, train_dit, DitInputs, DitStage, StepBench};
use skyreels_train::train::optim::AdamWConfig;
use skyreels_train::train::parallel::{available_cores, single_threaded_kernels};
use skyreels_train::train::run::{RunOptions, RunSettings};
use skyreels_train::train::tokenizer::{build_vocabulary, write_tokenizer};
use skyreels_train::train::vae::{train_vae, VaeStage};
use skyreels_train::world::WorldConfig;

/// The training stages.
#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Write the word-level tokenizer.json of the film world's prompt vocabulary.
    Tokenizer(TokenizerArgs),
    /// Train the Wan causal VAE on film-world clips (stage 1).
    Vae(VaeArgs),
    /// Train the umT5 text encoder and the diffusion-forcing DiT on VAE latents (stage 2), and
    /// export the complete model folder to `<out>/export`.
    Dit(DitArgs),
}

/// Flags of `skyreels train tokenizer`.
#[derive(Args, Debug)]
pub struct TokenizerArgs {
    /// The tokenizer.json to write.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Clips whose prompts are counted.
    #[arg(long, default_value_t = 2000)]
    pub clips: u64,
}

/// Flags of `skyreels train dit`.
#[derive(Args, Debug)]
pub struct DitArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// The VAE exported by `skyreels train vae` (its `<out>/export` folder).
    #[arg(long)]
    pub vae: PathBuf,
    /// The tokenizer.json written by `skyreels train tokenizer`.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Clips in the training set (encoded once, cached in --out).
    #[arg(long, default_value_t = 3000)]
    pub clips: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// DiT width.
    #[arg(long, default_value_t = 128)]
    pub dim: usize,
    /// DiT blocks.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// DiT attention heads (head size = width / heads). Fewer, larger heads give the rotary
    /// embedding more frequencies per spatial axis (head size 32: 5; 64: 10).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Extra loss weight on latent cells showing a subject (a cell weighs 1 + this × the share
    /// of it a subject covers); 0 is plain flow matching.
    #[arg(long, default_value_t = 0.0)]
    pub subject_weight: f32,
    /// Scales the subject weight by σ^this at noise level σ: the weight then acts where
    /// samples decide whether to draw a subject (0: the same at every noise level).
    #[arg(long, default_value_t = 0.0)]
    pub subject_weight_noise_power: f32,
    /// Scales the subject weight by (1 − σ)^this: the weight then acts where the model
    /// already knows where the subjects are (0: the same at every noise level).
    #[arg(long, default_value_t = 0.0)]
    pub subject_weight_clean_power: f32,
    /// Spatial patch size of the DiT: 2 as in Wan, or 1 for one token per latent cell (finer
    /// placement; 4× the tokens, measured 7.5× the step time).
    #[arg(long, default_value_t = 2)]
    pub patch: usize,
    /// Share of samples whose latent frames all get one noise level (full-sequence samples, what
    /// a text-to-video window sees at inference); the rest get diffusion-forcing levels.
    #[arg(long, default_value_t = 0.3)]
    pub sync_probability: f32,
    /// Share of samples that start with clean latent frames (what an image, an extended clip or
    /// the previous window gives at inference).
    #[arg(long, default_value_t = 0.3)]
    pub prefix_probability: f32,
    /// Worker threads: each step's batch is split into one shard per worker, each run with
    /// single-threaded kernels, and their gradients summed [default: the cores available].
    /// Results depend on it only by floating-point rounding; resume with the same count for a
    /// bit-exact continuation.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Measure instead of train: time this many steps (after two untimed ones) on at most 64
    /// clips, print samples per second and model GFLOP/s, and keep no run (the encoded clips
    /// stay cached in --out).
    #[arg(long, value_name = "STEPS")]
    pub bench: Option<usize>,
    /// With --bench: print the figures as JSON.
    #[arg(long, requires = "bench")]
    pub json: bool,
}

/// Flags every stage shares.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run directory: checkpoints, loss.csv, loss.png and the exported model.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Optimiser steps [default: VAE 3000, or 750 with --init-from; DiT 3000].
    #[arg(long)]
    pub steps: Option<u64>,
    /// Peak learning rate [default: VAE 1e-3, or 3e-4 with --init-from; DiT 1e-3].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of initialisation and data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Decay of the exponential moving average that is exported (per step; 0.995 averages
    /// about the last 200 steps, 0.9999 the last 10000). A longer average smooths out the noise
    /// of small batches at a high learning rate.
    #[arg(long, default_value_t = 0.995)]
    pub ema_decay: f64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start from the weights of another run of the same stage (its directory) or of an exported
    /// model folder (e.g. models/skyreels-demo, or a VAE run's export), with a fresh optimiser
    /// and schedule: a second phase, e.g. the VAE on long clips, or fine-tuning the demo model.
    #[arg(long, value_name = "RUN")]
    pub init_from: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// End this stage at this step (a checkpoint and an export), short of --steps: a long run
    /// in stages, each continued with --resume and a later --until. The learning-rate schedule
    /// stays that of all --steps, so the stages together equal one uninterrupted run.
    #[arg(long, value_name = "STEP")]
    pub until: Option<u64>,
}

impl RunArgs {
    fn options(&self) -> RunOptions {
        RunOptions {
            resume: self.resume,
            init_from: self.init_from.clone(),
            quiet: self.quiet,
            until: self.until,
            workers: 1,
        }
    }

    fn settings(&self, steps: u64, lr: f64) -> Result<RunSettings, String> {
        let steps = self.steps.unwrap_or(steps);
        if steps == 0 || self.checkpoint_every == 0 {
            return Err("--steps and --checkpoint-every must be at least 1".into());
        }
        if self.until == Some(0) {
            return Err("--until must be at least 1".into());
        }
        let lr = self.lr.unwrap_or(lr);
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("--lr must be a positive number, got {lr}"));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(format!("--ema-decay must be at least 0 and below 1, got {}", self.ema_decay));
        }
        Ok(RunSettings {
            steps,
            adamw: AdamWConfig { lr, ..AdamWConfig::default() },
            warmup: (steps / 20).clamp(1, 200),
            clip_norm: 1.0,
            ema_decay: self.ema_decay,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
        })
    }
}

/// Flags of `skyreels train vae`.
#[derive(Args, Debug)]
pub struct VaeArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Clips per step.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Frames per training clip (1 + 4k). The VAE stays faithful only over as many frames as it
    /// was trained on, so follow a short-clip run with a long-clip phase (`--init-from`).
    #[arg(long, default_value_t = 9)]
    pub frames: usize,
    /// Side of the random square crop trained on (multiple of 8; 0 = whole frame).
    #[arg(long, default_value_t = 32)]
    pub crop: usize,
    /// Channels of the VAE's first stage.
    #[arg(long, default_value_t = 8)]
    pub base_dim: usize,
    /// Most chunks (1 frame, then 4) to run through the VAE's causal caches without gradient
    /// before the trained frames; each step draws 0 to this many. Trains late chunks at the
    /// cost of short clips.
    #[arg(long, default_value_t = 0)]
    pub warm_up_chunks: usize,
    /// Weight of the edge loss (L1 between the decoded and true frames' pixel differences).
    #[arg(long, default_value_t = 0.0)]
    pub edge_weight: f64,
    /// Train only the decoder of the --init-from VAE: its encoder, and the latents a DiT was
    /// trained on, stay unchanged.
    #[arg(long)]
    pub decoder_only: bool,
}

/// Runs one stage.
pub fn run(command: &TrainCommand) -> Result<(), String> {
    match command {
        TrainCommand::Vae(args) => {
            if args.batch == 0 || args.frames == 0 {
                return Err("--batch and --frames must be at least 1".into());
            }
            let stage = VaeStage {
                batch: args.batch,
                frames: args.frames,
                crop: args.crop,
                base_dim: args.base_dim,
                warm_up_chunks: args.warm_up_chunks,
                edge_weight: args.edge_weight,
                decoder_only: args.decoder_only,
                ..VaeStage::default()
            };
            // A first (image) phase learns space from scratch; a continuation (`--init-from`)
            // adds time to features it must not wreck: at 1e-3 a video phase after the image
            // phase went from 0.14 to 0.30 L1+L2 within 200 steps, at 3e-4 it held 0.15.
            let (steps, lr) = if args.run.init_from.is_some() { (750, 3e-4) } else { (3000, 1e-3) };
            let settings = args.run.settings(steps, lr)?;
            train_vae(&args.run.out, &stage, settings, &args.run.options()).map_err(|e| format!("{e:#}"))?;
            println!("VAE exported to {}", args.run.out.join("export").display());
            Ok(())
        }
        TrainCommand::Tokenizer(args) => {
            if args.clips == 0 {
                return Err("--clips must be at least 1".into());
            }
            let vocabulary = build_vocabulary(&WorldConfig::default(), args.clips, 1).map_err(|e| format!("{e:#}"))?;
            let size = write_tokenizer(&args.out, &vocabulary).map_err(|e| format!("{e:#}"))?;
            println!("wrote {} ({size} tokens)", args.out.display());
            Ok(())
        }
        TrainCommand::Dit(args) => {
            if args.batch == 0 || args.clips == 0 {
                return Err("--batch and --clips must be at least 1".into());
            }
            let stage = DitStage {
                clips: args.clips,
                batch: args.batch,
                dim: args.dim,
                layers: args.layers,
                heads: args.heads,
                ffn_dim: 3 * args.dim,
                subject_weight: args.subject_weight,
                subject_weight_noise_power: args.subject_weight_noise_power,
                subject_weight_clean_power: args.subject_weight_clean_power,
                patch: args.patch,
                noise: NoiseLevelSampler {
                    sync_probability: args.sync_probability,
                    prefix_probability: args.prefix_probability,
                    ..NoiseLevelSampler::default()
                },
                ..DitStage::default()
            };
            let settings = args.run.settings(3000, 1e-3)?;
            let inputs = DitInputs { vae: &args.vae, tokenizer: &args.tokenizer };
            let workers = args.workers.unwrap_or_else(available_cores);
            if workers == 0 {
                return Err("--workers must be at least 1".into());
            }
            if workers > 1 {
                single_threaded_kernels();
            }
            let options = RunOptions { workers, ..args.run.options() };
            if let Some(steps) = args.bench {
                let bench = bench_dit(&args.run.out, &inputs, &stage, settings, &options, steps)
                    .map_err(|e| format!("{e:#}"))?;
                print_step_bench(&bench, &stage, args.json);
                return Ok(());
            }
            let total = settings.steps;
            train_dit(&args.run.out, &inputs, &stage, settings, &options).map_err(|e| format!("{e:#}"))?;
            println!("model exported to {}", args.run.out.join("export").display());
            if let Some(until) = args.run.until.filter(|&until| until < total) {
                println!("this stage ended at step {until} of {total}; continue with --resume and a later --until");
            }
            Ok(())
        }
    }
}

/// Prints what `train dit --bench` measured, as a table or JSON.
fn print_step_bench(bench: &StepBench, stage: &DitStage, json: bool) {
    if json {
        let mut value = serde_json::to_value(bench).unwrap_or_default();
        value["cpu"] = serde_json::Value::String(skyreels_core::device::cpu_name());
        println!("{value}");
        return;
    }
    println!(
        "DiT + umT5 training step: width {}, {} blocks, {} heads, text width {} × {} layers; {}",
        stage.dim,
        stage.layers,
        stage.heads,
        stage.text_dim,
        stage.text_layers,
        skyreels_core::device::cpu_name()
    );
    println!("| batch | tokens per sample | workers | step s (median of {}) | samples/s | GFLOP per sample | effective GFLOP/s |", bench.steps);
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.3} | {:.1} | {:.3} | {:.1} |",
        bench.batch,
        bench.tokens_per_sample,
        bench.workers,
        bench.step_seconds,
        bench.samples_per_second,
        bench.gflop_per_sample,
        bench.effective_gflops
    );
}
