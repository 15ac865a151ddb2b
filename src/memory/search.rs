//! Retrieval: similarity search, filtered semantic/keyword/hybrid query, batch search and
//! token-budgeted context windows, all within the caller's own memories. [`Search::new`] is the
//! one validator of a query's text and result limit.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use crate::db::run_blocking;
use crate::embed::tokens::LlmTokenizer;
use crate::error::{ApiError, ApiResult};
use crate::http::extract::{Paging, limit_within, parse_value};
use crate::index::{Hit, RowId};
use crate::state::AppState;

use super::engine::Generation;
use super::model::{
    BatchSearchBody, ContextWindowBody, Explain, MAX_BATCH_QUERIES, MAX_CONTENT_CHARS,
    MAX_SENSITIVITIES, MAX_TAGS, Memory, MemoryFilter, Mode, QueryBody, QueryResult, SearchBody,
    SearchResult, Space, check_list_len, validate_tag,
};
use super::ranking::{self, fuse};
use super::store::{self, KeywordPlan, Owner};
use super::write::embedding_failed;

/// Results per search unless asked otherwise, and at most.
pub const DEFAULT_LIMIT: u32 = 10;
pub const MAX_LIMIT: u32 = 100;
/// How deep each side is ranked before a hybrid fusion.
const HYBRID_DEPTH: usize = 100;
/// Candidates a context window chooses from.
const CONTEXT_CANDIDATES: usize = 100;
/// Largest budget accepted (far beyond any model's window; stops absurd requests).
const MAX_TOKEN_BUDGET: i64 = 2_000_000;
/// Distinct words a keyword or hybrid query may search by, and the index tokens they may make
/// (an unspaced run of Japanese or Chinese is one word of many bigrams). A keyword query costs
/// the index a lookup per token over the whole corpus, so past these it is refused (400).
pub const MAX_KEYWORD_WORDS: usize = 64;
pub const MAX_KEYWORD_TOKENS: usize = 512;

/// A validated search: its text, the spaces it is limited to and how many results it wants.
pub struct Search {
    pub query: String,
    pub spaces: Vec<Space>,
    pub limit: usize,
}

impl Search {
    pub fn new(query: &str, spaces: &[String], limit: Option<u32>) -> ApiResult<Search> {
        let query = query.trim();
        if query.is_empty() {
            return Err(ApiError::field("query", "must not be empty"));
        }
        if query.chars().count() > MAX_CONTENT_CHARS {
            return Err(ApiError::field(
                "query",
                format!("must be at most {MAX_CONTENT_CHARS} characters"),
            ));
        }
        Ok(Search {
            query: query.to_owned(),
            spaces: Space::parse_list("spaces", spaces)?,
            limit: limit_within(limit, DEFAULT_LIMIT, MAX_LIMIT)? as usize,
        })
    }
}

/// Embeds one text (a query).
async fn embed_one(g: &Generation, owner: &Owner, text: String) -> ApiResult<Vec<f32>> {
    let mut out = g
        .embedder
        .embed_interactive(owner.tenant.as_str(), vec![text])
        .await
        .map_err(embedding_failed)?;
    out.pop()
        .map(|e| e.vector)
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the model returned no vector")))
}

/// The rows of the owner's memories that pass `filter`; `None` (no restriction) when it is empty.
async fn allowed_rows(
    state: &AppState,
    owner: &Owner,
    filter: MemoryFilter,
) -> ApiResult<Option<HashSet<RowId>>> {
    if filter.is_empty() {
        return Ok(None);
    }
    let o = owner.clone();
    let rows = state
        .db
        .read(move |c| store::filtered_rows(c, &o, &filter))
        .await?;
    Ok(Some(rows))
}

/// The owner's memories behind index rows. A memory deleted since the index answered is
/// missing from the map: SQLite has the last word.
async fn load_memories(
    state: &AppState,
    g: &Generation,
    owner: &Owner,
    rows: Vec<RowId>,
) -> ApiResult<HashMap<RowId, Memory>> {
    let (o, model) = (owner.clone(), g.model_id().to_owned());
    state
        .db
        .read(move |c| store::by_rows(c, &o, &rows, &model))
        .await
}

/// Searches the owner's index partition on the blocking pool.
async fn nearest(
    g: &Generation,
    owner: &Owner,
    vector: Vec<f32>,
    k: usize,
    allow: Option<HashSet<RowId>>,
) -> ApiResult<Vec<Hit>> {
    let (index, key) = (g.index.clone(), owner.key());
    let calibration = g.embedder.info().calibration;
    run_blocking(move || {
        index
            .search(&key, &vector, k, allow.as_ref())
            .map(|hits| calibrated(hits, calibration))
            .map_err(ApiError::internal)
    })
    .await
}

/// Hits with their cosines as scores on the scale every model shares (see
/// [`crate::embed::catalog::Calibration`]).
fn calibrated(mut hits: Vec<Hit>, calibration: crate::embed::catalog::Calibration) -> Vec<Hit> {
    for h in &mut hits {
        h.score = calibration.score(h.score);
    }
    hits
}

/// `GET`/`POST /memory/search`: the most similar memories, best first.
pub async fn search(state: &AppState, owner: &Owner, s: Search) -> ApiResult<Value> {
    let s = &s;
    state
        .memory
        .stable(|g| async move { search_in(state, &g, owner, s).await })
        .await
}

async fn search_in(
    state: &AppState,
    g: &Generation,
    owner: &Owner,
    s: &Search,
) -> ApiResult<Value> {
    let vector = embed_one(g, owner, s.query.clone()).await?;
    let allow = allowed_rows(state, owner, MemoryFilter::spaces_only(s.spaces.clone())).await?;
    let hits = if allow.as_ref().is_some_and(HashSet::is_empty) {
        Vec::new()
    } else {
        nearest(g, owner, vector, s.limit, allow).await?
    };
    let mut found = load_memories(state, g, owner, hits.iter().map(|h| h.row).collect()).await?;
    let results: Vec<SearchResult> = hits
        .into_iter()
        .filter_map(|h| {
            let memory = found.remove(&h.row)?;
            Some(SearchResult {
                score: h.score,
                memory,
            })
        })
        .collect();
    Ok(json!({ "query": s.query, "count": results.len(), "results": results }))
}

fn filter_from(body: &mut QueryBody) -> ApiResult<MemoryFilter> {
    check_list_len("tags", body.tags.as_ref().map_or(0, Vec::len), MAX_TAGS)?;
    let sensitivity = body
        .sensitivity
        .take()
        .map(|s| s.into_vec())
        .unwrap_or_default();
    check_list_len("sensitivity", sensitivity.len(), MAX_SENSITIVITIES)?;
    let tags = body
        .tags
        .iter()
        .flatten()
        .map(|t| validate_tag("tags", t))
        .collect::<ApiResult<Vec<_>>>()?;
    if let (Some(a), Some(b)) = (body.created_after, body.created_before)
        && a >= b
    {
        return Err(ApiError::field(
            "createdAfter",
            "must be before createdBefore",
        ));
    }
    let source = match body.source.as_deref().map(str::trim) {
        Some("") | None => None,
        Some(s) if s.chars().count() > super::model::MAX_SOURCE_CHARS => {
            return Err(ApiError::field("source", "must be at most 256 characters"));
        }
        Some(s) => Some(s.to_owned()),
    };
    Ok(MemoryFilter {
        spaces: Space::parse_list("spaces", body.spaces.as_deref().unwrap_or_default())?,
        tags,
        tag_mode: body.tag_mode.unwrap_or_default(),
        created_after: body.created_after,
        created_before: body.created_before,
        sensitivity,
        source,
    })
}

/// A checked `/memory/query`.
struct Query {
    text: String,
    mode: Mode,
    paging: Paging,
    threshold: Option<f32>,
    filter: MemoryFilter,
    explain: bool,
}

impl Query {
    fn new(mut body: QueryBody) -> ApiResult<Query> {
        let search = Search::new(&body.query, &[], None)?;
        let paging = Paging::new(body.limit, body.offset, DEFAULT_LIMIT, MAX_LIMIT)?;
        let mode = body.mode.unwrap_or_default();
        if let Some(t) = body.similarity_threshold {
            if !(-1.0..=1.0).contains(&t) {
                return Err(ApiError::field(
                    "similarityThreshold",
                    "must be from -1 to 1",
                ));
            }
            if mode != Mode::Semantic {
                return Err(ApiError::field(
                    "similarityThreshold",
                    "applies to mode \"semantic\" only",
                ));
            }
        }
        if mode != Mode::Semantic {
            let terms = crate::db::fts::terms(&search.query);
            let tokens: HashSet<&String> = terms.iter().flat_map(|t| &t.tokens).collect();
            if terms.len() > MAX_KEYWORD_WORDS || tokens.len() > MAX_KEYWORD_TOKENS {
                return Err(ApiError::field(
                    "query",
                    format!(
                        "has {} distinct words ({} index tokens); a keyword or hybrid query takes at most {MAX_KEYWORD_WORDS} words and {MAX_KEYWORD_TOKENS} tokens",
                        terms.len(),
                        tokens.len()
                    ),
                )
                .with_details(json!({
                    "field": "query",
                    "words": terms.len(), "maxWords": MAX_KEYWORD_WORDS,
                    "tokens": tokens.len(), "maxTokens": MAX_KEYWORD_TOKENS,
                })));
            }
        }
        Ok(Query {
            text: search.query,
            mode,
            paging,
            threshold: body.similarity_threshold,
            filter: filter_from(&mut body)?,
            explain: body.explain.unwrap_or(false),
        })
    }
}

/// Ranked rows with their score and how they ranked.
type Ranked = Vec<(RowId, f64, Explain)>;

/// The exact semantic ranking of the owner's filtered memories, `k` deep, and how many pass.
async fn semantic(
    g: &Generation,
    owner: &Owner,
    q: &Query,
    allow: Option<HashSet<RowId>>,
    k: usize,
    threshold: Option<f32>,
) -> ApiResult<(Vec<Hit>, usize)> {
    let vector = embed_one(g, owner, q.text.clone()).await?;
    let (index, key) = (g.index.clone(), owner.key());
    let calibration = g.embedder.info().calibration;
    let threshold = threshold.map(|t| calibration.cosine(t));
    run_blocking(move || {
        match threshold {
            // Without a floor every candidate counts: the total is how many there are, and the
            // ranking is the search's (graph candidates, rescored exactly), not a full scan.
            None => {
                let total = allow
                    .as_ref()
                    .map_or_else(|| index.owner_len(&key), HashSet::len);
                let hits = index.search(&key, &vector, k, allow.as_ref());
                hits.map(|h| (h, total))
            }
            Some(_) => index.scan(&key, &vector, k, allow.as_ref(), threshold),
        }
        .map(|(hits, total)| (calibrated(hits, calibration), total))
        .map_err(ApiError::internal)
    })
    .await
}

/// The BM25 ranking of the owner's filtered memories, `k` deep, how many match, and what the
/// query searched by.
async fn keyword(
    state: &AppState,
    g: &Generation,
    owner: &Owner,
    q: &Query,
    k: usize,
) -> ApiResult<(Vec<(RowId, f64)>, usize, KeywordPlan)> {
    let (o, f, text) = (owner.clone(), q.filter.clone(), q.text.clone());
    let corpus = g.index.owner_len(&owner.key());
    let share = state.settings.keyword_common_share;
    let st = state.clone();
    state
        .db
        .read(move |c| {
            let plan = store::plan_keywords(c, &o, &text, corpus, share, &st.keyword_df)?;
            let (hits, total) = store::keyword_search(c, &o, &plan, &f, k)?;
            Ok((hits, total, plan))
        })
        .await
}

/// Ranks by the query's mode, `depth` deep; returns the ranking, the total that matched and,
/// for keyword and hybrid, what the keyword side searched by.
async fn rank(
    state: &AppState,
    g: &Generation,
    owner: &Owner,
    q: &Query,
    allow: Option<HashSet<RowId>>,
    depth: usize,
) -> ApiResult<(Ranked, usize, Option<KeywordPlan>)> {
    match q.mode {
        Mode::Semantic => {
            let (hits, total) = semantic(g, owner, q, allow, depth, q.threshold).await?;
            let ranked = hits.iter().enumerate().map(|(i, h)| {
                let e = Explain {
                    semantic_rank: Some(i + 1),
                    semantic_score: Some(h.score),
                    ..Default::default()
                };
                (h.row, f64::from(h.score), e)
            });
            Ok((ranked.collect(), total, None))
        }
        Mode::Keyword => {
            let (hits, total, plan) = keyword(state, g, owner, q, depth).await?;
            let ranked = hits.iter().enumerate().map(|(i, (row, score))| {
                let e = Explain {
                    keyword_rank: Some(i + 1),
                    keyword_score: Some(*score),
                    ..Default::default()
                };
                (*row, *score, e)
            });
            Ok((ranked.collect(), total, Some(plan)))
        }
        Mode::Hybrid => {
            let d = depth.max(HYBRID_DEPTH);
            let ((sem, total), (kw, _, plan)) = tokio::try_join!(
                semantic(g, owner, q, allow, d, None),
                keyword(state, g, owner, q, d)
            )?;
            let fused = fuse(&sem, &kw).into_iter();
            let ranked = fused.map(|f| (f.row, f.score, f.explain)).collect();
            Ok((ranked, total, Some(plan)))
        }
    }
}

/// `POST /memory/query`: semantic, keyword or hybrid retrieval under tag, time, space,
/// sensitivity and source filters, with a similarity floor and offset paging.
pub async fn query(state: &AppState, owner: &Owner, body: QueryBody) -> ApiResult<Value> {
    let q = &Query::new(body)?;
    state
        .memory
        .stable(|g| async move { query_in(state, &g, owner, q).await })
        .await
}

async fn query_in(state: &AppState, g: &Generation, owner: &Owner, q: &Query) -> ApiResult<Value> {
    let allow = allowed_rows(state, owner, q.filter.clone()).await?;
    let (offset, limit) = (q.paging.offset as usize, q.paging.limit as usize);
    let (ranked, total, plan) = rank(state, g, owner, q, allow, offset + limit).await?;
    let mut page: Ranked = ranked.into_iter().skip(offset).take(limit).collect();
    let rows: Vec<RowId> = page.iter().map(|(r, _, _)| *r).collect();
    let mut keyword_terms = None;
    if let (true, Some(plan)) = (q.explain, plan) {
        let searched: Vec<&String> = plan
            .terms
            .iter()
            .map(|t| &t.word)
            .filter(|w| !plan.ignored.contains(w))
            .collect();
        keyword_terms = Some(json!({ "searched": searched, "ignored": plan.ignored }));
        let (terms, rows) = (plan.terms, rows.clone());
        let mut matched = state
            .db
            .read(move |c| store::matched_terms(c, &terms, &rows))
            .await?;
        for (row, _, e) in &mut page {
            e.matched_terms = Some(matched.remove(row).unwrap_or_default());
        }
    }
    let mut found = load_memories(state, g, owner, rows).await?;
    let results: Vec<QueryResult> = page
        .into_iter()
        .filter_map(|(row, score, e)| {
            let memory = found.remove(&row)?;
            Some(QueryResult {
                score,
                memory,
                explain: q.explain.then_some(e),
            })
        })
        .collect();
    let mut answer = json!({
        "query": &q.text,
        "mode": q.mode,
        "total": total,
        "totalCapped": q.mode == Mode::Keyword && total >= store::MAX_KEYWORD_TOTAL,
        "offset": offset,
        "limit": limit,
        "count": results.len(),
        "results": results,
    });
    if let Some(terms) = keyword_terms {
        answer["keywordTerms"] = terms;
    }
    Ok(answer)
}

/// Names a nested field's error after its place in the batch (`queries[3].limit`).
fn prefix_field(mut e: ApiError, prefix: &str) -> ApiError {
    if let Some(field) = e
        .details
        .as_ref()
        .and_then(|d| d["field"].as_str())
        .map(str::to_owned)
        && !field.starts_with(prefix)
    {
        e.message = format!("{prefix}{}", e.message);
        e.details = Some(json!({ "field": format!("{prefix}{field}") }));
    }
    e
}

fn batch_queries(queries: Vec<Value>) -> ApiResult<Vec<Search>> {
    let n = queries.len();
    if n == 0 || n > MAX_BATCH_QUERIES {
        return Err(ApiError::field(
            "queries",
            format!("a batch holds 1 to {MAX_BATCH_QUERIES} queries; got {n}"),
        ));
    }
    let mut searches = Vec::with_capacity(n);
    for (i, q) in queries.into_iter().enumerate() {
        let prefix = format!("queries[{i}].");
        let s = match q {
            Value::String(text) => Search::new(&text, &[], None),
            Value::Object(_) => {
                let b: SearchBody = parse_value(q, &prefix)?;
                Search::new(&b.query, &b.spaces.unwrap_or_default(), b.limit)
            }
            _ => {
                return Err(ApiError::field(
                    &format!("queries[{i}]"),
                    "must be a string or an object {query, spaces?, limit?}",
                ));
            }
        }
        .map_err(|e| prefix_field(e, &prefix))?;
        searches.push(s);
    }
    Ok(searches)
}

/// Runs every search of a batch on the blocking pool, at most one per core at a time across all
/// requests (the engine's search slots); a search that panics fails the request.
async fn search_all(
    state: &AppState,
    g: &Generation,
    owner: &Owner,
    vectors: Vec<Vec<f32>>,
    allows: Vec<Option<HashSet<RowId>>>,
    depths: Vec<usize>,
) -> ApiResult<Vec<Vec<Hit>>> {
    let key = owner.key();
    let calibration = g.embedder.info().calibration;
    let searches = vectors
        .into_iter()
        .zip(allows)
        .zip(depths)
        .map(|((v, allow), k)| {
            let (index, key, slots) = (g.index.clone(), key.clone(), state.memory.search_slots());
            async move {
                let _slot = slots
                    .acquire_owned()
                    .await
                    .map_err(|e| ApiError::internal(anyhow::anyhow!("search slots closed: {e}")))?;
                run_blocking(move || {
                    index
                        .search(&key, &v, k, allow.as_ref())
                        .map(|hits| calibrated(hits, calibration))
                        .map_err(ApiError::internal)
                })
                .await
            }
        });
    futures_util::future::try_join_all(searches).await
}

/// `POST /memory/batch/search`: up to 50 searches, embedded in one model call and run in
/// parallel; with `deduplicate`, each memory appears once, under the query it matched best.
pub async fn batch_search(
    state: &AppState,
    owner: &Owner,
    body: BatchSearchBody,
) -> ApiResult<Value> {
    let searches = &batch_queries(body.queries)?;
    let deduplicate = body.deduplicate.unwrap_or(false);
    state
        .memory
        .stable(|g| async move { batch_search_in(state, &g, owner, searches, deduplicate).await })
        .await
}

async fn batch_search_in(
    state: &AppState,
    g: &Generation,
    owner: &Owner,
    searches: &[Search],
    deduplicate: bool,
) -> ApiResult<Value> {
    let texts: Vec<String> = searches.iter().map(|s| s.query.clone()).collect();
    let vectors = g
        .embedder
        .embed_interactive(owner.tenant.as_str(), texts)
        .await
        .map_err(embedding_failed)?
        .into_iter()
        .map(|e| e.vector)
        .collect();
    let mut allows = Vec::with_capacity(searches.len());
    for s in searches {
        let filter = MemoryFilter::spaces_only(s.spaces.clone());
        allows.push(allowed_rows(state, owner, filter).await?);
    }
    let limits: Vec<usize> = searches.iter().map(|s| s.limit).collect();
    let sum: usize = limits.iter().sum();
    let depths = limits
        .iter()
        .map(|l| if deduplicate { sum } else { *l })
        .collect();
    let mut per_query = search_all(state, g, owner, vectors, allows, depths).await?;
    if deduplicate {
        per_query = ranking::dedupe(per_query, &limits);
    }
    let rows: Vec<RowId> = per_query.iter().flatten().map(|h| h.row).collect();
    let found = load_memories(state, g, owner, rows).await?;
    let results: Vec<Value> = searches
        .iter()
        .zip(per_query)
        .map(|(s, hits)| {
            let results: Vec<SearchResult> = hits
                .into_iter()
                .filter_map(|h| {
                    let memory = found.get(&h.row)?.clone();
                    Some(SearchResult {
                        score: h.score,
                        memory,
                    })
                })
                .collect();
            json!({ "query": s.query, "count": results.len(), "results": results })
        })
        .collect();
    Ok(json!({ "deduplicated": deduplicate, "results": results }))
}

/// A checked context-window request.
struct Window {
    search: Search,
    budget: usize,
    tokenizer: LlmTokenizer,
    min_score: f32,
}

impl Window {
    fn new(body: ContextWindowBody) -> ApiResult<Window> {
        let search = Search::new(&body.query, &body.spaces.unwrap_or_default(), None)?;
        if body.token_budget <= 0 || body.token_budget > MAX_TOKEN_BUDGET {
            return Err(ApiError::field(
                "tokenBudget",
                format!("must be from 1 to {MAX_TOKEN_BUDGET}"),
            ));
        }
        let tokenizer = match body.tokenizer.as_deref() {
            None => LlmTokenizer::Cl100k,
            Some(name) => LlmTokenizer::parse(name).ok_or_else(|| {
                ApiError::field(
                    "tokenizer",
                    format!("must be one of {}", LlmTokenizer::NAMES),
                )
            })?,
        };
        let min_score = body.min_score.unwrap_or(0.0);
        if !(-1.0..=1.0).contains(&min_score) {
            return Err(ApiError::field("minScore", "must be from -1 to 1"));
        }
        Ok(Window {
            search,
            budget: body.token_budget as usize,
            tokenizer,
            min_score,
        })
    }
}

/// `POST /memory/context-window`: the most relevant memories whose rendered text fits the
/// token budget, most relevant first, never over budget.
pub async fn context_window(
    state: &AppState,
    owner: &Owner,
    body: ContextWindowBody,
) -> ApiResult<Value> {
    let w = &Window::new(body)?;
    state
        .memory
        .stable(|g| async move { context_window_in(state, &g, owner, w).await })
        .await
}

async fn context_window_in(
    state: &AppState,
    g: &Generation,
    owner: &Owner,
    w: &Window,
) -> ApiResult<Value> {
    let (search, budget, tokenizer, min_score) = (&w.search, w.budget, w.tokenizer, w.min_score);
    let vector = embed_one(g, owner, search.query.clone()).await?;
    let allow = allowed_rows(
        state,
        owner,
        MemoryFilter::spaces_only(search.spaces.clone()),
    )
    .await?;
    let hits: Vec<Hit> = nearest(g, owner, vector, CONTEXT_CANDIDATES, allow)
        .await?
        .into_iter()
        .filter(|h| h.score >= min_score)
        .collect();
    let mut found = load_memories(state, g, owner, hits.iter().map(|h| h.row).collect()).await?;
    let candidates: Vec<(f32, Memory)> = hits
        .into_iter()
        .filter_map(|h| found.remove(&h.row).map(|m| (h.score, m)))
        .collect();
    let (fitted, candidates) = run_blocking(move || {
        let texts: Vec<&str> = candidates.iter().map(|(_, m)| m.content.trim()).collect();
        let fitted = ranking::fit_budget(&texts, budget, |t| tokenizer.count(t));
        Ok((fitted, candidates))
    })
    .await?;
    let chosen: Vec<SearchResult> = fitted
        .chosen
        .iter()
        .map(|&i| SearchResult {
            score: candidates[i].0,
            memory: candidates[i].1.clone(),
        })
        .collect();
    Ok(json!({
        "query": search.query,
        "tokenizer": tokenizer.name(),
        "tokenBudget": budget,
        "tokensUsed": fitted.tokens,
        "order": "relevance",
        "separator": ranking::SEPARATOR,
        "context": fitted.context,
        "memories": chosen,
        "candidates": candidates.len(),
        "omitted": candidates.len() - chosen.len(),
    }))
}
