//! Step caching (`--cache`) on diffusion-forcing windows of the tiny DF model: exact when its
//! threshold is 0, deterministic when on, counted, and blind to frames the scheduler ignores.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, rel_l2};
use skyreels_core::pipelines::{
    denoise_window, CacheSetting, CacheStats, DfSettings, NoiseSource, SeededNoise, StepCache, TextConditioning,
};
use skyreels_core::{SigmaGrid, WanTransformer3d};

fn model() -> WanTransformer3d {
    WanTransformer3d::load(&fixture("models/df_fps_original"), &Device::Cpu, DType::F32).unwrap()
}

fn settings(ar_step: usize, causal_block_size: usize, addnoise_condition: u32, cache: CacheSetting) -> DfSettings {
    DfSettings {
        steps: 10,
        shift: 5.0,
        sigma_grid: SigmaGrid::SkyReels,
        guidance_scale: 3.0,
        ar_step,
        causal_block_size,
        addnoise_condition,
        fps: 16,
        sampler: Default::default(),
        cache,
    }
}

/// One window of `frames` latent frames (the first `prefix` of them clean), from seed 7.
fn window(model: &WanTransformer3d, frames: usize, prefix: usize, settings: &DfSettings) -> (Tensor, CacheStats) {
    let mut noise = SeededNoise::new(7);
    let text_dim = model.config().text_dim;
    let text = TextConditioning {
        positive: noise.randn(&[1, 6, text_dim], &Device::Cpu).unwrap(),
        negative: noise.randn(&[1, 6, text_dim], &Device::Cpu).unwrap(),
    };
    let latents = noise.randn(&[1, 16, frames, 4, 4], &Device::Cpu).unwrap();
    let mut cache = StepCache::new(settings.cache);
    let out =
        denoise_window(model, &latents, prefix, None, &text, settings, &mut noise, &mut cache, &mut |_, _| Ok(()))
            .unwrap();
    (out, cache.stats())
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

#[test]
fn threshold_zero_is_bit_identical_to_no_cache_sync_and_async() {
    let model = model();
    for (ar_step, block) in [(0, 1), (2, 2)] {
        let (reference, off) = window(&model, 6, 2, &settings(ar_step, block, 0, CacheSetting::Off));
        assert_eq!(off.skipped, 0);
        assert_eq!(off.block_passes, off.model_calls * 2, "two blocks per call");
        for cache in [CacheSetting::Frames(0.0), CacheSetting::TeaCache(0.0)] {
            let (out, stats) = window(&model, 6, 2, &settings(ar_step, block, 0, cache));
            assert_eq!(bits(&out), bits(&reference), "{cache} with ar_step {ar_step}");
            assert_eq!((stats.skipped, stats.model_calls), (0, off.model_calls), "{cache}");
        }
    }
}

#[test]
fn caches_skip_reproducibly_and_stay_near_the_uncached_window() {
    let model = model();
    let async_df = |cache| settings(2, 2, 0, cache);
    let (reference, off) = window(&model, 8, 0, &async_df(CacheSetting::Off));
    for cache in [CacheSetting::Frames(0.5), CacheSetting::TeaCache(1.0)] {
        let (out, stats) = window(&model, 8, 0, &async_df(cache));
        assert!(stats.skipped > 0 && stats.skipped < stats.block_passes, "{cache}: {stats:?}");
        assert_eq!(stats.block_passes, off.block_passes, "{cache}: the same calls are made");
        let (again, _) = window(&model, 8, 0, &async_df(cache));
        assert_eq!(bits(&again), bits(&out), "{cache} is deterministic");
        let error = rel_l2(&out, &reference);
        assert!(error > 0.0 && error < 0.5, "{cache}: relative L2 {error} from the uncached window");
    }
}

#[test]
fn the_frame_cache_ignores_a_prefix_whose_added_noise_changes_every_row() {
    // A strongly softened prefix gets fresh noise on every row; the scheduler never uses its
    // prediction, so the frame cache must still skip on the frames it does use.
    let model = model();
    let softened = |cache| settings(0, 1, 900, cache);
    let (_, stats) = window(&model, 6, 2, &softened(CacheSetting::Frames(0.5)));
    assert!(stats.skipped > 0, "{stats:?}");
}

#[test]
fn a_window_starts_from_an_empty_cache() {
    // Two windows through one cache make the same decisions as two fresh caches: what resume,
    // which restarts at a window boundary, relies on.
    let model = model();
    let s = settings(2, 2, 0, CacheSetting::Frames(0.5));
    let (first, one) = window(&model, 8, 0, &s);
    let mut noise = SeededNoise::new(7);
    let text_dim = model.config().text_dim;
    let text = TextConditioning {
        positive: noise.randn(&[1, 6, text_dim], &Device::Cpu).unwrap(),
        negative: noise.randn(&[1, 6, text_dim], &Device::Cpu).unwrap(),
    };
    let latents = noise.randn(&[1, 16, 8, 4, 4], &Device::Cpu).unwrap();
    let mut shared = StepCache::new(s.cache);
    let mut shifted = latents.affine(0.5, 0.0).unwrap();
    denoise_window(&model, &shifted, 0, None, &text, &s, &mut SeededNoise::new(1), &mut shared, &mut |_, _| Ok(()))
        .unwrap();
    shifted =
        denoise_window(&model, &latents, 0, None, &text, &s, &mut noise, &mut shared, &mut |_, _| Ok(())).unwrap();
    assert_eq!(bits(&shifted), bits(&first));
    assert!(shared.stats().skipped >= one.skipped && one.skipped > 0);
}
