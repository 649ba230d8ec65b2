//! Loading a transformer from broken directories gives errors that name the tensor and file.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use common::fixture;
use skyreels_core::{Error, WanTransformer3d};

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json[key] = value;
    std::fs::write(path, json.to_string()).unwrap();
}

#[test]
fn missing_layer_is_named_in_the_checkpoint_naming() {
    for (dir, expected) in [("t2v_original", "blocks.3.norm3.weight"), ("t2v_diffusers", "blocks.3.norm2.weight")] {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&fixture(&format!("models/{dir}")), tmp.path());
        edit_config(tmp.path(), "num_layers", 4.into());
        match WanTransformer3d::load(tmp.path(), &Device::Cpu, DType::F32) {
            Err(Error::MissingTensor { name, .. }) => assert_eq!(name, expected),
            other => panic!("{dir}: expected a missing tensor, got {other:?}"),
        }
    }
}

#[test]
fn wrong_shape_names_tensor_expected_found_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("models/df_fps_original"), tmp.path());
    edit_config(tmp.path(), "ffn_dim", 65.into());
    let err = WanTransformer3d::load(tmp.path(), &Device::Cpu, DType::F32).unwrap_err();
    let Error::ShapeMismatch { name, file, expected, found } = &err else { panic!("got {err:?}") };
    assert_eq!(name, "blocks.0.ffn.0.weight");
    assert_eq!((expected.as_slice(), found.as_slice()), (&[65, 32][..], &[64, 32][..]));
    assert!(file.ends_with("model-00001-of-00002.safetensors"), "{file:?}");
    let text = err.to_string();
    assert!(text.contains("[65, 32]") && text.contains("[64, 32]") && text.contains("model-00001-of-00002"), "{text}");
}

#[test]
fn bad_inputs_to_forward_are_errors_not_panics() {
    use candle_core::Tensor;
    use skyreels_core::TransformerInput;
    let model = WanTransformer3d::load(&fixture("models/df_fps_diffusers"), &Device::Cpu, DType::F32).unwrap();
    let dev = Device::Cpu;
    let latents = Tensor::zeros((1, 16, 3, 4, 4), DType::F32, &dev).unwrap();
    let odd = Tensor::zeros((1, 16, 3, 5, 4), DType::F32, &dev).unwrap();
    let wrong_channels = Tensor::zeros((1, 8, 3, 4, 4), DType::F32, &dev).unwrap();
    let t_frames = Tensor::new(&[[999i64, 500, 0]], &dev).unwrap();
    let t_bad = Tensor::new(&[[999i64, 500]], &dev).unwrap();
    let ctx = Tensor::zeros((1, 7, 32), DType::F32, &dev).unwrap();
    let ctx_bad = Tensor::zeros((1, 7, 31), DType::F32, &dev).unwrap();
    let fps = Tensor::new(&[1u32], &dev).unwrap();
    let fps_bad = Tensor::new(&[7u32], &dev).unwrap();
    let input = TransformerInput {
        latents: &latents,
        timesteps: &t_frames,
        context: &ctx,
        image_context: None,
        fps_index: Some(&fps),
        frame_positions: None,
    };
    assert!(model.forward(&input).is_ok());
    let cases = [
        (TransformerInput { latents: &odd, ..input }, "multiple of the patch size"),
        (TransformerInput { latents: &wrong_channels, ..input }, "16 latent channels"),
        (TransformerInput { timesteps: &t_bad, ..input }, "one per latent frame"),
        (TransformerInput { context: &ctx_bad, ..input }, "text context"),
        (TransformerInput { fps_index: None, ..input }, "fps embedding"),
        (TransformerInput { fps_index: Some(&fps_bad), ..input }, "fps index"),
    ];
    for (bad, needle) in cases {
        let err = model.forward(&bad).unwrap_err().to_string();
        assert!(err.contains(needle), "`{needle}` not in `{err}`");
    }
    let mut causal = WanTransformer3d::load(&fixture("models/df_fps_diffusers"), &Device::Cpu, DType::F32).unwrap();
    causal.set_causal_block_size(2).unwrap();
    assert!(causal.forward(&input).unwrap_err().to_string().contains("causal block size 2"));
    assert!(causal.set_causal_block_size(0).is_err());
}
