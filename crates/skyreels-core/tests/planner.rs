//! The diffusion-forcing planner: exact equality with diffusers' `generate_timestep_matrix`,
//! the schedule's invariants over a grid of settings, and clear errors for invalid settings.

mod common;

use common::load;
use skyreels_core::{generate_timestep_matrix, Error, FlowSchedule, PlanSettings, SigmaGrid, TimestepMatrix};

fn rows_i64(t: &candle_core::Tensor) -> Vec<Vec<i64>> {
    t.to_dtype(candle_core::DType::I64).unwrap().to_vec2::<i64>().unwrap()
}

#[test]
fn matrices_equal_reference_exactly() {
    let t = load("timestep_matrix.safetensors");
    let meta_json = safetensors_metadata(&common::fixture("timestep_matrix.safetensors"));
    let cases: serde_json::Value = serde_json::from_str(&meta_json).unwrap();
    let cases = cases.as_object().unwrap();
    assert!(cases.len() >= 12);
    for (name, c) in cases {
        let get = |k: &str| c[k].as_u64().unwrap() as usize;
        let template = t[&format!("{name}.step_template")].to_vec1::<i64>().unwrap();
        assert_eq!(template, FlowSchedule::new(SigmaGrid::SkyReels, get("steps"), 8.0).unwrap().timesteps());
        let settings = PlanSettings {
            num_frames: get("frames"),
            base_num_frames: Some(get("base")),
            ar_step: get("ar_step"),
            num_pre_ready: get("pre_ready"),
            causal_block_size: get("block"),
        };
        let m = generate_timestep_matrix(&template, &settings).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.timesteps, rows_i64(&t[&format!("{name}.step_matrix")]), "{name} step_matrix");
        let index: Vec<Vec<i64>> = m.step_index.iter().map(|r| r.iter().map(|&i| i as i64).collect()).collect();
        assert_eq!(index, rows_i64(&t[&format!("{name}.step_index")]), "{name} step_index");
        let mask: Vec<Vec<i64>> = m.update_mask.iter().map(|r| r.iter().map(|&u| u as i64).collect()).collect();
        assert_eq!(mask, rows_i64(&t[&format!("{name}.update_mask")]), "{name} update_mask");
        let intervals: Vec<Vec<i64>> = m.valid_interval.iter().map(|r| vec![r.start as i64, r.end as i64]).collect();
        assert_eq!(intervals, rows_i64(&t[&format!("{name}.valid_interval")]), "{name} valid_interval");
    }
}

/// Reads the `json` metadata entry of a safetensors header.
fn safetensors_metadata(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().as_ref().unwrap()["json"].clone()
}

/// The invariants of the paper's schedule, checked on every valid combination in a grid.
fn check_invariants(template: &[i64], s: &PlanSettings, m: &TimestepMatrix) {
    let steps = template.len();
    let blocks = s.num_frames / s.causal_block_size;
    let prefix_blocks = s.num_pre_ready / s.causal_block_size;
    let expected_rows = steps + (blocks - prefix_blocks - 1) * s.ar_step.min(steps);
    assert_eq!(m.rows(), expected_rows, "{s:?}: row count");
    if s.ar_step <= steps {
        assert_eq!(m.rows(), steps + (blocks - prefix_blocks - 1) * s.ar_step, "{s:?}: paper row count");
    }
    for frame in 0..s.num_frames {
        let updates: Vec<usize> = (0..m.rows()).filter(|&r| m.update_mask[r][frame]).collect();
        if frame < s.num_pre_ready {
            assert!(updates.is_empty(), "{s:?}: prefix frame {frame} updated");
            assert!(m.timesteps.iter().all(|row| row[frame] == 0), "{s:?}: prefix frame {frame} not clean");
        } else {
            assert_eq!(updates.len(), steps, "{s:?}: frame {frame} updated {} times", updates.len());
            // The k-th update of a frame uses the k-th timestep of the template, in order.
            let used: Vec<i64> = updates.iter().map(|&r| m.timesteps[r][frame]).collect();
            assert_eq!(used, template, "{s:?}: frame {frame} timesteps");
        }
    }
    for (r, row) in m.step_index.iter().enumerate() {
        for f in s.num_pre_ready + 1..s.num_frames {
            assert!(row[f] <= row[f - 1], "{s:?}: row {r} frame {f} is ahead of frame {}", f - 1);
        }
        for f in s.num_pre_ready + 1..s.num_frames {
            let (a, b) = (m.timesteps[r][f - 1], m.timesteps[r][f]);
            let a_level = if m.step_index[r][f - 1] == steps + 1 { -1 } else { a };
            assert!(b >= a_level, "{s:?}: row {r}: frame {f} less noisy ({b}) than frame {} ({a})", f - 1);
        }
        let interval = &m.valid_interval[r];
        assert!(interval.start < interval.end && interval.end <= s.num_frames);
        for f in 0..s.num_frames {
            if m.update_mask[r][f] {
                assert!(interval.contains(&f), "{s:?}: row {r} updates frame {f} outside window {interval:?}");
            }
        }
    }
}

#[test]
fn schedule_invariants_hold_over_a_grid_of_settings() {
    let mut checked = 0;
    for steps in [1usize, 2, 3, 4, 5, 6, 8] {
        let template = FlowSchedule::new(SigmaGrid::SkyReels, steps, 5.0).unwrap().timesteps().to_vec();
        for block in 1..=3usize {
            for blocks in 1..=6usize {
                for prefix_blocks in 0..blocks {
                    for ar_step in 0..=steps + 2 {
                        let base_options: Vec<Option<usize>> =
                            std::iter::once(None).chain((1..blocks).map(|b| Some(b * block))).collect();
                        for base in base_options {
                            let settings = PlanSettings {
                                num_frames: blocks * block,
                                base_num_frames: base,
                                ar_step,
                                num_pre_ready: prefix_blocks * block,
                                causal_block_size: block,
                            };
                            match generate_timestep_matrix(&template, &settings) {
                                Ok(m) => {
                                    check_invariants(&template, &settings, &m);
                                    checked += 1;
                                }
                                Err(Error::InvalidSchedule(_)) => {
                                    let base_blocks = base.unwrap() / block;
                                    let window_too_short = base_blocks < prefix_blocks;
                                    assert!(
                                        window_too_short || ar_step < steps.div_ceil(base_blocks),
                                        "{settings:?} wrongly rejected"
                                    );
                                }
                                Err(e) => panic!("{settings:?}: unexpected error {e}"),
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 1000, "only {checked} settings checked");
}

fn plan_error(settings: PlanSettings) -> String {
    let template = FlowSchedule::new(SigmaGrid::SkyReels, 30, 8.0).unwrap();
    match generate_timestep_matrix(template.timesteps(), &settings) {
        Err(Error::InvalidSchedule(msg)) => msg,
        other => panic!("{settings:?} should be rejected, got {other:?}"),
    }
}

#[test]
fn invalid_settings_are_explained() {
    let base =
        PlanSettings { num_frames: 25, base_num_frames: None, ar_step: 5, num_pre_ready: 0, causal_block_size: 5 };
    let msg = plan_error(PlanSettings { num_frames: 23, ..base });
    assert!(msg.contains("not a multiple of the causal block size 5") && msg.contains("25 latent frames"), "{msg}");
    let msg = plan_error(PlanSettings { num_frames: 30, base_num_frames: Some(25), ..base });
    assert!(msg.contains("ar_step >= 6"), "{msg}");
    let msg = plan_error(PlanSettings { num_pre_ready: 1, ..base });
    assert!(msg.contains("pad the prefix to 5"), "{msg}");
    let msg =
        plan_error(PlanSettings { num_frames: 30, base_num_frames: Some(10), ar_step: 15, num_pre_ready: 15, ..base });
    assert!(msg.contains("at least as long as the clean prefix"), "{msg}");
    let msg = plan_error(PlanSettings { num_pre_ready: 25, ..base });
    assert!(msg.contains("nothing to generate"), "{msg}");
    let msg = plan_error(PlanSettings { causal_block_size: 0, ..base });
    assert!(msg.contains("at least 1"), "{msg}");
    let msg = plan_error(PlanSettings { num_frames: 0, ..base });
    assert!(msg.contains("no latent frames"), "{msg}");
    assert!(generate_timestep_matrix(&[], &base).is_err());
}

/// The async example of spec §8.1 (25 latents, ar_step 5, block 5, 30 steps).
#[test]
fn async_example_rows_from_the_spec() {
    let template = FlowSchedule::new(SigmaGrid::SkyReels, 30, 8.0).unwrap();
    let s = PlanSettings { num_frames: 25, base_num_frames: None, ar_step: 5, num_pre_ready: 0, causal_block_size: 5 };
    let m = generate_timestep_matrix(template.timesteps(), &s).unwrap();
    assert_eq!(m.rows(), 50);
    let per_block = |r: usize| (0..5).map(|b| m.timesteps[r][b * 5]).collect::<Vec<_>>();
    assert_eq!(per_block(20), vec![799, 888, 941, 975, 999]);
    assert_eq!(per_block(34), vec![0, 216, 666, 822, 901]);
    assert_eq!(per_block(49), vec![0, 0, 0, 0, 216]);
}
