//! The single place that knows how diffusers names SkyReels-V2 transformer weights.
//!
//! Canonical names are the original SkyReels/Wan keys (spec §1.4). diffusers renames modules
//! (`self_attn.q` → `attn1.to_q`) and swaps two norms: the original `norm3` is the affine
//! cross-attention norm, which diffusers calls `norm2`.

/// Which key naming a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamingScheme {
    /// The original SkyReels-V2 / Wan2.1 release (`blocks.N.self_attn.q.weight`, `head.modulation`).
    Original,
    /// The diffusers port (`blocks.N.attn1.to_q.weight`, `scale_shift_table`).
    Diffusers,
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
    fn scheme_detection() {
        assert_eq!(detect_scheme(["blocks.0.attn1.to_q.weight"]), NamingScheme::Diffusers);
        assert_eq!(detect_scheme(["blocks.0.self_attn.q.weight", "head.modulation"]), NamingScheme::Original);
        assert!(is_non_weight_key("model_type.SkyReels-V2-DF-14B-720P"));
    }
}
