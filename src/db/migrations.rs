//! The schema, embedded in the binary and versioned by `PRAGMA user_version`
//! (rusqlite_migration). Migrations are append-only: never edit one that has shipped.

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

const MIGRATIONS: &[&str] = &[
    // 1: identity, keys, team and the audit log.
    r#"
    CREATE TABLE tenants (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    );

    CREATE TABLE users (
        id          TEXT PRIMARY KEY,
        tenant_id   TEXT NOT NULL REFERENCES tenants(id),
        email       TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('OWNER','ADMIN','MEMBER','VIEWER')),
        created_at  INTEGER NOT NULL,
        removed_at  INTEGER
    );
    CREATE UNIQUE INDEX users_active_email ON users(tenant_id, email) WHERE removed_at IS NULL;

    CREATE TABLE api_keys (
        id            TEXT PRIMARY KEY,
        tenant_id     TEXT NOT NULL REFERENCES tenants(id),
        user_id       TEXT NOT NULL REFERENCES users(id),
        name          TEXT NOT NULL,
        lookup        TEXT NOT NULL UNIQUE,
        hash          BLOB NOT NULL,
        last4         TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        last_used_at  INTEGER,
        revoked_at    INTEGER
    );
    CREATE INDEX api_keys_user ON api_keys(tenant_id, user_id);

    CREATE TABLE invitations (
        id               TEXT PRIMARY KEY,
        tenant_id        TEXT NOT NULL REFERENCES tenants(id),
        email            TEXT NOT NULL,
        role             TEXT NOT NULL,
        token_hash       BLOB NOT NULL UNIQUE,
        invited_by       TEXT NOT NULL REFERENCES users(id),
        created_at       INTEGER NOT NULL,
        expires_at       INTEGER NOT NULL,
        accepted_at      INTEGER,
        accepted_user_id TEXT REFERENCES users(id)
    );
    CREATE INDEX invitations_email ON invitations(tenant_id, email);

    CREATE TABLE audit_log (
        seq_global     INTEGER PRIMARY KEY AUTOINCREMENT,
        id             TEXT NOT NULL UNIQUE,
        tenant_id      TEXT NOT NULL,
        seq            INTEGER NOT NULL,
        at             INTEGER NOT NULL,
        actor_user_id  TEXT,
        actor_key_id   TEXT,
        action         TEXT NOT NULL,
        resource_type  TEXT NOT NULL,
        resource_id    TEXT NOT NULL,
        request_id     TEXT,
        outcome        TEXT NOT NULL,
        detail         TEXT NOT NULL,
        prev_hash      TEXT NOT NULL,
        hash           TEXT NOT NULL,
        UNIQUE (tenant_id, seq)
    );
    CREATE INDEX audit_log_tenant_at ON audit_log(tenant_id, at);
    "#,
    // 2: memories, their tags, and server-wide facts such as the embedding model in use.
    r#"
    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT NOT NULL
    );

    CREATE TABLE memories (
        seq              INTEGER PRIMARY KEY AUTOINCREMENT,
        id               TEXT NOT NULL UNIQUE,
        tenant_id        TEXT NOT NULL REFERENCES tenants(id),
        user_id          TEXT NOT NULL REFERENCES users(id),
        space            TEXT NOT NULL,
        content          TEXT NOT NULL,
        summary          TEXT,
        tags             TEXT NOT NULL,
        sensitivity      TEXT NOT NULL
                         CHECK (sensitivity IN ('public','internal','confidential','restricted')),
        source           TEXT,
        token_count      INTEGER NOT NULL,
        embed_tokens     INTEGER NOT NULL,
        embed_truncated  INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        embedding        BLOB NOT NULL
    );
    CREATE INDEX memories_owner ON memories(tenant_id, user_id, space, created_at);

    CREATE TABLE memory_tags (
        memory_seq  INTEGER NOT NULL REFERENCES memories(seq) ON DELETE CASCADE,
        tag         TEXT NOT NULL,
        PRIMARY KEY (tag, memory_seq)
    ) WITHOUT ROWID;
    CREATE INDEX memory_tags_memory ON memory_tags(memory_seq);
    "#,
    // 3: full-text search over memories (BM25 keyword and hybrid retrieval), kept in step with
    // the memories table by triggers (memories are never updated in place, so insert and delete
    // triggers are all it needs); and an index for walking one owner's memories in order.
    r#"
    CREATE VIRTUAL TABLE memories_fts USING fts5(
        content, summary, tags,
        content = 'memories', content_rowid = 'seq'
    );
    CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts (rowid, content, summary, tags)
        VALUES (new.seq, new.content, new.summary, new.tags);
    END;
    CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, content, summary, tags)
        VALUES ('delete', old.seq, old.content, old.summary, old.tags);
    END;
    INSERT INTO memories_fts (memories_fts) VALUES ('rebuild');
    -- Export pages walk one owner's memories in rowid order.
    CREATE INDEX memories_owner_seq ON memories(tenant_id, user_id, seq);
    "#,
    // 4: dispatch targets with their runtime governance record, and agent access keys.
    r#"
    CREATE TABLE dispatch_targets (
        id                   TEXT PRIMARY KEY,
        tenant_id            TEXT NOT NULL REFERENCES tenants(id),
        name                 TEXT NOT NULL,
        description          TEXT,
        kind                 TEXT NOT NULL CHECK (kind IN ('LOCAL_AGENT','REMOTE_A2A')),
        card                 TEXT,
        card_url             TEXT,
        card_shape           TEXT,
        protocol_version     TEXT,
        endpoint_url         TEXT,
        require_approval     INTEGER NOT NULL DEFAULT 0,
        created_by           TEXT,
        created_at           INTEGER NOT NULL,
        updated_at           INTEGER NOT NULL,
        runtime_updated_at   INTEGER NOT NULL,
        hold_reason          TEXT,
        hold_by              TEXT,
        hold_since           INTEGER,
        hold_release_after   INTEGER,
        incident_open        INTEGER NOT NULL DEFAULT 0,
        incident_epoch       INTEGER NOT NULL DEFAULT 0,
        incident_opened_at   INTEGER,
        incident_opened_by   TEXT,
        incident_reason      TEXT,
        handoff_external_id  TEXT,
        handoff_owner        TEXT,
        handoff_note         TEXT,
        handoff_at           INTEGER,
        handoff_by           TEXT,
        policy               TEXT NOT NULL,
        policy_reasons       TEXT NOT NULL,
        policy_epoch         INTEGER NOT NULL DEFAULT 0,
        policy_changed_by    TEXT,
        policy_changed_at    INTEGER,
        review_ack_epoch     INTEGER,
        review_ack_by        TEXT,
        review_ack_at        INTEGER,
        review_ack_note      TEXT,
        probe_failures       INTEGER NOT NULL DEFAULT 0,
        last_probe_at        INTEGER,
        last_probe_ok        INTEGER,
        last_probe_error     TEXT
    );
    CREATE UNIQUE INDEX dispatch_targets_name ON dispatch_targets(tenant_id, name);
    CREATE INDEX dispatch_targets_hold_expiry ON dispatch_targets(hold_release_after)
        WHERE hold_release_after IS NOT NULL;

    ALTER TABLE api_keys ADD COLUMN target_id TEXT REFERENCES dispatch_targets(id);
    "#,
    // 5: orchestrator runs, their event timeline and approvals, and the local execution queue.
    r#"
    CREATE TABLE runs (
        id                 TEXT PRIMARY KEY,
        tenant_id          TEXT NOT NULL REFERENCES tenants(id),
        target_id          TEXT NOT NULL,
        target_kind        TEXT NOT NULL,
        requested_by       TEXT NOT NULL,
        input              TEXT NOT NULL,
        idempotency_key    TEXT,
        requires_approval  INTEGER NOT NULL,
        state              TEXT NOT NULL,
        block_reason       TEXT,
        result             TEXT,
        created_at         INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL
    );
    CREATE UNIQUE INDEX runs_idempotency ON runs(tenant_id, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX runs_tenant_created ON runs(tenant_id, created_at);
    CREATE INDEX runs_target_state ON runs(target_id, state);

    CREATE TABLE run_events (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id  TEXT NOT NULL REFERENCES runs(id),
        at      INTEGER NOT NULL,
        kind    TEXT NOT NULL,
        detail  TEXT NOT NULL
    );
    CREATE INDEX run_events_run ON run_events(run_id, seq);

    CREATE TABLE approvals (
        id          TEXT PRIMARY KEY,
        run_id      TEXT NOT NULL REFERENCES runs(id),
        state       TEXT NOT NULL CHECK (state IN ('pending','approved','rejected')),
        created_at  INTEGER NOT NULL,
        decided_by  TEXT,
        decided_at  INTEGER,
        note        TEXT
    );
    CREATE INDEX approvals_run ON approvals(run_id);

    CREATE TABLE executions (
        id                TEXT PRIMARY KEY,
        run_id            TEXT NOT NULL REFERENCES runs(id),
        tenant_id         TEXT NOT NULL,
        target_id         TEXT NOT NULL,
        state             TEXT NOT NULL CHECK (state IN ('pending','claimed','completed','failed','canceled')),
        claim_token       TEXT,
        worker_id         TEXT,
        lease_expires_at  INTEGER,
        attempt           INTEGER NOT NULL DEFAULT 1,
        cancel_requested  INTEGER NOT NULL DEFAULT 0,
        completion_key    TEXT,
        completion_hash   TEXT,
        result            TEXT,
        created_at        INTEGER NOT NULL,
        updated_at        INTEGER NOT NULL
    );
    CREATE INDEX executions_queue ON executions(target_id, state, created_at);
    CREATE INDEX executions_leases ON executions(state, lease_expires_at);
    "#,
    // 6: key scopes and expiry. NULL scopes: the key does what its user's role allows (every
    // key made before scopes existed); agent access keys carry `executions` only.
    r#"
    ALTER TABLE api_keys ADD COLUMN scopes TEXT;
    ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
    UPDATE api_keys SET scopes = 'executions' WHERE target_id IS NOT NULL;
    "#,
    // 7: idempotency keys of memory writes: a retry with the same key gets the first answer.
    r#"
    CREATE TABLE memory_requests (
        tenant_id     TEXT NOT NULL,
        user_id       TEXT NOT NULL,
        key           TEXT NOT NULL,
        request_hash  TEXT NOT NULL,
        response      TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, user_id, key)
    ) WITHOUT ROWID;

    -- Invitations can be revoked (by an OWNER or ADMIN, or when their inviter leaves).
    ALTER TABLE invitations ADD COLUMN revoked_at INTEGER;

    -- A run's execution is looked up by its run (every run view, every transition).
    CREATE INDEX executions_run ON executions(run_id, created_at);
    -- The queue is listed in (created_at, id) order: the index must hold both, or every list
    -- sorts all pending executions of the target.
    DROP INDEX executions_queue;
    CREATE INDEX executions_queue ON executions(target_id, state, created_at, id);
    "#,
    // 8: the runtime-health summary counts a tenant's runs by state and the pending approvals
    // without reading every run or approval.
    r#"
    CREATE INDEX runs_tenant_state ON runs(tenant_id, state);
    CREATE INDEX approvals_state ON approvals(state, run_id);
    "#,
    // 9: runs on remote A2A agents: the remote task behind each, what was last seen of it, and
    // when to look again.
    r#"
    CREATE TABLE remote_tasks (
        run_id            TEXT PRIMARY KEY REFERENCES runs(id),
        tenant_id         TEXT NOT NULL,
        endpoint          TEXT NOT NULL,
        protocol          TEXT NOT NULL CHECK (protocol IN ('1.0', '0.3')),
        message_id        TEXT NOT NULL,
        task_id           TEXT,
        context_id        TEXT,
        remote_state      TEXT,
        remote_state_raw  TEXT,
        last_seen_at      INTEGER,
        last_error        TEXT,
        failures          INTEGER NOT NULL DEFAULT 0,
        next_check_at     INTEGER NOT NULL,
        done              INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX remote_tasks_due ON remote_tasks(done, next_check_at);
    "#,
    // 10: cancels of remote tasks: where each stands (NULL: none asked), the failed attempts and
    // the last failure, when a cancel the agent accepted must have taken effect, and when the
    // remote record last changed (the CAS token of resolve-remote).
    r#"
    ALTER TABLE remote_tasks ADD COLUMN cancel_state TEXT
        CHECK (cancel_state IN ('pending', 'sent', 'exhausted', 'resolved'));
    ALTER TABLE remote_tasks ADD COLUMN cancel_requested_at INTEGER;
    ALTER TABLE remote_tasks ADD COLUMN cancel_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE remote_tasks ADD COLUMN cancel_error TEXT;
    ALTER TABLE remote_tasks ADD COLUMN cancel_deadline INTEGER;
    ALTER TABLE remote_tasks ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;
    UPDATE remote_tasks SET updated_at = COALESCE(last_seen_at, next_check_at);
    CREATE INDEX remote_tasks_tenant ON remote_tasks(tenant_id, done);
    "#,
    // 11: device authorization (RFC 8628): requests from CLIs and MCP clients, which a person
    // approves on the /device page (signed in by a session bound to one of their keys). Codes
    // and session tokens are stored only as hashes.
    r#"
    CREATE TABLE device_grants (
        id              TEXT PRIMARY KEY,
        device_hash     BLOB NOT NULL UNIQUE,
        user_code       TEXT NOT NULL,
        client_id       TEXT NOT NULL,
        scopes          TEXT,
        state           TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'issued')),
        created_at      INTEGER NOT NULL,
        expires_at      INTEGER NOT NULL,
        interval_ms     INTEGER NOT NULL,
        last_poll_at    INTEGER,
        tenant_id       TEXT,
        user_id         TEXT,
        approved_scopes TEXT,
        decided_at      INTEGER,
        key_id          TEXT
    );
    CREATE UNIQUE INDEX device_grants_user_code ON device_grants(user_code) WHERE state = 'pending';
    CREATE INDEX device_grants_expiry ON device_grants(expires_at);
    CREATE TABLE device_sessions (
        token_hash  BLOB PRIMARY KEY,
        tenant_id   TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        key_id      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 12: plans and usage. Each tenant's plan (NULL: the default plan) and its limits as the
    // server last synced them from the plans file (NULL: unlimited); usage counters kept by
    // triggers in the very transaction that changes what they count, and the quotas enforced by
    // the same triggers (RAISE aborts the statement, so a transactional batch that would cross a
    // quota stores nothing). Counters start from what the database holds.
    r#"
    ALTER TABLE tenants ADD COLUMN plan TEXT;
    CREATE TABLE tenant_limits (
        tenant_id             TEXT PRIMARY KEY,
        plan                  TEXT NOT NULL,
        memories_per_user     INTEGER,
        bytes_per_tenant      INTEGER,
        keys_per_user         INTEGER,
        targets_per_tenant    INTEGER,
        seats                 INTEGER,
        runs_waiting          INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE usage_counters (
        tenant_id  TEXT NOT NULL,
        user_id    TEXT NOT NULL,
        resource   TEXT NOT NULL,
        used       INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, user_id, resource)
    ) WITHOUT ROWID;

    INSERT INTO usage_counters SELECT tenant_id, user_id, 'memories', COUNT(*)
        FROM memories GROUP BY tenant_id, user_id;
    INSERT INTO usage_counters SELECT tenant_id, '', 'bytes',
        SUM(length(CAST(content AS BLOB)) + COALESCE(length(CAST(summary AS BLOB)), 0)
            + length(CAST(tags AS BLOB)) + length(CAST(space AS BLOB))
            + COALESCE(length(CAST(source AS BLOB)), 0))
        FROM memories GROUP BY tenant_id;
    INSERT INTO usage_counters SELECT tenant_id, user_id, 'keys', COUNT(*)
        FROM api_keys WHERE revoked_at IS NULL GROUP BY tenant_id, user_id;
    INSERT INTO usage_counters SELECT tenant_id, '', 'targets', COUNT(*)
        FROM dispatch_targets GROUP BY tenant_id;
    INSERT INTO usage_counters SELECT tenant_id, '', 'members', COUNT(*)
        FROM users WHERE removed_at IS NULL GROUP BY tenant_id;
    INSERT INTO usage_counters SELECT tenant_id, '', 'runs_waiting', COUNT(*)
        FROM runs WHERE state IN ('queued', 'awaiting_approval', 'blocked', 'dispatched')
        GROUP BY tenant_id;

    -- Memories: count per user, bytes per tenant (the UTF-8 bytes of content, summary, tags,
    -- space and source).
    CREATE TRIGGER usage_memories_insert AFTER INSERT ON memories BEGIN
        INSERT INTO usage_counters VALUES (NEW.tenant_id, NEW.user_id, 'memories', 1)
            ON CONFLICT DO UPDATE SET used = used + 1;
        INSERT INTO usage_counters VALUES (NEW.tenant_id, '', 'bytes',
            length(CAST(NEW.content AS BLOB)) + COALESCE(length(CAST(NEW.summary AS BLOB)), 0)
            + length(CAST(NEW.tags AS BLOB)) + length(CAST(NEW.space AS BLOB))
            + COALESCE(length(CAST(NEW.source AS BLOB)), 0))
            ON CONFLICT DO UPDATE SET used = used + excluded.used;
        SELECT RAISE(ABORT, 'quota_exceeded:memories_per_user')
            WHERE (SELECT used FROM usage_counters WHERE tenant_id = NEW.tenant_id
                     AND user_id = NEW.user_id AND resource = 'memories')
                > (SELECT memories_per_user FROM tenant_limits WHERE tenant_id = NEW.tenant_id);
        SELECT RAISE(ABORT, 'quota_exceeded:bytes_per_tenant')
            WHERE (SELECT used FROM usage_counters WHERE tenant_id = NEW.tenant_id
                     AND user_id = '' AND resource = 'bytes')
                > (SELECT bytes_per_tenant FROM tenant_limits WHERE tenant_id = NEW.tenant_id);
    END;
    CREATE TRIGGER usage_memories_delete AFTER DELETE ON memories BEGIN
        UPDATE usage_counters SET used = used - 1
            WHERE tenant_id = OLD.tenant_id AND user_id = OLD.user_id AND resource = 'memories';
        UPDATE usage_counters SET used = used - (
            length(CAST(OLD.content AS BLOB)) + COALESCE(length(CAST(OLD.summary AS BLOB)), 0)
            + length(CAST(OLD.tags AS BLOB)) + length(CAST(OLD.space AS BLOB))
            + COALESCE(length(CAST(OLD.source AS BLOB)), 0))
            WHERE tenant_id = OLD.tenant_id AND user_id = '' AND resource = 'bytes';
    END;

    -- API keys: live keys per user.
    CREATE TRIGGER usage_keys_insert AFTER INSERT ON api_keys WHEN NEW.revoked_at IS NULL BEGIN
        INSERT INTO usage_counters VALUES (NEW.tenant_id, NEW.user_id, 'keys', 1)
            ON CONFLICT DO UPDATE SET used = used + 1;
        SELECT RAISE(ABORT, 'quota_exceeded:keys_per_user')
            WHERE (SELECT used FROM usage_counters WHERE tenant_id = NEW.tenant_id
                     AND user_id = NEW.user_id AND resource = 'keys')
                > (SELECT keys_per_user FROM tenant_limits WHERE tenant_id = NEW.tenant_id);
    END;
    CREATE TRIGGER usage_keys_revoke AFTER UPDATE OF revoked_at ON api_keys
        WHEN OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL BEGIN
        UPDATE usage_counters SET used = used - 1
            WHERE tenant_id = OLD.tenant_id AND user_id = OLD.user_id AND resource = 'keys';
    END;

    -- Dispatch targets per tenant.
    CREATE TRIGGER usage_targets_insert AFTER INSERT ON dispatch_targets BEGIN
        INSERT INTO usage_counters VALUES (NEW.tenant_id, '', 'targets', 1)
            ON CONFLICT DO UPDATE SET used = used + 1;
        SELECT RAISE(ABORT, 'quota_exceeded:targets_per_tenant')
            WHERE (SELECT used FROM usage_counters WHERE tenant_id = NEW.tenant_id
                     AND user_id = '' AND resource = 'targets')
                > (SELECT targets_per_tenant FROM tenant_limits WHERE tenant_id = NEW.tenant_id);
    END;
    CREATE TRIGGER usage_targets_delete AFTER DELETE ON dispatch_targets BEGIN
        UPDATE usage_counters SET used = used - 1
            WHERE tenant_id = OLD.tenant_id AND user_id = '' AND resource = 'targets';
    END;

    -- Seats: members, and invitations neither accepted, revoked nor expired. A new invitation
    -- is refused when the seats are taken; a member joining takes the seat their invitation held.
    CREATE TRIGGER usage_members_insert AFTER INSERT ON users WHEN NEW.removed_at IS NULL BEGIN
        INSERT INTO usage_counters VALUES (NEW.tenant_id, '', 'members', 1)
            ON CONFLICT DO UPDATE SET used = used + 1;
    END;
    CREATE TRIGGER usage_members_remove AFTER UPDATE OF removed_at ON users
        WHEN OLD.removed_at IS NULL AND NEW.removed_at IS NOT NULL BEGIN
        UPDATE usage_counters SET used = used - 1
            WHERE tenant_id = OLD.tenant_id AND user_id = '' AND resource = 'members';
    END;
    CREATE TRIGGER usage_seats_invite AFTER INSERT ON invitations BEGIN
        SELECT RAISE(ABORT, 'quota_exceeded:seats')
            WHERE COALESCE((SELECT used FROM usage_counters WHERE tenant_id = NEW.tenant_id
                              AND user_id = '' AND resource = 'members'), 0)
                + (SELECT COUNT(*) FROM invitations WHERE tenant_id = NEW.tenant_id
                     AND accepted_at IS NULL AND revoked_at IS NULL
                     AND expires_at > NEW.created_at)
                > (SELECT seats FROM tenant_limits WHERE tenant_id = NEW.tenant_id);
    END;
    CREATE INDEX invitations_open ON invitations(tenant_id, expires_at)
        WHERE accepted_at IS NULL AND revoked_at IS NULL;

    -- Runs waiting (queued, awaiting approval, blocked, dispatched) per tenant: creating one
    -- past the quota is refused; moving between states never is.
    CREATE TRIGGER usage_runs_insert AFTER INSERT ON runs
        WHEN NEW.state IN ('queued', 'awaiting_approval', 'blocked', 'dispatched') BEGIN
        INSERT INTO usage_counters VALUES (NEW.tenant_id, '', 'runs_waiting', 1)
            ON CONFLICT DO UPDATE SET used = used + 1;
        SELECT RAISE(ABORT, 'quota_exceeded:runs_waiting')
            WHERE (SELECT used FROM usage_counters WHERE tenant_id = NEW.tenant_id
                     AND user_id = '' AND resource = 'runs_waiting')
                > (SELECT runs_waiting FROM tenant_limits WHERE tenant_id = NEW.tenant_id);
    END;
    CREATE TRIGGER usage_runs_state AFTER UPDATE OF state ON runs
        WHEN (OLD.state IN ('queued', 'awaiting_approval', 'blocked', 'dispatched'))
          != (NEW.state IN ('queued', 'awaiting_approval', 'blocked', 'dispatched')) BEGIN
        INSERT INTO usage_counters VALUES (NEW.tenant_id, '', 'runs_waiting',
            CASE WHEN NEW.state IN ('queued', 'awaiting_approval', 'blocked', 'dispatched')
                 THEN 1 ELSE -1 END)
            ON CONFLICT DO UPDATE SET used = used + excluded.used;
    END;
    "#,
    // 13: keyword search that stems English and finds words inside Japanese, Chinese, Thai, …
    // The full-text index becomes contentless (it keeps only what it indexes) over the text
    // `fts_text` derives (unspaced runs as bigrams, see `db::fts`), with the `porter` stemmer
    // around `unicode61`, and an `owner` column holding one token per owner (`fts_owner`), so a
    // query is narrowed to its owner's memories inside the index; a memory's row is removed by
    // rowid. The index is refilled after the migration, in batches with progress
    // (`db::fts::rebuild_pending`), from `fts_rebuild`.
    r#"
    DROP TRIGGER memories_fts_insert;
    DROP TRIGGER memories_fts_delete;
    DROP TABLE memories_fts;
    CREATE VIRTUAL TABLE memories_fts USING fts5(
        content, summary, tags, owner,
        content = '', contentless_delete = 1,
        tokenize = 'porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts (rowid, content, summary, tags, owner)
        VALUES (new.seq, fts_text(new.content), fts_text(new.summary), fts_text(new.tags),
                fts_owner(new.tenant_id, new.user_id));
    END;
    CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories BEGIN
        DELETE FROM memories_fts WHERE rowid = old.seq;
    END;
    CREATE TABLE fts_rebuild (next_seq INTEGER NOT NULL);
    INSERT INTO fts_rebuild VALUES (0);
    "#,
    // 14: hardening. A key records the key that made it (its expiry is capped by that key's,
    // and revoking with cascade reaches its descendants); a device request records where it
    // came from and which key approved it; a member records since when they hold their role
    // (two-person approval looks at it, and at who invited them).
    r#"
    ALTER TABLE api_keys ADD COLUMN parent_key_id TEXT REFERENCES api_keys(id);
    CREATE INDEX api_keys_parent ON api_keys(parent_key_id) WHERE parent_key_id IS NOT NULL;
    ALTER TABLE device_grants ADD COLUMN requested_from TEXT;
    ALTER TABLE device_grants ADD COLUMN approver_key_id TEXT;
    ALTER TABLE users ADD COLUMN role_since INTEGER;
    UPDATE users SET role_since = created_at;
    "#,
    // 15: switching the embedding model while serving. The target model is the meta row
    // 'embedding_model_next'; each memory's vector from it waits here until every memory has
    // one, then replaces `memories.embedding` in one transaction (see memory/switch.rs).
    r#"
    CREATE TABLE memory_vectors_next (
        seq              INTEGER PRIMARY KEY REFERENCES memories(seq) ON DELETE CASCADE,
        embed_tokens     INTEGER NOT NULL,
        embed_truncated  INTEGER NOT NULL,
        embedding        BLOB NOT NULL
    );
    "#,
];

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect())
}

pub fn apply(conn: &mut Connection) -> anyhow::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > latest_version() {
        anyhow::bail!(
            "the database schema is version {current}, newer than this memesh binary knows \
             ({}); run a newer memesh or restore a backup",
            latest_version()
        );
    }
    migrations().to_latest(conn)?;
    Ok(())
}

pub fn latest_version() -> i64 {
    MIGRATIONS.len() as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        super::migrations().validate().unwrap();
    }
}
