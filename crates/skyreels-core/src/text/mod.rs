//! Prompts to token ids: the reference's text cleaning and the umT5 tokenizer.

mod clean;
mod tokenizer;

pub use clean::clean_prompt;
pub use tokenizer::{PromptTokenizer, TokenizedPrompt};
