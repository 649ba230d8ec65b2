//! Reading a prompt of the film world's grammar back into the clip it names, so any prompt a
//! user gives the demo model (the README's, say) can be judged like the held-out ones.

use super::{layout_start, Action, Background, CameraMotion, ClipSpec, Colour, Pattern, Shape, Shot, ShotType, Size};
use super::{Subject, WorldConfig};

/// Why a prompt is not one of the film world's: one sentence, naming the part that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptError(String);

impl std::fmt::Display for PromptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a film-world prompt: {}", self.0)
    }
}

impl std::error::Error for PromptError {}

fn fail<T>(why: impl Into<String>) -> Result<T, PromptError> {
    Err(PromptError(why.into()))
}

impl ClipSpec {
    /// The clip a prompt of the world's grammar describes (the inverse of [`ClipSpec::prompt`]),
    /// at `config`'s frame size, length and rate. The layout follows from the caption as in
    /// training; the texture phase is 0. A prompt that names no framing is filmed as a wide
    /// shot, and a cut comes half-way, as in sampled clips.
    pub fn from_prompt(prompt: &str, config: &WorldConfig) -> Result<ClipSpec, PromptError> {
        let text = prompt.trim().to_lowercase();
        let (text, cut) = match text.split_once(", then a cut to a ") {
            Some((head, cut)) => (head.to_string(), Some(parse_cut(cut)?)),
            None => (text, None),
        };
        let (leading_shot, body) = match text.split_once(": ") {
            Some((shot, body)) => (Some(shot_type(shot)?), body),
            None => (None, text.as_str()),
        };
        let Some((subjects, rest)) = body.split_once(" on ") else {
            return fail(format!("expected \"<subjects> on <background>\" in \"{body}\""));
        };
        let Some((background, camera_part)) = rest.split_once(", the camera ") else {
            return fail(format!("expected \", the camera <motion>\" after \"{rest}\""));
        };
        let (camera, trailing_shot) = match camera_part.split_once(", ") {
            Some((camera, shot)) => (camera, Some(shot_type(shot)?)),
            None => (camera_part, None),
        };
        if leading_shot.is_some() && trailing_shot.is_some() {
            return fail("the framing is named twice");
        }
        let template = match (leading_shot, trailing_shot) {
            (Some(_), _) => 2,
            (None, Some(_)) => 0,
            (None, None) => 1,
        };
        let subjects = parse_subjects(subjects)?;
        let background = parse_background(background)?;
        let first = (leading_shot.or(trailing_shot).unwrap_or(ShotType::Wide), camera_motion(camera)?);
        let shots = match cut {
            Some(second) if config.frames >= 2 => {
                let half = config.frames / 2;
                vec![
                    Shot { shot_type: first.0, camera: first.1, frames: half },
                    Shot { shot_type: second.0, camera: second.1, frames: config.frames - half },
                ]
            }
            Some(_) => return fail("a cut needs at least two frames"),
            None => vec![Shot { shot_type: first.0, camera: first.1, frames: config.frames }],
        };
        Ok(ClipSpec {
            width: config.width,
            height: config.height,
            fps: config.fps,
            subjects,
            background,
            shots,
            template,
        })
    }
}

fn shot_type(words: &str) -> Result<ShotType, PromptError> {
    ShotType::from_word(words)
        .ok_or_else(|| PromptError(format!("\"{words}\" is not a framing (wide shot, medium shot, close-up)")))
}

fn camera_motion(words: &str) -> Result<CameraMotion, PromptError> {
    CameraMotion::from_word(words).ok_or_else(|| {
        let known: Vec<&str> = CameraMotion::ALL.iter().map(|c| c.word()).collect();
        PromptError(format!("\"the camera {words}\" is not a camera motion ({})", known.join(", ")))
    })
}

/// "medium shot where the camera zooms in".
fn parse_cut(words: &str) -> Result<(ShotType, CameraMotion), PromptError> {
    let Some((shot, camera)) = words.split_once(" where the camera ") else {
        return fail(format!("expected \"a cut to a <framing> where the camera <motion>\", not \"{words}\""));
    };
    Ok((shot_type(shot)?, camera_motion(camera)?))
}

/// One to three subjects joined by " and ", laid out as the world lays them out.
fn parse_subjects(words: &str) -> Result<Vec<Subject>, PromptError> {
    let phrases: Vec<&str> = words.split(" and ").collect();
    if phrases.len() > 3 {
        return fail("at most three subjects");
    }
    let count = phrases.len();
    phrases
        .iter()
        .enumerate()
        .map(|(index, phrase)| {
            let (shape, colour, size, action) = parse_subject(phrase)?;
            Ok(Subject { shape, colour, size, action, start: layout_start(action, index, count) })
        })
        .collect()
}

/// "a small red circle moves right".
fn parse_subject(phrase: &str) -> Result<(Shape, Colour, Size, Action), PromptError> {
    let words: Vec<&str> = phrase.split(' ').collect();
    let rest = match words.first() {
        Some(&"a") | Some(&"an") => &words[1..],
        _ => return fail(format!("a subject starts with \"a\" or \"an\": \"{phrase}\"")),
    };
    let (size, rest) = match rest.first().and_then(|w| Size::from_word(w)) {
        Some(size) if size != Size::Medium => (size, &rest[1..]),
        _ => (Size::Medium, rest),
    };
    let [colour, shape, action @ ..] = rest else {
        return fail(format!("expected \"a [size] <colour> <shape> <action>\", not \"{phrase}\""));
    };
    let colour = Colour::from_word(colour)
        .filter(|c| Colour::SUBJECT.contains(c))
        .ok_or_else(|| PromptError(format!("\"{colour}\" is not a subject colour")))?;
    let shape = Shape::from_word(shape).ok_or_else(|| PromptError(format!("\"{shape}\" is not a shape")))?;
    let action = action.join(" ");
    let action = Action::from_word(&action).ok_or_else(|| PromptError(format!("\"{action}\" is not an action")))?;
    Ok((shape, colour, size, action))
}

/// "a blue background", "a blue to white gradient background", "a blue and white checkerboard
/// background", "a blue and white striped background".
fn parse_background(words: &str) -> Result<Background, PromptError> {
    let Some(inner) = words.strip_prefix("a ").and_then(|w| w.strip_suffix(" background")) else {
        return fail(format!("expected \"a … background\", not \"{words}\""));
    };
    let colour = |w: &str| Colour::from_word(w).ok_or_else(|| PromptError(format!("\"{w}\" is not a colour")));
    let pair = |w: &str, joint: &str| -> Result<(Colour, Colour), PromptError> {
        match w.split_once(joint) {
            Some((a, b)) => Ok((colour(a)?, colour(b)?)),
            None => fail(format!("expected two colours joined by \"{}\" in \"{words}\"", joint.trim())),
        }
    };
    let (pattern, (primary, secondary)) = if let Some(w) = inner.strip_suffix(" gradient") {
        (Pattern::Gradient, pair(w, " to ")?)
    } else if let Some(w) = inner.strip_suffix(" checkerboard") {
        (Pattern::Checkerboard, pair(w, " and ")?)
    } else if let Some(w) = inner.strip_suffix(" striped") {
        (Pattern::Stripes, pair(w, " and ")?)
    } else {
        let c = colour(inner)?;
        // A flat backdrop's second colour is never drawn; any other colour keeps it well formed.
        (Pattern::Flat, (c, if c == Colour::Black { Colour::White } else { Colour::Black }))
    };
    Ok(Background { pattern, primary, secondary, phase: [0.0, 0.0] })
}
