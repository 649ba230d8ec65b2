//! Prompt → text-encoder states, as the pipelines feed them to the DiT.

use candle_core::Tensor;

use crate::error::Result;
use crate::text::PromptTokenizer;
use crate::UmT5Encoder;

/// An encoded prompt and, when it was too long, how the tokenizer shortened it.
#[derive(Debug, Clone)]
pub struct EncodedPrompt {
    /// `[1, length, d_model]` states; padded rows are zero.
    pub states: Tensor,
    /// A sentence about dropped tokens, if any were.
    pub truncation_warning: Option<String>,
}

/// Cleans, tokenizes (padded to `length`) and encodes `prompt`.
pub fn encode_prompt(
    tokenizer: &PromptTokenizer,
    encoder: &UmT5Encoder,
    prompt: &str,
    length: usize,
) -> Result<EncodedPrompt> {
    let tokens = tokenizer.encode(prompt, length)?;
    let device = encoder.device();
    let ids = Tensor::from_vec(tokens.ids.clone(), (1, length), device)?;
    let mask = Tensor::from_vec(tokens.mask.clone(), (1, length), device)?;
    Ok(EncodedPrompt { states: encoder.encode(&ids, &mask)?, truncation_warning: tokens.truncation_warning() })
}
