//! The demo model's tokenizer: a word-level `tokenizer.json` over the film world's prompt
//! vocabulary, with umT5's special tokens (`<pad>` = 0, `</s>` = 1, `<unk>` = 2) so the engine's
//! prompt tokenizer and text encoder use it exactly as they use umT5's SentencePiece model.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::json;
use skyreels_core::text::{clean_prompt, PromptTokenizer};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use crate::world::{sample_clip, Split, WorldConfig};

/// The special tokens, in id order.
const SPECIAL: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// Words of `prompt` as the tokenizer splits them: cleaned, lower-cased, then `\w+|[^\w\s]+`.
pub fn words(prompt: &str) -> anyhow::Result<Vec<String>> {
    let mut text = PreTokenizedString::from(clean_prompt(prompt).to_lowercase());
    Whitespace {}.pre_tokenize(&mut text).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(text
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(w, _, _)| w.to_string())
        .collect())
}

/// Counts the words of the prompts of `clips` training clips and returns the vocabulary:
/// words seen at least `min_count` times, most frequent first (ties alphabetical).
pub fn build_vocabulary(world: &WorldConfig, clips: u64, min_count: usize) -> anyhow::Result<Vec<String>> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for seed in 0..clips {
        for split in [Split::Train, Split::HeldOut] {
            for word in words(&sample_clip(seed, world, split).prompt())? {
                *counts.entry(word).or_default() += 1;
            }
        }
    }
    let mut vocab: Vec<(String, usize)> = counts.into_iter().filter(|(_, c)| *c >= min_count).collect();
    vocab.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(vocab.into_iter().map(|(w, _)| w).collect())
}

/// Writes a word-level `tokenizer.json` for `vocabulary` (after the special tokens) and checks
/// that the engine loads it.
pub fn write_tokenizer(path: &Path, vocabulary: &[String]) -> anyhow::Result<usize> {
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in SPECIAL.iter().enumerate() {
        vocab.insert(token.to_string(), json!(id));
        added.push(json!({
            "id": id, "content": token, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true,
        }));
    }
    for word in vocabulary {
        let id = vocab.len();
        vocab.entry(word.clone()).or_insert(json!(id));
    }
    let size = vocab.len();
    let document = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&document)? + "\n")?;
    PromptTokenizer::load(&tmp).with_context(|| "the written tokenizer does not load")?;
    std::fs::rename(&tmp, path)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_word_is_in_the_vocabulary_and_round_trips() -> anyhow::Result<()> {
        let world = WorldConfig::default();
        let vocabulary = build_vocabulary(&world, 300, 1)?;
        let dir = std::env::temp_dir().join(format!("skyreels-tok-{}", std::process::id()));
        let path = dir.join("tokenizer.json");
        let size = write_tokenizer(&path, &vocabulary)?;
        assert_eq!(size, vocabulary.len() + 3);
        let tokenizer = PromptTokenizer::load(&path)?;
        let unk = 2;
        for seed in 1000..1050 {
            let prompt = sample_clip(seed, &world, Split::Train).prompt();
            let encoded = tokenizer.encode(&prompt, 64)?;
            let real = encoded.mask.iter().filter(|&&m| m == 1).count();
            assert_eq!(real, words(&prompt)?.len() + 1, "{prompt}");
            assert!(!encoded.ids[..real].contains(&unk), "unknown word in {prompt}");
            assert_eq!(encoded.ids[real - 1], 1, "prompts end with </s>");
        }
        // Words outside the world map to <unk>, not to an error.
        let odd = tokenizer.encode("a zebra", 8)?;
        let a = vocabulary.iter().position(|w| w == "a").expect("`a` is in every prompt") as u32 + 3;
        assert_eq!(&odd.ids[..3], &[a, unk, 1]);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
