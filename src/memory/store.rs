//! Memory SQL: inserting memories with their tags, embeddings and audit rows; reading them back
//! by id or by index rowid (always scoped to the owner); deleting; and streaming every stored
//! vector to fill the index at start-up.

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, named_params};
use serde_json::json;

use crate::audit::{self, AuditEvent};
use crate::auth::Actor;
use crate::clock::Timestamp;
use crate::embed::Embedding;
use crate::error::{ApiError, ApiResult};
use crate::ids::{MemoryId, TenantId, UserId};
use crate::index::{OwnerKey, RowId};

use super::model::{EmbeddingInfo, Memory, NewMemory, Sensitivity, Space, SpaceUsage};

/// Whose memories: every query is scoped by both.
#[derive(Debug, Clone)]
pub struct Owner {
    pub tenant: TenantId,
    pub user: UserId,
}

impl Owner {
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
    let tags: String = r.get(5)?;
    let sensitivity: String = r.get(6)?;
    Ok((
        r.get(0)?,
        Memory {
            id: r.get(1)?,
            content: r.get(2)?,
            space: r.get(3)?,
            summary: r.get(4)?,
            tags: serde_json::from_str(&tags).unwrap_or_default(),
            sensitivity: Sensitivity::parse(&sensitivity).unwrap_or(Sensitivity::Internal),
            source: r.get(7)?,
            token_count: r.get::<_, i64>(8)? as usize,
            embedding: EmbeddingInfo {
                model: model.to_owned(),
                tokens: r.get::<_, i64>(9)? as usize,
                truncated: r.get(10)?,
            },
            created_at: r.get(11)?,
        },
    ))
}

/// A memory ready to insert: validated fields, its embedding and its LLM token count.
pub struct Prepared {
    pub memory: NewMemory,
    pub embedding: Embedding,
    pub token_count: usize,
}

/// Inserts memories (one audit row each) and returns them with their index rowids.
pub fn insert(
    tx: &Transaction<'_>,
    actor: &Actor,
    owner: &Owner,
    items: &[Prepared],
    model: &str,
    now: Timestamp,
) -> ApiResult<Vec<(RowId, Memory)>> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO memories (id, tenant_id, user_id, space, content, summary, tags, sensitivity,
             source, token_count, embed_tokens, embed_truncated, created_at, embedding)
         VALUES (:id, :tenant, :user, :space, :content, :summary, :tags, :sensitivity, :source,
             :tokens, :etokens, :etrunc, :now, :embedding)",
    )?;
    let mut tag = tx.prepare_cached("INSERT INTO memory_tags (memory_seq, tag) VALUES (?1, ?2)")?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let m = &item.memory;
        let id = MemoryId::generate();
        insert.execute(named_params! {
            ":id": id, ":tenant": owner.tenant, ":user": owner.user, ":space": m.space.as_str(),
            ":content": m.content, ":summary": m.summary,
            ":tags": serde_json::to_string(&m.tags).map_err(ApiError::internal)?,
            ":sensitivity": m.sensitivity.as_str(), ":source": m.source,
            ":tokens": item.token_count as i64, ":etokens": item.embedding.tokens as i64,
            ":etrunc": item.embedding.truncated, ":now": now,
            ":embedding": vector_to_blob(&item.embedding.vector),
        })?;
        let row = tx.last_insert_rowid();
        for t in &m.tags {
            tag.execute(rusqlite::params![row, t])?;
        }
        audit::append(
            tx,
            actor,
            &AuditEvent::success(
                "memory.write",
                "memory",
                id.as_str(),
                json!({ "space": m.space.as_str(), "sensitivity": m.sensitivity.as_str(),
                        "tags": m.tags.len(), "tokenCount": item.token_count }),
            ),
            now,
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

/// Deletes one of the owner's memories; returns its index rowid.
pub fn delete(
    tx: &Transaction<'_>,
    actor: &Actor,
    owner: &Owner,
    id: &MemoryId,
    now: Timestamp,
) -> ApiResult<RowId> {
    let row: Option<(RowId, String)> = tx
        .query_row(
            "SELECT seq, space FROM memories WHERE id = ?1 AND tenant_id = ?2 AND user_id = ?3",
            rusqlite::params![id, owner.tenant, owner.user],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((seq, space)) = row else {
        return Err(ApiError::not_found("memory"));
    };
    tx.execute("DELETE FROM memories WHERE seq = ?1", [seq])?;
    audit::append(
        tx,
        actor,
        &AuditEvent::success(
            "memory.delete",
            "memory",
            id.as_str(),
            json!({ "space": space }),
        ),
        now,
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
    let sql = format!(
        "SELECT {COLUMNS} FROM memories m
         WHERE m.seq IN ({list}) AND m.tenant_id = ?1 AND m.user_id = ?2"
    );
    let mut stmt = conn.prepare(&sql)?;
    let found = stmt
        .query_map(rusqlite::params![owner.tenant, owner.user], |r| {
            memory_from_row(r, model)
        })?
        .collect::<Result<HashMap<_, _>, _>>()?;
    Ok(found)
}

/// Rowids of the owner's memories in any of `spaces`.
pub fn rows_in_spaces(
    conn: &Connection,
    owner: &Owner,
    spaces: &[Space],
) -> ApiResult<HashSet<RowId>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq FROM memories WHERE tenant_id = ?1 AND user_id = ?2 AND space = ?3",
    )?;
    let mut rows = HashSet::new();
    for space in spaces {
        for row in stmt.query_map(
            rusqlite::params![owner.tenant, owner.user, space.as_str()],
            |r| r.get::<_, RowId>(0),
        )? {
            rows.insert(row?);
        }
    }
    Ok(rows)
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

/// Calls `f` with every stored vector, in rowid order, without holding them all in memory.
pub fn for_each_vector(
    conn: &Connection,
    mut f: impl FnMut(OwnerKey, RowId, i64, Vec<f32>),
) -> ApiResult<()> {
    let mut stmt = conn.prepare(
        "SELECT tenant_id, user_id, seq, created_at, embedding FROM memories ORDER BY seq",
    )?;
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

pub fn stored_model(conn: &Connection) -> ApiResult<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'embedding_model'",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

pub fn set_model(tx: &Transaction<'_>, model: &str) -> ApiResult<()> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('embedding_model', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [model],
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

pub fn replace_embedding(tx: &Transaction<'_>, row: RowId, e: &Embedding) -> ApiResult<()> {
    tx.execute(
        "UPDATE memories SET embedding = ?2, embed_tokens = ?3, embed_truncated = ?4 WHERE seq = ?1",
        rusqlite::params![row, vector_to_blob(&e.vector), e.tokens as i64, e.truncated],
    )?;
    Ok(())
}
