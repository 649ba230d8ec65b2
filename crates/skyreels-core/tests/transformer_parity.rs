//! `WanTransformer3d` against diffusers' `SkyReelsV2Transformer3DModel` on tiny random models.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixture, load, rel_l2};
use skyreels_core::WanTransformer3d;

/// Runs one fixture case through a model, comparing every recorded intermediate and the output.
fn check_case(model: &WanTransformer3d, case: &str, label: &str) {
    let t = load(&format!("transformer_{case}.safetensors"));
    let input = common::transformer_input(&t);
    let mut seen: HashMap<String, Tensor> = HashMap::new();
    let out = model
        .forward_traced(&input, &mut |name, tensor| {
            seen.insert(name.to_string(), tensor.clone());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{label} {case}: forward failed: {e}"));
    let mut compared = 0;
    for (key, reference) in t.iter().filter(|(k, _)| k.starts_with("inter.")) {
        let name = &key["inter.".len()..];
        let Some(ours) = seen.get(name) else { panic!("{label} {case}: no intermediate `{name}` traced") };
        let reference = if name == "patch_embedding" {
            // diffusers keeps the Conv3d layout [B, D, f, h, w]; tokens are [B, f·h·w, D].
            let (b, d, ..) = reference.dims5().unwrap();
            reference.reshape((b, d, ())).unwrap().transpose(1, 2).unwrap()
        } else {
            reference.clone()
        };
        assert_close(&format!("{label} {case} {name}"), ours, &reference);
        compared += 1;
    }
    assert!(compared >= 8, "{label} {case}: only {compared} intermediates compared");
    assert_eq!(out.dims(), t["output"].dims());
    assert_close(&format!("{label} {case} output"), &out, &t["output"]);
}

fn load_model(dir: &str, causal_block_size: usize) -> WanTransformer3d {
    let mut model = WanTransformer3d::load(&fixture(&format!("models/{dir}")), &Device::Cpu, DType::F32)
        .unwrap_or_else(|e| panic!("loading {dir}: {e}"));
    model.set_causal_block_size(causal_block_size).unwrap();
    model
}

/// Each DF-model case in both namings; the causal ones also switch on the block mask.
#[test]
fn df_model_with_fps_matches_reference_in_both_namings() {
    for dir in ["df_fps_diffusers", "df_fps_original"] {
        for (case, block) in
            [("df_f5_fps24", 1), ("df_f5_fps16", 1), ("df_f6_causal3", 3), ("df_f4_causal2_nonsquare", 2)]
        {
            check_case(&load_model(dir, block), case, dir);
        }
    }
}

#[test]
fn t2v_model_matches_reference_scalar_df_odd_and_batched() {
    for dir in ["t2v_diffusers", "t2v_original"] {
        let model = load_model(dir, 1);
        for case in ["t2v_scalar", "t2v_df_f3_odd", "t2v_df_batch2"] {
            check_case(&model, case, dir);
        }
    }
}

#[test]
fn i2v_model_matches_reference() {
    for dir in ["i2v_diffusers", "i2v_original"] {
        check_case(&load_model(dir, 1), "i2v_scalar", dir);
    }
}

/// The causal mask must change the result (otherwise the causal fixtures prove nothing).
#[test]
fn causal_mask_changes_the_output() {
    let t = load("transformer_df_f6_causal3.safetensors");
    let input = common::transformer_input(&t);
    let full = load_model("df_fps_diffusers", 1).forward(&input).unwrap();
    let causal = load_model("df_fps_diffusers", 3).forward(&input).unwrap();
    assert!(rel_l2(&full, &causal) > 1e-3);
    assert_close("causal", &causal, &t["output"]);
}

/// Weights held in bf16 (computed in f32) stay close to the f32 reference.
#[test]
fn bf16_weights_stay_close_to_f32_reference() {
    let t = load("transformer_df_f5_fps24.safetensors");
    let model = WanTransformer3d::load(&fixture("models/df_fps_original"), &Device::Cpu, DType::BF16).unwrap();
    let out = model
        .forward(&common::transformer_input(&t))
        .unwrap();
    assert_eq!(out.dtype(), DType::F32);
    let err = rel_l2(&out, &t["output"]);
    assert!(err < 2e-2, "bf16 weights: relative error {err}");
}

/// Head dim 4 (empty spatial rotary parts), no cross-attention norm, a 2×2×2 patch.
#[test]
fn unusual_diffusers_config_matches_reference() {
    check_case(&load_model("odd_diffusers", 1), "odd_patch2_df", "odd_diffusers");
}

/// First/last-frame image branch: two images' tokens merged and offset by a position table.
#[test]
fn flf2v_image_branch_matches_reference() {
    check_case(&load_model("flf2v_diffusers", 1), "flf2v_scalar", "flf2v_diffusers");
}

/// `--offload blocks` (blocks kept in host memory, each copied to the compute device as it
/// runs) and `--offload model` (the whole model moved out and back) change where weights live,
/// never the result: bit-equal outputs, also for GGUF blocks, whose copies are re-made from
/// their raw ggml bytes.
#[test]
fn offloaded_blocks_and_moved_models_compute_the_same_bits() {
    let t = load("transformer_df_f5_fps24.safetensors");
    let input = common::transformer_input(&t);
    let host = Device::Cpu;
    let same = |a: &Tensor, b: &Tensor| {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    };
    let reference = load_model("df_fps_original", 1).forward(&input).unwrap();
    let mut model = load_model("df_fps_original", 1);
    model.keep_blocks_on(Some(&host)).unwrap();
    same(&model.forward(&input).unwrap(), &reference);
    model.move_to(&host).unwrap();
    model.keep_blocks_on(None).unwrap();
    same(&model.forward(&input).unwrap(), &reference);

    let gguf = fixture("gguf/df_fps_q8_0.gguf");
    let dir = fixture("models/df_fps_original");
    let quantised = WanTransformer3d::load_gguf(&gguf, &dir, &host, DType::F32).unwrap().forward(&input).unwrap();
    let mut streamed = WanTransformer3d::load_gguf(&gguf, &dir, &host, DType::F32).unwrap();
    streamed.keep_blocks_on(Some(&host)).unwrap();
    same(&streamed.forward(&input).unwrap(), &quantised);
}
