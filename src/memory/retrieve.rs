//! `/v1/memory` retrieval handlers beyond plain search: filtered and hybrid query, batch search,
//! context windows, and streamed export and import.

use std::collections::HashSet;
use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::sse::{Event, KeepAlive, Sse};
use base64::Engine;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::db::run_blocking;
use crate::embed::Embedding;
use crate::embed::tokens::{LlmTokenizer, llm_tokens};
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::{Json, Query, parse_value};
use crate::ids::MemoryId;
use crate::index::{Hit, RowId};
use crate::state::AppState;

use super::handlers::{Search, embed_one, embedding_failed, load_memories, owner, rows_in_spaces};
use super::model::{
    BatchSearchBody, ContextWindowBody, ExportParams, ExportRecord, MAX_BATCH_QUERIES,
    MAX_CONTENT_CHARS, Memory, MemoryFilter, Mode, QueryBody, QueryResult, SearchBody,
    SearchResult, Space, WriteRequest, validate_tag,
};
use super::retrieval::{self, fuse};
use super::store::{self, Owner, Prepared};

const MAX_OFFSET: u32 = 10_000;
/// How deep each side is ranked before a hybrid fusion.
const HYBRID_DEPTH: usize = 100;
/// Candidates a context window chooses from.
const CONTEXT_CANDIDATES: usize = 100;
/// Largest budget accepted (far beyond any model's window; stops absurd requests).
const MAX_TOKEN_BUDGET: i64 = 2_000_000;
/// Memories per export page (one short read each).
const EXPORT_PAGE: usize = 1000;
/// Records per import transaction.
const IMPORT_CHUNK: usize = 256;
/// Largest import body.
const MAX_IMPORT_BYTES: usize = 1 << 30;
/// Per-record errors reported in an import response at most.
const MAX_IMPORT_ERRORS: usize = 100;

fn filter_from(body: &QueryBody) -> ApiResult<MemoryFilter> {
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
        sensitivity: Vec::new(),
        source,
    })
}

fn explained(explain: bool, e: super::model::Explain) -> Option<super::model::Explain> {
    explain.then_some(e)
}

/// `POST /memory/query`: semantic, keyword or hybrid retrieval under tag, time, space,
/// sensitivity and source filters, with a similarity floor and offset paging.
pub async fn query(
    State(state): State<AppState>,
    principal: Principal,
    Json(mut body): Json<QueryBody>,
) -> ApiResult<axum::Json<Value>> {
    let text = body.query.trim().to_owned();
    if text.is_empty() {
        return Err(ApiError::field("query", "must not be empty"));
    }
    if text.chars().count() > MAX_CONTENT_CHARS {
        return Err(ApiError::field("query", "must be at most 16384 characters"));
    }
    let mode = body.mode.unwrap_or_default();
    let limit = body.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::field("limit", "must be from 1 to 100"));
    }
    let offset = body.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::field("offset", "must be at most 10000"));
    }
    let threshold = body.similarity_threshold;
    if let Some(t) = threshold {
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
    let mut filter = filter_from(&body)?;
    filter.sensitivity = body
        .sensitivity
        .take()
        .map(|s| s.into_vec())
        .unwrap_or_default();
    let explain = body.explain.unwrap_or(false);
    let (offset, limit) = (offset as usize, limit as usize);
    let depth = offset + limit;

    let owner = owner(&principal);
    let allow: Option<HashSet<RowId>> = if filter.is_empty() {
        None
    } else {
        let (o, f) = (owner.clone(), filter.clone());
        Some(
            state
                .db
                .read(move |c| store::filtered_rows(c, &o, &f))
                .await?,
        )
    };
    let semantic = |k: usize, threshold: Option<f32>| {
        let (state, text, allow, key) = (state.clone(), text.clone(), allow.clone(), owner.key());
        async move {
            let vector = embed_one(&state, text).await?;
            let index = state.memory.index.clone();
            run_blocking(move || Ok(index.scan(&key, &vector, k, allow.as_ref(), threshold))).await
        }
    };
    let keyword = |k: usize| {
        let (state, text, filter, owner) =
            (state.clone(), text.clone(), filter.clone(), owner.clone());
        async move {
            match store::fts_query(&text) {
                Some(fts) => {
                    state
                        .db
                        .read(move |c| store::keyword_search(c, &owner, &fts, &filter, k))
                        .await
                }
                None => Ok((Vec::new(), 0)),
            }
        }
    };

    let (ranked, total): (Vec<(RowId, f64, super::model::Explain)>, usize) = match mode {
        Mode::Semantic => {
            let (hits, total) = semantic(depth, threshold).await?;
            let ranked = hits
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let e = super::model::Explain {
                        semantic_rank: Some(i + 1),
                        semantic_score: Some(h.score),
                        ..Default::default()
                    };
                    (h.row, f64::from(h.score), e)
                })
                .collect();
            (ranked, total)
        }
        Mode::Keyword => {
            let (hits, total) = keyword(depth).await?;
            let ranked = hits
                .iter()
                .enumerate()
                .map(|(i, (row, score))| {
                    let e = super::model::Explain {
                        keyword_rank: Some(i + 1),
                        keyword_score: Some(*score),
                        ..Default::default()
                    };
                    (*row, *score, e)
                })
                .collect();
            (ranked, total)
        }
        Mode::Hybrid => {
            let d = depth.max(HYBRID_DEPTH);
            let ((sem, total), (kw, _)) = tokio::try_join!(semantic(d, None), keyword(d))?;
            let ranked = fuse(&sem, &kw)
                .into_iter()
                .map(|f| (f.row, f.score, f.explain))
                .collect();
            (ranked, total)
        }
    };
    let page: Vec<(RowId, f64, super::model::Explain)> =
        ranked.into_iter().skip(offset).take(limit).collect();
    let rows: Vec<RowId> = page.iter().map(|(r, _, _)| *r).collect();
    let mut found = load_memories(&state, &owner, rows).await?;
    let results: Vec<QueryResult> = page
        .into_iter()
        .filter_map(|(row, score, e)| {
            found.remove(&row).map(|memory| QueryResult {
                score,
                memory,
                explain: explained(explain, e),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "query": text,
        "mode": mode,
        "total": total,
        "offset": offset,
        "limit": limit,
        "count": results.len(),
        "results": results,
    })))
}

/// `POST /memory/batch/search`: up to 50 searches, embedded in one model call and run in
/// parallel; with `deduplicate`, each memory appears once, under the query it matched best.
pub async fn batch_search(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<BatchSearchBody>,
) -> ApiResult<axum::Json<Value>> {
    let n = body.queries.len();
    if n == 0 || n > MAX_BATCH_QUERIES {
        return Err(ApiError::field(
            "queries",
            format!("a batch holds 1 to {MAX_BATCH_QUERIES} queries; got {n}"),
        ));
    }
    let mut searches = Vec::with_capacity(n);
    for (i, q) in body.queries.into_iter().enumerate() {
        let prefix = format!("queries[{i}].");
        let s = match q {
            Value::String(text) => Search::new(Some(text), Vec::new(), None),
            Value::Object(_) => {
                let b: SearchBody = parse_value(q, &prefix)?;
                Search::new(Some(b.query), b.spaces.unwrap_or_default(), b.limit)
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
    let deduplicate = body.deduplicate.unwrap_or(false);
    let owner = owner(&principal);
    let texts: Vec<String> = searches.iter().map(|s| s.query.clone()).collect();
    let vectors = state
        .memory
        .embedder
        .embed(texts)
        .await
        .map_err(embedding_failed)?;
    let mut allows: Vec<Option<HashSet<RowId>>> = Vec::with_capacity(n);
    for s in &searches {
        allows.push(rows_in_spaces(&state, &owner, &s.spaces).await?);
    }
    let limits: Vec<usize> = searches.iter().map(|s| s.limit).collect();
    let sum: usize = limits.iter().sum();
    let depths: Vec<usize> = limits
        .iter()
        .map(|l| if deduplicate { sum } else { *l })
        .collect();
    let index = state.memory.index.clone();
    let key = owner.key();
    let per_query: Vec<Vec<Hit>> = run_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let chunk = n.div_ceil(threads);
        let jobs: Vec<(usize, Vec<f32>)> =
            vectors.into_iter().map(|e| e.vector).enumerate().collect();
        let mut out: Vec<Vec<Hit>> = vec![Vec::new(); n];
        std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .chunks(chunk.max(1))
                .map(|part| {
                    let (index, key, allows, depths) = (&index, &key, &allows, &depths);
                    scope.spawn(move || {
                        part.iter()
                            .map(|(i, v)| {
                                (*i, index.search(key, v, depths[*i], allows[*i].as_ref()))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            for h in handles {
                for (i, hits) in h.join().unwrap_or_default() {
                    out[i] = hits;
                }
            }
        });
        Ok(out)
    })
    .await?;
    let per_query = if deduplicate {
        retrieval::dedupe(per_query, &limits)
    } else {
        per_query
    };
    let rows: Vec<RowId> = per_query.iter().flatten().map(|h| h.row).collect();
    let found = load_memories(&state, &owner, rows).await?;
    let results: Vec<Value> = searches
        .iter()
        .zip(per_query)
        .map(|(s, hits)| {
            let results: Vec<SearchResult> = hits
                .into_iter()
                .filter_map(|h| {
                    found.get(&h.row).map(|m| SearchResult {
                        score: h.score,
                        memory: m.clone(),
                    })
                })
                .collect();
            json!({ "query": s.query, "count": results.len(), "results": results })
        })
        .collect();
    Ok(axum::Json(
        json!({ "deduplicated": deduplicate, "results": results }),
    ))
}

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

/// `POST /memory/context-window`: the most relevant memories whose rendered text fits the
/// token budget, most relevant first, never over budget.
pub async fn context_window(
    State(state): State<AppState>,
    principal: Principal,
    Json(body): Json<ContextWindowBody>,
) -> ApiResult<axum::Json<Value>> {
    let search = Search::new(Some(body.query), body.spaces.unwrap_or_default(), Some(1))?;
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
    let owner = owner(&principal);
    let vector = embed_one(&state, search.query.clone()).await?;
    let allow = rows_in_spaces(&state, &owner, &search.spaces).await?;
    let index = state.memory.index.clone();
    let key = owner.key();
    let hits: Vec<Hit> =
        run_blocking(move || Ok(index.search(&key, &vector, CONTEXT_CANDIDATES, allow.as_ref())))
            .await?
            .into_iter()
            .filter(|h| h.score >= min_score)
            .collect();
    let rows: Vec<RowId> = hits.iter().map(|h| h.row).collect();
    let mut found = load_memories(&state, &owner, rows).await?;
    let candidates: Vec<(f32, Memory)> = hits
        .into_iter()
        .filter_map(|h| found.remove(&h.row).map(|m| (h.score, m)))
        .collect();
    let budget = body.token_budget as usize;
    let (fitted, candidates) = run_blocking(move || {
        let texts: Vec<&str> = candidates.iter().map(|(_, m)| m.content.trim()).collect();
        let fitted = retrieval::fit_budget(&texts, budget, |t| tokenizer.count(t));
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
    Ok(axum::Json(json!({
        "query": search.query,
        "tokenizer": tokenizer.name(),
        "tokenBudget": budget,
        "tokensUsed": fitted.tokens,
        "order": "relevance",
        "separator": retrieval::SEPARATOR,
        "context": fitted.context,
        "memories": chosen,
        "candidates": candidates.len(),
        "omitted": candidates.len() - chosen.len(),
    })))
}

fn resume_point(headers: &HeaderMap, param: Option<&str>) -> ApiResult<RowId> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(param);
    match raw {
        None => Ok(0),
        Some(s) => s
            .trim()
            .parse::<RowId>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::field("Last-Event-ID", "must be an event id from this export")
            }),
    }
}

/// `GET /memory/stream/export`: every memory of the caller as Server-Sent Events, oldest first,
/// one page at a time (constant memory, no lock held between pages); `id:` is a cursor that
/// `Last-Event-ID` (or `?after=`) resumes after. A final `done` event carries the count.
pub async fn export(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    Query(params): Query<ExportParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let spaces: Vec<String> = params
        .spaces
        .map(|s| s.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let spaces = Space::parse_list("spaces", &spaces)?;
    let after = resume_point(&headers, params.after.as_deref())?;
    let owner = owner(&principal);
    struct Cursor {
        state: AppState,
        owner: Owner,
        spaces: Vec<Space>,
        after: RowId,
        sent: usize,
        finished: bool,
    }
    let start = Cursor {
        state,
        owner,
        spaces,
        after,
        sent: 0,
        finished: false,
    };
    let pages = futures_util::stream::unfold(start, |mut c| async move {
        if c.finished {
            return None;
        }
        let (o, s, after) = (c.owner.clone(), c.spaces.clone(), c.after);
        let model = c.state.memory.model_id().to_owned();
        // Records are serialised on the blocking pool with the read, not on the async workers.
        let page = c
            .state
            .db
            .read(move |conn| {
                let records = store::export_page(conn, &o, &s, after, EXPORT_PAGE, &model)?;
                records
                    .into_iter()
                    .map(|(row, r)| {
                        Ok((row, serde_json::to_string(&r).map_err(ApiError::internal)?))
                    })
                    .collect::<ApiResult<Vec<_>>>()
            })
            .await;
        let events: Vec<Event> = match page {
            Ok(records) if records.is_empty() => {
                c.finished = true;
                vec![
                    Event::default()
                        .event("done")
                        .data(json!({ "count": c.sent }).to_string()),
                ]
            }
            Ok(records) => {
                c.sent += records.len();
                if let Some((last, _)) = records.last() {
                    c.after = *last;
                }
                records
                    .into_iter()
                    .map(|(row, json)| {
                        Event::default()
                            .id(row.to_string())
                            .event("memory")
                            .data(json)
                    })
                    .collect()
            }
            Err(e) => {
                c.finished = true;
                vec![
                    Event::default()
                        .event("error")
                        .data(json!({ "code": e.code.as_str(), "message": e.message }).to_string()),
                ]
            }
        };
        Some((futures_util::stream::iter(events.into_iter().map(Ok)), c))
    })
    .flatten();
    Ok(Sse::new(pages).keep_alive(KeepAlive::default()))
}

/// Splits an import body into records: JSON lines, or the `data:` of `memory` events of an
/// exported SSE stream.
struct RecordReader {
    sse: bool,
    buffer: Vec<u8>,
    line: usize,
    event: Option<String>,
    data: String,
}

impl RecordReader {
    /// Feeds bytes; returns the complete records (with their line numbers) they finish.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<(usize, String)>) {
        self.buffer.extend_from_slice(bytes);
        while let Some(nl) = self.buffer.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.buffer.drain(..=nl).collect();
            self.line += 1;
            let text = String::from_utf8_lossy(&raw);
            self.take_line(text.trim_end_matches(['\r', '\n']), out);
        }
    }

    fn finish(&mut self, out: &mut Vec<(usize, String)>) {
        if !self.buffer.is_empty() {
            let raw = std::mem::take(&mut self.buffer);
            self.line += 1;
            let text = String::from_utf8_lossy(&raw).into_owned();
            self.take_line(text.trim_end_matches('\r'), out);
        }
        self.take_line("", out);
    }

    fn take_line(&mut self, line: &str, out: &mut Vec<(usize, String)>) {
        if !self.sse {
            if !line.trim().is_empty() {
                out.push((self.line, line.to_owned()));
            }
            return;
        }
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data);
            if !data.is_empty() && event.as_deref().is_none_or(|e| e == "memory") {
                out.push((self.line, data));
            }
        } else if let Some(v) = line.strip_prefix("event:") {
            self.event = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
    }
}

/// A record checked and ready to restore (its embedding may still be missing).
struct Incoming {
    line: usize,
    id: MemoryId,
    created_at: crate::clock::Timestamp,
    memory: super::model::NewMemory,
    vector: Option<Vec<f32>>,
}

fn check_record(line: usize, raw: &str, model: &str, dim: usize) -> ApiResult<Incoming> {
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::new(Code::MalformedJson, format!("line {line}: {e}")))?;
    let r: ExportRecord = parse_value(value, "")?;
    let id = MemoryId::parse(&r.id)
        .ok_or_else(|| ApiError::field("id", "is not a memory id (mem_…)"))?;
    let memory = WriteRequest {
        content: r.content,
        space: Some(r.space),
        summary: r.summary,
        tags: Some(r.tags),
        sensitivity: Some(r.sensitivity),
        source: r.source,
    }
    .validate("")?;
    let vector = match (r.embedding_model.as_deref(), r.embedding) {
        (Some(m), Some(b64)) if m == model => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| ApiError::field("embedding", "is not base64"))?;
            let v = store::blob_to_vector(&bytes);
            if v.len() != dim || v.iter().any(|x| !x.is_finite()) {
                return Err(ApiError::field(
                    "embedding",
                    format!("must hold {dim} finite floats"),
                ));
            }
            Some(v)
        }
        _ => None,
    };
    Ok(Incoming {
        line,
        id,
        created_at: r.created_at,
        memory,
        vector,
    })
}

#[derive(Default)]
struct ImportTally {
    imported: usize,
    skipped: usize,
    failed: usize,
    errors: Vec<Value>,
}

impl ImportTally {
    fn fail(&mut self, line: usize, e: &ApiError) {
        self.failed += 1;
        if self.errors.len() < MAX_IMPORT_ERRORS {
            let mut err = json!({ "line": line, "code": e.code.as_str(), "message": e.message });
            if let Some(d) = &e.details {
                err["details"] = d.clone();
            }
            self.errors.push(err);
        }
    }
}

/// Restores one chunk: embeds what came without a usable vector, then inserts in one
/// transaction. An id this owner already has is skipped (imports can be repeated); an id that
/// belongs to someone else is refused.
async fn import_chunk(
    state: &AppState,
    principal: &Principal,
    records: Vec<(usize, String)>,
    tally: &mut ImportTally,
) -> ApiResult<()> {
    let model = state.memory.model_id().to_owned();
    let dim = state.memory.embedder.info().dim;
    let mut ready = Vec::new();
    for (line, raw) in records {
        match check_record(line, &raw, &model, dim) {
            Ok(r) => ready.push(r),
            Err(e) => tally.fail(line, &e),
        }
    }
    let missing: Vec<String> = ready
        .iter()
        .filter(|r| r.vector.is_none())
        .map(|r| r.memory.content.clone())
        .collect();
    let mut embedded = if missing.is_empty() {
        Vec::new()
    } else {
        state
            .memory
            .embedder
            .embed(missing)
            .await
            .map_err(embedding_failed)?
    }
    .into_iter();
    let prepared: Vec<(Incoming, Prepared)> = ready
        .into_iter()
        .map(|mut r| {
            let embedding = match r.vector.take() {
                Some(vector) => Embedding {
                    tokens: 0,
                    truncated: false,
                    vector,
                },
                None => embedded.next().unwrap_or(Embedding {
                    vector: Vec::new(),
                    tokens: 0,
                    truncated: false,
                }),
            };
            let token_count = llm_tokens(&r.memory.content);
            let memory = r.memory.clone();
            (
                r,
                Prepared {
                    memory,
                    embedding,
                    token_count,
                },
            )
        })
        .collect();
    let owner = owner(principal);
    let actor = principal.actor();
    let index = state.memory.index.clone();
    let now = state.clock.now();
    let outcomes = state
        .db
        .write(move |tx| {
            let mut outcomes = Vec::new();
            let mut entries: Vec<(RowId, i64, usize)> = Vec::new();
            for (i, (incoming, item)) in prepared.iter().enumerate() {
                match store::id_owner(tx, &incoming.id)? {
                    Some((t, u)) if t == owner.tenant && u == owner.user => {
                        outcomes.push((incoming.line, Ok(false)));
                    }
                    Some(_) => outcomes.push((
                        incoming.line,
                        Err(ApiError::new(
                            Code::Conflict,
                            "this memory id is already taken",
                        )),
                    )),
                    None => {
                        let row = store::insert_imported(
                            tx,
                            &actor,
                            &owner,
                            &incoming.id,
                            item,
                            incoming.created_at,
                            now,
                        )?;
                        entries.push((row, incoming.created_at.millis(), i));
                        outcomes.push((incoming.line, Ok(true)));
                    }
                }
            }
            let items: Vec<(RowId, i64, &[f32])> = entries
                .iter()
                .map(|(row, at, i)| (*row, *at, prepared[*i].1.embedding.vector.as_slice()))
                .collect();
            index.insert(&owner.key(), &items);
            Ok(outcomes)
        })
        .await?;
    for (line, outcome) in outcomes {
        match outcome {
            Ok(true) => tally.imported += 1,
            Ok(false) => tally.skipped += 1,
            Err(e) => tally.fail(line, &e),
        }
    }
    Ok(())
}

/// `POST /memory/import`: restores exported memories (JSON lines, or the SSE stream itself)
/// with their ids, metadata and timestamps. The body is read as a stream, a chunk at a time.
pub async fn import(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<axum::Json<Value>> {
    let mime = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let sse = match mime.as_str() {
        "text/event-stream" => true,
        "application/x-ndjson" | "application/jsonl" | "application/json-lines" => false,
        _ => {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "send JSON lines (application/x-ndjson) or an export stream (text/event-stream)",
            ));
        }
    };
    let mut reader = RecordReader {
        sse,
        buffer: Vec::new(),
        line: 0,
        event: None,
        data: String::new(),
    };
    let mut tally = ImportTally::default();
    let mut pending: Vec<(usize, String)> = Vec::new();
    let mut received = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::new(Code::MalformedJson, format!("reading body: {e}")))?;
        received += chunk.len();
        if received > MAX_IMPORT_BYTES {
            return Err(ApiError::new(
                Code::PayloadTooLarge,
                "imports are limited to 1 GiB; split the file",
            ));
        }
        reader.feed(&chunk, &mut pending);
        while pending.len() >= IMPORT_CHUNK {
            let rest = pending.split_off(IMPORT_CHUNK);
            import_chunk(
                &state,
                &principal,
                std::mem::replace(&mut pending, rest),
                &mut tally,
            )
            .await?;
        }
    }
    reader.finish(&mut pending);
    if !pending.is_empty() {
        import_chunk(&state, &principal, pending, &mut tally).await?;
    }
    Ok(axum::Json(json!({
        "imported": tally.imported,
        "skipped": tally.skipped,
        "failed": tally.failed,
        "errors": tally.errors,
    })))
}
