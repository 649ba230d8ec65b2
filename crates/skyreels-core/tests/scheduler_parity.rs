//! Flow schedulers against the original SkyReels `FlowUniPCMultistepScheduler` and diffusers'
//! `UniPCMultistepScheduler` / `FlowMatchEulerDiscreteScheduler`.

mod common;

use candle_core::Tensor;
use common::{assert_close, load};
use skyreels_core::{FlowEuler, FlowSchedule, FlowScheduler, FlowUniPc, SigmaGrid};

const GRIDS: [(&str, SigmaGrid); 2] = [("skyreels", SigmaGrid::SkyReels), ("diffusers", SigmaGrid::Diffusers)];

#[test]
fn timesteps_equal_and_sigmas_match_on_both_grids() {
    let t = load("schedulers.safetensors");
    for (name, grid) in GRIDS {
        for steps in [1usize, 2, 3, 4, 7, 30, 50] {
            for shift in [1.0f64, 3.0, 5.0, 8.0] {
                let key = format!("{name}.n{steps}.shift{shift}");
                let ours = FlowSchedule::new(grid, steps, shift).unwrap();
                let timesteps = t[&format!("{key}.timesteps")].to_vec1::<i64>().unwrap();
                assert_eq!(ours.timesteps(), timesteps.as_slice(), "{key} timesteps");
                let sigmas = t[&format!("{key}.sigmas")].to_vec1::<f32>().unwrap();
                assert_eq!(ours.sigmas(), sigmas.as_slice(), "{key} sigmas");
            }
        }
    }
}

/// Replays a recorded trajectory: feeds the recorded model outputs, compares every sample.
fn replay(t: &std::collections::HashMap<String, Tensor>, key: &str, mut scheduler: impl FlowScheduler) {
    let mut x = t[&format!("{key}.x0")].clone();
    for i in 0..scheduler.schedule().len() {
        assert_eq!(scheduler.step_index(), i);
        x = scheduler.step(&t[&format!("{key}.model_output.{i}")], &x).unwrap();
        assert_close(&format!("{key} step {i}"), &x, &t[&format!("{key}.x.{}", i + 1)]);
    }
    assert!(scheduler.current_timestep().is_none());
}

#[test]
fn unipc_trajectories_match_both_references() {
    let t = load("schedulers.safetensors");
    for (name, grid) in GRIDS {
        for (steps, shift) in [(1usize, 8.0f64), (2, 5.0), (3, 8.0), (6, 3.0), (10, 8.0)] {
            let schedule = FlowSchedule::new(grid, steps, shift).unwrap();
            replay(&t, &format!("{name}.traj.n{steps}.shift{shift}"), FlowUniPc::new(schedule));
        }
    }
}

#[test]
fn euler_trajectories_match_diffusers() {
    let t = load("schedulers.safetensors");
    for (steps, shift) in [(3usize, 8.0f64), (10, 5.0)] {
        let key = format!("euler.traj.n{steps}.shift{shift}");
        let schedule = FlowSchedule::new(SigmaGrid::SkyReels, steps, shift).unwrap();
        assert_eq!(schedule.sigmas(), t[&format!("{key}.sigmas")].to_vec1::<f32>().unwrap().as_slice());
        replay(&t, &key, FlowEuler::new(schedule));
    }
}

/// Independent per-frame schedulers stepped at different times give the same result as one
/// scheduler run alone: state is not shared between instances.
#[test]
fn per_frame_schedulers_are_independent() {
    let t = load("schedulers.safetensors");
    let key = "skyreels.traj.n6.shift3";
    let schedule = FlowSchedule::new(SigmaGrid::SkyReels, 6, 3.0).unwrap();
    let mut a = FlowUniPc::new(schedule.clone());
    let mut b = FlowUniPc::new(schedule);
    let (mut xa, mut xb) = (t[&format!("{key}.x0")].clone(), t[&format!("{key}.x0")].clone());
    for i in 0..6 {
        xa = a.step(&t[&format!("{key}.model_output.{i}")], &xa).unwrap();
        if i >= 2 {
            xb = b.step(&t[&format!("{key}.model_output.{}", i - 2)], &xb).unwrap();
        }
    }
    for i in 4..6 {
        xb = b.step(&t[&format!("{key}.model_output.{i}")], &xb).unwrap();
    }
    assert_close("independent a", &xa, &t[&format!("{key}.x.6")]);
    assert_close("independent b", &xb, &t[&format!("{key}.x.6")]);
}
