//! Structured captions (in the spirit of SkyCaptioner-V1's shot-language fields) and the fixed
//! templates that fuse them into prompts.

use serde::{Deserialize, Serialize};

use super::{Background, ClipSpec, Pattern, Size, Subject};

/// Number of prompt templates ([`ClipSpec::template`] picks one).
pub const TEMPLATES: usize = 3;

/// One subject as a captioner would describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectCaption {
    /// Kind of thing ("circle").
    #[serde(rename = "type")]
    pub kind: String,
    /// Looks ("small red").
    pub appearance: String,
    /// What it does ("moves right").
    pub action: String,
    /// Where it starts in the frame ("top left", "center").
    pub position: String,
}

/// One shot's shot-language fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShotCaption {
    /// "wide shot", "medium shot" or "close-up".
    pub shot_type: String,
    /// Always "eye level" in this world.
    pub shot_angle: String,
    /// "pans left", "is static", …
    pub camera_motion: String,
}

/// The structured caption of a clip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caption {
    /// Subjects, back to front.
    pub subjects: Vec<SubjectCaption>,
    /// Shots in order; more than one means hard cuts.
    pub shots: Vec<ShotCaption>,
    /// The backdrop ("a blue background").
    pub environment: String,
}

impl ClipSpec {
    /// The clip's structured caption.
    pub fn caption(&self) -> Caption {
        Caption {
            subjects: self.subjects.iter().map(subject_caption).collect(),
            shots: self
                .shots
                .iter()
                .map(|s| ShotCaption {
                    shot_type: s.shot_type.word().into(),
                    shot_angle: "eye level".into(),
                    camera_motion: s.camera.word().into(),
                })
                .collect(),
            environment: background_phrase(&self.background),
        }
    }

    /// The training prompt: the caption fused by template [`ClipSpec::template`]. The grammar is
    /// documented in the README; e.g. "a red circle moves right on a blue background, the camera
    /// pans left, wide shot".
    pub fn prompt(&self) -> String {
        let c = self.caption();
        let subjects: Vec<String> = self.subjects.iter().map(subject_phrase).collect();
        let subjects = subjects.join(" and ");
        let first = &c.shots[0];
        let mut prompt = match self.template % TEMPLATES {
            0 => format!("{subjects} on {}, the camera {}, {}", c.environment, first.camera_motion, first.shot_type),
            1 => format!("{subjects} on {}, the camera {}", c.environment, first.camera_motion),
            _ => format!("{}: {subjects} on {}, the camera {}", first.shot_type, c.environment, first.camera_motion),
        };
        for shot in &c.shots[1..] {
            prompt.push_str(&format!(", then a cut to a {} where the camera {}", shot.shot_type, shot.camera_motion));
        }
        prompt
    }
}

fn with_article(phrase: String) -> String {
    let vowel = phrase.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {phrase}", if vowel { "an" } else { "a" })
}

fn appearance(s: &Subject) -> String {
    match s.size {
        Size::Medium => s.colour.word().to_string(),
        size => format!("{} {}", size.word(), s.colour.word()),
    }
}

/// "a small red circle moves right".
fn subject_phrase(s: &Subject) -> String {
    format!("{} {}", with_article(format!("{} {}", appearance(s), s.shape.word())), s.action.word())
}

fn subject_caption(s: &Subject) -> SubjectCaption {
    let column = ["left", "center", "right"][((s.start[0] * 3.0) as usize).min(2)];
    let row = ["top", "middle", "bottom"][((s.start[1] * 3.0) as usize).min(2)];
    let position = match (row, column) {
        ("middle", "center") => "center".to_string(),
        (row, column) => format!("{row} {column}"),
    };
    SubjectCaption { kind: s.shape.word().into(), appearance: appearance(s), action: s.action.word().into(), position }
}

fn background_phrase(b: &Background) -> String {
    let (p, s) = (b.primary.word(), b.secondary.word());
    match b.pattern {
        Pattern::Flat => format!("a {p} background"),
        Pattern::Gradient => format!("a {p} to {s} gradient background"),
        Pattern::Checkerboard => format!("a {p} and {s} checkerboard background"),
        Pattern::Stripes => format!("a {p} and {s} striped background"),
    }
}
