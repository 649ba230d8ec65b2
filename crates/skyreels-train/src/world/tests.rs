use super::*;

fn clip(action: Action, camera: CameraMotion, pattern: Pattern) -> ClipSpec {
    ClipSpec {
        width: 64,
        height: 64,
        fps: 16,
        subjects: vec![Subject {
            shape: Shape::Circle,
            colour: Colour::Red,
            size: Size::Medium,
            action,
            start: [0.5, 0.5],
        }],
        background: Background { pattern, primary: Colour::Blue, secondary: Colour::White, phase: [0.0, 0.0] },
        shots: vec![Shot { shot_type: ShotType::Wide, camera, frames: 17 }],
        template: 1,
    }
}

/// Centroid (x, y) and pixel count of the pixels close to `rgb`.
fn blob(frame: &skyreels_core::media::RgbFrame, rgb: [u8; 3]) -> ([f32; 2], usize) {
    let (mut sx, mut sy, mut n) = (0f32, 0f32, 0usize);
    for (i, px) in frame.data.chunks(3).enumerate() {
        if px.iter().zip(rgb).all(|(a, b)| a.abs_diff(b) < 12) {
            sx += (i % frame.width as usize) as f32;
            sy += (i / frame.width as usize) as f32;
            n += 1;
        }
    }
    ([sx / n.max(1) as f32, sy / n.max(1) as f32], n)
}

#[test]
fn the_readme_example_is_a_world_prompt() {
    let c = clip(Action::MoveRight, CameraMotion::PanLeft, Pattern::Flat);
    assert_eq!(c.prompt(), "a red circle moves right on a blue background, the camera pans left");
    let caption = c.caption();
    assert_eq!(caption.subjects[0].position, "center");
    let json = serde_json::to_string(&caption).unwrap();
    assert!(json.contains(r#""type":"circle""#), "{json}");
    assert_eq!(serde_json::from_str::<Caption>(&json).unwrap(), caption);
}

#[test]
fn sampling_and_rendering_are_deterministic() {
    let config = WorldConfig::default();
    let a = sample_clip(7, &config, Split::Train);
    assert_eq!(a, sample_clip(7, &config, Split::Train));
    assert_ne!(a, sample_clip(8, &config, Split::Train));
    assert_eq!(render_frame(&a, 5), render_frame(&a, 5));
    assert_eq!(a.frames(), config.frames);
    let frame = render_frame(&a, 0);
    assert_eq!((frame.width, frame.height, frame.data.len()), (64, 64, 64 * 64 * 3));
}

#[test]
fn held_out_combinations_never_reach_training() {
    let config = WorldConfig::default();
    let mut held_out_seen = 0;
    for seed in 0..400 {
        let train = sample_clip(seed, &config, Split::Train);
        assert!(!config.hold_out.touches(&train), "seed {seed}: {train:?}");
        assert!((1..=3).contains(&train.subjects.len()));
        let test = sample_clip(seed, &config, Split::HeldOut);
        assert!(config.hold_out.touches(&test));
        held_out_seen +=
            usize::from(config.hold_out.colour_shape.contains(&(test.subjects[0].colour, test.subjects[0].shape)));
    }
    assert!(held_out_seen > 100, "held-out clips should often lead with a held-out colour/shape");
}

#[test]
fn actions_and_camera_moves_show_in_the_pixels() {
    let red = Colour::Red.rgb();
    let centroid = |c: &ClipSpec, i| blob(&render_frame(c, i), red);
    // The subject moves right with a static camera.
    let c = clip(Action::MoveRight, CameraMotion::Static, Pattern::Flat);
    assert!(centroid(&c, 16).0[0] - centroid(&c, 0).0[0] > 15.0);
    // A still subject slides right in the frame when the camera pans left.
    let c = clip(Action::Stay, CameraMotion::PanLeft, Pattern::Checkerboard);
    assert!(centroid(&c, 16).0[0] - centroid(&c, 0).0[0] > 10.0);
    // …and down when it tilts up; it grows when the camera zooms in.
    let c = clip(Action::Stay, CameraMotion::TiltUp, Pattern::Stripes);
    assert!(centroid(&c, 16).0[1] - centroid(&c, 0).0[1] > 10.0);
    let c = clip(Action::Stay, CameraMotion::ZoomIn, Pattern::Gradient);
    assert!(centroid(&c, 16).1 as f32 > 2.0 * centroid(&c, 0).1 as f32);
    // The background itself moves with the camera: frames of a panning checkerboard differ.
    let c = clip(Action::Stay, CameraMotion::PanRight, Pattern::Checkerboard);
    assert_ne!(render_frame(&c, 0).data, render_frame(&c, 8).data);
}

#[test]
fn every_shape_is_a_distinct_blob_of_about_its_size() {
    let mut areas = Vec::new();
    for &shape in Shape::ALL {
        let mut c = clip(Action::Stay, CameraMotion::Static, Pattern::Flat);
        c.subjects[0].shape = shape;
        let (_, area) = blob(&render_frame(&c, 0), Colour::Red.rgb());
        areas.push(area);
    }
    // Every shape lies between a star (about a quarter of the circle's area) and a square
    // (4/π of it), relative to the circle of the medium radius on 64 px.
    let r = Size::Medium.radius() * 64.0;
    let circle = std::f32::consts::PI * r * r;
    let range = (0.25 * circle) as usize..(1.7 * circle) as usize;
    assert!(areas.iter().all(|a| range.contains(a)), "{areas:?} outside {range:?}");
    let distinct: std::collections::BTreeSet<usize> = areas.iter().copied().collect();
    assert_eq!(distinct.len(), areas.len(), "{areas:?}");
}

#[test]
fn the_caption_fixes_the_layout() {
    // Every subject's path is centred in its own band, whatever the seed: the prompt names the video.
    let config = WorldConfig::default();
    for seed in 0..300 {
        let clip = sample_clip(seed, &config, Split::Train);
        let n = clip.subjects.len();
        for (i, s) in clip.subjects.iter().enumerate() {
            let [dx, dy] = raster::travel(s.action);
            let middle = [s.start[0] + dx / 2.0, s.start[1] + dy / 2.0];
            let band = (i as f32 + 0.5) / n as f32;
            assert!((middle[0] - 0.5).abs() < 1e-6 && (middle[1] - band).abs() < 1e-6, "seed {seed}: {s:?}");
        }
    }
    // A mover crosses the frame's centre half-way, so it stays in view for the whole clip.
    let mut c = clip(Action::MoveRight, CameraMotion::Static, Pattern::Flat);
    c.subjects[0].start = layout_start(Action::MoveRight, 0, 1);
    let (first, last) = (blob(&render_frame(&c, 0), [220, 40, 40]), blob(&render_frame(&c, 16), [220, 40, 40]));
    assert!(first.1 > 50 && last.1 > 50, "{first:?} {last:?}");
    assert!((first.0[0] + last.0[0] - 63.0).abs() < 2.0 && last.0[0] - first.0[0] > 15.0, "{first:?} {last:?}");
}

#[test]
fn textures_have_a_random_phase() {
    // The phase is drawn per clip, within one repeat of the pattern…
    let config = WorldConfig::default();
    let phases: Vec<[f32; 2]> = (0..50).map(|seed| sample_clip(seed, &config, Split::Train).background.phase).collect();
    assert!(phases.iter().flatten().all(|p| (0.0..raster::TEXTURE_REPEAT).contains(p)), "{phases:?}");
    let distinct: std::collections::BTreeSet<u32> = phases.iter().map(|p| p[0].to_bits()).collect();
    assert!(distinct.len() > 40, "{phases:?}");
    // …and it moves the texture: half a cell along x shifts the checkerboard by 8 px at 64×64.
    let c = clip(Action::Stay, CameraMotion::Static, Pattern::Checkerboard);
    let mut shifted = c.clone();
    shifted.background.phase = [0.125, 0.0];
    let (a, b) = (render_frame(&c, 0), render_frame(&shifted, 0));
    assert_ne!(a.data, b.data);
    let row = |f: &skyreels_core::media::RgbFrame, x: usize| f.data[3 * x..3 * x + 3].to_vec();
    assert_eq!(row(&a, 20), row(&b, 12), "the pattern at x = 20 is shifted to x = 12");
    // A flat backdrop does not change with the phase.
    let (mut flat, mut flat_shifted) = (c.clone(), shifted.clone());
    flat.background.pattern = Pattern::Flat;
    flat_shifted.background.pattern = Pattern::Flat;
    assert_eq!(render_frame(&flat, 0).data, render_frame(&flat_shifted, 0).data);
}

#[test]
fn prompts_parse_back_into_their_clips() {
    // Every sampled clip's prompt names it: parsing gives the same subjects, backdrop and shots
    // (up to the texture phase, and the framing where the prompt leaves it unnamed).
    let config = WorldConfig::default();
    for seed in 0..400 {
        for split in [Split::Train, Split::HeldOut] {
            let clip = sample_clip(seed, &config, split);
            let parsed =
                ClipSpec::from_prompt(&clip.prompt(), &config).unwrap_or_else(|e| panic!("{e}: {}", clip.prompt()));
            assert_eq!(parsed.prompt(), clip.prompt());
            assert_eq!(parsed.subjects, clip.subjects, "{}", clip.prompt());
            let (a, b) = (&parsed.background, &clip.background);
            assert_eq!((a.pattern, a.primary), (b.pattern, b.primary));
            if b.pattern != Pattern::Flat {
                assert_eq!(a.secondary, b.secondary);
            }
            assert_eq!(parsed.shots.len(), clip.shots.len());
            for (i, (p, c)) in parsed.shots.iter().zip(&clip.shots).enumerate() {
                assert_eq!((p.camera, p.frames), (c.camera, c.frames), "{}", clip.prompt());
                let framing_named = i > 0 || clip.template != 1;
                if framing_named {
                    assert_eq!(p.shot_type, c.shot_type, "{}", clip.prompt());
                }
            }
        }
    }
    // The README's prompt: one medium red circle moving right through the centre, a wide shot.
    let readme = "a red circle moves right on a blue background, the camera pans left";
    let c = ClipSpec::from_prompt(readme, &WorldConfig { frames: 81, ..config.clone() }).unwrap();
    assert_eq!(c.prompt(), readme);
    assert_eq!((c.frames(), c.shots[0].shot_type, c.subjects[0].size), (81, ShotType::Wide, Size::Medium));
    // What is not of the grammar is refused, naming the part.
    for (bad, says) in [
        ("A cat bakes a cake", "<subjects> on <background>"),
        ("a red circle moves right on a blue background", "the camera"),
        ("a red cube moves right on a blue background, the camera pans left", "\"cube\" is not a shape"),
        ("a red circle flies on a blue background, the camera pans left", "\"flies\" is not an action"),
        ("a red circle stays still on a blue background, the camera wobbles", "not a camera motion"),
        ("a gray circle stays still on a blue background, the camera is static", "not a subject colour"),
        ("a red circle stays still on a blue to blue haze background, the camera is static", "not a colour"),
    ] {
        let e = ClipSpec::from_prompt(bad, &config).unwrap_err().to_string();
        assert!(e.contains(says), "{bad}: {e}");
    }
}
