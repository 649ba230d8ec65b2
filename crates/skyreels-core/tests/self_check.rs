//! `skyreels_core::check`, the parity self-check a GPU machine runs: it passes on the shipped
//! fixtures in f32 and in bf16 (within the stated bounds), and a perturbed fixture fails it.

mod common;

use std::path::Path;

use candle_core::{DType, Device};
use skyreels_core::check::{run_all, tolerance, CheckSettings, Component, Measurement};
use skyreels_core::nn::WeightFormat;

fn settings(fixtures: &Path, dtype: DType, only: Option<Component>) -> CheckSettings {
    let weights = WeightFormat::Native;
    CheckSettings { fixtures: fixtures.to_path_buf(), device: Device::Cpu, dtype, weights, vae_dtype: DType::F32, only }
}

fn failures(results: &[Measurement]) -> Vec<String> {
    results.iter().filter(|m| !m.passed()).map(|m| format!("{} {}: {:.2e}", m.component, m.case, m.rel_l2)).collect()
}

#[test]
fn every_component_passes_in_f32_on_the_cpu() {
    let mut streamed = 0;
    let results = run_all(&settings(&common::fixture(""), DType::F32, None), &mut |_| streamed += 1).unwrap();
    assert_eq!(streamed, results.len());
    for component in [Component::Transformer, Component::TextEncoder, Component::Vae, Component::DfPipeline] {
        assert!(results.iter().filter(|m| m.component == component).count() >= 5, "{component}: too few cases");
    }
    assert!(failures(&results).is_empty(), "{:?}", failures(&results));
    let exact = results.iter().filter(|m| !m.case.starts_with("gguf"));
    assert!(exact.clone().count() == 31 && exact.into_iter().all(|m| m.tolerance <= 1e-4));
}

/// Runs one component's fixtures and checks that the reduced precision really took effect
/// (the worst error is above `floor`, far above f32's) and stays within half of its bound.
fn assert_within_half_the_bound(settings: CheckSettings, label: &str, floor: f64) {
    let only = settings.only.expect("one component");
    let results = run_all(&settings, &mut |_| {}).unwrap();
    let worst = results.iter().map(|m| m.rel_l2).fold(0.0, f64::max);
    let bound = tolerance(only, &settings);
    if std::env::var_os("SKYREELS_SHOW_ERRORS").is_some() {
        eprintln!("{only}: worst {label} error {worst:.2e} (bound {bound:.0e})");
    }
    assert!(worst > floor, "{only}: {label} error {worst:.2e} is f32-sized: {label} was not used");
    assert!(worst * 2.0 <= bound, "{only}: worst {label} error {worst:.2e} leaves no margin to {bound:.0e}");
}

/// bf16 compute stays within the bf16 bounds, which leave a margin of at least two over what
/// the CPU's bf16 path measures.
#[test]
fn bf16_stays_within_its_bounds_with_margin() {
    let fixtures = common::fixture("");
    for only in [Component::Transformer, Component::TextEncoder, Component::DfPipeline] {
        assert_within_half_the_bound(settings(&fixtures, DType::BF16, Some(only)), "bf16", 1e-4);
    }
    let vae = CheckSettings { vae_dtype: DType::BF16, ..settings(&fixtures, DType::F32, Some(Component::Vae)) };
    assert_within_half_the_bound(vae, "bf16", 1e-4);
}

/// FP8 block weights (f32 compute) stay within their documented bounds with a margin of two.
#[test]
fn fp8_weights_stay_within_their_bounds_with_margin() {
    let fixtures = common::fixture("");
    for only in [Component::Transformer, Component::DfPipeline] {
        let settings = CheckSettings { weights: WeightFormat::Fp8, ..settings(&fixtures, DType::F32, Some(only)) };
        assert_within_half_the_bound(settings, "fp8", 1e-3);
    }
}

/// A fixture folder whose entries link to the shipped ones, except one transformer output that
/// is scaled by 1.001: the check must single out exactly that case.
#[test]
fn a_perturbed_fixture_fails_the_check() {
    let shipped = common::fixture("");
    let dir = tempfile::tempdir().unwrap();
    let perturbed = "transformer_t2v_scalar.safetensors";
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != perturbed {
            std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let mut tensors = candle_core::safetensors::load(shipped.join(perturbed), &Device::Cpu).unwrap();
    let output = (tensors["output"].clone() * 1.001).unwrap();
    tensors.insert("output".into(), output);
    candle_core::safetensors::save(&tensors, dir.path().join(perturbed)).unwrap();

    let results = run_all(&settings(dir.path(), DType::F32, Some(Component::Transformer)), &mut |_| {}).unwrap();
    let failed = failures(&results);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().all(|f| f.contains("t2v_scalar")), "{failed:?}");
}

#[test]
fn a_folder_without_fixtures_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = run_all(&settings(dir.path(), DType::F32, None), &mut |_| {}).unwrap_err().to_string();
    assert!(err.contains("fixture folder"), "{err}");
}
