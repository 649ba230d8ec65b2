//! # skyreels-train
//!
//! The training side of skyreels-rs, kept out of the engine crate. So far: [`world`], a
//! procedural "film world" — subjects, backgrounds, camera moves and cuts, rendered
//! deterministically from a seed, each clip with a structured caption in the spirit of
//! SkyCaptioner-V1 and a prompt fused from it by fixed templates. It is the data the project's
//! demo model is trained and judged on; and [`noise_levels`], the diffusion-forcing noise-level
//! sampler of training (per-block, non-decreasing, mixed with full-sequence and clean-prefix
//! samples); and [`train`], the stages of `skyreels train` (tokenizer, VAE, text encoder + DiT)
//! with what they share.

pub mod eval;
pub mod noise_levels;
pub mod world;
pub mod train;
