//! GGUF loading against gguf-py's own dequantisation (fixtures from
//! tools/reference/gen_gguf_fixtures.py): Q8_0 and Q4_K blocks, F16/BF16 tensors, a 5-D patch
//! embedding, and a whole transformer whose matrices stay quantised.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, load, rel_l2};
use skyreels_core::checkpoint::{Component, GgufFile, WeightStore, Weights};
use skyreels_core::{TransformerConfig, WanTransformer3d};

fn gguf(name: &str) -> GgufFile {
    GgufFile::open(&fixture(&format!("gguf/{name}"))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Bit-equal to gguf-py, for every quantised tensor of the transformer file and the Q4_K,
/// F16 and BF16 tensors.
#[test]
fn dequantisation_matches_gguf_py_exactly() {
    for (file, reference) in
        [("q4_k.gguf", "gguf/q4_k_dequant.safetensors"), ("df_fps_q8_0.gguf", "gguf/df_fps_q8_0_dequant.safetensors")]
    {
        let file = gguf(file);
        let expected = load(reference);
        assert!(expected.len() >= 3);
        for (name, want) in &expected {
            let ours = file.tensor(name, want.dims(), DType::F32, &Device::Cpu).unwrap();
            let diff = (ours - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{name}");
        }
    }
    let file = gguf("q4_k.gguf");
    assert!(file.quantized("q4k", &[3, 512], &Device::Cpu).is_some());
    assert!(file.quantized("f16", &[4, 6], &Device::Cpu).is_none());
}

/// The original-layout weights with the given tensors replaced: the exact model the GGUF file
/// describes, as plain f32 tensors.
struct Overlay {
    base: WeightStore,
    replaced: HashMap<String, Tensor>,
}

impl Weights for Overlay {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> skyreels_core::Result<Tensor> {
        match self.replaced.get(name) {
            Some(t) => Ok(t.to_dtype(dtype)?.to_device(device)?),
            None => self.base.tensor(name, shape, dtype, device),
        }
    }
}

/// A transformer loaded from the Q8_0 file (matrices kept quantised, dequantised per layer)
/// equals the same model built from gguf-py's dequantised weights, and stays within Q8_0's
/// rounding of the f32 reference.
#[test]
fn a_quantised_transformer_matches_its_dequantised_twin() {
    let dir = fixture("models/df_fps_original");
    let model = WanTransformer3d::load_gguf(&fixture("gguf/df_fps_q8_0.gguf"), &dir, &Device::Cpu, DType::F32).unwrap();
    let base = WeightStore::open(&dir, Component::Transformer).unwrap();
    let config = TransformerConfig::load(&dir, &base).unwrap();
    assert_eq!(model.config().num_layers, config.num_layers);
    let twin = Overlay { base, replaced: load("gguf/df_fps_q8_0_dequant.safetensors") };
    let twin = WanTransformer3d::from_weights(config, &twin, &Device::Cpu, DType::F32).unwrap();

    let t = load("transformer_df_f5_fps24.safetensors");
    let input = common::transformer_input(&t);
    let ours = model.forward(&input).unwrap();
    assert_close("GGUF model vs its dequantised twin", &ours, &twin.forward(&input).unwrap());
    let err = rel_l2(&ours, &t["output"]);
    if std::env::var_os("SKYREELS_SHOW_ERRORS").is_some() {
        eprintln!("Q8_0 against the f32 reference: {err:.2e}");
    }
    assert!(err > 1e-6 && err < 1e-2, "Q8_0 weights: relative error {err:.2e} against f32");
}

#[test]
fn broken_files_are_one_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("gguf/df_fps_q8_0.gguf")).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let err = GgufFile::open(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.gguf") && err.contains("past the end"), "{err}");
    let not_gguf = dir.path().join("model.gguf");
    std::fs::write(&not_gguf, b"PK\x03\x04 definitely a zip").unwrap();
    assert!(GgufFile::open(&not_gguf).unwrap_err().to_string().contains("bad magic"));
    let header_only = dir.path().join("short.gguf");
    std::fs::write(&header_only, &bytes[..10]).unwrap();
    assert!(GgufFile::open(&header_only).is_err());
    let file = gguf("df_fps_q8_0.gguf");
    let err = file.tensor("blocks.9.ffn.0.weight", &[64, 32], DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("blocks.9.ffn.0.weight") && err.contains("missing"), "{err}");
    let err = file.tensor("blocks.0.ffn.0.weight", &[32, 64], DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("shape"), "{err}");
}
