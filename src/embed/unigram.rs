//! A compact SentencePiece Unigram model for the Hugging Face tokenizer pipeline.
//!
//! Why it exists: multilingual-e5-small's vocabulary has 250,002 pieces, and the `tokenizers`
//! crate's `Unigram` keeps them in a byte trie with one hash map per node, plus a map from
//! piece to id and a cache. Measured on this project's server: ~283 MiB of live heap for that
//! one tokenizer, held once per model session (the query helper's second session held another),
//! more than the model's weights and the 100k-memory vector index together. Here the same
//! vocabulary is one string of all pieces back to back, their ends, their scores and an
//! open-addressed table of ids (~8 MiB), and the Viterbi search looks each candidate piece up
//! by its bytes instead of walking a trie. Only the model is replaced: the normalizer, the
//! pre-tokenizer, added tokens, truncation and the post-processor are the `tokenizers` crate's
//! own, read from the same `tokenizer.json`.
//!
//! The search is the one in `tokenizers::models::unigram::Unigram::encode_optimized` (itself
//! SentencePiece's): the best-scoring segmentation, a character no piece spells becoming
//! `<unk>` at the lowest score minus 10, consecutive unknowns fused into one. Candidates are
//! tried in the same order (by start, then by length), with the same tie rule, so the ids are
//! the crate's ids; `tests/multilingual.rs` checks them id for id on every text of the labelled
//! sets.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use hashbrown::{DefaultHashBuilder, HashTable};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::hash::BuildHasher;
use tokenizers::models::unigram::UnigramTrainer;
use tokenizers::{
    DecoderWrapper, Model, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Token,
    TokenizerImpl,
};

/// What SentencePiece charges for a character no piece spells, below the lowest piece score.
const UNK_PENALTY: f64 = 10.0;

/// A whole tokenizer (the `tokenizers` pipeline) over a [`CompactUnigram`].
pub type CompactTokenizer = TokenizerImpl<
    CompactUnigram,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// A Unigram vocabulary held compactly (see the module doc).
pub struct CompactUnigram {
    /// Every piece, back to back.
    text: String,
    /// Where each piece ends in `text` (piece `i` starts where piece `i - 1` ends).
    ends: Vec<u32>,
    scores: Vec<f64>,
    /// Piece ids, found by the hash of the piece's bytes.
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// The longest piece, in bytes: no candidate is longer.
    max_len: usize,
    min_score: f64,
    unk_id: u32,
}

impl CompactUnigram {
    fn new(capacity: usize) -> CompactUnigram {
        CompactUnigram {
            text: String::new(),
            ends: Vec::with_capacity(capacity),
            scores: Vec::with_capacity(capacity),
            table: HashTable::with_capacity(capacity),
            hasher: DefaultHashBuilder::default(),
            max_len: 0,
            min_score: f64::INFINITY,
            unk_id: 0,
        }
    }

    fn piece(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }

    /// Adds the next piece; a piece seen before takes the later id (as the crate's map does).
    fn push(&mut self, piece: &str, score: f64) {
        let id = self.ends.len() as u32;
        self.text.push_str(piece);
        self.ends.push(self.text.len() as u32);
        self.scores.push(score);
        self.max_len = self.max_len.max(piece.len());
        self.min_score = self.min_score.min(score);
        let hash = self.hasher.hash_one(piece);
        let Self {
            table,
            text,
            ends,
            hasher,
            ..
        } = self;
        let span = |id: u32| {
            let i = id as usize;
            let start = if i == 0 { 0 } else { ends[i - 1] as usize };
            &text[start..ends[i] as usize]
        };
        match table.find_mut(hash, |&other| span(other) == piece) {
            Some(slot) => *slot = id,
            None => {
                table.insert_unique(hash, id, |&other| hasher.hash_one(span(other)));
            }
        }
    }

    fn lookup(&self, piece: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(piece);
        self.table
            .find(hash, |&id| self.piece(id) == piece)
            .copied()
    }

    /// The best segmentation of `sentence`: `(start, end)` byte spans, unknown characters
    /// fused (see the module doc).
    fn segment(&self, sentence: &str) -> Vec<(usize, usize)> {
        #[derive(Clone, Copy)]
        struct Best {
            score: f64,
            /// Where the best path's last piece starts; `usize::MAX` while none reaches here.
            start: usize,
            unk: bool,
        }
        let size = sentence.len();
        if size == 0 {
            return Vec::new();
        }
        let unk_score = self.min_score - UNK_PENALTY;
        let mut best = vec![
            Best {
                score: 0.0,
                start: usize::MAX,
                unk: false,
            };
            size + 1
        ];
        let offer = |best: &mut [Best], start: usize, end: usize, score: f64, unk: bool| {
            let node = &mut best[end];
            if node.start == usize::MAX || score > node.score {
                *node = Best { score, start, unk };
            }
        };
        let mut start = 0;
        while start < size {
            let here = best[start].score;
            let rest = &sentence[start..];
            let first = rest.chars().next().map_or(1, char::len_utf8);
            let mut single = false;
            for (i, c) in rest.char_indices() {
                let len = i + c.len_utf8();
                if len > self.max_len {
                    break;
                }
                if let Some(id) = self.lookup(&rest[..len]) {
                    offer(
                        &mut best,
                        start,
                        start + len,
                        self.scores[id as usize] + here,
                        false,
                    );
                    single |= len == first;
                }
            }
            if !single {
                offer(&mut best, start, start + first, unk_score + here, true);
            }
            start += first;
        }
        let mut spans = Vec::new();
        let mut end = size;
        // The start of a run of unknowns being fused, walking backwards.
        let mut unk_run: Option<usize> = None;
        while end > 0 {
            let node = best[end];
            if node.unk {
                unk_run.get_or_insert(end);
            } else {
                if let Some(run_end) = unk_run.take() {
                    spans.push((end, run_end));
                }
                spans.push((node.start, end));
            }
            end = node.start;
        }
        if let Some(run_end) = unk_run {
            spans.push((0, run_end));
        }
        spans.reverse();
        spans
    }

    /// Bytes of heap the vocabulary holds (for the module's figure and a test).
    pub fn heap_bytes(&self) -> usize {
        self.text.capacity()
            + self.ends.capacity() * 4
            + self.scores.capacity() * 8
            + self.table.capacity() * 5
    }
}

impl Model for CompactUnigram {
    type Trainer = UnigramTrainer;

    fn tokenize(&self, sentence: &str) -> tokenizers::Result<Vec<Token>> {
        Ok(self
            .segment(sentence)
            .into_iter()
            .map(|(start, end)| {
                let text = &sentence[start..end];
                let id = self.lookup(text).unwrap_or(self.unk_id);
                Token::new(id, text.to_owned(), (start, end))
            })
            .collect())
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.lookup(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        ((id as usize) < self.ends.len()).then(|| self.piece(id).to_owned())
    }

    fn get_vocab(&self) -> HashMap<String, u32> {
        (0..self.ends.len() as u32)
            .map(|id| (self.piece(id).to_owned(), id))
            .collect()
    }

    fn get_vocab_size(&self) -> usize {
        self.ends.len()
    }

    fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
        Err("the compact Unigram model is read from tokenizer.json and never saved".into())
    }

    fn get_trainer(&self) -> UnigramTrainer {
        UnigramTrainer::default()
    }
}

/// Reads the `model` object of a `tokenizer.json` (`{"type": "Unigram", "unk_id", "vocab":
/// [[piece, score], …], "byte_fallback"}`), putting each piece straight into the compact form.
impl<'de> Deserialize<'de> for CompactUnigram {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ModelVisitor)
    }
}

struct ModelVisitor;

impl<'de> Visitor<'de> for ModelVisitor {
    type Value = CompactUnigram;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Unigram model")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CompactUnigram, A::Error> {
        let mut unk_id: Option<usize> = None;
        let mut vocab: Option<CompactUnigram> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => {
                    let kind: String = map.next_value()?;
                    if kind != "Unigram" {
                        return Err(de::Error::custom(format!(
                            "a {kind} model is not a Unigram model"
                        )));
                    }
                }
                "unk_id" => unk_id = map.next_value()?,
                "vocab" => vocab = Some(map.next_value::<Vocab>()?.0),
                "byte_fallback" => {
                    if map.next_value::<bool>()? {
                        return Err(de::Error::custom(
                            "byte fallback is not supported by the compact Unigram model",
                        ));
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let mut model = vocab.ok_or_else(|| de::Error::missing_field("vocab"))?;
        let unk_id = unk_id.ok_or_else(|| de::Error::missing_field("unk_id"))?;
        if unk_id >= model.ends.len() {
            return Err(de::Error::custom("unk_id is not in the vocabulary"));
        }
        model.unk_id = unk_id as u32;
        Ok(model)
    }
}

struct Vocab(CompactUnigram);

impl<'de> Deserialize<'de> for Vocab {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vocab;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of [piece, score]")
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vocab, S::Error> {
                let mut model = CompactUnigram::new(seq.size_hint().unwrap_or(0));
                while let Some((piece, score)) = seq.next_element::<(String, f64)>()? {
                    model.push(&piece, score);
                }
                if model.ends.is_empty() {
                    return Err(de::Error::custom("the vocabulary is empty"));
                }
                Ok(Vocab(model))
            }
        }
        deserializer.deserialize_seq(V)
    }
}

/// Whether a `tokenizer.json` holds a Unigram model (read without building anything).
pub fn is_unigram(tokenizer_json: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct File {
        model: Kind,
    }
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    serde_json::from_slice::<File>(tokenizer_json)
        .is_ok_and(|f| f.model.kind.as_deref() == Some("Unigram"))
}

/// Reads a whole `tokenizer.json` of a Unigram model into a [`CompactTokenizer`].
pub fn read_tokenizer(tokenizer_json: &[u8]) -> anyhow::Result<CompactTokenizer> {
    serde_json::from_slice(tokenizer_json)
        .map_err(|e| anyhow::anyhow!("reading the Unigram tokenizer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(pieces: &[(&str, f64)], unk: u32) -> CompactUnigram {
        let mut m = CompactUnigram::new(pieces.len());
        for (p, s) in pieces {
            m.push(p, *s);
        }
        m.unk_id = unk;
        m
    }

    fn words(m: &CompactUnigram, s: &str) -> Vec<String> {
        m.tokenize(s)
            .unwrap()
            .into_iter()
            .map(|t| t.value)
            .collect()
    }

    #[test]
    fn segments_like_the_crate() {
        // The example of tokenizers' Unigram::encode.
        let m = model(
            &[
                ("<unk>", 0.0),
                ("a", 0.0),
                ("b", 0.0),
                ("c", 0.0),
                ("d", 0.0),
                ("cd", 1.0),
                ("ab", 2.0),
                ("abc", 5.0),
                ("abcd", 10.0),
            ],
            0,
        );
        assert_eq!(words(&m, "abcdacdxx"), ["abcd", "a", "cd", "xx"]);
        let ids: Vec<u32> = m
            .tokenize("abcdacdxx")
            .unwrap()
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, [8, 1, 5, 0]);
        assert_eq!(words(&m, ""), Vec::<String>::new());
        // Unknowns at both ends and between are fused, offsets are byte offsets.
        let t = m.tokenize("é€ab漢字").unwrap();
        let got: Vec<(&str, (usize, usize))> =
            t.iter().map(|t| (t.value.as_str(), t.offsets)).collect();
        assert_eq!(got, [("é€", (0, 5)), ("ab", (5, 7)), ("漢字", (7, 13))]);
    }

    #[test]
    fn a_repeated_piece_takes_its_later_id_and_ties_keep_the_first_path() {
        let m = model(&[("<unk>", 0.0), ("x", -1.0), ("x", -1.0), ("xx", -2.0)], 0);
        assert_eq!(m.token_to_id("x"), Some(2));
        // "xx" (-2, offered from start 0) ties with "x" + "x" (-2, offered later from start 1):
        // the first offer stays.
        let ids: Vec<u32> = m.tokenize("xx").unwrap().iter().map(|t| t.id).collect();
        assert_eq!(ids, [3]);
    }
}
