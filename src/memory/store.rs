//! Memory SQL: inserting memories with their tags, embeddings and audit rows; reading them back
//! by id or by index rowid (always scoped to the owner); deleting; and streaming every stored
//! vector to fill the index at start-up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use rusqlite::{
    Connection, OptionalExtension, Row, ToSql, Transaction, named_params, params_from_iter,
};
use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::auth::perm::MemoryWrite;
use crate::auth::{Grant, Permission, Write};
use crate::clock::Timestamp;
use crate::db::Decoded;
use crate::db::fts::{self, Term};
use crate::embed::Embedding;
use crate::error::{ApiError, ApiResult};
use crate::ids::{MemoryId, TenantId, UserId};
use crate::index::{OwnerKey, RowId};

use super::model::{
    EmbeddingInfo, ExportRecord, Memory, MemoryFilter, NewMemory, Space, SpaceUsage, TagMode,
};

/// Whose memories: every query is scoped by both.
#[derive(Debug, Clone)]
pub struct Owner {
    pub tenant: TenantId,
    pub user: UserId,
}

impl Owner {
    /// The caller's own memories.
    pub fn of<P: Permission>(grant: &Grant<P>) -> Owner {
        Owner {
            tenant: grant.tenant().clone(),
            user: grant.user().clone(),
        }
    }

    /// The memories of the user a write capability acts for.
    fn writing(w: &Write<'_, MemoryWrite>) -> ApiResult<Owner> {
        let user = w
            .user()
            .cloned()
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a memory write without a user")))?;
        Ok(Owner {
            tenant: w.tenant().clone(),
            user,
        })
    }

    pub fn key(&self) -> OwnerKey {
        OwnerKey::new(&self.tenant, &self.user)
    }
}

pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn blob_to_vector(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

const COLUMNS: &str = "m.seq, m.id, m.content, m.space, m.summary, m.tags, m.sensitivity, m.source,
     m.token_count, m.embed_tokens, m.embed_truncated, m.created_at";

fn memory_from_row(r: &Row<'_>, model: &str) -> rusqlite::Result<(RowId, Memory)> {
    let d = Decoded::new(r, "memories", 1)?;
    Ok((
        d.get(0)?,
        Memory {
            id: d.get(1)?,
            content: d.get(2)?,
            space: d.get(3)?,
            summary: d.get(4)?,
            tags: d.json(5)?,
            sensitivity: d.get(6)?,
            source: d.get(7)?,
            token_count: d.get::<i64>(8)? as usize,
            embedding: EmbeddingInfo {
                model: model.to_owned(),
                tokens: d.get::<i64>(9)? as usize,
                truncated: d.get(10)?,
            },
            created_at: d.get(11)?,
        },
    ))
}

/// A memory ready to insert: validated fields, its embedding and its LLM token count.
pub struct Prepared {
    pub memory: NewMemory,
    pub embedding: Embedding,
    pub token_count: usize,
}

/// Inserts one memory row and its tags; returns its rowid. Callers write the audit row.
fn insert_row(
    w: &Write<'_, MemoryWrite>,
    owner: &Owner,
    id: &MemoryId,
    item: &Prepared,
    created_at: Timestamp,
) -> ApiResult<RowId> {
    let m = &item.memory;
    w.prepare_cached(
        "INSERT INTO memories (id, tenant_id, user_id, space, content, summary, tags, sensitivity,
             source, token_count, embed_tokens, embed_truncated, created_at, embedding)
         VALUES (:id, :tenant, :user, :space, :content, :summary, :tags, :sensitivity, :source,
             :tokens, :etokens, :etrunc, :created, :embedding)",
    )?
    .execute(named_params! {
        ":id": id, ":tenant": owner.tenant, ":user": owner.user, ":space": m.space.as_str(),
        ":content": m.content, ":summary": m.summary,
        ":tags": serde_json::to_string(&m.tags).map_err(ApiError::internal)?,
        ":sensitivity": m.sensitivity.as_str(), ":source": m.source,
        ":tokens": item.token_count as i64, ":etokens": item.embedding.tokens as i64,
        ":etrunc": item.embedding.truncated, ":created": created_at,
        ":embedding": vector_to_blob(&item.embedding.vector),
    })?;
    let row = w.last_insert_rowid();
    let mut tag = w.prepare_cached("INSERT INTO memory_tags (memory_seq, tag) VALUES (?1, ?2)")?;
    for t in &m.tags {
        tag.execute(rusqlite::params![row, t])?;
    }
    Ok(row)
}

/// Inserts memories for the acting user (one audit row each) and returns them with their index
/// rowids.
pub fn insert(
    w: &Write<'_, MemoryWrite>,
    items: &[Prepared],
    model: &str,
) -> ApiResult<Vec<(RowId, Memory)>> {
    let (owner, now) = (&Owner::writing(w)?, w.now());
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let m = &item.memory;
        let id = MemoryId::generate();
        let row = insert_row(w, owner, &id, item, now)?;
        audit::append(
            w,
            &AuditEvent::success(
                "memory.write",
                "memory",
                id.as_str(),
                json!({ "space": m.space.as_str(), "sensitivity": m.sensitivity.as_str(),
                        "tags": m.tags.len(), "tokenCount": item.token_count }),
            ),
        )?;
        out.push((
            row,
            Memory {
                id,
                content: m.content.clone(),
                space: m.space.as_str().to_owned(),
                summary: m.summary.clone(),
                tags: m.tags.clone(),
                sensitivity: m.sensitivity,
                source: m.source.clone(),
                token_count: item.token_count,
                embedding: EmbeddingInfo {
                    model: model.to_owned(),
                    tokens: item.embedding.tokens,
                    truncated: item.embedding.truncated,
                },
                created_at: now,
            },
        ));
    }
    Ok(out)
}

pub fn get(conn: &Connection, owner: &Owner, id: &MemoryId, model: &str) -> ApiResult<Memory> {
    let sql = format!(
        "SELECT {COLUMNS} FROM memories m WHERE m.id = ?1 AND m.tenant_id = ?2 AND m.user_id = ?3"
    );
    conn.prepare_cached(&sql)?
        .query_row(rusqlite::params![id, owner.tenant, owner.user], |r| {
            memory_from_row(r, model)
        })
        .optional()?
        .map(|(_, m)| m)
        .ok_or_else(|| ApiError::not_found("memory"))
}

/// Deletes one of the acting user's memories; returns its index rowid.
pub fn delete(w: &Write<'_, MemoryWrite>, id: &MemoryId) -> ApiResult<RowId> {
    let owner = Owner::writing(w)?;
    let row: Option<(RowId, String)> = w
        .query_row(
            "SELECT seq, space FROM memories WHERE id = ?1 AND tenant_id = ?2 AND user_id = ?3",
            rusqlite::params![id, owner.tenant, owner.user],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((seq, space)) = row else {
        return Err(ApiError::not_found("memory"));
    };
    crate::db::exec(w, "DELETE FROM memories WHERE seq = ?1", [seq])?;
    audit::append(
        w,
        &AuditEvent::success(
            "memory.delete",
            "memory",
            id.as_str(),
            json!({ "space": space }),
        ),
    )?;
    Ok(seq)
}

/// The owner's memories with these rowids (missing ones, deleted meanwhile, are left out).
pub fn by_rows(
    conn: &Connection,
    owner: &Owner,
    rows: &[RowId],
    model: &str,
) -> ApiResult<HashMap<RowId, Memory>> {
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let list = rows
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // The unary `+` keeps SQLite from answering through the owner index (a scan of all the
    // owner's rows) instead of looking the rowids up directly.
    let sql = format!(
        "SELECT {COLUMNS} FROM memories m
         WHERE m.seq IN ({list}) AND +m.tenant_id = ?1 AND +m.user_id = ?2"
    );
    let mut stmt = conn.prepare(&sql)?;
    let found = stmt
        .query_map(rusqlite::params![owner.tenant, owner.user], |r| {
            memory_from_row(r, model)
        })?
        .collect::<Result<HashMap<_, _>, _>>()?;
    Ok(found)
}

pub fn count(conn: &Connection, owner: &Owner) -> ApiResult<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM memories WHERE tenant_id = ?1 AND user_id = ?2",
        rusqlite::params![owner.tenant, owner.user],
        |r| r.get(0),
    )?)
}

pub fn count_all(conn: &Connection) -> ApiResult<i64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM memories", [], |r| r.get(0))?)
}

pub fn spaces(conn: &Connection, owner: &Owner) -> ApiResult<Vec<SpaceUsage>> {
    let mut stmt = conn.prepare_cached(
        "SELECT space, COUNT(*), MAX(created_at) FROM memories
         WHERE tenant_id = ?1 AND user_id = ?2 GROUP BY space ORDER BY space",
    )?;
    let spaces = stmt
        .query_map(rusqlite::params![owner.tenant, owner.user], |r| {
            Ok(SpaceUsage {
                space: r.get(0)?,
                count: r.get(1)?,
                last_written_at: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(spaces)
}

/// The owner's newest memories (in `spaces`, if any), newest first, at most `limit`.
pub fn recent(
    conn: &Connection,
    owner: &Owner,
    spaces: &[Space],
    limit: usize,
    model: &str,
) -> ApiResult<Vec<Memory>> {
    let filter = MemoryFilter::spaces_only(spaces.to_vec());
    let mut params: Vec<Box<dyn ToSql>> = vec![
        Box::new(owner.tenant.clone()),
        Box::new(owner.user.clone()),
        Box::new(limit as i64),
    ];
    let clause = filter_clause(&filter, &mut params);
    let sql = format!(
        "SELECT {COLUMNS} FROM memories m WHERE m.tenant_id = ?1 AND m.user_id = ?2{clause}
         ORDER BY m.created_at DESC, m.seq DESC LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let memories = stmt
        .query_map(params_from_iter(params.iter()), |r| {
            memory_from_row(r, model).map(|(_, m)| m)
        })?
        .collect::<Result<_, _>>()?;
    Ok(memories)
}

/// Calls `f` with every stored vector, in rowid order, without holding them all in memory.
pub fn for_each_vector(
    conn: &Connection,
    f: impl FnMut(OwnerKey, RowId, i64, Vec<f32>),
) -> ApiResult<()> {
    vectors_by_owner(
        conn,
        "SELECT tenant_id, user_id, seq, created_at, embedding FROM memories ORDER BY seq",
        f,
    )
}

/// Runs `sql` (selecting tenant, user, rowid, creation time and vector) and hands each row to
/// `f` with its owner's key.
pub(super) fn vectors_by_owner(
    conn: &Connection,
    sql: &str,
    mut f: impl FnMut(OwnerKey, RowId, i64, Vec<f32>),
) -> ApiResult<()> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let mut owners: HashMap<(String, String), OwnerKey> = HashMap::new();
    while let Some(r) = rows.next()? {
        let (t, u): (String, String) = (r.get(0)?, r.get(1)?);
        let owner = match owners.get(&(t.clone(), u.clone())) {
            Some(o) => o.clone(),
            None => {
                let (Some(tenant), Some(user)) = (TenantId::parse(&t), UserId::parse(&u)) else {
                    return Err(ApiError::internal(anyhow::anyhow!(
                        "malformed owner {t}/{u}"
                    )));
                };
                let o = OwnerKey::new(&tenant, &user);
                owners.insert((t, u), o.clone());
                o
            }
        };
        let blob = r.get_ref(4)?.as_blob().map_err(rusqlite::Error::from)?;
        f(owner, r.get(2)?, r.get(3)?, blob_to_vector(blob));
    }
    Ok(())
}

/// Every owner's memory rowids, ascending, read from the `(tenant, user, seq)` index alone:
/// at start-up, to reconcile the snapshot with SQLite without touching a vector.
pub fn owner_rows(conn: &Connection) -> ApiResult<HashMap<OwnerKey, Vec<RowId>>> {
    let mut stmt = conn.prepare(
        "SELECT tenant_id, user_id, seq FROM memories INDEXED BY memories_owner_seq
         ORDER BY tenant_id, user_id, seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut out: HashMap<OwnerKey, Vec<RowId>> = HashMap::new();
    let mut current: Option<((String, String), OwnerKey)> = None;
    while let Some(r) = rows.next()? {
        let text = |i: usize| -> rusqlite::Result<&str> {
            r.get_ref(i)?.as_str().map_err(rusqlite::Error::from)
        };
        let (t, u) = (text(0)?, text(1)?);
        let owner = match &current {
            Some(((ct, cu), o)) if ct == t && cu == u => o.clone(),
            _ => {
                let (Some(tenant), Some(user)) = (TenantId::parse(t), UserId::parse(u)) else {
                    return Err(ApiError::internal(anyhow::anyhow!(
                        "malformed owner {t}/{u}"
                    )));
                };
                let o = OwnerKey::new(&tenant, &user);
                current = Some(((t.to_owned(), u.to_owned()), o.clone()));
                o
            }
        };
        out.entry(owner).or_default().push(r.get(2)?);
    }
    Ok(out)
}

/// The stored vector of each of `rows` that exists, for exact rescoring.
pub fn vectors_of(
    conn: &Connection,
    rows: &[RowId],
    found: &mut dyn FnMut(RowId, &[f32]),
) -> ApiResult<()> {
    let mut stmt = conn.prepare_cached("SELECT embedding FROM memories WHERE seq = ?1")?;
    let mut vector = Vec::new();
    for &row in rows {
        let mut hit = stmt.query([row])?;
        if let Some(r) = hit.next()? {
            let blob = r.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
            vector.clear();
            vector.extend(
                blob.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            found(row, &vector);
        }
    }
    Ok(())
}

/// Creation time and vector of each of `rows` that exists (rows a snapshot lacked).
pub fn indexed_rows(
    conn: &Connection,
    rows: &[RowId],
    mut f: impl FnMut(RowId, i64, Vec<f32>),
) -> ApiResult<()> {
    let mut stmt =
        conn.prepare_cached("SELECT created_at, embedding FROM memories WHERE seq = ?1")?;
    for &row in rows {
        let mut hit = stmt.query([row])?;
        if let Some(r) = hit.next()? {
            let blob = r.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            f(row, r.get(0)?, blob_to_vector(blob));
        }
    }
    Ok(())
}

pub fn stored_model(conn: &Connection) -> ApiResult<Option<String>> {
    meta(conn, "embedding_model")
}

/// A server-wide fact (`meta`), if set.
pub(super) fn meta(conn: &Connection, key: &str) -> ApiResult<Option<String>> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Records which model the stored vectors come from (start-up and `memesh reindex`, which act
/// on the whole database, not for a caller).
pub fn set_model(tx: &Transaction<'_>, model: &str) -> ApiResult<()> {
    set_meta(tx, "embedding_model", model)
}

/// Sets a server-wide fact (`meta`).
pub(super) fn set_meta(tx: &Transaction<'_>, key: &str, value: &str) -> ApiResult<()> {
    crate::db::exec(
        tx,
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// Up to `limit` memories after rowid `after`, for re-embedding: (rowid, content).
pub fn contents_after(
    conn: &Connection,
    after: RowId,
    limit: usize,
) -> ApiResult<Vec<(RowId, String)>> {
    let mut stmt = conn
        .prepare_cached("SELECT seq, content FROM memories WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
    let rows = stmt
        .query_map(rusqlite::params![after, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// Replaces a stored vector (`memesh reindex`, an operator command on the stopped server).
pub fn replace_embedding(tx: &Transaction<'_>, row: RowId, e: &Embedding) -> ApiResult<()> {
    crate::db::exec(
        tx,
        "UPDATE memories SET embedding = ?2, embed_tokens = ?3, embed_truncated = ?4 WHERE seq = ?1",
        rusqlite::params![row, vector_to_blob(&e.vector), e.tokens as i64, e.truncated],
    )?;
    Ok(())
}

/// The SQL condition (over `memories m`) for `filter`, appending its parameters.
fn filter_clause(filter: &MemoryFilter, params: &mut Vec<Box<dyn ToSql>>) -> String {
    let mut sql = String::new();
    let push = |params: &mut Vec<Box<dyn ToSql>>, v: Box<dyn ToSql>| {
        params.push(v);
        format!("?{}", params.len())
    };
    if let Some(after) = filter.created_after {
        let p = push(params, Box::new(after));
        sql.push_str(&format!(" AND m.created_at >= {p}"));
    }
    if let Some(before) = filter.created_before {
        let p = push(params, Box::new(before));
        sql.push_str(&format!(" AND m.created_at < {p}"));
    }
    if let Some(source) = &filter.source {
        let p = push(params, Box::new(source.clone()));
        sql.push_str(&format!(" AND m.source = {p}"));
    }
    if !filter.spaces.is_empty() {
        let list: Vec<String> = filter
            .spaces
            .iter()
            .map(|s| push(params, Box::new(s.as_str().to_owned())))
            .collect();
        sql.push_str(&format!(" AND m.space IN ({})", list.join(",")));
    }
    if !filter.sensitivity.is_empty() {
        let list: Vec<String> = filter
            .sensitivity
            .iter()
            .map(|s| push(params, Box::new(s.as_str())))
            .collect();
        sql.push_str(&format!(" AND m.sensitivity IN ({})", list.join(",")));
    }
    if !filter.tags.is_empty() {
        let list: Vec<String> = filter
            .tags
            .iter()
            .map(|t| push(params, Box::new(t.clone())))
            .collect();
        let list = list.join(",");
        match filter.tag_mode {
            TagMode::Any => sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM memory_tags t WHERE t.memory_seq = m.seq AND t.tag IN ({list}))"
            )),
            TagMode::All => sql.push_str(&format!(
                " AND (SELECT COUNT(*) FROM memory_tags t WHERE t.memory_seq = m.seq AND t.tag IN ({list})) = {}",
                filter.tags.len()
            )),
        }
    }
    sql
}

/// Rowids of the owner's memories that pass `filter`.
pub fn filtered_rows(
    conn: &Connection,
    owner: &Owner,
    filter: &MemoryFilter,
) -> ApiResult<HashSet<RowId>> {
    let mut params: Vec<Box<dyn ToSql>> =
        vec![Box::new(owner.tenant.clone()), Box::new(owner.user.clone())];
    let clause = filter_clause(filter, &mut params);
    let sql =
        format!("SELECT m.seq FROM memories m WHERE m.tenant_id = ?1 AND m.user_id = ?2{clause}");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt
        .query_map(params_from_iter(params.iter()), |r| r.get::<_, RowId>(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// A term that occurs in more than this share of the owner's memories is too common to find
/// memories by: searching by it would make a query score most of them. It is not dropped,
/// though: it still counts in the score of the memories the query's rarer words find (in a
/// technical corpus a query's content words are often common, and BM25's IDF already weighs
/// them down). Below [`COMMON_FLOOR`] memories every word finds. Measured (keyword bench,
/// `common`): the same nDCG@10 as every word finding, at a third of its latency.
pub const COMMON_SHARE: f64 = 0.02;
const COMMON_FLOOR: usize = 2_000;
/// A term in more than this share of the owner's memories is a stopword proper (`the`, `of`,
/// `する`): it is left out altogether. Its BM25 weight is near nothing, and scoring it would
/// cost a pass over its whole posting list (FTS5 counts a phrase's documents for its IDF).
const STOPWORD_SHARE: f64 = 0.2;

/// What a keyword query searches by: the tokens that find memories, the common ones that only
/// score them, and the query words that find nothing by themselves (too common).
#[derive(Debug, Clone, Default)]
pub struct KeywordPlan {
    pub tokens: Vec<String>,
    /// Tokens too common to find memories by, counted in the score of those found, with their
    /// inverse document frequency over the owner's memories.
    pub scored: Vec<(String, f64)>,
    pub ignored: Vec<String>,
    pub terms: Vec<Term>,
    /// The FTS5 expression narrowing a match to the owner's memories (made once a query).
    owner: String,
    /// Where each of `scored` occurs, when remembered (see [`Postings`]).
    postings: Vec<Option<Arc<Postings>>>,
}

/// The owner's memories holding a token, as of a rowid: every one up to `upto`, ascending.
/// Rowids are never reused and a memory's text does not change, so the list stays true for
/// them; memories written after `upto` are asked of the index when one is a candidate.
#[derive(Debug)]
pub struct Postings {
    rows: Vec<RowId>,
    upto: RowId,
}

/// How many of an owner's memories hold a token (counted up to the stopword share), remembered
/// while the owner's count of memories stays within a tenth of what it was: document
/// frequencies move slowly, and counting a common word walks its whole posting list.
/// With each count, where the token occurs (the count walked that list anyway), so a common
/// word scores the memories a query found without another pass over its posting list.
#[derive(Default)]
pub struct DocFrequencies(std::sync::Mutex<Known>);

#[derive(Default)]
struct Known {
    entries: HashMap<(String, String), Counted>,
    /// Rowids held in all the postings.
    rows: usize,
}

#[derive(Clone)]
struct Counted {
    df: usize,
    at: usize,
    postings: Option<Arc<Postings>>,
}

/// Counts remembered at most; past that the memory starts over.
const DF_ENTRIES: usize = 50_000;
/// Rowids remembered in postings at most (8 bytes each: 64 MiB); past that it starts over.
const POSTING_ROWS: usize = 8 << 20;

impl DocFrequencies {
    fn get(&self, owner: &str, token: &str, corpus: usize) -> Option<Counted> {
        let known = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = known.entries.get(&(owner.to_owned(), token.to_owned()))?;
        (corpus.abs_diff(c.at) * 10 <= c.at).then(|| c.clone())
    }

    fn put(&self, owner: &str, token: &str, counted: Counted) {
        let mut known = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rows = counted.postings.as_ref().map_or(0, |p| p.rows.len());
        if known.entries.len() >= DF_ENTRIES || known.rows + rows > POSTING_ROWS {
            *known = Known::default();
        }
        known.rows += rows;
        let old = known
            .entries
            .insert((owner.to_owned(), token.to_owned()), counted);
        if let Some(p) = old.and_then(|o| o.postings) {
            known.rows -= p.rows.len();
        }
    }
}

/// In how many of the owner's memories `token` occurs, counted up to `cap` only: the cost of
/// the count is bounded by the cap, not by how common the token is. The owner's own count (the
/// index narrows to the owner's token), so what a query drops says nothing about other
/// people's memories. Below the cap, also which memories they are.
fn capped_df(conn: &Connection, owner: &str, token: &str, cap: usize) -> ApiResult<Counted> {
    // Read first: rows the list holds past it are harmless, rows it misses are newer.
    let upto: RowId = conn
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM memories")?
        .query_row([], |r| r.get(0))?;
    let expr = format!("{owner} AND {} : {}", fts::TEXT_COLUMNS, fts::quote(token));
    let mut stmt =
        conn.prepare_cached("SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?1 LIMIT ?2")?;
    let mut found = stmt.query(rusqlite::params![expr, cap as i64])?;
    let mut rows: Vec<RowId> = Vec::new();
    while let Some(r) = found.next()? {
        rows.push(r.get(0)?);
    }
    let df = rows.len();
    let postings = (df < cap).then(|| {
        rows.sort_unstable();
        Arc::new(Postings { rows, upto })
    });
    Ok(Counted {
        df,
        at: 0,
        postings,
    })
}

/// Plans a keyword query over the owner's `corpus` memories: each word is a token (stemmed by
/// the index), each unspaced run its bigrams; tokens occurring in more than `common_share` of
/// them (normally [`COMMON_SHARE`]; 1: none) only score what the others find, unless all are,
/// then the rarest finds.
pub fn plan_keywords(
    conn: &Connection,
    owner: &Owner,
    text: &str,
    corpus: usize,
    common_share: f64,
    known: &DocFrequencies,
) -> ApiResult<KeywordPlan> {
    let terms = fts::terms(text);
    let owner = fts::owner_filter(owner.tenant.as_str(), owner.user.as_str());
    let mut tokens: Vec<String> = Vec::new();
    for t in &terms {
        for tok in &t.tokens {
            if !tokens.contains(tok) {
                tokens.push(tok.clone());
            }
        }
    }
    if corpus < COMMON_FLOOR || tokens.is_empty() || common_share >= 1.0 {
        return Ok(KeywordPlan {
            tokens,
            scored: Vec::new(),
            ignored: Vec::new(),
            terms,
            owner,
            postings: Vec::new(),
        });
    }
    let cutoff = ((corpus as f64) * common_share) as usize;
    let stop_cutoff = ((corpus as f64) * STOPWORD_SHARE) as usize;
    let mut counted = Vec::with_capacity(tokens.len());
    for tok in tokens {
        // Counted once up to the stopword share (exact below it), and remembered: a common
        // word's count walks a long posting list, and the next query has the same words.
        let c = match known.get(&owner, &tok, corpus) {
            Some(c) => c,
            None => {
                let mut c = capped_df(conn, &owner, &tok, stop_cutoff + 1)?;
                c.at = corpus;
                // Only a common word's list is asked for again (a rarer word finds).
                if c.df <= cutoff {
                    c.postings = None;
                }
                known.put(&owner, &tok, c.clone());
                c
            }
        };
        counted.push((tok, c));
    }
    let (mut kept, mut common): (Vec<_>, Vec<_>) =
        counted.into_iter().partition(|(_, c)| c.df <= cutoff);
    if kept.is_empty()
        && let Some(at) = common
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, c))| c.df)
            .map(|(i, _)| i)
    {
        kept.push(common.remove(at));
    }
    let kept: Vec<String> = kept.into_iter().map(|(t, _)| t).collect();
    let mut scored = Vec::with_capacity(common.len());
    let mut postings = Vec::with_capacity(common.len());
    for (tok, c) in common {
        let df = c.df;
        if df <= stop_cutoff {
            // BM25's IDF, as FTS5 computes it, over the owner's memories.
            let idf = (((corpus - df) as f64 + 0.5) / (df as f64 + 0.5)).ln();
            scored.push((tok, idf.max(1e-6)));
            postings.push(c.postings);
        }
    }
    // A word is ignored when none of its tokens is searched by.
    let ignored = terms
        .iter()
        .filter(|t| t.tokens.iter().all(|tok| !kept.contains(tok)))
        .map(|t| t.word.clone())
        .collect();
    Ok(KeywordPlan {
        tokens: kept,
        scored,
        ignored,
        terms,
        owner,
        postings,
    })
}

/// The owner's memories matching any finding token of `plan` under `filter`, best BM25 first
/// (scores made positive, higher is better), at most `limit`; and how many match in all. With
/// common tokens in the plan, the memories found are ranked by BM25 over every token of the
/// query (see [`with_common_words`]).
/// Matches a keyword query counts at most: past it, `total` says "at least this many"
/// (`totalCapped`), so a query of common words does not walk every memory to count them.
pub const MAX_KEYWORD_TOTAL: usize = 10_000;

pub fn keyword_search(
    conn: &Connection,
    owner: &Owner,
    plan: &KeywordPlan,
    filter: &MemoryFilter,
    limit: usize,
) -> ApiResult<(Vec<(RowId, f64)>, usize)> {
    if plan.tokens.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let words: Vec<String> = plan.tokens.iter().map(|t| fts::quote(t)).collect();
    let expr = format!(
        "{} AND {} : ({})",
        plan.owner,
        fts::TEXT_COLUMNS,
        words.join(" OR ")
    );
    let mut params: Vec<Box<dyn ToSql>> = vec![
        Box::new(expr),
        Box::new(owner.tenant.clone()),
        Box::new(owner.user.clone()),
    ];
    let clause = filter_clause(filter, &mut params);
    let sql = format!(
        "SELECT f.rowid, -bm25(memories_fts, 1.0, 1.0, 1.0, 0.0) AS score, m.created_at
         FROM memories_fts f JOIN memories m ON m.seq = f.rowid
         WHERE memories_fts MATCH ?1 AND m.tenant_id = ?2 AND m.user_id = ?3{clause}
         ORDER BY score DESC, m.created_at DESC, f.rowid DESC"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut total = 0;
    let mut hits: Vec<(RowId, f64)> = Vec::new();
    // With common words, every memory found is kept (up to the total's cap) for the second pass.
    let depth = if plan.scored.is_empty() {
        limit
    } else {
        MAX_KEYWORD_TOTAL
    };
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    while let Some(r) = rows.next()? {
        if hits.len() < depth {
            hits.push((r.get(0)?, r.get(1)?));
        }
        total += 1;
        if total >= MAX_KEYWORD_TOTAL && hits.len() >= depth.min(limit) {
            break;
        }
    }
    if !plan.scored.is_empty() && !hits.is_empty() {
        hits = with_common_words(conn, plan, &hits)?;
    }
    hits.truncate(limit);
    Ok((hits, total))
}

/// The memories `found` (by the rarer words, with their BM25 over those) ranked with every word
/// of the query: a common word a memory holds adds its IDF (its BM25 part for one occurrence in
/// a document of average length). Which of those found hold it: from its remembered posting
/// list (see [`Postings`]; memories written since are asked of the index, `rowid > upto`), or
/// else with one FTS5 query, `rare AND "common"`, which only seeks in the common word's long
/// posting list. Scoring it with FTS5's own BM25 would count its documents for the IDF on every
/// query, a pass over the whole list (measured: keyword p50 45-51 ms instead of about 12 at
/// 100k memories); a query per common word cost keyword 27.7 / 52.3 ms p50 / p99 at 100k, the
/// remembered lists 16.3 / 36.8 (docs/benchmarks.md, issue 23).
fn with_common_words(
    conn: &Connection,
    plan: &KeywordPlan,
    found: &[(RowId, f64)],
) -> ApiResult<Vec<(RowId, f64)>> {
    let quoted: Vec<String> = plan.tokens.iter().map(|t| fts::quote(t)).collect();
    let rare = format!("{} : ({})", fts::TEXT_COLUMNS, quoted.join(" OR "));
    let mut score: HashMap<RowId, f64> = found.iter().copied().collect();
    let mut stmt = conn.prepare_cached(
        "SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?1 AND rowid > ?2",
    )?;
    for (i, (token, idf)) in plan.scored.iter().enumerate() {
        let mut newer_than = 0;
        if let Some(Some(p)) = plan.postings.get(i) {
            for (row, s) in score.iter_mut() {
                if *row <= p.upto && p.rows.binary_search(row).is_ok() {
                    *s += idf;
                }
            }
            if !score.keys().any(|row| *row > p.upto) {
                continue;
            }
            newer_than = p.upto;
        }
        let expr = format!(
            "{} AND {rare} AND {} : {}",
            plan.owner,
            fts::TEXT_COLUMNS,
            fts::quote(token)
        );
        let mut rows = stmt.query(rusqlite::params![expr, newer_than])?;
        while let Some(r) = rows.next()? {
            if let Some(s) = score.get_mut(&r.get::<_, RowId>(0)?) {
                *s += idf;
            }
        }
    }
    let mut out: Vec<(RowId, f64)> = score.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    Ok(out)
}

/// Which of the query's words occur in each of `rows` (a run of an unspaced script counts when
/// it occurs whole), for `explain`.
pub fn matched_terms(
    conn: &Connection,
    terms: &[Term],
    rows: &[RowId],
) -> ApiResult<HashMap<RowId, Vec<String>>> {
    let mut out: HashMap<RowId, Vec<String>> = HashMap::new();
    if rows.is_empty() {
        return Ok(out);
    }
    let list = rows
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let sql =
        format!("SELECT rowid FROM memories_fts WHERE memories_fts MATCH ?1 AND rowid IN ({list})");
    let mut stmt = conn.prepare(&sql)?;
    for term in terms {
        let expr = format!("{} : {}", fts::TEXT_COLUMNS, term.phrase());
        let found = stmt
            .query_map([expr], |r| r.get::<_, RowId>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        for row in found {
            out.entry(row).or_default().push(term.word.clone());
        }
    }
    Ok(out)
}

/// Up to `limit` of the owner's memories after rowid `after`, in rowid order, as export records.
/// Each page is its own short read: an export never holds a lock for long.
pub fn export_page(
    conn: &Connection,
    owner: &Owner,
    spaces: &[Space],
    after: RowId,
    limit: usize,
    model: &str,
) -> ApiResult<Vec<(RowId, ExportRecord)>> {
    let filter = MemoryFilter::spaces_only(spaces.to_vec());
    let mut params: Vec<Box<dyn ToSql>> = vec![
        Box::new(owner.tenant.clone()),
        Box::new(owner.user.clone()),
        Box::new(after),
        Box::new(limit as i64),
    ];
    let clause = filter_clause(&filter, &mut params);
    let sql = format!(
        "SELECT m.seq, m.id, m.content, m.space, m.summary, m.tags, m.sensitivity, m.source,
                m.created_at, m.embedding
         FROM memories m
         WHERE m.tenant_id = ?1 AND m.user_id = ?2 AND m.seq > ?3{clause}
         ORDER BY m.seq LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let records = stmt
        .query_map(params_from_iter(params.iter()), |r| {
            let d = Decoded::new(r, "memories", 1)?;
            let blob = r.get_ref(9)?.as_blob()?;
            Ok((
                d.get(0)?,
                ExportRecord {
                    id: d.get(1)?,
                    content: d.get(2)?,
                    space: d.get(3)?,
                    summary: d.get(4)?,
                    tags: d.json(5)?,
                    sensitivity: d.get(6)?,
                    source: d.get(7)?,
                    created_at: d.get(8)?,
                    embedding_model: Some(model.to_owned()),
                    embedding: Some(base64::engine::general_purpose::STANDARD.encode(blob)),
                },
            ))
        })?
        .collect::<Result<_, _>>()?;
    Ok(records)
}

/// Where an imported memory's id already is: with this owner (a repeated import: skip it) or
/// with someone else (refused).
pub fn id_owner(conn: &Connection, id: &MemoryId) -> ApiResult<Option<(TenantId, UserId)>> {
    Ok(conn
        .query_row(
            "SELECT tenant_id, user_id FROM memories WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Inserts an imported memory for the acting user with its original id and creation time.
pub fn insert_imported(
    w: &Write<'_, MemoryWrite>,
    id: &MemoryId,
    item: &Prepared,
    created_at: Timestamp,
) -> ApiResult<RowId> {
    let m = &item.memory;
    let row = insert_row(w, &Owner::writing(w)?, id, item, created_at)?;
    audit::append(
        w,
        &AuditEvent::success(
            "memory.import",
            "memory",
            id.as_str(),
            json!({ "space": m.space.as_str(), "createdAt": created_at }),
        ),
    )?;
    Ok(row)
}

/// The first answer to a memory write sent with an idempotency key.
pub struct Replay {
    pub request_hash: String,
    pub response: serde_json::Value,
}

/// The answer recorded for the owner's idempotency key, if any.
pub fn replay(conn: &Connection, owner: &Owner, key: &str) -> ApiResult<Option<Replay>> {
    Ok(conn
        .prepare_cached(
            "SELECT key, request_hash, response FROM memory_requests
             WHERE tenant_id = ?1 AND user_id = ?2 AND key = ?3",
        )?
        .query_row(rusqlite::params![owner.tenant, owner.user, key], |r| {
            let d = Decoded::new(r, "memory_requests", 0)?;
            Ok(Replay {
                request_hash: d.get(1)?,
                response: d.json(2)?,
            })
        })
        .optional()?)
}

/// Records the answer to a write sent with an idempotency key, in the write's transaction.
pub fn remember(
    w: &Write<'_, MemoryWrite>,
    key: &str,
    request_hash: &str,
    response: &serde_json::Value,
) -> ApiResult<()> {
    let owner = Owner::writing(w)?;
    crate::db::exec(
        w,
        "INSERT INTO memory_requests (tenant_id, user_id, key, request_hash, response, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            owner.tenant,
            owner.user,
            key,
            request_hash,
            response.to_string(),
            w.now()
        ],
    )?;
    Ok(())
}
