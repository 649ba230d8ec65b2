//! The umT5 tokenizer: HF `tokenizer.json` (SentencePiece Unigram) through the `tokenizers` crate.

use std::path::{Path, PathBuf};

use crate::error::{invalid_input, Error, Result};

use super::clean_prompt;

/// Token ids of one prompt, padded to a fixed length as the pipelines feed the text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// Ids, `</s>` after the prompt, then padding.
    pub ids: Vec<u32>,
    /// 1 for prompt tokens and `</s>`, 0 for padding.
    pub mask: Vec<u32>,
    /// Prompt tokens cut off to fit the length (0 when it fit).
    pub dropped: usize,
}

impl TokenizedPrompt {
    /// Number of real tokens (including `</s>`).
    pub fn len(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }

    /// Whether the prompt produced no tokens besides `</s>`.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }

    /// A sentence for the user when the prompt was truncated.
    pub fn truncation_warning(&self) -> Option<String> {
        (self.dropped > 0).then(|| {
            format!(
                "the prompt is longer than the text encoder's {} tokens: its last {} tokens were dropped",
                self.ids.len(),
                self.dropped
            )
        })
    }
}

/// Cleans, tokenises and pads prompts for the umT5 encoder.
pub struct PromptTokenizer {
    inner: tokenizers::Tokenizer,
    eos_id: u32,
    pad_id: u32,
    path: PathBuf,
}

impl PromptTokenizer {
    /// Loads a `tokenizer.json`, or a folder holding one (also `tokenizer/` of a diffusers
    /// pipeline and `google/umt5-xxl/` of an original SkyReels model folder).
    pub fn load(path: &Path) -> Result<Self> {
        let file = find_tokenizer_json(path)?;
        let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| Error::BadModelFile {
            path: file.clone(),
            reason: format!("it is not a tokenizer.json ({e})"),
        })?;
        let special = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| Error::BadModelFile {
                path: file.clone(),
                reason: format!("the vocabulary has no `{token}` token, which umT5 needs"),
            })
        };
        let eos_id = special("</s>")?;
        let pad_id = special("<pad>")?;
        Ok(Self { inner, eos_id, pad_id, path: file })
    }

    /// The `tokenizer.json` in use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Cleans `prompt` (see [`clean_prompt`]) and tokenises it to exactly `length` ids: the
    /// prompt tokens, `</s>`, then padding; a prompt that does not fit keeps its first
    /// `length − 1` tokens (as transformers' truncation does) and reports how many were dropped.
    pub fn encode(&self, prompt: &str, length: usize) -> Result<TokenizedPrompt> {
        self.encode_cleaned(&clean_prompt(prompt), length)
    }

    /// [`encode`](Self::encode) without the cleaning step.
    pub fn encode_cleaned(&self, text: &str, length: usize) -> Result<TokenizedPrompt> {
        if length == 0 {
            return Err(invalid_input!("the token length must be at least 1"));
        }
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| invalid_input!("cannot tokenise the prompt with {}: {e}", self.path.display()))?;
        let mut ids = encoding.get_ids().to_vec();
        let dropped = ids.len().saturating_sub(length - 1);
        ids.truncate(length - 1);
        ids.push(self.eos_id);
        let mut mask = vec![1; ids.len()];
        mask.resize(length, 0);
        ids.resize(length, self.pad_id);
        Ok(TokenizedPrompt { ids, mask, dropped })
    }
}

fn find_tokenizer_json(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let candidates = [
        path.join("tokenizer.json"),
        path.join("tokenizer/tokenizer.json"),
        path.join("google/umt5-xxl/tokenizer.json"),
    ];
    candidates.iter().find(|c| c.is_file()).cloned().ok_or_else(|| Error::Io {
        path: path.join("tokenizer.json"),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no tokenizer.json here (also looked in tokenizer/ and google/umt5-xxl/)",
        ),
    })
}
