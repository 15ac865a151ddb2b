//! Ranking logic of the retrieval endpoints, free of I/O: score fusion for hybrid queries,
//! cross-query deduplication for batch search, and fitting memories into a token budget for
//! context windows.

use std::collections::{HashMap, HashSet};

use crate::index::{Hit, RowId};

use super::model::Explain;

/// The weight of the semantic side in a hybrid score (the keyword side has the rest): equal.
/// Chosen before measuring, not tuned: with multilingual-e5-small it puts hybrid above both of
/// its sides on every labelled set (docs/benchmarks.md, issue 23), where reciprocal rank fusion
/// fell below the better side on JSQuAD (keyword) and on AppStream Japanese (semantic).
pub const SEMANTIC_WEIGHT: f64 = 0.5;

/// One fused result.
#[derive(Debug, Clone)]
pub struct Fused {
    pub row: RowId,
    pub score: f64,
    pub explain: Explain,
}

/// A side's scores scaled to 0..1 over its own list (best 1, last 0; all 1 when they are equal):
/// cosines and BM25 scores become comparable, whatever the model's band or the query's length.
fn normalized(scores: impl Iterator<Item = f64> + Clone) -> impl Fn(f64) -> f64 {
    let hi = scores.clone().fold(f64::NEG_INFINITY, f64::max);
    let lo = scores.fold(f64::INFINITY, f64::min);
    move |s| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 }
}

/// Fuses a semantic and a keyword ranking (each best first, as deep as the hybrid asks) by a
/// convex combination of their normalised scores, [`SEMANTIC_WEIGHT`] to the semantic side: a
/// memory near the top of both ranks first, and a side whose scores barely separate its
/// results (a query whose words are everywhere, a model unsure of a meaning) moves the result
/// less than ranks would. Ties go to the newer memory (higher rowid).
pub fn fuse(semantic: &[Hit], keyword: &[(RowId, f64)]) -> Vec<Fused> {
    let mut by_row: HashMap<RowId, Fused> = HashMap::new();
    let sem = normalized(semantic.iter().map(|h| f64::from(h.score)));
    for (rank, hit) in semantic.iter().enumerate() {
        let entry = by_row.entry(hit.row).or_insert_with(|| Fused {
            row: hit.row,
            score: 0.0,
            explain: Explain::default(),
        });
        entry.score += SEMANTIC_WEIGHT * sem(f64::from(hit.score));
        entry.explain.semantic_rank = Some(rank + 1);
        entry.explain.semantic_score = Some(hit.score);
    }
    let kw = normalized(keyword.iter().map(|(_, s)| *s));
    for (rank, (row, score)) in keyword.iter().enumerate() {
        let entry = by_row.entry(*row).or_insert_with(|| Fused {
            row: *row,
            score: 0.0,
            explain: Explain::default(),
        });
        entry.score += (1.0 - SEMANTIC_WEIGHT) * kw(*score);
        entry.explain.keyword_rank = Some(rank + 1);
        entry.explain.keyword_score = Some(*score);
    }
    let mut fused: Vec<Fused> = by_row.into_values().collect();
    for f in &mut fused {
        f.explain.fused_score = Some(f.score);
    }
    fused.sort_by(|a, b| b.score.total_cmp(&a.score).then(b.row.cmp(&a.row)));
    fused
}

/// Gives every row to at most one query: pairs are taken best score first, and a row goes to
/// the best-scoring query that still has room (the earlier query on a tie). Each query's list
/// must hold its limit plus the other queries' limits, so rows taken by other queries never
/// leave it short.
pub fn dedupe(per_query: Vec<Vec<Hit>>, limits: &[usize]) -> Vec<Vec<Hit>> {
    let mut pairs: Vec<(usize, Hit)> = per_query
        .iter()
        .enumerate()
        .flat_map(|(q, hits)| hits.iter().map(move |h| (q, *h)))
        .collect();
    pairs.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.cmp(&b.0)));
    let mut taken = HashSet::new();
    let mut out: Vec<Vec<Hit>> = vec![Vec::new(); per_query.len()];
    for (q, hit) in pairs {
        if out[q].len() < limits[q] && taken.insert(hit.row) {
            out[q].push(hit);
        }
    }
    out
}

/// What fit into a token budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitted {
    /// Indices into the candidates, in the order placed.
    pub chosen: Vec<usize>,
    pub context: String,
    pub tokens: usize,
}

/// Blocks of the rendered context are separated by a blank line.
pub const SEPARATOR: &str = "\n\n";

/// Greedily takes candidates (most relevant first) while the rendered context stays within
/// `budget` tokens, skipping any that would not fit. Counting pieces one by one can be off at
/// their seams (a tokenizer may merge across them), so the whole context is counted at the end
/// and the last pieces dropped until it fits: the budget is never exceeded.
pub fn fit_budget(texts: &[&str], budget: usize, count: impl Fn(&str) -> usize) -> Fitted {
    let separator = count(SEPARATOR);
    let mut chosen = Vec::new();
    let mut estimate = 0;
    for (i, text) in texts.iter().enumerate() {
        let cost = count(text) + if chosen.is_empty() { 0 } else { separator };
        if estimate + cost <= budget {
            estimate += cost;
            chosen.push(i);
        }
    }
    loop {
        let context = chosen
            .iter()
            .map(|&i| texts[i])
            .collect::<Vec<_>>()
            .join(SEPARATOR);
        let tokens = count(&context);
        if tokens <= budget || chosen.is_empty() {
            return Fitted {
                chosen,
                context,
                tokens,
            };
        }
        chosen.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(row: RowId, score: f32) -> Hit {
        Hit {
            row,
            score,
            created_at: 0,
        }
    }

    #[test]
    fn fusion_rewards_agreement() {
        let semantic = [hit(1, 0.9), hit(2, 0.8), hit(3, 0.7)];
        let keyword = [(3, 12.0), (4, 9.0)];
        let fused = fuse(&semantic, &keyword);
        assert_eq!(fused[0].row, 3, "on both lists");
        assert_eq!(fused[0].explain.semantic_rank, Some(3));
        assert_eq!(fused[0].explain.keyword_rank, Some(1));
        assert_eq!(fused.len(), 4);
    }

    #[test]
    fn fusion_weighs_by_how_far_apart_scores_are() {
        // The semantic side barely separates 1 and 2; the keyword side clearly prefers 2.
        let semantic = [hit(1, 0.80), hit(2, 0.79), hit(3, 0.10)];
        let keyword = [(2, 20.0), (1, 2.0)];
        let fused = fuse(&semantic, &keyword);
        assert_eq!(fused[0].row, 2);
        assert!(fused.iter().all(|f| (0.0..=1.0).contains(&f.score)));
        // One side alone keeps its order.
        let only: Vec<RowId> = fuse(&semantic, &[]).iter().map(|f| f.row).collect();
        assert_eq!(only, [1, 2, 3]);
    }

    #[test]
    fn dedupe_keeps_best_query_and_backfills() {
        let q0 = vec![hit(1, 0.9), hit(2, 0.5), hit(3, 0.4), hit(4, 0.3)];
        let q1 = vec![hit(2, 0.8), hit(1, 0.2), hit(5, 0.1), hit(6, 0.05)];
        let out = dedupe(vec![q0.clone(), q1.clone()], &[2, 2]);
        let rows: Vec<Vec<RowId>> = out
            .iter()
            .map(|h| h.iter().map(|h| h.row).collect())
            .collect();
        assert_eq!(rows, [vec![1, 3], vec![2, 5]]);
        // A row whose best query is full goes to the next best query with room.
        let out = dedupe(vec![q0, q1], &[1, 3]);
        let rows: Vec<Vec<RowId>> = out
            .iter()
            .map(|h| h.iter().map(|h| h.row).collect())
            .collect();
        assert_eq!(rows, [vec![1], vec![2, 5, 6]]);
    }

    #[test]
    fn fitting_never_exceeds_the_budget() {
        let words = |s: &str| s.split_whitespace().count() + s.matches("\n\n").count();
        let texts = ["a b c", "d e f g h", "i", "j k"];
        for budget in 0..20 {
            let f = fit_budget(&texts, budget, words);
            assert!(f.tokens <= budget, "{budget}: {f:?}");
            assert_eq!(f.tokens, words(&f.context));
        }
        let f = fit_budget(&texts, 6, words);
        assert_eq!(
            f.chosen,
            [0, 2],
            "skips the one that does not fit, takes a later one"
        );
    }
}
