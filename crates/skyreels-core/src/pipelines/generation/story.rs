//! Story mode: one prompt per segment of a long video, each segment lasting a number of windows.
//!
//! Accepted files:
//! - JSON: `["prompt 1", "prompt 2"]`, or `{"segments": [{"prompt": "…", "windows": 2}, …]}`
//!   (`windows` defaults to 1);
//! - plain text: one prompt per line (blank lines and lines starting with `#` are skipped).
//!
//! The last segment's prompt continues if the video is longer than the story.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::GenerationError;

/// One prompt and how many windows it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The text prompt.
    pub prompt: String,
    /// Windows generated with this prompt.
    #[serde(default = "one")]
    pub windows: usize,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StoryJson {
    Prompts(Vec<String>),
    Segments { segments: Vec<Segment> },
}

/// Reads a story file into segments.
pub fn load_story(path: &Path) -> Result<Vec<Segment>, GenerationError> {
    let input = GenerationError::Input;
    let text = crate::checkpoint::read_text(path).map_err(|e| input(format!("the story: {e}")))?;
    let is_json =
        path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) || text.trim_start().starts_with(['[', '{']);
    let segments = if is_json {
        parse_json(&text).map_err(|e| input(format!("the story {} is not valid: {e}", path.display())))?
    } else {
        parse_lines(&text)
    };
    check(segments).map_err(|e| input(format!("the story {} {e}", path.display())))
}

fn parse_json(text: &str) -> Result<Vec<Segment>, String> {
    match serde_json::from_str::<StoryJson>(text) {
        Ok(StoryJson::Prompts(prompts)) => {
            Ok(prompts.into_iter().map(|prompt| Segment { prompt, windows: 1 }).collect())
        }
        Ok(StoryJson::Segments { segments }) => Ok(segments),
        Err(e) => {
            Err(format!("expected a list of prompts or {{\"segments\": [{{\"prompt\": …, \"windows\": n}}]}} ({e})"))
        }
    }
}

fn parse_lines(text: &str) -> Vec<Segment> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| Segment { prompt: l.to_string(), windows: 1 })
        .collect()
}

/// Refuses stories without prompts, with empty prompts or with zero-window segments.
pub(super) fn check(segments: Vec<Segment>) -> Result<Vec<Segment>, String> {
    if segments.is_empty() {
        return Err("has no prompts".into());
    }
    if let Some(i) = segments.iter().position(|s| s.windows == 0) {
        return Err(format!("gives segment {} zero windows", i + 1));
    }
    if let Some(i) = segments.iter().position(|s| s.prompt.trim().is_empty()) {
        return Err(format!("has an empty prompt in segment {}", i + 1));
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_spellings_parse() {
        assert_eq!(parse_json(r#"["a", "b"]"#).unwrap().len(), 2);
        let s = parse_json(r#"{"segments": [{"prompt": "a", "windows": 3}, {"prompt": "b"}]}"#).unwrap();
        assert_eq!((s[0].windows, s[1].windows), (3, 1));
        assert_eq!(
            parse_lines("# title\nfirst\n\n second \n").iter().map(|s| s.prompt.as_str()).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert!(parse_json(r#"{"scenes": []}"#).is_err());
        assert!(check(vec![]).is_err());
        assert!(check(vec![Segment { prompt: "x".into(), windows: 0 }]).is_err());
    }
}
