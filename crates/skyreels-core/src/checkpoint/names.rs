//! The single place that knows how checkpoints in the wild name their weights.
//!
//! Models ask for tensors by a *canonical* name; [`Component`] converts between that and each
//! stored scheme:
//! - **Transformer**: canonical = the original SkyReels/Wan keys (spec §1.4). diffusers renames
//!   modules (`self_attn.q` → `attn1.to_q`) and swaps two norms: the original `norm3` is the
//!   affine cross-attention norm, which diffusers calls `norm2`.
//! - **VAE**: canonical = the diffusers `AutoencoderKLWan` keys, whose nesting mirrors the
//!   model's structure; the original `Wan2.1_VAE.pth` numbers its blocks in one flat list
//!   (`decoder.upsamples.7` is up block 1's upsampler).
//! - **Text encoder**: canonical = the original Wan `t5.py` keys (`blocks.3.attn.q.weight`);
//!   HF transformers' `UMT5EncoderModel` uses `encoder.block.3.layer.0.SelfAttention.q.weight`.
//! - **Image encoder** (CLIP's vision tower): canonical = transformers' `CLIPVisionModel` keys
//!   without their optional `vision_model.` prefix (`encoder.layers.3.self_attn.q_proj.weight`).
//!   The original open-clip file nests it under `visual.` with its own names and one fused
//!   `attn.to_qkv` per block, which maps to the canonical `self_attn.qkv_proj` (split into q, k,
//!   v by [`super::ClipVisionWeights`]).

/// Which key naming a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamingScheme {
    /// The original SkyReels-V2 / Wan2.1 release (`blocks.N.self_attn.q.weight`, `head.modulation`).
    Original,
    /// The diffusers / transformers port (`blocks.N.attn1.to_q.weight`, `scale_shift_table`).
    Diffusers,
}

/// Which model a checkpoint holds; each has its own names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The diffusion transformer.
    Transformer,
    /// The Wan2.1 causal video VAE.
    Vae,
    /// The umT5 text encoder.
    TextEncoder,
    /// CLIP's vision tower (the image branch of I2V models).
    ImageEncoder,
}

impl Component {
    /// Guesses the naming scheme from a checkpoint's tensor names.
    pub fn detect_scheme<'a>(self, names: impl IntoIterator<Item = &'a str>) -> NamingScheme {
        let mut names = names.into_iter();
        let found = match self {
            Component::Transformer => return detect_scheme(names),
            Component::Vae => {
                names.any(|n| n.contains(".downsamples.") || n.contains(".upsamples.") || n == "conv1.weight")
            }
            Component::TextEncoder => names.any(|n| n.starts_with("encoder.") || n.starts_with("shared.")),
            Component::ImageEncoder => names.any(|n| n.starts_with("visual.")),
        };
        // For the VAE and the image encoder `found` marks the original layout, for the text
        // encoder the HF one.
        match (self, found) {
            (Component::Vae | Component::ImageEncoder, true) | (Component::TextEncoder, false) => {
                NamingScheme::Original
            }
            _ => NamingScheme::Diffusers,
        }
    }

    /// The canonical name of a stored key.
    pub fn to_canonical(self, scheme: NamingScheme, stored: &str) -> String {
        match (self, scheme) {
            (Component::Transformer, NamingScheme::Diffusers) => diffusers_to_canonical(stored),
            (Component::Vae, NamingScheme::Original) => vae_original_to_diffusers(stored),
            (Component::TextEncoder, NamingScheme::Diffusers) => umt5_hf_to_original(stored),
            (Component::ImageEncoder, NamingScheme::Diffusers) => {
                stored.strip_prefix("vision_model.").unwrap_or(stored).to_string()
            }
            (Component::ImageEncoder, NamingScheme::Original) => clip_original_to_canonical(stored),
            _ => stored.to_string(),
        }
    }

    /// The key a canonical name is stored under in `scheme` (for error messages).
    pub fn to_stored(self, scheme: NamingScheme, canonical: &str) -> String {
        match (self, scheme) {
            (Component::Transformer, NamingScheme::Diffusers) => canonical_to_diffusers(canonical),
            (Component::Vae, NamingScheme::Original) => vae_diffusers_to_original(canonical),
            (Component::TextEncoder, NamingScheme::Diffusers) => umt5_original_to_hf(canonical),
            (Component::ImageEncoder, NamingScheme::Original) => clip_canonical_to_original(canonical),
            _ => canonical.to_string(),
        }
    }
}

/// (canonical `CLIPVisionModel`, original open-clip) names outside the blocks.
const CLIP_FIXED: &[(&str, &str)] = &[
    ("embeddings.class_embedding", "visual.cls_embedding"),
    ("embeddings.patch_embedding.weight", "visual.patch_embedding.weight"),
    ("embeddings.position_embedding.weight", "visual.pos_embedding"),
    ("pre_layrnorm.", "visual.pre_norm."),
    ("post_layernorm.", "visual.post_norm."),
];

/// (canonical, original) names inside block N (`encoder.layers.N.` / `visual.transformer.N.`).
const CLIP_BLOCK: &[(&str, &str)] = &[
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("self_attn.qkv_proj.", "attn.to_qkv."),
    ("self_attn.out_proj.", "attn.proj."),
    ("mlp.fc1.", "mlp.0."),
    ("mlp.fc2.", "mlp.2."),
];

/// Original open-clip key → canonical image-encoder key; keys outside the vision tower
/// (`textual.*`, `log_scale`) are kept as they are and never asked for.
pub fn clip_original_to_canonical(name: &str) -> String {
    if let Some((i, rest)) = numbered(name, "visual.transformer.") {
        if let Some(mapped) = replace_prefix(rest, CLIP_BLOCK, false) {
            return format!("encoder.layers.{i}.{mapped}");
        }
    }
    replace_prefix(name, CLIP_FIXED, false).unwrap_or_else(|| name.to_string())
}

/// Canonical image-encoder key → original open-clip key.
pub fn clip_canonical_to_original(name: &str) -> String {
    if let Some((i, rest)) = numbered(name, "encoder.layers.") {
        if let Some(mapped) = replace_prefix(rest, CLIP_BLOCK, true) {
            return format!("visual.transformer.{i}.{mapped}");
        }
    }
    replace_prefix(name, CLIP_FIXED, true).unwrap_or_else(|| name.to_string())
}

/// (diffusers, original) names of a VAE residual block's parameters.
const VAE_RESIDUAL: &[(&str, &str)] = &[
    ("norm1.", "residual.0."),
    ("conv1.", "residual.2."),
    ("norm2.", "residual.3."),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
];

/// (diffusers, original) VAE names outside the numbered blocks.
const VAE_FIXED: &[(&str, &str)] = &[
    ("quant_conv.", "conv1."),
    ("post_quant_conv.", "conv2."),
    ("encoder.conv_in.", "encoder.conv1."),
    ("decoder.conv_in.", "decoder.conv1."),
    ("encoder.norm_out.", "encoder.head.0."),
    ("encoder.conv_out.", "encoder.head.2."),
    ("decoder.norm_out.", "decoder.head.0."),
    ("decoder.conv_out.", "decoder.head.2."),
];

/// Items per decoder up block in the original flat list: 3 residual blocks and the upsampler
/// (the Wan2.1 VAE always has `num_res_blocks = 2`).
const VAE_UP_BLOCK_ITEMS: usize = 4;

fn replace_prefix(name: &str, table: &[(&str, &str)], to_original: bool) -> Option<String> {
    table.iter().find_map(|&(diffusers, original)| {
        let (from, to) = if to_original { (diffusers, original) } else { (original, diffusers) };
        name.strip_prefix(from).map(|rest| format!("{to}{rest}"))
    })
}

/// Splits `prefix.N.rest` into (N, rest).
fn numbered<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (index, rest) = name.strip_prefix(prefix)?.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

/// Original Wan2.1 VAE key → diffusers key; unknown keys are kept.
pub fn vae_original_to_diffusers(name: &str) -> String {
    let residual = |rest: &str| replace_prefix(rest, VAE_RESIDUAL, false).unwrap_or_else(|| rest.to_string());
    if let Some((i, rest)) = numbered(name, "encoder.downsamples.") {
        return format!("encoder.down_blocks.{i}.{}", residual(rest));
    }
    if let Some((j, rest)) = numbered(name, "decoder.upsamples.") {
        let (block, item) = (j / VAE_UP_BLOCK_ITEMS, j % VAE_UP_BLOCK_ITEMS);
        return if item == VAE_UP_BLOCK_ITEMS - 1 {
            format!("decoder.up_blocks.{block}.upsamplers.0.{rest}")
        } else {
            format!("decoder.up_blocks.{block}.resnets.{item}.{}", residual(rest))
        };
    }
    for side in ["encoder", "decoder"] {
        // The original middle is [residual, attention, residual].
        if let Some((i, rest)) = numbered(name, &format!("{side}.middle.")) {
            return match i {
                1 => format!("{side}.mid_block.attentions.0.{rest}"),
                _ => format!("{side}.mid_block.resnets.{}.{}", i / 2, residual(rest)),
            };
        }
    }
    replace_prefix(name, VAE_FIXED, false).unwrap_or_else(|| name.to_string())
}

/// diffusers VAE key → original Wan2.1 key; unknown keys are kept.
pub fn vae_diffusers_to_original(name: &str) -> String {
    let residual = |rest: &str| replace_prefix(rest, VAE_RESIDUAL, true).unwrap_or_else(|| rest.to_string());
    if let Some((i, rest)) = numbered(name, "encoder.down_blocks.") {
        return format!("encoder.downsamples.{i}.{}", residual(rest));
    }
    if let Some((block, rest)) = numbered(name, "decoder.up_blocks.") {
        if let Some((item, rest)) = numbered(rest, "resnets.") {
            return format!("decoder.upsamples.{}.{}", block * VAE_UP_BLOCK_ITEMS + item, residual(rest));
        }
        if let Some(rest) = rest.strip_prefix("upsamplers.0.") {
            return format!("decoder.upsamples.{}.{rest}", block * VAE_UP_BLOCK_ITEMS + VAE_UP_BLOCK_ITEMS - 1);
        }
    }
    for side in ["encoder", "decoder"] {
        if let Some((i, rest)) = numbered(name, &format!("{side}.mid_block.resnets.")) {
            return format!("{side}.middle.{}.{}", 2 * i, residual(rest));
        }
        if let Some(rest) = name.strip_prefix(&format!("{side}.mid_block.attentions.0.")) {
            return format!("{side}.middle.1.{rest}");
        }
    }
    replace_prefix(name, VAE_FIXED, true).unwrap_or_else(|| name.to_string())
}

/// (HF, original) names inside one umT5 encoder block.
const UMT5_BLOCK: &[(&str, &str)] = &[
    ("layer.0.SelfAttention.q.", "attn.q."),
    ("layer.0.SelfAttention.k.", "attn.k."),
    ("layer.0.SelfAttention.v.", "attn.v."),
    ("layer.0.SelfAttention.o.", "attn.o."),
    ("layer.0.SelfAttention.relative_attention_bias.", "pos_embedding.embedding."),
    ("layer.0.layer_norm.", "norm1."),
    ("layer.1.layer_norm.", "norm2."),
    ("layer.1.DenseReluDense.wi_0.", "ffn.gate.0."),
    ("layer.1.DenseReluDense.wi_1.", "ffn.fc1."),
    ("layer.1.DenseReluDense.wo.", "ffn.fc2."),
];

/// HF `UMT5EncoderModel` key → original Wan `t5.py` key; unknown keys are kept.
pub fn umt5_hf_to_original(name: &str) -> String {
    match name {
        "shared.weight" | "encoder.embed_tokens.weight" => return "token_embedding.weight".into(),
        "encoder.final_layer_norm.weight" => return "norm.weight".into(),
        _ => {}
    }
    if let Some((i, rest)) = numbered(name, "encoder.block.") {
        if let Some(mapped) = replace_prefix(rest, UMT5_BLOCK, true) {
            return format!("blocks.{i}.{mapped}");
        }
    }
    name.to_string()
}

/// Original Wan `t5.py` key → HF `UMT5EncoderModel` key; unknown keys are kept.
pub fn umt5_original_to_hf(name: &str) -> String {
    match name {
        "token_embedding.weight" => return "shared.weight".into(),
        "norm.weight" => return "encoder.final_layer_norm.weight".into(),
        _ => {}
    }
    if let Some((i, rest)) = numbered(name, "blocks.") {
        if let Some(mapped) = replace_prefix(rest, UMT5_BLOCK, false) {
            return format!("encoder.block.{i}.{mapped}");
        }
    }
    name.to_string()
}

impl std::fmt::Display for NamingScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NamingScheme::Original => "original SkyReels/Wan",
            NamingScheme::Diffusers => "diffusers",
        })
    }
}

/// (diffusers path, original path) for top-level modules and parameters.
const TOP_LEVEL: &[(&str, &str)] = &[
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
    ("fps_projection.net.0.proj", "fps_projection.0"),
    ("fps_projection.net.2", "fps_projection.2"),
    ("scale_shift_table", "head.modulation"),
    ("proj_out", "head.head"),
];

/// (diffusers path, original path) inside `blocks.N.`.
const BLOCK_LEVEL: &[(&str, &str)] = &[
    ("attn1.to_q", "self_attn.q"),
    ("attn1.to_k", "self_attn.k"),
    ("attn1.to_v", "self_attn.v"),
    ("attn1.to_out.0", "self_attn.o"),
    ("attn1.norm_q", "self_attn.norm_q"),
    ("attn1.norm_k", "self_attn.norm_k"),
    ("attn2.to_q", "cross_attn.q"),
    ("attn2.to_k", "cross_attn.k"),
    ("attn2.to_v", "cross_attn.v"),
    ("attn2.to_out.0", "cross_attn.o"),
    ("attn2.norm_q", "cross_attn.norm_q"),
    ("attn2.norm_k", "cross_attn.norm_k"),
    ("attn2.add_k_proj", "cross_attn.k_img"),
    ("attn2.add_v_proj", "cross_attn.v_img"),
    ("attn2.norm_added_k", "cross_attn.norm_k_img"),
    ("norm2", "norm3"),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("scale_shift_table", "modulation"),
];

/// Direction of a rename.
#[derive(Clone, Copy)]
enum Direction {
    ToOriginal,
    ToDiffusers,
}

/// Keys that carry no weights (SkyReels files hold a `model_type.<ModelName>` entry).
pub fn is_non_weight_key(name: &str) -> bool {
    name.starts_with("model_type.")
}

/// The model name recorded in a SkyReels `model_type.<ModelName>` key, if this is one.
pub fn model_name_from_key(name: &str) -> Option<&str> {
    name.strip_prefix("model_type.")
}

/// Converts a diffusers key to the canonical (original) name; keys with no counterpart are kept.
pub fn diffusers_to_canonical(name: &str) -> String {
    rename(name, Direction::ToOriginal)
}

/// Converts a canonical (original) key to the name diffusers stores it under.
pub fn canonical_to_diffusers(name: &str) -> String {
    rename(name, Direction::ToDiffusers)
}

fn rename(name: &str, direction: Direction) -> String {
    let (prefix, rest, table) = match split_block_prefix(name) {
        Some((prefix, rest)) => (prefix, rest, BLOCK_LEVEL),
        None => ("", name, TOP_LEVEL),
    };
    for &(diffusers, original) in table {
        let (from, to) = match direction {
            Direction::ToOriginal => (diffusers, original),
            Direction::ToDiffusers => (original, diffusers),
        };
        if rest == from {
            return format!("{prefix}{to}");
        }
        if let Some(param) = rest.strip_prefix(from).and_then(|r| r.strip_prefix('.')) {
            return format!("{prefix}{to}.{param}");
        }
    }
    name.to_string()
}

/// Splits `blocks.12.attn1.to_q.weight` into (`blocks.12.`, `attn1.to_q.weight`).
fn split_block_prefix(name: &str) -> Option<(&str, &str)> {
    let after = name.strip_prefix("blocks.")?;
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || after.as_bytes().get(digits) != Some(&b'.') {
        return None;
    }
    let split = "blocks.".len() + digits + 1;
    Some((&name[..split], &name[split..]))
}

/// Guesses the naming scheme from the tensor names of a checkpoint.
pub fn detect_scheme<'a>(names: impl IntoIterator<Item = &'a str>) -> NamingScheme {
    let diffusers_marker = |n: &str| {
        n.starts_with("condition_embedder.")
            || n.contains(".attn1.")
            || n.contains(".attn2.")
            || n == "scale_shift_table"
            || n.starts_with("proj_out.")
    };
    if names.into_iter().any(diffusers_marker) {
        NamingScheme::Diffusers
    } else {
        NamingScheme::Original
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_round_trip_and_swap_norms() {
        let cases = [
            ("blocks.3.attn1.to_q.weight", "blocks.3.self_attn.q.weight"),
            ("blocks.3.attn1.to_out.0.bias", "blocks.3.self_attn.o.bias"),
            ("blocks.10.norm2.weight", "blocks.10.norm3.weight"),
            ("blocks.0.attn2.norm_added_k.weight", "blocks.0.cross_attn.norm_k_img.weight"),
            ("blocks.0.attn2.norm_k.weight", "blocks.0.cross_attn.norm_k.weight"),
            ("blocks.7.scale_shift_table", "blocks.7.modulation"),
            ("blocks.1.ffn.net.0.proj.weight", "blocks.1.ffn.0.weight"),
        ];
        for (diffusers, original) in cases {
            assert_eq!(diffusers_to_canonical(diffusers), original);
            assert_eq!(canonical_to_diffusers(original), diffusers);
        }
    }

    #[test]
    fn top_level_keys_round_trip() {
        let cases = [
            ("scale_shift_table", "head.modulation"),
            ("proj_out.weight", "head.head.weight"),
            ("condition_embedder.time_proj.bias", "time_projection.1.bias"),
            ("condition_embedder.image_embedder.ff.net.2.weight", "img_emb.proj.3.weight"),
            ("fps_projection.net.0.proj.weight", "fps_projection.0.weight"),
            ("fps_embedding.weight", "fps_embedding.weight"),
            ("patch_embedding.weight", "patch_embedding.weight"),
        ];
        for (diffusers, original) in cases {
            assert_eq!(diffusers_to_canonical(diffusers), original);
            assert_eq!(canonical_to_diffusers(original), diffusers);
        }
    }

    #[test]
    fn prefix_lookalikes_are_not_renamed() {
        assert_eq!(diffusers_to_canonical("proj_outer.weight"), "proj_outer.weight");
        assert_eq!(diffusers_to_canonical("blocks.x.norm2.weight"), "blocks.x.norm2.weight");
    }

    #[test]
    fn vae_keys_round_trip() {
        let cases = [
            ("decoder.up_blocks.1.resnets.0.conv_shortcut.weight", "decoder.upsamples.4.shortcut.weight"),
            ("decoder.up_blocks.0.upsamplers.0.time_conv.bias", "decoder.upsamples.3.time_conv.bias"),
            ("decoder.up_blocks.2.upsamplers.0.resample.1.weight", "decoder.upsamples.11.resample.1.weight"),
            ("decoder.up_blocks.3.resnets.2.norm2.gamma", "decoder.upsamples.14.residual.3.gamma"),
            ("encoder.down_blocks.5.time_conv.weight", "encoder.downsamples.5.time_conv.weight"),
            ("encoder.down_blocks.3.conv1.bias", "encoder.downsamples.3.residual.2.bias"),
            ("encoder.mid_block.resnets.1.conv2.weight", "encoder.middle.2.residual.6.weight"),
            ("decoder.mid_block.attentions.0.to_qkv.weight", "decoder.middle.1.to_qkv.weight"),
            ("encoder.conv_in.weight", "encoder.conv1.weight"),
            ("decoder.norm_out.gamma", "decoder.head.0.gamma"),
            ("decoder.conv_out.bias", "decoder.head.2.bias"),
            ("quant_conv.weight", "conv1.weight"),
            ("post_quant_conv.bias", "conv2.bias"),
        ];
        for (diffusers, original) in cases {
            assert_eq!(vae_original_to_diffusers(original), diffusers);
            assert_eq!(vae_diffusers_to_original(diffusers), original);
        }
    }

    #[test]
    fn umt5_keys_round_trip() {
        let cases = [
            ("encoder.block.1.layer.0.SelfAttention.o.weight", "blocks.1.attn.o.weight"),
            (
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                "blocks.0.pos_embedding.embedding.weight",
            ),
            ("encoder.block.23.layer.1.DenseReluDense.wi_0.weight", "blocks.23.ffn.gate.0.weight"),
            ("encoder.block.2.layer.1.layer_norm.weight", "blocks.2.norm2.weight"),
            ("encoder.final_layer_norm.weight", "norm.weight"),
            ("shared.weight", "token_embedding.weight"),
        ];
        for (hf, original) in cases {
            assert_eq!(umt5_hf_to_original(hf), original);
            assert_eq!(umt5_original_to_hf(original), hf);
        }
        assert_eq!(umt5_hf_to_original("encoder.embed_tokens.weight"), "token_embedding.weight");
    }

    #[test]
    fn scheme_detection() {
        assert_eq!(Component::Vae.detect_scheme(["encoder.downsamples.0.residual.0.gamma"]), NamingScheme::Original);
        assert_eq!(Component::Vae.detect_scheme(["encoder.down_blocks.0.norm1.gamma"]), NamingScheme::Diffusers);
        assert_eq!(Component::TextEncoder.detect_scheme(["shared.weight"]), NamingScheme::Diffusers);
        assert_eq!(Component::TextEncoder.detect_scheme(["blocks.0.attn.q.weight"]), NamingScheme::Original);
        assert_eq!(detect_scheme(["blocks.0.attn1.to_q.weight"]), NamingScheme::Diffusers);
        assert_eq!(detect_scheme(["blocks.0.self_attn.q.weight", "head.modulation"]), NamingScheme::Original);
        assert!(is_non_weight_key("model_type.SkyReels-V2-DF-14B-720P"));
    }
}
