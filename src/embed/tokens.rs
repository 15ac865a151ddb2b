//! LLM token counting (tiktoken's `cl100k_base`, bundled in the tiktoken-rs crate), used for a
//! memory's `tokenCount` and for context-window budgets.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

/// The tokenizer `tokenCount` is measured with.
pub const LLM_TOKENIZER: &str = "cl100k_base";

fn cl100k() -> &'static CoreBPE {
    static BPE: OnceLock<CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::cl100k_base().expect("cl100k_base ships inside tiktoken-rs"))
}

/// Tokens `text` costs in a `cl100k_base` model's context.
pub fn llm_tokens(text: &str) -> usize {
    cl100k().encode_ordinary(text).len()
}

/// Builds the tokenizer ahead of the first request (it takes a moment to parse).
pub fn warm_up() {
    let _ = cl100k();
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
