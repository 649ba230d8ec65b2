//! Shared helpers for the reference-parity tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// Tolerance of every f32 parity check: relative L2 error.
pub const REL_L2_TOL: f64 = 1e-5;

/// `crates/skyreels-core/tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// All tensors of a fixture file.
pub fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The inputs a `transformer_*.safetensors` fixture recorded.
pub fn transformer_input(t: &HashMap<String, Tensor>) -> skyreels_core::TransformerInput<'_> {
    skyreels_core::TransformerInput {
        latents: &t["hidden_states"],
        timesteps: &t["timestep"],
        context: &t["encoder_hidden_states"],
        image_context: t.get("encoder_hidden_states_image"),
        fps_index: t.get("fps"),
        frame_positions: None,
    }
}

/// `‖a − b‖ / ‖b‖` in f64 (absolute error when the reference is all zeros).
pub fn rel_l2(actual: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(
        actual.elem_count(),
        reference.elem_count(),
        "element counts differ: {:?} vs {:?}",
        actual.dims(),
        reference.dims()
    );
    let a = actual.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let b = reference.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if norm == 0.0 {
        diff
    } else {
        diff / norm
    }
}

/// Asserts `rel_l2(actual, reference) <= REL_L2_TOL`, naming what was compared.
pub fn assert_close(what: &str, actual: &Tensor, reference: &Tensor) {
    let err = rel_l2(actual, reference);
    if std::env::var_os("SKYREELS_SHOW_ERRORS").is_some() {
        eprintln!("{what}: {err:.2e}");
    }
    assert!(err <= REL_L2_TOL, "{what}: relative L2 error {err:.3e} > {REL_L2_TOL:.0e}");
}

/// A fixture file's tensors and the JSON of its `json` metadata entry.
pub fn load_with_settings(name: &str) -> (HashMap<String, Tensor>, serde_json::Value) {
    let path = fixture(name);
    let bytes = std::fs::read(&path).unwrap();
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = metadata.metadata().as_ref().and_then(|m| m.get("json")).expect("a `json` metadata entry");
    (load(name), serde_json::from_str(json).unwrap())
}

/// The prompt states `<case>.positive` / `<case>.negative` of a pipeline fixture, which stores
/// only their first rows, padded with the zero rows umT5 gives padding to `length` tokens.
pub fn padded_prompt_states(
    tensors: &HashMap<String, Tensor>,
    case: &str,
    length: usize,
) -> skyreels_core::pipelines::TextConditioning {
    let pad = |t: &Tensor| {
        let (_, rows, width) = t.dims3().unwrap();
        let zeros = Tensor::zeros((1, length - rows, width), DType::F32, &Device::Cpu).unwrap();
        Tensor::cat(&[t, &zeros], 1).unwrap()
    };
    skyreels_core::pipelines::TextConditioning {
        positive: pad(&tensors[&format!("{case}.positive")]),
        negative: pad(&tensors[&format!("{case}.negative")]),
    }
}

/// The one-window sampler a pipeline fixture recorded (`steps`, `shift`, `guidance` of its
/// settings), with UniPC on `grid`; `fps` only matters to models with the fps embedding.
pub fn recorded_sampler(
    settings: &serde_json::Value,
    grid: skyreels_core::schedulers::SigmaGrid,
    fps: u32,
) -> skyreels_core::pipelines::VideoSampler {
    skyreels_core::pipelines::VideoSampler {
        steps: settings["steps"].as_u64().unwrap() as usize,
        shift: settings["shift"].as_f64().unwrap(),
        sigma_grid: grid,
        guidance_scale: settings["guidance"].as_f64().unwrap(),
        fps,
        sampler: skyreels_core::Sampler::UniPc,
    }
}
