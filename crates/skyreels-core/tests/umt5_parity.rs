//! umT5 encoder against transformers' `UMT5EncoderModel` (fixtures from tools/reference/gen_vae_t5_fixtures.py).

mod common;

use candle_core::{DType, Device};
use common::{assert_close, fixture, load};
use skyreels_core::models::umt5::relative_position_bucket;
use skyreels_core::UmT5Encoder;

#[test]
fn relative_position_buckets_match_transformers() {
    let t = load("umt5.safetensors");
    let expected = t["buckets"].to_vec1::<i64>().unwrap();
    for (i, &bucket) in expected.iter().enumerate() {
        let relative = i as i64 - 300;
        assert_eq!(relative_position_bucket(relative, 32, 128) as i64, bucket, "relative position {relative}");
    }
}

#[test]
fn hf_layout_matches_layer_by_layer_with_padding_and_batches() {
    let t = load("umt5.safetensors");
    let encoder = UmT5Encoder::load(&fixture("models/umt5_hf"), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(encoder.config().d_kv * encoder.config().num_heads, 40);
    for case in ["c0", "c1", "c2"] {
        let mut trace = Vec::new();
        let out = encoder
            .forward_traced(&t[&format!("{case}.input_ids")], &t[&format!("{case}.attention_mask")], Some(&mut trace))
            .unwrap();
        for (i, layer) in trace.iter().enumerate() {
            assert_close(&format!("{case} block {i}"), layer, &t[&format!("{case}.block.{i}")]);
        }
        assert_close(&format!("{case} last_hidden_state"), &out, &t[&format!("{case}.last_hidden_state")]);
    }
}

#[test]
fn original_bf16_pth_matches_the_bf16_rounded_reference() {
    let t = load("umt5.safetensors");
    let path = fixture("models/umt5_original/models_t5_umt5-xxl-enc-bf16.pth");
    let encoder = UmT5Encoder::load(&path, &Device::Cpu, DType::F32).unwrap();
    for case in ["c0", "c1", "c2"] {
        let out = encoder.forward(&t[&format!("{case}.input_ids")], &t[&format!("{case}.attention_mask")]).unwrap();
        assert_close(&format!("{case} from .pth"), &out, &t[&format!("{case}.last_hidden_state_bf16w")]);
    }
    // Held in bf16 as shipped: activations stay f32, so the result is the same.
    let bf16 = UmT5Encoder::load(&path, &Device::Cpu, DType::BF16).unwrap();
    let out = bf16.forward(&t["c0.input_ids"], &t["c0.attention_mask"]).unwrap();
    assert_close("c0 bf16-held", &out, &t["c0.last_hidden_state_bf16w"]);
}

#[test]
fn encode_zeroes_padded_rows() {
    let t = load("umt5.safetensors");
    let encoder = UmT5Encoder::load(&fixture("models/umt5_hf"), &Device::Cpu, DType::F32).unwrap();
    let out = encoder.encode(&t["c0.input_ids"], &t["c0.attention_mask"]).unwrap();
    let padded = out.narrow(1, 11, 5).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(padded, 0.0);
    assert_close("c0 valid rows", &out.narrow(1, 0, 11).unwrap(), &t["c0.last_hidden_state"].narrow(1, 0, 11).unwrap());
}

#[test]
fn out_of_vocabulary_ids_and_bad_masks_are_errors() {
    let encoder = UmT5Encoder::load(&fixture("models/umt5_hf"), &Device::Cpu, DType::F32).unwrap();
    let ids = candle_core::Tensor::new(&[[5u32, 999]], &Device::Cpu).unwrap();
    let mask = candle_core::Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap();
    assert!(encoder.forward(&ids, &mask).unwrap_err().to_string().contains("vocabulary"));
    let short_mask = candle_core::Tensor::new(&[[1u32]], &Device::Cpu).unwrap();
    assert!(encoder.forward(&ids, &short_mask).is_err());
}
