//! Reading a clip back from its frames alone, with plain image processing: the backdrop's
//! colours, the subject's colour, shape, size and action, and the camera move.
//!
//! Film-world subjects are flat palette colours with sharp outlines, and subject colours never
//! repeat the backdrop's, so a subject is found as a connected blob of one palette colour that
//! is not a background colour. The camera move is the global transform (shift or zoom) that best
//! maps the background of one frame onto a later one; the subject's action is its blob's
//! trajectory and area once that camera motion is undone.

use std::collections::HashSet;
use std::sync::OnceLock;

use skyreels_core::media::RgbFrame;

use crate::world::{inside, Action, CameraMotion, Colour, Shape, ShotType, Size};

/// Largest RGB distance at which a pixel counts as a palette colour. Tight enough that the
/// blends of a gradient backdrop do not pass for a subject colour.
const MATCH_DISTANCE: f32 = 60.0;
/// Smallest blob, in pixels, taken for a subject.
const MIN_AREA: usize = 6;
/// Share of the border pixels a colour needs to count as backdrop.
const BACKGROUND_SHARE: f32 = 0.15;
/// Frames between the two frames of each camera-motion estimate.
const CAMERA_STRIDE: usize = 4;
/// Largest content shift, in pixels, searched between those frames.
const MAX_SHIFT: i32 = 6;
/// Zoom factors searched between those frames (and their inverses).
const ZOOM_STEPS: [f32; 3] = [1.025, 1.05, 1.075];

/// The palette colour a pixel shows, if it is close enough to one.
pub fn palette_colour(rgb: [u8; 3]) -> Option<Colour> {
    let mut best = None;
    let mut best_distance = MATCH_DISTANCE * MATCH_DISTANCE;
    for &colour in Colour::ALL {
        let p = colour.rgb();
        let d: f32 = (0..3).map(|c| (rgb[c] as f32 - p[c] as f32).powi(2)).sum();
        if d < best_distance {
            best_distance = d;
            best = Some(colour);
        }
    }
    best
}

/// The pixels of a frame's 2-pixel border ring.
pub fn border_pixels(frame: &RgbFrame) -> impl Iterator<Item = [u8; 3]> + '_ {
    let (w, h) = (frame.width as usize, frame.height as usize);
    frame.data.chunks_exact(3).enumerate().filter_map(move |(i, p)| {
        let (x, y) = (i % w, i / w);
        (x < 2 || y < 2 || x + 2 >= w || y + 2 >= h).then(|| [p[0], p[1], p[2]])
    })
}

/// The backdrop's colours: palette colours covering a fair share of the frame borders over the
/// whole clip (a subject rarely sits on the border for long).
pub fn background_colours(frames: &[RgbFrame]) -> Vec<Colour> {
    let mut counts = vec![0usize; Colour::ALL.len()];
    let mut total = 0usize;
    for rgb in frames.iter().flat_map(border_pixels) {
        total += 1;
        if let Some(c) = palette_colour(rgb) {
            counts[colour_index(c)] += 1;
        }
    }
    Colour::ALL
        .iter()
        .zip(&counts)
        .filter(|(_, &n)| total > 0 && n as f32 / total as f32 >= BACKGROUND_SHARE)
        .map(|(&c, _)| c)
        .collect()
}

fn colour_index(colour: Colour) -> usize {
    Colour::ALL.iter().position(|&c| c == colour).expect("every colour is in the palette")
}

/// A connected region of one subject colour in one frame.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Its colour.
    pub colour: Colour,
    /// Its pixels `(x, y)`.
    pub pixels: Vec<(u16, u16)>,
    /// Mean pixel centre.
    pub centroid: [f32; 2],
}

impl Blob {
    /// Pixel count.
    pub fn area(&self) -> usize {
        self.pixels.len()
    }
}

/// Every blob of a non-background palette colour in `frame`, at least [`MIN_AREA`] pixels.
pub fn blobs(frame: &RgbFrame, background: &[Colour]) -> Vec<Blob> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let labels: Vec<Option<Colour>> = frame
        .data
        .chunks_exact(3)
        .map(|p| palette_colour([p[0], p[1], p[2]]).filter(|c| !background.contains(c)))
        .collect();
    let mut seen = vec![false; w * h];
    let mut found = Vec::new();
    for start in 0..w * h {
        let Some(colour) = labels[start] else { continue };
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut pixels = Vec::new();
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            pixels.push((x as u16, y as u16));
            let mut visit = |j: usize| {
                if !seen[j] && labels[j] == Some(colour) {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if pixels.len() >= MIN_AREA {
            let n = pixels.len() as f32;
            let cx = pixels.iter().map(|p| p.0 as f32 + 0.5).sum::<f32>() / n;
            let cy = pixels.iter().map(|p| p.1 as f32 + 0.5).sum::<f32>() / n;
            found.push(Blob { colour, pixels, centroid: [cx, cy] });
        }
    }
    found
}

/// Half the side of the square `[−1.2, 1.2]²` that holds every shape's unit frame (radius 1).
const UNIT_REACH: f32 = 1.2;

/// The points of an `n × n` grid over the unit frame that lie inside `shape`, by the very test
/// the renderer uses.
fn unit_grid_points(shape: Shape, n: usize) -> impl Iterator<Item = [f32; 2]> {
    let coordinate = move |k: usize| -UNIT_REACH + 2.0 * UNIT_REACH * (k as f32 + 0.5) / n as f32;
    (0..n * n).map(move |k| [coordinate(k / n), coordinate(k % n)]).filter(move |&p| inside(shape, p))
}

/// A per-shape value computed once (from the unit grid) and looked up by shape.
fn per_shape<T: Copy>(table: &'static OnceLock<Vec<T>>, shape: Shape, compute: impl Fn(Shape) -> T) -> T {
    let values = table.get_or_init(|| Shape::ALL.iter().map(|&s| compute(s)).collect());
    values[Shape::ALL.iter().position(|&s| s == shape).expect("every shape is listed")]
}

/// The area of each shape in its unit frame (radius 1).
fn unit_area(shape: Shape) -> f32 {
    static AREAS: OnceLock<Vec<f32>> = OnceLock::new();
    let n = 400;
    per_shape(&AREAS, shape, |s| unit_grid_points(s, n).count() as f32 * (2.0 * UNIT_REACH).powi(2) / (n * n) as f32)
}

/// Below this share of its upright reference harmonic, an outline counts as round. Blur rounds
/// corners first, which weakens the harmonics without moving them. On 80 VAE round trips of the
/// film world, most squares kept 0.25–0.8 of the reference, and all but one circle stayed under
/// 0.2; on crisp renders every shape scores near 1.
const ROUND_LIMIT: f64 = 0.2;

/// The angular harmonic that shows a non-round shape when upright: a triangle's three corners,
/// a square's or diamond's four (45° apart, so of opposite sign), a star's five points.
fn fold(shape: Shape) -> Option<i32> {
    match shape {
        Shape::Circle => None,
        Shape::Triangle => Some(3),
        Shape::Square | Shape::Diamond => Some(4),
        Shape::Star => Some(5),
    }
}

/// The `k`-th angular harmonic of a filled outline about its centroid `centre`,
/// `Σ rᵏ·e^{ikθ} / Σ rᵏ` over its points (`rᵏ` weights the rim, where the corners are), as
/// (re, im).
fn harmonic(points: &[[f32; 2]], centre: [f32; 2], k: i32) -> [f64; 2] {
    let (cx, cy) = (f64::from(centre[0]), f64::from(centre[1]));
    let (mut re, mut im, mut total) = (0.0, 0.0, 0.0);
    for p in points {
        let (dx, dy) = (f64::from(p[0]) - cx, f64::from(p[1]) - cy);
        let weight = dx.hypot(dy).powi(k);
        let angle = f64::from(k) * dy.atan2(dx);
        re += weight * angle.cos();
        im += weight * angle.sin();
        total += weight;
    }
    if total > 0.0 {
        [re / total, im / total]
    } else {
        [0.0, 0.0]
    }
}

/// Each shape's harmonic when drawn upright.
fn reference_harmonic(shape: Shape) -> [f64; 2] {
    static REFERENCES: OnceLock<Vec<[f64; 2]>> = OnceLock::new();
    per_shape(&REFERENCES, shape, |s| {
        let Some(k) = fold(s) else { return [0.0, 0.0] };
        let points: Vec<[f32; 2]> = unit_grid_points(s, 300).collect();
        let n = points.len() as f32;
        let centre = [points.iter().map(|p| p[0]).sum::<f32>() / n, points.iter().map(|p| p[1]).sum::<f32>() / n];
        harmonic(&points, centre, k)
    })
}

/// The shape of a blob, from the angular harmonics of its outline: each non-round shape scores
/// its harmonic projected on its upright reference (1 for the exact shape, lower once blurred or
/// turned), and the best score wins unless none reaches [`ROUND_LIMIT`] (a circle). Unlike
/// matching the outline pixel by pixel, this still tells a square with rounded corners from a
/// circle.
pub fn classify_shape(blob: &Blob) -> Shape {
    let points: Vec<[f32; 2]> = blob.pixels.iter().map(|&(x, y)| [f32::from(x) + 0.5, f32::from(y) + 0.5]).collect();
    let mut best = (Shape::Circle, ROUND_LIMIT);
    for &shape in Shape::ALL {
        let Some(k) = fold(shape) else { continue };
        let ([re, im], [r_re, r_im]) = (harmonic(&points, blob.centroid, k), reference_harmonic(shape));
        let score = (re * r_re + im * r_im) / (r_re * r_re + r_im * r_im);
        if score > best.1 {
            best = (shape, score);
        }
    }
    best.0
}

/// The size class of a blob of `shape`, given the framing it was filmed in.
/// `camera_zoom` is the camera's magnification at the blob's frame relative to the first frame
/// (1 unless the camera zooms).
pub fn classify_size(blob: &Blob, shape: Shape, shot: ShotType, camera_zoom: f32, frame_side: usize) -> Size {
    let radius = (blob.area() as f32 / unit_area(shape)).sqrt() / (frame_side as f32 * shot.zoom() * camera_zoom);
    let mut best = (Size::Medium, f32::INFINITY);
    for &size in Size::ALL {
        let d = (radius / size.radius()).ln().abs();
        if d < best.1 {
            best = (size, d);
        }
    }
    best.0
}

/// A global image transform about the frame centre: `p' = zoom·(p − c) + c + shift`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Content shift in pixels.
    pub shift: [f32; 2],
    /// Magnification.
    pub zoom: f32,
}

impl Transform {
    const IDENTITY: Transform = Transform { shift: [0.0, 0.0], zoom: 1.0 };

    /// `self` after `first`.
    fn after(self, first: Transform) -> Transform {
        Transform {
            shift: [self.zoom * first.shift[0] + self.shift[0], self.zoom * first.shift[1] + self.shift[1]],
            zoom: self.zoom * first.zoom,
        }
    }

    /// Where a point of the later frame was in the earlier one.
    fn undo(self, p: [f32; 2], centre: [f32; 2]) -> [f32; 2] {
        [
            (p[0] - centre[0] - self.shift[0]) / self.zoom + centre[0],
            (p[1] - centre[1] - self.shift[1]) / self.zoom + centre[1],
        ]
    }
}

/// Which pixels of a frame are backdrop (not in or next to any subject blob).
fn background_mask(frame: &RgbFrame, found: &[Blob]) -> Vec<bool> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let mut mask = vec![true; w * h];
    for blob in found {
        for &(x, y) in &blob.pixels {
            let (x, y) = (x as i32, y as i32);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h {
                        mask[ny as usize * w + nx as usize] = false;
                    }
                }
            }
        }
    }
    mask
}

/// Mean absolute RGB difference between the backdrop of `later` and the backdrop of `earlier`
/// moved by `t`; `None` when too little backdrop is visible in both.
fn transform_error(
    earlier: &RgbFrame,
    earlier_mask: &[bool],
    later: &RgbFrame,
    later_mask: &[bool],
    t: Transform,
) -> Option<f32> {
    let (w, h) = (later.width as usize, later.height as usize);
    let centre = [w as f32 / 2.0, h as f32 / 2.0];
    let (mut sum, mut count) = (0f64, 0usize);
    for y in 0..h {
        for x in 0..w {
            if !later_mask[y * w + x] {
                continue;
            }
            let [sx, sy] = t.undo([x as f32 + 0.5, y as f32 + 0.5], centre);
            let (sx, sy) = (sx.floor(), sy.floor());
            if sx < 0.0 || sy < 0.0 || sx >= w as f32 || sy >= h as f32 {
                continue;
            }
            let (sx, sy) = (sx as usize, sy as usize);
            if !earlier_mask[sy * w + sx] {
                continue;
            }
            let (a, b) = (earlier.pixel(sx as u32, sy as u32), later.pixel(x as u32, y as u32));
            sum += (0..3).map(|c| (a[c] as f64 - b[c] as f64).abs()).sum::<f64>();
            count += 1;
        }
    }
    (count * 4 >= w * h).then(|| (sum / (3 * count) as f64) as f32)
}

/// The candidate transforms searched between two frames, besides no motion.
fn candidates() -> Vec<Transform> {
    let mut all = Vec::new();
    for dy in -MAX_SHIFT..=MAX_SHIFT {
        for dx in -MAX_SHIFT..=MAX_SHIFT {
            if (dx, dy) != (0, 0) {
                all.push(Transform { shift: [dx as f32, dy as f32], zoom: 1.0 });
            }
        }
    }
    for z in ZOOM_STEPS {
        all.push(Transform { shift: [0.0, 0.0], zoom: z });
        all.push(Transform { shift: [0.0, 0.0], zoom: 1.0 / z });
    }
    all
}

/// The camera's effect on the picture between two frames: the best candidate transform of the
/// backdrop, preferring no motion unless another fits clearly better (a flat backdrop fits
/// every candidate equally). Among shifts that fit about as well as the best, the shortest
/// wins: diagonal stripes and gradients show only the motion across them (the aperture
/// problem), so a pan, a tilt and half of each fit alike, and the half-and-half (the normal
/// flow) is the least wrong guess when the subject's motion is measured against it.
fn frame_motion(earlier: &RgbFrame, earlier_mask: &[bool], later: &RgbFrame, later_mask: &[bool]) -> Transform {
    let Some(still) = transform_error(earlier, earlier_mask, later, later_mask, Transform::IDENTITY) else {
        return Transform::IDENTITY;
    };
    let fits: Vec<(Transform, f32)> = candidates()
        .into_iter()
        .filter_map(|t| transform_error(earlier, earlier_mask, later, later_mask, t).map(|e| (t, e)))
        .collect();
    let Some(best) = fits.iter().map(|(_, e)| *e).min_by(f32::total_cmp) else {
        return Transform::IDENTITY;
    };
    let clearly_better = 0.8 * still - 0.5;
    if best >= clearly_better {
        return Transform::IDENTITY;
    }
    let length = |t: &Transform| t.shift[0].hypot(t.shift[1]) + (t.zoom.ln().abs() * 100.0);
    // A near-tie must also beat standing still by the same margin as the best.
    let accepted = best + 0.5 + 0.05 * best;
    fits.iter()
        .filter(|(_, e)| *e <= accepted && *e < clearly_better)
        .min_by(|a, b| length(&a.0).total_cmp(&length(&b.0)).then(a.1.total_cmp(&b.1)))
        .map_or(Transform::IDENTITY, |(t, _)| *t)
}

/// How much a frame's backdrop changes under a 3-pixel shift: near zero for a flat backdrop,
/// on which no camera move can be seen.
fn texture(frame: &RgbFrame, mask: &[bool]) -> f32 {
    let shifted = Transform { shift: [3.0, 3.0], zoom: 1.0 };
    transform_error(frame, mask, frame, mask, shifted).unwrap_or(0.0)
}

/// Everything the judge reads from one clip about its (first) subject and camera.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reading {
    /// Backdrop colours.
    pub background: Vec<Colour>,
    /// The subject's colour: the colour whose blob is present in most frames.
    pub colour: Option<Colour>,
    /// Its shape, read on the first frame it is seen in.
    pub shape: Option<Shape>,
    /// Its size class, read on that frame relative to the prompted framing.
    pub size: Option<Size>,
    /// What it does, once the camera motion is undone (`None` when it is seen too rarely).
    pub action: Option<Action>,
    /// The camera move, or `None` when the backdrop is too plain to show one.
    pub camera: Option<CameraMotion>,
    /// Share of frames in which the subject is seen with a plausible area.
    pub identity: f32,
    /// Mean absolute change of mean brightness between consecutive frames (0–255).
    pub flicker: f32,
}

/// The colour whose blobs are present in the most frames (ties: the larger total area). Blobs
/// spanning two or more frame edges are left out: that is backdrop the border count missed
/// (e.g. the middle of a gradient), not a subject.
pub fn dominant_colour(per_frame: &[Vec<Blob>], frame: (usize, usize)) -> Option<Colour> {
    let mut score = vec![(0usize, 0usize); Colour::ALL.len()];
    for found in per_frame {
        let mut seen = HashSet::new();
        for blob in found.iter().filter(|b| edges_touched(b, frame) < 2) {
            let i = colour_index(blob.colour);
            score[i].1 += blob.area();
            if seen.insert(i) {
                score[i].0 += 1;
            }
        }
    }
    let (i, best) = score.iter().enumerate().max_by_key(|(_, s)| **s)?;
    (best.0 > 0).then(|| Colour::ALL[i])
}

/// The largest blob of `colour` in a frame.
fn largest(found: &[Blob], colour: Colour) -> Option<&Blob> {
    found.iter().filter(|b| b.colour == colour).max_by_key(|b| b.area())
}

/// Mean brightness (Rec. 601 luma) of a frame.
pub fn brightness(frame: &RgbFrame) -> f32 {
    let n = (frame.width * frame.height) as f64;
    let sum: f64 =
        frame.data.chunks_exact(3).map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).sum();
    (sum / n) as f32
}

/// The camera's cumulative transform at every frame (piecewise: estimated every
/// [`CAMERA_STRIDE`] frames), and whether the backdrop shows motion at all.
fn camera_path(frames: &[RgbFrame], per_frame: &[Vec<Blob>]) -> (Vec<Transform>, bool) {
    let masks: Vec<Vec<bool>> = frames.iter().zip(per_frame).map(|(f, b)| background_mask(f, b)).collect();
    let mut path = vec![Transform::IDENTITY; frames.len()];
    let mut textures = Vec::new();
    let mut start = 0;
    while start + 1 < frames.len() {
        let end = (start + CAMERA_STRIDE).min(frames.len() - 1);
        textures.push(texture(&frames[start], &masks[start]));
        let step = frame_motion(&frames[start], &masks[start], &frames[end], &masks[end]);
        let (from, to) = (path[start], step.after(path[start]));
        for (k, slot) in path.iter_mut().enumerate().take(end + 1).skip(start + 1) {
            // Linear in between, so every frame has an estimate.
            let u = (k - start) as f32 / (end - start) as f32;
            *slot = Transform {
                shift: [
                    from.shift[0] + u * (to.shift[0] - from.shift[0]),
                    from.shift[1] + u * (to.shift[1] - from.shift[1]),
                ],
                zoom: from.zoom * (to.zoom / from.zoom).powf(u),
            };
        }
        start = end;
    }
    textures.sort_by(f32::total_cmp);
    let textured = textures.get(textures.len() / 2).is_some_and(|&t| t > 1.5);
    (path, textured)
}

/// The camera move that the total content motion shows.
fn classify_camera(total: Transform, frame_side: usize) -> CameraMotion {
    // The shift a zoom causes at the frame edge, in pixels, to compare with pans.
    let zoom_shift = total.zoom.ln().abs() * frame_side as f32 / 2.0;
    let [dx, dy] = total.shift;
    let pan = dx.abs().max(dy.abs());
    if zoom_shift > 3.0 && zoom_shift > pan {
        return if total.zoom > 1.0 { CameraMotion::ZoomIn } else { CameraMotion::ZoomOut };
    }
    if pan < 3.0 {
        return CameraMotion::Static;
    }
    // The picture moves against the camera: a pan left slides the content right.
    if dx.abs() >= dy.abs() {
        if dx > 0.0 {
            CameraMotion::PanLeft
        } else {
            CameraMotion::PanRight
        }
    } else if dy > 0.0 {
        CameraMotion::TiltUp
    } else {
        CameraMotion::TiltDown
    }
}

/// Overlap of two blobs after aligning their centroids and areas: 1 for the same outline in
/// the same orientation, lower once one of them has turned.
fn aligned_iou(a: &Blob, b: &Blob) -> f32 {
    // Scale the larger blob down onto the smaller one: scaling up would leave holes between
    // the moved pixels and cap the overlap at the area ratio.
    let (a, b) = if b.area() < a.area() { (b, a) } else { (a, b) };
    let set: HashSet<(i32, i32)> = a.pixels.iter().map(|&(x, y)| (x as i32, y as i32)).collect();
    let scale = (a.area() as f32 / b.area() as f32).sqrt();
    let moved: HashSet<(i32, i32)> = b
        .pixels
        .iter()
        .map(|&(x, y)| {
            let px = (x as f32 + 0.5 - b.centroid[0]) * scale + a.centroid[0];
            let py = (y as f32 + 0.5 - b.centroid[1]) * scale + a.centroid[1];
            (px.floor() as i32, py.floor() as i32)
        })
        .collect();
    let both = moved.intersection(&set).count();
    both as f32 / (set.len() + moved.len() - both).max(1) as f32
}

/// The subject's action from its camera-compensated track (`None` when it is seen in fewer
/// than 3 frames). Travel is judged first, since a subject leaving the picture also loses area;
/// growth and turning are judged only on frames where it is wholly in view.
fn classify_action(track: &[(usize, &Blob)], path: &[Transform], frame: (usize, usize)) -> Option<Action> {
    if track.len() < 3 {
        return None;
    }
    let centre = [frame.0 as f32 / 2.0, frame.1 as f32 / 2.0];
    let positions: Vec<[f32; 2]> = track.iter().map(|(i, b)| path[*i].undo(b.centroid, centre)).collect();
    let (first, last) = (positions[0], positions[positions.len() - 1]);
    let (dx, dy) = (last[0] - first[0], last[1] - first[1]);
    if dx.abs().max(dy.abs()) >= 6.0 {
        return Some(if dx.abs() >= dy.abs() {
            if dx > 0.0 {
                Action::MoveRight
            } else {
                Action::MoveLeft
            }
        } else if dy > 0.0 {
            Action::MoveDown
        } else {
            Action::MoveUp
        });
    }
    let whole: Vec<(usize, &Blob)> = track.iter().copied().filter(|(_, b)| edges_touched(b, frame) == 0).collect();
    if whole.len() >= 3 {
        let areas: Vec<f32> = whole.iter().map(|(i, b)| b.area() as f32 / path[*i].zoom.powi(2)).collect();
        let head = whole.len().min(3);
        let growth = median(&areas[areas.len() - head..]) / median(&areas[..head]);
        if growth > 1.6 {
            return Some(Action::Grow);
        }
        if growth < 0.62 {
            return Some(Action::Shrink);
        }
    }
    let highest = positions.iter().map(|p| p[1] - first[1]).fold(f32::INFINITY, f32::min);
    if highest < -4.0 {
        return Some(Action::Bounce);
    }
    if let Some((_, reference)) = whole.first() {
        // Only against outlines of about the same pixel size: resampling a much smaller or
        // larger blob alone costs overlap.
        let similar = |b: &&(usize, &Blob)| (0.7..=1.43).contains(&(b.1.area() as f32 / reference.area() as f32));
        let turned = whole.iter().filter(similar).map(|(_, b)| aligned_iou(reference, b)).fold(1.0f32, f32::min);
        if turned < 0.75 {
            return Some(Action::Spin);
        }
    }
    Some(Action::Stay)
}

fn median(values: &[f32]) -> f32 {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

/// How many of the four frame edges a blob touches.
fn edges_touched(blob: &Blob, (w, h): (usize, usize)) -> usize {
    let mut edges = [false; 4];
    for &(x, y) in &blob.pixels {
        let (x, y) = (x as usize, y as usize);
        edges[0] |= x == 0;
        edges[1] |= y == 0;
        edges[2] |= x + 1 == w;
        edges[3] |= y + 1 == h;
    }
    edges.iter().filter(|&&e| e).count()
}

fn size_of(frames: &[RgbFrame]) -> (usize, usize) {
    frames.first().map_or((0, 0), |f| (f.width as usize, f.height as usize))
}

/// Reads a clip. `shot` is the prompted framing (sizes are relative to it); `colour`, when
/// given, is the subject to follow (else the dominant colour is followed).
pub fn read_clip(frames: &[RgbFrame], shot: ShotType, colour: Option<Colour>) -> Reading {
    let background = background_colours(frames);
    let per_frame: Vec<Vec<Blob>> = frames.iter().map(|f| blobs(f, &background)).collect();
    let dominant = dominant_colour(&per_frame, size_of(frames));
    let followed = colour.filter(|c| per_frame.iter().any(|b| largest(b, *c).is_some())).or(dominant);
    let track: Vec<(usize, &Blob)> = match followed {
        Some(c) => per_frame.iter().enumerate().filter_map(|(i, b)| largest(b, c).map(|blob| (i, blob))).collect(),
        None => Vec::new(),
    };
    let side = frames.first().map_or(1, |f| f.width.min(f.height) as usize);
    let (path, textured) = camera_path(frames, &per_frame);
    // Outline and size are read where the subject is first wholly in view: movers and pans start
    // it off-centre, and a blob cut by the frame's edge has neither its shape nor its area.
    let in_view = track.iter().find(|(_, b)| edges_touched(b, size_of(frames)) == 0).or(track.first());
    let shape = in_view.map(|(_, b)| classify_shape(b));
    let size = in_view.zip(shape).map(|((i, b), s)| classify_size(b, s, shot, path[*i].zoom, side));
    let camera = textured.then(|| classify_camera(*path.last().unwrap_or(&Transform::IDENTITY), side));
    let identity = match track.first() {
        Some((_, first)) if !frames.is_empty() => {
            let kept = track
                .iter()
                .filter(|(i, b)| {
                    let ratio = b.area() as f32 / path[*i].zoom.powi(2) / first.area() as f32;
                    (0.25..=4.0).contains(&ratio)
                })
                .count();
            kept as f32 / frames.len() as f32
        }
        _ => 0.0,
    };
    let luma: Vec<f32> = frames.iter().map(brightness).collect();
    let flicker = if luma.len() > 1 {
        luma.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f32>() / (luma.len() - 1) as f32
    } else {
        0.0
    };
    Reading {
        background,
        colour: dominant,
        shape,
        size,
        action: classify_action(&track, &path, size_of(frames)),
        camera,
        identity,
        flicker,
    }
}
