//! Prompt cleaning and tokenisation against diffusers' `prompt_clean` + transformers' tokenizer,
//! and prompt embeddings against the DF pipeline's `_get_t5_prompt_embeds`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, load};
use serde_json::Value;
use skyreels_core::text::{clean_prompt, PromptTokenizer};
use skyreels_core::UmT5Encoder;

fn cases() -> Vec<Value> {
    let file = std::fs::read(fixture("tokenizer_cases.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&file).unwrap();
    let json: Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["json"]).unwrap();
    json["cases"].as_array().unwrap().clone()
}

fn ids(t: &std::collections::HashMap<String, Tensor>, name: &str) -> Vec<u32> {
    t[name].to_dtype(DType::U32).unwrap().to_vec1::<u32>().unwrap()
}

#[test]
fn cleaning_matches_prompt_clean() {
    for case in cases() {
        let raw = case["raw"].as_str().unwrap();
        assert_eq!(clean_prompt(raw), case["cleaned"].as_str().unwrap(), "{}", case["note"]);
    }
}

#[test]
fn token_ids_and_masks_match_transformers_including_the_precompiled_normalizer() {
    let t = load("tokenizer_cases.safetensors");
    let tokenizer = PromptTokenizer::load(&fixture("models/tokenizer")).unwrap();
    for (i, case) in cases().iter().enumerate() {
        let raw = case["raw"].as_str().unwrap();
        let cleaned = tokenizer.encode(raw, 32).unwrap();
        assert_eq!(cleaned.ids, ids(&t, &format!("p{i}.input_ids")), "cleaned ids of {}", case["note"]);
        assert_eq!(cleaned.mask, ids(&t, &format!("p{i}.attention_mask")), "mask of {}", case["note"]);
        let untruncated = case["num_tokens_untruncated"].as_u64().unwrap() as usize;
        assert_eq!(cleaned.dropped, untruncated.saturating_sub(32), "dropped tokens of {}", case["note"]);
        let raw_ids = tokenizer.encode_cleaned(raw, 32).unwrap();
        assert_eq!(raw_ids.ids, ids(&t, &format!("p{i}.raw_input_ids")), "raw ids of {}", case["note"]);
    }
}

#[test]
fn truncation_says_how_many_tokens_were_dropped() {
    let tokenizer = PromptTokenizer::load(&fixture("models/tokenizer/tokenizer.json")).unwrap();
    let long = cases()[9]["raw"].as_str().unwrap().to_string();
    let encoded = tokenizer.encode(&long, 32).unwrap();
    assert_eq!(encoded.dropped, 108 - 32);
    assert!(encoded.truncation_warning().unwrap().contains("76 tokens were dropped"));
    assert_eq!(encoded.ids[31], 1, "</s> closes a truncated prompt");
    assert!(tokenizer.encode("a cat", 32).unwrap().truncation_warning().is_none());
}

#[test]
fn prompt_embeddings_match_the_pipeline() {
    let t = load("prompt_embeds.safetensors");
    let tokenizer = PromptTokenizer::load(&fixture("models/tokenizer")).unwrap();
    let encoder = UmT5Encoder::load(&fixture("models/umt5_hf"), &Device::Cpu, DType::F32).unwrap();
    for (name, case) in [("e0", 0), ("e1", 9)] {
        let prompt = cases()[case]["raw"].as_str().unwrap().to_string();
        let tokens = tokenizer.encode(&prompt, 32).unwrap();
        let ids = Tensor::from_vec(tokens.ids.clone(), (1, 32), &Device::Cpu).unwrap();
        let mask = Tensor::from_vec(tokens.mask.clone(), (1, 32), &Device::Cpu).unwrap();
        let embeds = encoder.encode(&ids, &mask).unwrap();
        assert_close(&format!("{name} prompt_embeds"), &embeds, &t[&format!("{name}.prompt_embeds")]);
    }
}

#[test]
fn missing_or_broken_tokenizer_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = PromptTokenizer::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    let broken = dir.path().join("tokenizer.json");
    std::fs::write(&broken, "{\"version\": \"1.0\", \"model\": ").unwrap();
    let err = PromptTokenizer::load(&broken).err().unwrap().to_string();
    assert!(err.contains("tokenizer.json") && err.contains("is not usable"), "{err}");
    assert!(!err.contains("safetensors"), "a tokenizer is not a safetensors file: {err}");
}
