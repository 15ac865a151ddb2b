//! LLM token counting with tiktoken's encodings (their tables ship inside the tiktoken-rs
//! crate, so nothing is fetched): `cl100k_base` for a memory's `tokenCount`, any of them for
//! context-window budgets.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

/// An LLM tokenizer a context window can be budgeted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmTokenizer {
    Cl100k,
    O200k,
    P50k,
    R50k,
}

impl LlmTokenizer {
    pub const NAMES: &'static str = "cl100k_base, o200k_base, p50k_base, r50k_base";

    pub fn parse(name: &str) -> Option<LlmTokenizer> {
        match name {
            "cl100k_base" => Some(LlmTokenizer::Cl100k),
            "o200k_base" => Some(LlmTokenizer::O200k),
            "p50k_base" => Some(LlmTokenizer::P50k),
            "r50k_base" => Some(LlmTokenizer::R50k),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LlmTokenizer::Cl100k => "cl100k_base",
            LlmTokenizer::O200k => "o200k_base",
            LlmTokenizer::P50k => "p50k_base",
            LlmTokenizer::R50k => "r50k_base",
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        static CL100K: OnceLock<CoreBPE> = OnceLock::new();
        static O200K: OnceLock<CoreBPE> = OnceLock::new();
        static P50K: OnceLock<CoreBPE> = OnceLock::new();
        static R50K: OnceLock<CoreBPE> = OnceLock::new();
        let bundled = "the encoding tables ship inside tiktoken-rs";
        match self {
            LlmTokenizer::Cl100k => {
                CL100K.get_or_init(|| tiktoken_rs::cl100k_base().expect(bundled))
            }
            LlmTokenizer::O200k => O200K.get_or_init(|| tiktoken_rs::o200k_base().expect(bundled)),
            LlmTokenizer::P50k => P50K.get_or_init(|| tiktoken_rs::p50k_base().expect(bundled)),
            LlmTokenizer::R50k => R50K.get_or_init(|| tiktoken_rs::r50k_base().expect(bundled)),
        }
    }

    /// Tokens `text` costs in this tokenizer's models' context.
    pub fn count(self, text: &str) -> usize {
        self.bpe().encode_ordinary(text).len()
    }
}

/// Tokens `text` costs in a `cl100k_base` model's context (a memory's `tokenCount`).
pub fn llm_tokens(text: &str) -> usize {
    LlmTokenizer::Cl100k.count(text)
}

/// Builds the tokenizer ahead of the first request (it takes a moment to parse).
pub fn warm_up() {
    let _ = LlmTokenizer::Cl100k.bpe();
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_like_tiktoken() {
        // tiktoken: len(enc.encode("hello world")) == 2 for cl100k_base.
        assert_eq!(super::llm_tokens("hello world"), 2);
        assert_eq!(super::llm_tokens(""), 0);
    }
}
