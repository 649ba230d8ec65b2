//! Training of the demo model: the three stages (tokenizer, VAE, text encoder + DiT) and what
//! they share — trainable parameters, AdamW/EMA, the run loop with checkpoints, the loss log.

pub mod data;
pub mod dit;
pub mod export;
pub mod log;
pub mod optim;
pub mod parallel;
pub mod params;
pub mod run;
pub mod tokenizer;
pub mod vae;
