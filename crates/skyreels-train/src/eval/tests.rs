use super::judge::read_clip;
use super::*;
use crate::world::{render_frame, Background, CameraMotion, Shot, ShotType, Size, Subject};

fn render(clip: &ClipSpec) -> Vec<RgbFrame> {
    (0..clip.frames()).map(|i| render_frame(clip, i)).collect()
}

fn score(clips: &[ClipSpec], frames_of: impl Fn(&ClipSpec) -> Vec<RgbFrame>) -> Scores {
    let mut scores = Scores::default();
    for clip in clips {
        let reading = read_clip(&frames_of(clip), clip.shots[0].shot_type, None);
        scores.add(clip, &reading);
    }
    scores
}

#[test]
fn ground_truth_renders_score_near_perfect() {
    let clips = held_out_prompts(&WorldConfig::default(), 80);
    let s = score(&clips, render);
    for (name, tally, floor) in [
        ("colour", s.colour, 98.0),
        ("shape", s.shape, 95.0),
        ("size", s.size, 95.0),
        ("action", s.action, 90.0),
        ("direction", s.direction, 95.0),
        ("camera", s.camera, 95.0),
    ] {
        assert!(tally.total >= 10, "{name}: only {} judged", tally.total);
        assert!(tally.percent() >= floor, "{name}: {:.1}% < {floor}% on ground truth ({s:?})", tally.percent());
    }
    assert!(s.identity > 0.8 && s.flicker < 1.0, "{s:?}");
}

#[test]
fn the_trained_split_holds_single_subject_trained_combinations_and_ground_truth_scores_on_it() {
    let world = WorldConfig::default();
    let trained = prompt_set(&world, Split::Train, 40);
    let held_out = held_out_prompts(&world, 40);
    assert!(trained.iter().all(|c| c.subjects.len() == 1 && c.shots.len() == 1));
    assert!(trained.iter().all(|c| !world.hold_out.touches(c)), "a trained-split prompt has a held-out combination");
    assert!(held_out.iter().all(|c| world.hold_out.touches(c)));
    let s = score(&trained, render);
    assert!(s.colour.percent() >= 95.0 && s.shape.percent() >= 90.0, "{s:?}");
}

/// Two passes of a 3×3 box blur, about what a small VAE does to edges and corners.
fn blurred(clip: &ClipSpec) -> Vec<RgbFrame> {
    render(clip).into_iter().map(|f| box_blur(box_blur(f))).collect()
}

fn box_blur(f: RgbFrame) -> RgbFrame {
    let (w, h) = (f.width as i64, f.height as i64);
    let mut data = Vec::with_capacity(f.data.len());
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let (mut sum, mut n) = (0u32, 0u32);
                for (dx, dy) in (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (dx, dy))) {
                    let (sx, sy) = (x + dx, y + dy);
                    if (0..w).contains(&sx) && (0..h).contains(&sy) {
                        sum += u32::from(f.data[((sy * w + sx) * 3 + c) as usize]);
                        n += 1;
                    }
                }
                data.push((sum / n) as u8);
            }
        }
    }
    RgbFrame { data, ..f }
}

/// A blob of the pixels of a square of half-side `half` (turned 45° for a diamond) whose corners
/// are rounded with radius `rounding`, centred at (32.3, 31.6).
fn rounded_square(half: f32, rounding: f32, diamond: bool) -> super::judge::Blob {
    let (cx, cy) = (32.3f32, 31.6f32);
    let mut pixels = Vec::new();
    for y in 0..64u16 {
        for x in 0..64u16 {
            let (mut dx, mut dy) = (f32::from(x) + 0.5 - cx, f32::from(y) + 0.5 - cy);
            if diamond {
                (dx, dy) = ((dx + dy) / 2f32.sqrt(), (dy - dx) / 2f32.sqrt());
            }
            let core = half - rounding;
            let (ox, oy) = ((dx.abs() - core).max(0.0), (dy.abs() - core).max(0.0));
            if ox.hypot(oy) <= rounding {
                pixels.push((x, y));
            }
        }
    }
    super::judge::Blob { colour: Colour::Red, pixels, centroid: [cx, cy] }
}

#[test]
fn rounded_corners_do_not_make_a_circle() {
    use super::judge::classify_shape;
    for half in [5.0, 8.0, 14.0] {
        // Half the half-side rounded off: what a small VAE leaves of a square's corners.
        assert_eq!(classify_shape(&rounded_square(half, half / 2.0, false)), Shape::Square, "half-side {half}");
        assert_eq!(classify_shape(&rounded_square(half, half / 2.0, true)), Shape::Diamond, "half-side {half}");
        // Fully rounded, it is a circle.
        assert_eq!(classify_shape(&rounded_square(half, half, false)), Shape::Circle, "half-side {half}");
    }
}

#[test]
fn shapes_survive_blur() {
    let clips = held_out_prompts(&WorldConfig::default(), 80);
    let s = score(&clips, blurred);
    eprintln!("blurred ground truth: {s:?}");
    assert!(s.shape.percent() >= 90.0 && s.colour.percent() >= 95.0, "{s:?}");
}

/// Deterministic noise frames (a model that learned nothing draws something like this).
fn noise(clip: &ClipSpec) -> Vec<RgbFrame> {
    let mut rng = crate::world::Rng::new(clip.template as u64 + 7);
    (0..clip.frames())
        .map(|_| {
            let data = (0..clip.width * clip.height * 3).map(|_| (rng.next_u64() >> 56) as u8).collect();
            RgbFrame { width: clip.width, height: clip.height, data }
        })
        .collect()
}

#[test]
fn noise_and_blank_frames_score_near_chance() {
    let clips = held_out_prompts(&WorldConfig::default(), 20);
    let grey = |clip: &ClipSpec| {
        let frame = RgbFrame {
            width: clip.width,
            height: clip.height,
            data: vec![128; (clip.width * clip.height * 3) as usize],
        };
        vec![frame; clip.frames()]
    };
    for s in [score(&clips, noise), score(&clips, grey)] {
        // Chance: 1 in 7 subject colours, 1 in 5 shapes, 1 in 9 actions.
        assert!(s.colour.percent() <= 30.0 && s.shape.percent() <= 30.0 && s.direction.percent() <= 30.0, "{s:?}");
    }
}

fn single(action: crate::world::Action, camera: CameraMotion, pattern: Pattern) -> ClipSpec {
    ClipSpec {
        width: 64,
        height: 64,
        fps: 16,
        subjects: vec![Subject {
            shape: Shape::Square,
            colour: Colour::Red,
            size: Size::Medium,
            action,
            start: [0.5, 0.5],
        }],
        background: Background { pattern, primary: Colour::Blue, secondary: Colour::White, phase: [0.0, 0.0] },
        shots: vec![Shot { shot_type: ShotType::Wide, camera, frames: 33 }],
        template: 0,
    }
}

#[test]
fn camera_moves_read_in_the_camera_convention() {
    for camera in CameraMotion::ALL.iter().copied() {
        let clip = single(Action::Stay, camera, Pattern::Checkerboard);
        let reading = read_clip(&render(&clip), ShotType::Wide, Some(Colour::Red));
        assert_eq!(reading.camera, Some(camera), "{}", clip.prompt());
        assert_eq!(reading.action, Some(Action::Stay), "camera motion must be undone: {}", clip.prompt());
    }
    // A flat backdrop shows no camera motion at all.
    let flat = single(Action::Stay, CameraMotion::PanLeft, Pattern::Flat);
    assert_eq!(read_clip(&render(&flat), ShotType::Wide, None).camera, None);
}

#[test]
fn moves_keep_their_direction_under_any_camera_on_diagonal_backdrops() {
    // Stripes and gradients show only the motion across them: a tilt fits as well as a pan, so
    // the judge must not undo the wrong one and turn a move up into a move left.
    let moves = [Action::MoveLeft, Action::MoveRight, Action::MoveUp, Action::MoveDown];
    for pattern in [Pattern::Stripes, Pattern::Gradient] {
        for camera in CameraMotion::ALL.iter().copied() {
            for action in moves {
                let mut clip = single(action, camera, pattern);
                clip.subjects[0].size = Size::Small;
                // Where the world puts a mover: its path centred on the frame's.
                clip.subjects[0].start = crate::world::layout_start(action, 0, 1);
                let reading = read_clip(&render(&clip), ShotType::Wide, Some(Colour::Red));
                assert_eq!(reading.action, Some(action), "{}", clip.prompt());
            }
        }
    }
}

#[test]
fn stability_meter_flags_fading_and_vanishing() {
    let clip = single(Action::Stay, CameraMotion::Static, Pattern::Checkerboard);
    let frames = render(&clip);
    let run = |fade: bool| {
        let mut meter = StabilityMeter::new(16, None);
        for i in 0..160 {
            let mut frame = frames[i % frames.len()].clone();
            if fade && i >= 80 {
                let k = 1.0 - (i - 80) as f32 / 80.0;
                frame.data.iter_mut().for_each(|v| *v = (*v as f32 * k) as u8);
            }
            meter.push(frame);
        }
        meter.finish()
    };
    let steady = run(false);
    assert_eq!(steady.len(), 10);
    assert!(is_stable(&steady), "{steady:?}");
    let fading = run(true);
    assert!(!is_stable(&fading), "{fading:?}");
    assert!(fading[9].brightness < fading[0].brightness - 25.0);
    let mut meter = StabilityMeter::new(16, None);
    frames.iter().for_each(|f| meter.push(f.clone()));
    assert_eq!(meter.subject(), Some(Colour::Red));
}
