//! LoRA adapters against diffusers + PEFT (fixtures from `tools/reference/gen_lora_fixtures.py`):
//! the tiny `models/t2v_diffusers` DiT with adapter `a` in the diffusers/PEFT, kohya and
//! ComfyUI/LightX2V layouts (the last with full-weight and bias deltas), at strengths 1 and 0.5,
//! and stacked with adapter `b`; then the refusals.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, load};
use skyreels_core::checkpoint::LoraAdapter;
use skyreels_core::nn::WeightFormat;
use skyreels_core::{TransformerInput, WanTransformer3d};

fn adapter(name: &str, strength: f64) -> LoraAdapter {
    LoraAdapter::load(&common::fixture(&format!("lora/{name}.safetensors")), strength).unwrap()
}

fn with_adapters(model: &str, adapters: &[LoraAdapter]) -> skyreels_core::Result<WanTransformer3d> {
    let dir = common::fixture(&format!("models/{model}"));
    WanTransformer3d::load_with_adapters(&dir, &Device::Cpu, DType::F32, WeightFormat::Native, adapters)
}

/// The one input the fixture records outputs for.
fn recorded_input(t: &HashMap<String, Tensor>) -> TransformerInput<'_> {
    TransformerInput {
        latents: &t["latents"],
        timesteps: &t["timestep"],
        context: &t["context"],
        image_context: None,
        fps_index: None,
        frame_positions: None,
    }
}

#[test]
fn adapters_in_every_layout_match_diffusers_and_peft() {
    let t = load("lora.safetensors");
    let run = |adapters: &[LoraAdapter]| {
        let model = with_adapters("t2v_diffusers", adapters).unwrap();
        let input = recorded_input(&t);
        model.forward(&input).unwrap()
    };
    assert_close("no adapter", &run(&[]), &t["base"]);
    for layout in ["a_diffusers", "a_kohya"] {
        assert_close(&format!("{layout} at 1"), &run(&[adapter(layout, 1.0)]), &t["a1"]);
        assert_close(&format!("{layout} at 0.5"), &run(&[adapter(layout, 0.5)]), &t["a05"]);
    }
    assert_close("comfy layout with diff and diff_b", &run(&[adapter("a_comfy", 1.0)]), &t["comfy"]);
    assert_close("a at 1 + b at 0.5", &run(&[adapter("a_diffusers", 1.0), adapter("b_diffusers", 0.5)]), &t["ab"]);
    // PEFT's per-module alpha_pattern (first matching key wins) and rank_pattern; use_rslora.
    assert_close("alpha_pattern and rank_pattern", &run(&[adapter("c_peft", 1.0)]), &t["c1"]);
    assert_close("use_rslora", &run(&[adapter("d_rslora", 1.0)]), &t["d1"]);
    // The original-layout copy of the same model takes the same adapters.
    let original = with_adapters("t2v_original", &[adapter("a_kohya", 0.5)]).unwrap();
    let input = recorded_input(&t);
    assert_close("a_kohya at 0.5 on the original layout", &original.forward(&input).unwrap(), &t["a05"]);
}

#[test]
fn a_lora_for_another_model_or_with_stray_keys_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    // Adapter `a` was made for a 60-wide model; df_pipeline's transformer is 32 wide.
    let err = with_adapters("df_pipeline/transformer", &[adapter("a_diffusers", 1.0)]).unwrap_err().to_string();
    assert!(err.contains("does not fit this model") && err.contains("blocks.0."), "{err}");
    // A key that names no module of the model.
    let stray = dir.path().join("stray.safetensors");
    let tensors =
        candle_core::safetensors::load(common::fixture("lora/b_diffusers.safetensors"), &Device::Cpu).unwrap();
    let mut renamed = std::collections::HashMap::new();
    for (k, v) in tensors {
        renamed.insert(k.replace("blocks.0.attn1.to_q", "blocks.0.attn9.to_q"), v);
    }
    candle_core::safetensors::save(&renamed, &stray).unwrap();
    let err = with_adapters("t2v_diffusers", &[LoraAdapter::load(&stray, 1.0).unwrap()]).unwrap_err().to_string();
    assert!(err.contains("does not have: blocks.0.attn9.to_q"), "{err}");
    // Keys that are not LoRA weights at all.
    let model_file = common::fixture("models/t2v_diffusers/diffusion_pytorch_model.safetensors");
    let err = LoraAdapter::load(&model_file, 1.0).unwrap_err().to_string();
    assert!(err.contains("is not a LoRA file") && err.contains("keys that are not LoRA weights"), "{err}");
    assert!(LoraAdapter::load(Path::new("missing.safetensors"), 1.0).is_err());
    assert!(LoraAdapter::load(&common::fixture("lora/a_kohya.safetensors"), f64::NAN).is_err());
}

/// Adapters kept beside the weights (switched per job without reloading) give what merging does.
#[test]
fn unmerged_adapters_switch_without_reloading_and_agree_with_merged_ones() {
    let t = load("lora.safetensors");
    let mut model = with_adapters("t2v_diffusers", &[]).unwrap();
    let input = recorded_input(&t);
    let cases: [(&str, Vec<LoraAdapter>); 5] = [
        ("a1", vec![adapter("a_diffusers", 1.0)]),
        ("a05", vec![adapter("a_kohya", 0.5)]),
        ("ab", vec![adapter("a_diffusers", 1.0), adapter("b_diffusers", 0.5)]),
        ("comfy", vec![adapter("a_comfy", 1.0)]),
        ("base", vec![]),
    ];
    for (expected, adapters) in cases {
        model.set_adapters(&adapters).unwrap();
        let unmerged = model.forward(&input).unwrap();
        assert_close(&format!("{expected}, unmerged"), &unmerged, &t[expected]);
        let merged = with_adapters("t2v_diffusers", &adapters).unwrap().forward(&input).unwrap();
        assert_close(&format!("{expected}, unmerged against merged"), &unmerged, &merged);
    }
    // Binding is checked the same way.
    let err = with_adapters("df_pipeline/transformer", &[])
        .unwrap()
        .set_adapters(&[adapter("a_diffusers", 1.0)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not fit this model"), "{err}");
}
