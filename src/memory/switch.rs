//! Switching the embedding model of a data directory while the server serves.
//!
//! `memesh reindex --model NAME` records the target as the meta row `embedding_model_next`. A
//! serving process notices within a second ([`watch`]); a CLI with no server running does the
//! same work itself. The work, the same in both:
//!
//! 1. The target model is loaded beside the serving one, and every memory is embedded with it,
//!    in rowid order, 64 at a time, into `memory_vectors_next` (one transaction a batch). The
//!    serving process also keeps a second index — the next generation — fed by those commits,
//!    with its own upkeep thread. Searches keep being answered by the current model and index.
//! 2. Writes arriving meanwhile are embedded by the current model when they are made (their
//!    answer does not wait for the second model) and by the target model when the pass reaches
//!    them: rowids only grow, so a pass that reaches the end of the table has embedded every
//!    memory written before it got there. Deletes cascade to `memory_vectors_next` and leave
//!    both indexes at once.
//! 3. When no memory lacks its next vector, one transaction copies every next vector into
//!    `memories.embedding`, records the target as `embedding_model` and empties the side
//!    table — checking first, inside the transaction, that nothing is missing (else the pass
//!    runs again). In the serving process the swap of generations is part of that commit (see
//!    [`super::engine::MemoryEngine::finish_switch`]): a search sees one model and one index,
//!    never vectors of two models in one ranking.
//!
//! A crash at any point resumes: the vectors already in `memory_vectors_next` are kept, the
//! next start (or CLI) embeds only what is missing, and until the final transaction
//! `memories.embedding` holds the old model's vectors only — a database never holds vectors
//! of two models in one column, and `embedding_model` always names the model of that column.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use crate::db::{Db, Tx};
use crate::embed::{BundledModel, Embedder, Embedding};
use crate::error::{ApiError, ApiResult};
use crate::index::{OwnerKey, RowId, VectorIndex};
use crate::state::AppState;

use super::store::{self, blob_to_vector, vector_to_blob};

/// Memories embedded with the target model per transaction.
const BATCH: usize = 64;

/// The target model a switch is moving to, if one is under way.
pub fn target(conn: &Connection) -> ApiResult<Option<String>> {
    store::meta(conn, "embedding_model_next")
}

/// Asks for a switch to `model` (the CLI). Asking for the model in use cancels a switch under
/// way (its vectors are dropped); asking for another target than the one under way restarts
/// with that one.
pub fn request(tx: &Tx<'_>, model: &str) -> ApiResult<Request> {
    let current = store::stored_model(tx)?;
    let under_way = target(tx)?;
    if current.as_deref() == Some(model) || current.is_none() {
        crate::db::exec(
            tx,
            "DELETE FROM meta WHERE key = 'embedding_model_next'",
            [],
        )?;
        crate::db::exec(tx, "DELETE FROM memory_vectors_next", [])?;
        if current.is_none() {
            store::set_model(tx, model)?;
        }
        return Ok(if under_way.is_some() {
            Request::Cancelled
        } else {
            Request::AlreadyInUse
        });
    }
    if under_way.as_deref() == Some(model) {
        return Ok(Request::UnderWay);
    }
    if under_way.is_some() {
        crate::db::exec(tx, "DELETE FROM memory_vectors_next", [])?;
    }
    store::set_meta(tx, "embedding_model_next", model)?;
    Ok(Request::Started)
}

/// What [`request`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Started,
    UnderWay,
    Cancelled,
    AlreadyInUse,
}

/// How far a switch is, as `/healthz` and the CLI show it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub from: String,
    pub to: String,
    /// Memories that have their vector from the target model.
    pub embedded: i64,
    pub memories: i64,
}

/// Reads a switch's progress from the database (the CLI, and `/healthz`'s source).
pub fn progress(conn: &Connection) -> ApiResult<Option<Progress>> {
    let Some(to) = target(conn)? else {
        return Ok(None);
    };
    let from = store::stored_model(conn)?.unwrap_or_default();
    let (embedded, memories) = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM memory_vectors_next), (SELECT COUNT(*) FROM memories)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Some(Progress {
        from,
        to,
        embedded,
        memories,
    }))
}

/// A memory without its next vector: rowid, owner, creation time, content.
type Missing = (RowId, OwnerKey, i64, String);

/// Up to `limit` memories after rowid `after` that lack their next vector.
fn missing_after(conn: &Connection, after: RowId, limit: usize) -> ApiResult<Vec<Missing>> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.seq, m.tenant_id, m.user_id, m.created_at, m.content FROM memories m
         WHERE m.seq > ?1 AND NOT EXISTS (SELECT 1 FROM memory_vectors_next n WHERE n.seq = m.seq)
         ORDER BY m.seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(rusqlite::params![after, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, tenant, user, at, content) = row?;
        let owner = OwnerKey::parse(&format!("{tenant}/{user}")).ok_or_else(|| {
            ApiError::internal(anyhow::anyhow!("malformed owner {tenant}/{user}"))
        })?;
        out.push((seq, owner, at, content));
    }
    Ok(out)
}

/// Stores next vectors for memories that still exist; returns the ones stored.
fn store_next<'a>(
    tx: &Tx<'_>,
    items: &'a [(Missing, Embedding)],
) -> ApiResult<Vec<&'a (Missing, Embedding)>> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO memory_vectors_next (seq, embed_tokens, embed_truncated, embedding)
         SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM memories WHERE seq = ?1)",
    )?;
    let mut stored = Vec::with_capacity(items.len());
    for item in items {
        let ((seq, ..), e) = item;
        let n = stmt.execute(rusqlite::params![
            seq,
            e.tokens as i64,
            e.truncated,
            vector_to_blob(&e.vector)
        ])?;
        if n == 1 {
            stored.push(item);
        }
    }
    Ok(stored)
}

/// Every next vector, by owner (filling a next index after a restart).
pub fn for_each_next_vector(
    conn: &Connection,
    f: impl FnMut(OwnerKey, RowId, i64, Vec<f32>),
) -> ApiResult<()> {
    store::vectors_by_owner(
        conn,
        "SELECT m.tenant_id, m.user_id, m.seq, m.created_at, n.embedding
         FROM memory_vectors_next n JOIN memories m ON m.seq = n.seq ORDER BY n.seq",
        f,
    )
}

/// Next vectors of `rows` (rescoring in the next generation's index).
pub fn next_vectors_of(
    conn: &Connection,
    rows: &[RowId],
    found: &mut dyn FnMut(RowId, &[f32]),
) -> ApiResult<()> {
    let mut stmt =
        conn.prepare_cached("SELECT embedding FROM memory_vectors_next WHERE seq = ?1")?;
    for &row in rows {
        let blob: Option<Vec<u8>> = stmt.query_row([row], |r| r.get(0)).optional()?;
        if let Some(blob) = blob {
            found(row, &blob_to_vector(&blob));
        }
    }
    Ok(())
}

/// The final step, in one transaction: when no memory lacks its next vector, they replace the
/// current ones and `to` becomes the data directory's model. `false` (nothing changed) when a
/// memory still lacks one or the switch was cancelled or retargeted meanwhile.
pub fn finish(tx: &Tx<'_>, to: &str) -> ApiResult<bool> {
    if target(tx)?.as_deref() != Some(to) {
        return Ok(false);
    }
    let missing: i64 = tx.query_row(
        "SELECT COUNT(*) FROM memories m
         WHERE NOT EXISTS (SELECT 1 FROM memory_vectors_next n WHERE n.seq = m.seq)",
        [],
        |r| r.get(0),
    )?;
    if missing > 0 {
        return Ok(false);
    }
    crate::db::exec(
        tx,
        "UPDATE memories SET embedding = n.embedding, embed_tokens = n.embed_tokens,
             embed_truncated = n.embed_truncated
         FROM memory_vectors_next n WHERE n.seq = memories.seq",
        [],
    )?;
    crate::db::exec(tx, "DELETE FROM memory_vectors_next", [])?;
    crate::db::exec(
        tx,
        "DELETE FROM meta WHERE key = 'embedding_model_next'",
        [],
    )?;
    store::set_model(tx, to)?;
    Ok(true)
}

/// Counters of a pass, for `/healthz` without a query.
#[derive(Default)]
pub struct Counters {
    pub embedded: AtomicU64,
    pub memories: AtomicU64,
}

/// Embeds, with `embedder` (the target model), every memory that lacks its next vector, until
/// none does or the switch is no longer to `to`. `stored` gets each committed batch (the next
/// index, in the serving process). Returns whether the pass reached the end still wanted.
pub async fn embed_missing(
    db: &Db,
    embedder: &Embedder,
    to: &str,
    index: Option<Arc<VectorIndex>>,
    counters: &Counters,
    mut tick: impl FnMut(&Counters),
) -> ApiResult<bool> {
    let mut after: RowId = 0;
    loop {
        let to_owned = to.to_owned();
        let (batch, still, (embedded, memories)) = db
            .read(move |c| {
                let still = target(c)?.as_deref() == Some(to_owned.as_str());
                let counts = c.query_row(
                    "SELECT (SELECT COUNT(*) FROM memory_vectors_next),
                            (SELECT COUNT(*) FROM memories)",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )?;
                Ok((missing_after(c, after, BATCH)?, still, counts))
            })
            .await?;
        counters.embedded.store(embedded as u64, Ordering::Relaxed);
        counters.memories.store(memories as u64, Ordering::Relaxed);
        tick(counters);
        if !still {
            return Ok(false);
        }
        let Some(last) = batch.last().map(|m| m.0) else {
            return Ok(true);
        };
        let texts: Vec<String> = batch.iter().map(|m| m.3.clone()).collect();
        let vectors = embedder
            .embed(crate::embed::SYSTEM_LANE, texts)
            .await
            .map_err(super::write::embedding_failed)?;
        let items: Vec<(Missing, Embedding)> = batch.into_iter().zip(vectors).collect();
        let index = index.clone();
        db.write(move |tx| {
            let stored: Vec<(OwnerKey, RowId, i64, Vec<f32>)> = store_next(tx, &items)?
                .into_iter()
                .map(|((row, owner, at, _), e)| (owner.clone(), *row, *at, e.vector.clone()))
                .collect();
            if let Some(index) = index {
                tx.after_commit(move || {
                    for (owner, row, at, v) in &stored {
                        index.insert(owner, &[(*row, *at, v.as_slice())]);
                    }
                });
            }
            Ok(())
        })
        .await?;
        after = last;
    }
}

/// Loads a bundled model for a switch (the caller decides threads and priority).
pub type Loader = Arc<dyn Fn(&'static BundledModel) -> anyhow::Result<Embedder> + Send + Sync>;

/// Watches for a switch asked of this data directory (by `memesh reindex --model`, from
/// another process) and carries it out while the server serves. A switch that fails (the model
/// cannot be loaded, say) is logged and tried again a minute later; its progress is kept.
pub fn spawn_watcher(state: AppState, loader: Loader) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let to = match state.db.read(target).await {
                Ok(Some(to)) => to,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading whether a model switch was asked failed");
                    continue;
                }
            };
            if let Err(e) = carry_out(&state, &to, &loader).await {
                tracing::error!(error = %format!("{e:#}"), to, "the model switch stopped; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            state.memory.set_next(None);
            *state
                .memory
                .switch
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    })
}

/// One switch to `to`, in the serving process: the next generation filled, then swapped in.
async fn carry_out(state: &AppState, to: &str, loader: &Loader) -> anyhow::Result<()> {
    let model = crate::embed::catalog::by_name(to)
        .ok_or_else(|| anyhow::anyhow!("{to:?} is not a model this memesh bundles"))?;
    let from = state.memory.model_id();
    tracing::info!(
        from,
        to = model.id,
        "switching the embedding model while serving"
    );
    let (load, st) = (loader.clone(), state.clone());
    let next = crate::db::run_blocking(move || {
        let embedder = load(model).map_err(ApiError::internal)?;
        st.memory
            .new_generation(embedder)
            .map_err(ApiError::internal)
    })
    .await?;
    state.memory.set_next(Some(next.clone()));
    let counters = Counters::default();
    let show = |c: &Counters| {
        *state
            .memory
            .switch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Progress {
            from: from.clone(),
            to: model.id.to_owned(),
            embedded: c.embedded.load(Ordering::Relaxed) as i64,
            memories: c.memories.load(Ordering::Relaxed) as i64,
        });
    };
    loop {
        let db = state.db.clone();
        let index = Some(next.index.clone());
        if !embed_missing(&db, &next.embedder, model.id, index, &counters, show).await? {
            tracing::info!(
                to = model.id,
                "the model switch was cancelled or retargeted"
            );
            return Ok(());
        }
        if state.memory.finish_switch(next.clone()).await? {
            return Ok(());
        }
    }
}
