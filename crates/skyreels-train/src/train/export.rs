//! Writes trained weights as a diffusers-layout SkyReels-V2 diffusion-forcing pipeline — the
//! layout the engine's loader accepts for real checkpoints — plus the project's own
//! `skyreels.json` with the generation defaults that suit the model.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use serde_json::json;
use skyreels_core::checkpoint::{Component, NamingScheme};
use skyreels_core::models::{TransformerConfig, UmT5Config, VaeConfig};

use super::params::save_tensors;

/// Saves `weights` (canonical names) under the diffusers names of `component`.
fn save_component(path: &Path, component: Component, weights: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
    let renamed = weights.iter().map(|(k, v)| (component.to_stored(NamingScheme::Diffusers, k), v.clone()));
    save_tensors(path, renamed)
}

/// Writes `value` as pretty JSON to `path` atomically (a temporary file, then a rename).
pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(value)? + "\n")?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A diffusers `AutoencoderKLWan` folder: `config.json` + `diffusion_pytorch_model.safetensors`.
pub fn write_vae(dir: &Path, config: &VaeConfig, weights: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let round = |v: &[f32]| v.iter().map(|x| (*x as f64 * 1e4).round() / 1e4).collect::<Vec<_>>();
    write_json(
        &dir.join("config.json"),
        &json!({
            "_class_name": "AutoencoderKLWan",
            "attn_scales": [],
            "base_dim": config.base_dim,
            "dim_mult": config.dim_mult,
            "dropout": 0.0,
            "in_channels": 3,
            "is_residual": false,
            "latents_mean": round(&config.latents_mean),
            "latents_std": round(&config.latents_std),
            "num_res_blocks": config.num_res_blocks,
            "out_channels": 3,
            "scale_factor_spatial": config.spatial_factor(),
            "scale_factor_temporal": config.temporal_factor(),
            "temperal_downsample": config.temporal_downsample,
            "z_dim": config.z_dim,
        }),
    )?;
    save_component(&dir.join("diffusion_pytorch_model.safetensors"), Component::Vae, weights)
}

/// A transformers `UMT5EncoderModel` folder: `config.json` + `model.safetensors`.
pub fn write_text_encoder(dir: &Path, config: &UmT5Config, weights: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_json(
        &dir.join("config.json"),
        &json!({
            "architectures": ["UMT5EncoderModel"],
            "d_ff": config.d_ff,
            "d_kv": config.d_kv,
            "d_model": config.d_model,
            "dense_act_fn": "gelu_new",
            "eos_token_id": 1,
            "feed_forward_proj": "gated-gelu",
            "is_gated_act": true,
            "layer_norm_epsilon": config.eps,
            "model_type": "umt5",
            "num_heads": config.num_heads,
            "num_layers": config.num_layers,
            "pad_token_id": 0,
            "relative_attention_max_distance": config.max_distance,
            "relative_attention_num_buckets": config.num_buckets,
            "tie_word_embeddings": true,
            "vocab_size": config.vocab_size,
        }),
    )?;
    save_component(&dir.join("model.safetensors"), Component::TextEncoder, weights)
}

/// A diffusers `SkyReelsV2Transformer3DModel` folder.
pub fn write_transformer(dir: &Path, c: &TransformerConfig, weights: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_json(
        &dir.join("config.json"),
        &json!({
            "_class_name": "SkyReelsV2Transformer3DModel",
            "added_kv_proj_dim": null,
            "attention_head_dim": c.head_dim,
            "cross_attn_norm": c.cross_attn_norm,
            "eps": c.eps,
            "ffn_dim": c.ffn_dim,
            "freq_dim": c.freq_dim,
            "image_dim": null,
            "in_channels": c.in_channels,
            "inject_sample_info": c.inject_sample_info,
            "num_attention_heads": c.num_heads,
            "num_frame_per_block": 1,
            "num_layers": c.num_layers,
            "out_channels": c.out_channels,
            "patch_size": c.patch_size,
            "pos_embed_seq_len": null,
            "qk_norm": "rms_norm_across_heads",
            "rope_max_seq_len": c.rope_max_seq_len,
            "text_dim": c.text_dim,
        }),
    )?;
    save_component(&dir.join("diffusion_pytorch_model.safetensors"), Component::Transformer, weights)
}

/// The pipeline files around the models: `model_index.json` and `scheduler/`.
pub fn write_pipeline_index(root: &Path, flow_shift: f64) -> anyhow::Result<()> {
    std::fs::create_dir_all(root.join("scheduler"))?;
    write_json(
        &root.join("model_index.json"),
        &json!({
            "_class_name": "SkyReelsV2DiffusionForcingPipeline",
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5TokenizerFast"],
            "transformer": ["diffusers", "SkyReelsV2Transformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLWan"],
        }),
    )?;
    write_json(
        &root.join("scheduler/scheduler_config.json"),
        &json!({
            "_class_name": "UniPCMultistepScheduler",
            "flow_shift": flow_shift,
            "num_train_timesteps": 1000,
            "prediction_type": "flow_prediction",
            "solver_order": 2,
            "solver_type": "bh2",
            "use_flow_sigmas": true,
            "predict_x0": true,
            "lower_order_final": true,
            "final_sigmas_type": "zero",
        }),
    )
}
