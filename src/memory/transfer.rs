//! Moving memories in bulk: the streamed export (Server-Sent Events, resumable) and the streamed
//! import of such an export or of JSON lines, exact to the ids, timestamps and embeddings.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::sse::Event;
use base64::Engine;
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use crate::auth::Grant;
use crate::auth::perm::{MemoryRead, MemoryWrite};
use crate::clock::Timestamp;
use crate::db::run_blocking;
use crate::embed::Embedding;
use crate::embed::tokens::llm_tokens;
use crate::error::{ApiError, ApiResult, Code};
use crate::http::extract::parse_value;
use crate::ids::MemoryId;
use crate::index::RowId;
use crate::memory::engine::{Generation, Indexed};
use crate::state::AppState;

use super::model::{ExportRecord, NewMemory, Space, WriteRequest};
use super::store::{self, Owner, Prepared};
use super::write::{self, embedding_failed};

/// Memories per export page (one short read each).
const EXPORT_PAGE: usize = 1000;
/// Records per import transaction, and the bytes of records held before one is written: what an
/// import holds is bounded by both.
const IMPORT_CHUNK: usize = 256;
const IMPORT_CHUNK_BYTES: usize = 16 << 20;
/// Imports of one tenant running at once; past it, 429 with `Retry-After`.
pub const MAX_IMPORTS_PER_TENANT: usize = 2;
/// Longest wait for the next piece of an import's body.
const IMPORT_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a refused import's remaining body is read (and dropped) so the client gets its
/// answer instead of a reset connection.
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest import body.
const MAX_IMPORT_BYTES: usize = 1 << 30;
/// Per-record errors reported in an import response at most.
const MAX_IMPORT_ERRORS: usize = 100;

/// Where an export resumes: after the `Last-Event-ID` header's cursor, or `?after=`.
pub fn resume_point(headers: &HeaderMap, param: Option<&str>) -> ApiResult<RowId> {
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

/// Where an export stream is.
struct Cursor {
    state: AppState,
    /// The caller, re-checked between pages: a key revoked or expired, or a user removed or
    /// demoted, mid-stream ends it with an `error` event.
    grant: Grant<MemoryRead>,
    /// The authentication epoch the caller was last checked in, and when their key expires.
    checked: Option<(u64, Option<Timestamp>)>,
    owner: Owner,
    spaces: Vec<Space>,
    after: RowId,
    sent: usize,
    finished: bool,
}

impl Cursor {
    /// The next page of records, serialised on the blocking pool with the read.
    async fn next_page(&self) -> ApiResult<Vec<(RowId, String)>> {
        let (o, s, after) = (self.owner.clone(), self.spaces.clone(), self.after);
        self.state
            .db
            .read(move |conn| {
                // The model of the vectors, read with them (a switch may finish between pages).
                let model = store::stored_model(conn)?.unwrap_or_default();
                let records = store::export_page(conn, &o, &s, after, EXPORT_PAGE, &model)?;
                records
                    .into_iter()
                    .map(|(row, r)| {
                        Ok((row, serde_json::to_string(&r).map_err(ApiError::internal)?))
                    })
                    .collect()
            })
            .await
    }

    /// Whether the caller may still read: re-read only when something about who may
    /// authenticate changed since the last check (the epoch moved) or the key's expiry passed.
    async fn still_allowed(&mut self) -> ApiResult<()> {
        let epoch = self.state.db.auth_epoch();
        let now = self.state.clock.now();
        if let Some((at, expires)) = self.checked
            && at == epoch
            && expires.is_none_or(|e| e > now)
        {
            return Ok(());
        }
        let expires = self.grant.still_allowed(&self.state).await?;
        self.checked = Some((epoch, expires));
        Ok(())
    }

    /// The events of one step of the stream: a page of `memory` events, or the final `done`
    /// (or `error`, with the same error body as a response; its cause is logged).
    async fn step(&mut self) -> Vec<Event> {
        if let Err(e) = self.still_allowed().await {
            self.finished = true;
            return vec![Event::default().event("error").data(e.body().to_string())];
        }
        match self.next_page().await {
            Ok(records) if records.is_empty() => {
                self.finished = true;
                let done = json!({ "count": self.sent }).to_string();
                vec![Event::default().event("done").data(done)]
            }
            Ok(records) => {
                self.sent += records.len();
                if let Some((last, _)) = records.last() {
                    self.after = *last;
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
                self.finished = true;
                vec![Event::default().event("error").data(e.body().to_string())]
            }
        }
    }
}

/// Every memory of `owner` in `spaces` after `after`, oldest first, one page at a time (constant
/// memory, no lock held between pages); each event's `id:` is a cursor to resume after.
pub fn export(
    state: AppState,
    grant: Grant<MemoryRead>,
    spaces: Vec<Space>,
    after: RowId,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let start = Cursor {
        state,
        owner: Owner::of(&grant),
        grant,
        checked: None,
        spaces,
        after,
        sent: 0,
        finished: false,
    };
    futures_util::stream::unfold(start, |mut c| async move {
        if c.finished {
            return None;
        }
        let events = c.step().await;
        Some((futures_util::stream::iter(events.into_iter().map(Ok)), c))
    })
    .flatten()
}

/// Longest line an import accepts (a record with the longest content and its embedding takes
/// well under a tenth of it); a longer line is reported as failed and skipped. An SSE event's
/// data (its `data:` lines together) is held to the same limit: past it the stream is not an
/// export memesh made, and the import stops with 413.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A record read from an import body, or why its line could not be one.
type RawRecord = (usize, Result<String, ApiError>);

/// Splits an import body into records: JSON lines, or the `data:` of `memory` events of an
/// exported SSE stream. Each byte is looked at once, and no line is held beyond the limit.
struct RecordReader {
    sse: bool,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already known to hold no newline.
    scanned: usize,
    /// The current line passed the limit: its bytes are being skipped until its end.
    skipping: bool,
    line: usize,
    event: Option<String>,
    data: String,
    /// Set when an event's data passed [`MAX_LINE_BYTES`]: the line it happened at.
    event_too_large: Option<usize>,
}

impl RecordReader {
    fn new(sse: bool) -> RecordReader {
        RecordReader {
            sse,
            buffer: Vec::new(),
            scanned: 0,
            skipping: false,
            line: 0,
            event: None,
            data: String::new(),
            event_too_large: None,
        }
    }

    /// The import must stop: an event's data passed the limit.
    fn refusal(&self) -> Option<ApiError> {
        self.event_too_large.map(|line| {
            ApiError::new(
                Code::PayloadTooLarge,
                format!(
                    "an event's data is limited to {MAX_LINE_BYTES} bytes; the event at line {line} is longer"
                ),
            )
            .with_details(json!({ "limit": MAX_LINE_BYTES, "line": line }))
        })
    }

    /// Feeds bytes; appends the records (with their line numbers) they complete.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<RawRecord>) {
        self.buffer.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.buffer[self.scanned..].iter().position(|b| *b == b'\n') {
            if self.event_too_large.is_some() {
                return;
            }
            let end = self.scanned + pos;
            self.line += 1;
            if std::mem::take(&mut self.skipping) {
                out.push((self.line, Err(line_too_long())));
            } else {
                let text = String::from_utf8_lossy(&self.buffer[start..end]).into_owned();
                self.take_line(text.trim_end_matches('\r'), out);
            }
            start = end + 1;
            self.scanned = start;
        }
        self.buffer.drain(..start);
        self.scanned = self.buffer.len();
        if self.buffer.len() > MAX_LINE_BYTES {
            if self.sse {
                // One line of an event past the limit: its event is.
                self.event_too_large = Some(self.line + 1);
                self.buffer.clear();
                self.scanned = 0;
                return;
            }
            self.skipping = true;
            self.buffer.clear();
            self.scanned = 0;
        }
    }

    fn finish(&mut self, out: &mut Vec<RawRecord>) {
        if self.skipping {
            self.line += 1;
            out.push((self.line, Err(line_too_long())));
        } else if !self.buffer.is_empty() {
            let raw = std::mem::take(&mut self.buffer);
            self.line += 1;
            let text = String::from_utf8_lossy(&raw).into_owned();
            self.take_line(text.trim_end_matches('\r'), out);
        }
        self.take_line("", out);
    }

    fn take_line(&mut self, line: &str, out: &mut Vec<RawRecord>) {
        if !self.sse {
            if !line.trim().is_empty() {
                out.push((self.line, Ok(line.to_owned())));
            }
            return;
        }
        if line.is_empty() {
            let event = self.event.take();
            let data = std::mem::take(&mut self.data);
            if !data.is_empty() && event.as_deref().is_none_or(|e| e == "memory") {
                out.push((self.line, Ok(data)));
            }
        } else if let Some(v) = line.strip_prefix("event:") {
            self.event = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            if self.data.len() + 1 + v.len() > MAX_LINE_BYTES {
                self.event_too_large = Some(self.line);
                self.data = String::new();
                return;
            }
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(v);
        }
    }
}

fn line_too_long() -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        format!("the line is longer than {MAX_LINE_BYTES} bytes; it was skipped"),
    )
}

/// A record checked and ready to restore (its embedding may still be missing).
struct Incoming {
    line: usize,
    id: MemoryId,
    created_at: Timestamp,
    memory: NewMemory,
    vector: Option<Vec<f32>>,
    token_count: usize,
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
        idempotency_key: None,
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
        token_count: llm_tokens(&memory.content),
        memory,
        vector,
    })
}

/// What an import did, record by record.
#[derive(Default)]
struct ImportTally {
    imported: usize,
    skipped: usize,
    failed: usize,
    errors: Vec<Value>,
}

impl ImportTally {
    /// A record that failed: counted, and reported with the same error body as a response.
    fn fail(&mut self, line: usize, e: &ApiError) {
        self.failed += 1;
        if self.errors.len() < MAX_IMPORT_ERRORS {
            self.errors
                .push(json!({ "line": line, "error": e.error_object() }));
        }
    }

    fn report(&self) -> Value {
        json!({
            "imported": self.imported,
            "skipped": self.skipped,
            "failed": self.failed,
            "errors": self.errors,
        })
    }
}

/// Gives every checked record its embedding: the exported one when it came from `g`'s model,
/// else a fresh one from it.
async fn embed_missing(
    g: &Generation,
    lane: &str,
    ready: Vec<Incoming>,
) -> ApiResult<Vec<(Incoming, Prepared)>> {
    let missing: Vec<String> = ready
        .iter()
        .filter(|r| r.vector.is_none())
        .map(|r| r.memory.content.clone())
        .collect();
    let mut embedded = if missing.is_empty() {
        Vec::new()
    } else {
        g.embedder
            .embed(lane, missing)
            .await
            .map_err(embedding_failed)?
    }
    .into_iter();
    let mut prepared = Vec::with_capacity(ready.len());
    for mut r in ready {
        let embedding = match r.vector.take() {
            Some(vector) => Embedding {
                tokens: 0,
                truncated: false,
                vector,
            },
            None => embedded.next().ok_or_else(|| {
                ApiError::internal(anyhow::anyhow!("the model returned too few vectors"))
            })?,
        };
        let item = Prepared {
            token_count: r.token_count,
            memory: r.memory.clone(),
            embedding,
        };
        prepared.push((r, item));
    }
    Ok(prepared)
}

/// Restores one chunk in one transaction. An id the caller already has is skipped (imports can
/// be repeated); an id that belongs to someone else is refused.
async fn import_chunk(
    state: &AppState,
    grant: &Grant<MemoryWrite>,
    records: Vec<RawRecord>,
    tally: &mut ImportTally,
) -> ApiResult<()> {
    let g = state.memory.generation();
    let model = g.model_id().to_owned();
    let dim = g.embedder.info().dim;
    // Parsing, decoding and token counting are CPU work: off the async workers.
    let checked = run_blocking(move || {
        Ok(records
            .into_iter()
            .map(|(line, raw)| (line, raw.and_then(|r| check_record(line, &r, &model, dim))))
            .collect::<Vec<_>>())
    })
    .await?;
    let mut ready = Vec::new();
    for (line, record) in checked {
        match record {
            Ok(r) => ready.push(r),
            Err(e) => tally.fail(line, &e),
        }
    }
    let mut prepared = embed_missing(&g, grant.tenant().as_str(), ready).await?;
    let mut model = g.model_id().to_owned();
    let owner = Owner::of(grant);
    for _ in 0..write::SWITCH_RETRIES {
        let (s, owner) = (state.clone(), owner.clone());
        let written = grant
            .write(&state.db, move |w| {
                // A model switch committed since these vectors were made (read in this
                // transaction, so one earlier in the same group commit counts): embed again.
                if store::stored_model(w)?.as_deref() != Some(model.as_str()) {
                    return Ok(Err(prepared));
                }
                let mut outcomes = Vec::new();
                let mut entries: Vec<Indexed> = Vec::new();
                for (incoming, item) in prepared {
                    let outcome = match store::id_owner(w, &incoming.id)? {
                        Some((t, u)) if t == owner.tenant && u == owner.user => Ok(false),
                        Some(_) => Err(ApiError::new(
                            Code::MemoryIdTaken,
                            "this memory id is already taken",
                        )),
                        None => {
                            let row = store::insert_imported(
                                w,
                                &incoming.id,
                                &item,
                                incoming.created_at,
                            )?;
                            let at = incoming.created_at.millis();
                            entries.push((row, at, item.embedding.vector));
                            Ok(true)
                        }
                    };
                    outcomes.push((incoming.line, outcome));
                }
                let key = owner.key();
                w.after_commit(move || s.memory.committed_inserts(&key, &entries));
                Ok(Ok(outcomes))
            })
            .await?;
        let outcomes = match written {
            Ok(outcomes) => outcomes,
            Err(back) => {
                // Every vector, exported or made here, was the old model's: all anew.
                let g = state.memory.generation();
                model = g.model_id().to_owned();
                let ready = back
                    .into_iter()
                    .map(|(mut incoming, _)| {
                        incoming.vector = None;
                        incoming
                    })
                    .collect();
                prepared = embed_missing(&g, grant.tenant().as_str(), ready).await?;
                continue;
            }
        };
        for (line, outcome) in outcomes {
            match outcome {
                Ok(true) => tally.imported += 1,
                Ok(false) => tally.skipped += 1,
                Err(e) => tally.fail(line, &e),
            }
        }
        return Ok(());
    }
    Err(write::switched_meanwhile())
}

fn too_large_import() -> ApiError {
    ApiError::new(
        Code::PayloadTooLarge,
        "imports are limited to 1 GiB; split the file",
    )
}

/// Whether an import body is an SSE export (true) or JSON lines, by its content type.
fn is_event_stream(headers: &HeaderMap) -> ApiResult<bool> {
    let mime = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    match mime.as_str() {
        "text/event-stream" => Ok(true),
        "application/x-ndjson" | "application/jsonl" | "application/json-lines" => Ok(false),
        _ => Err(ApiError::new(
            Code::UnsupportedMediaType,
            "send JSON lines (application/x-ndjson) or an export stream (text/event-stream)",
        )),
    }
}

/// Restores exported memories (JSON lines, or the SSE stream itself) with their ids, metadata
/// and timestamps. The body is read as a stream, a chunk at a time.
pub async fn import(
    state: &AppState,
    grant: &Grant<MemoryWrite>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Value> {
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_IMPORT_BYTES as u64) {
        return Err(too_large_import());
    }
    let _slot = state.imports.enter(grant.tenant())?;
    let mut reader = RecordReader::new(is_event_stream(headers)?);
    let mut tally = ImportTally::default();
    let mut pending: Vec<RawRecord> = Vec::new();
    let mut received = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = next_chunk(&mut stream).await? {
        let chunk =
            chunk.map_err(|e| ApiError::new(Code::MalformedJson, format!("reading body: {e}")))?;
        received += chunk.len();
        if received > MAX_IMPORT_BYTES {
            return Err(too_large_import());
        }
        reader.feed(&chunk, &mut pending);
        if let Some(e) = reader.refusal() {
            drain(&mut stream, received).await;
            return Err(with_tally(e, &tally));
        }
        while pending.len() >= IMPORT_CHUNK || held_bytes(&pending) >= IMPORT_CHUNK_BYTES {
            let rest = pending.split_off(IMPORT_CHUNK.min(pending.len()));
            let chunk = std::mem::replace(&mut pending, rest);
            import_chunk(state, grant, chunk, &mut tally).await?;
        }
    }
    reader.finish(&mut pending);
    if let Some(e) = reader.refusal() {
        return Err(with_tally(e, &tally));
    }
    if !pending.is_empty() {
        import_chunk(state, grant, pending, &mut tally).await?;
    }
    Ok(tally.report())
}

/// The next piece of an import's body, or 408 when none came for [`IMPORT_IDLE`]: an import
/// has no overall deadline (it takes as long as its data), so a stalled sender is cut off.
async fn next_chunk<S>(stream: &mut S) -> ApiResult<Option<Result<axum::body::Bytes, axum::Error>>>
where
    S: Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
{
    tokio::time::timeout(IMPORT_IDLE, stream.next())
        .await
        .map_err(|_| {
            ApiError::new(
                Code::RequestTimeout,
                format!(
                    "no part of the body arrived for {} s; the import stopped (what was read before is stored)",
                    IMPORT_IDLE.as_secs()
                ),
            )
        })
}

/// The bytes of the records waiting to be written.
fn held_bytes(pending: &[RawRecord]) -> usize {
    pending
        .iter()
        .map(|(_, r)| r.as_ref().map_or(0, String::len))
        .sum()
}

/// A refusal that stops an import, with what it had done before (those records are stored).
fn with_tally(e: ApiError, tally: &ImportTally) -> ApiError {
    let mut details = e.details.clone().unwrap_or_else(|| json!({}));
    details["imported"] = json!(tally.imported);
    details["skipped"] = json!(tally.skipped);
    details["failed"] = json!(tally.failed);
    e.with_details(details)
}

/// Reads and drops what is left of a refused body (within the size cap and a deadline), so
/// the client reads the refusal rather than a connection reset in the middle of its upload.
async fn drain<S>(stream: &mut S, mut received: usize)
where
    S: Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin,
{
    let rest = async {
        while let Some(Ok(chunk)) = stream.next().await {
            received += chunk.len();
            if received > MAX_IMPORT_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_DEADLINE, rest).await;
}

/// How many imports each tenant is running; an import holds its place while it runs.
#[derive(Default)]
pub struct ImportSlots(std::sync::Mutex<std::collections::HashMap<crate::ids::TenantId, usize>>);

/// A running import's place, given back when it ends (however it ends).
pub struct ImportSlot<'a> {
    slots: &'a ImportSlots,
    tenant: crate::ids::TenantId,
}

impl ImportSlots {
    /// Takes a place for `tenant`, or 429 when it already runs [`MAX_IMPORTS_PER_TENANT`].
    pub fn enter(&self, tenant: &crate::ids::TenantId) -> ApiResult<ImportSlot<'_>> {
        let mut running = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = running.entry(tenant.clone()).or_default();
        if *n >= MAX_IMPORTS_PER_TENANT {
            return Err(ApiError::new(
                Code::RateLimited,
                format!(
                    "this tenant already runs {MAX_IMPORTS_PER_TENANT} imports; retry when one has finished"
                ),
            )
            .with_details(json!({ "limit": MAX_IMPORTS_PER_TENANT, "retryAfterSeconds": 5 })));
        }
        *n += 1;
        Ok(ImportSlot {
            slots: self,
            tenant: tenant.clone(),
        })
    }
}

impl Drop for ImportSlot<'_> {
    fn drop(&mut self) {
        let mut running = self
            .slots
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = running.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.tenant);
            }
        }
    }
}
