//! The `memesh` binary itself: bootstrap printed once, restart keeps everything, graceful
//! shutdown on SIGTERM, operator commands, and `audit verify` catching tampering.

mod common;

use std::time::Duration;

use common::binary::{audit_verify, get, key_in, memesh, post, start, stop};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_key_once_and_restart_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), &[]);
    let key = key_in(&first.stdout).expect("the first start prints the owner key");
    let (st, _) = get(&first.base, "/v1/keys", &key).await;
    assert_eq!(st, StatusCode::OK);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/keys", first.base))
        .header("x-api-key", &key)
        .json(&serde_json::json!({ "name": "survivor" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let base = first.base.clone();
    stop(first);
    assert!(
        reqwest::get(format!("{base}/healthz")).await.is_err(),
        "stopped"
    );

    let second = start(dir.path(), &[]);
    assert!(
        key_in(&second.stdout).is_none(),
        "a second start prints no key"
    );
    let (st, keys) = get(&second.base, "/v1/keys", &key).await;
    assert_eq!(st, StatusCode::OK, "the owner key still works");
    let names: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"survivor"), "{names:?}");
    let (st, _) = get(&second.base, "/readyz", &key).await;
    assert_eq!(st, StatusCode::OK);
    stop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_key_env_chooses_the_owner_key_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let chosen = "mk_ChosenByTheDeployPipeline0123456789abcdefgh";
    assert_eq!(chosen.len(), 46);
    let first = start(dir.path(), &[("MEMESH_BOOTSTRAP_KEY", chosen)]);
    assert_eq!(key_in(&first.stdout).as_deref(), Some(chosen));
    assert_eq!(get(&first.base, "/v1/keys", chosen).await.0, StatusCode::OK);
    stop(first);

    let other = "mk_SomethingElseEntirely0123456789abcdefghijkl";
    let second = start(dir.path(), &[("MEMESH_BOOTSTRAP_KEY", other)]);
    assert!(key_in(&second.stdout).is_none());
    assert_eq!(
        get(&second.base, "/v1/keys", chosen).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(&second.base, "/v1/keys", other).await.0,
        StatusCode::UNAUTHORIZED
    );
    stop(second);
}

#[test]
fn malformed_bootstrap_key_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = memesh(dir.path())
        .args(["init", "--owner-email", "ops@example.com"])
        .env("MEMESH_BOOTSTRAP_KEY", "hunter2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mk_ followed by 43"), "{err}");
}

#[test]
fn init_then_tenant_create_then_audit_verify() {
    let dir = tempfile::tempdir().unwrap();
    let out = memesh(dir.path())
        .args(["init", "--owner-email", "ops@example.com"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        key_in(&stdout).is_some() && stdout.contains("ops@example.com"),
        "{stdout}"
    );

    let again = memesh(dir.path()).arg("init").output().unwrap();
    assert!(
        !again.status.success(),
        "init refuses an initialized data directory"
    );
    assert!(key_in(&String::from_utf8_lossy(&again.stdout)).is_none());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already initialized"));

    let tenant = memesh(dir.path())
        .args([
            "tenant",
            "create",
            "--name",
            "beta",
            "--owner-email",
            "b@example.com",
        ])
        .output()
        .unwrap();
    assert!(tenant.status.success());
    assert!(key_in(&String::from_utf8_lossy(&tenant.stdout)).is_some());

    let (intact, text) = audit_verify(dir.path());
    assert!(intact, "{text}");
    assert!(text.contains("intact: 4 rows in 2 tenants"), "{text}");

    // The heads to keep outside memesh: one line per tenant, its newest sequence and hash.
    let heads = memesh(dir.path()).args(["audit", "head"]).output().unwrap();
    assert!(heads.status.success());
    let conn = rusqlite::Connection::open(dir.path().join("memesh.db")).unwrap();
    let expected: Vec<String> = conn
        .prepare(
            "SELECT tenant_id, seq, hash FROM audit_log a WHERE seq =
               (SELECT MAX(seq) FROM audit_log b WHERE b.tenant_id = a.tenant_id)
             ORDER BY tenant_id",
        )
        .unwrap()
        .query_map([], |r| {
            Ok(format!(
                "{} {} {}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(expected.len(), 2);
    assert_eq!(
        String::from_utf8_lossy(&heads.stdout)
            .lines()
            .collect::<Vec<_>>(),
        expected
    );
    drop(conn);

    // Tamper with one row's detail: verify must point at it.
    let conn = rusqlite::Connection::open(dir.path().join("memesh.db")).unwrap();
    let changed = conn
        .execute(
            "UPDATE audit_log SET detail = '{\"name\":\"forged\"}'
             WHERE action = 'keys.create' AND seq = 2
               AND tenant_id = (SELECT tenant_id FROM audit_log WHERE seq = 1 ORDER BY at LIMIT 1)",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let (intact, text) = audit_verify(dir.path());
    assert!(!intact);
    assert!(
        text.contains("at sequence 2") && text.contains("altered"),
        "{text}"
    );
}

#[test]
fn deleting_an_audit_row_breaks_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        memesh(dir.path())
            .arg("init")
            .output()
            .unwrap()
            .status
            .success()
    );
    let conn = rusqlite::Connection::open(dir.path().join("memesh.db")).unwrap();
    conn.execute("DELETE FROM audit_log WHERE seq = 1", [])
        .unwrap();
    drop(conn);
    let (intact, text) = audit_verify(dir.path());
    assert!(!intact);
    assert!(text.contains("missing"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path(), &[]);
    let key = key_in(&first.stdout).unwrap();
    let client = reqwest::Client::new();
    let mut created = Vec::new();
    for i in 0..20 {
        let resp = client
            .post(format!("{}/v1/keys", first.base))
            .header("x-api-key", &key)
            .json(&serde_json::json!({ "name": format!("k{i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await.unwrap();
        created.push(body["id"].as_str().unwrap().to_owned());
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let second = start(dir.path(), &[]);
    let (_, keys) = get(&second.base, "/v1/keys", &key).await;
    let listed: Vec<&str> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    for id in &created {
        assert!(listed.contains(&id.as_str()), "{id} lost after SIGKILL");
    }
    stop(second);
    let (intact, text) = audit_verify(dir.path());
    assert!(intact, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_loses_no_acknowledged_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path(), &[]);
    let key = key_in(&first.stdout).unwrap();
    let base = first.base.clone();

    // Four writers stream memories; the server is killed while they are mid-flight.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (base, key, acked) = (base.clone(), key.clone(), acknowledged.clone());
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..10_000 {
                let content = format!("writer {w} memory {i} about the harbour at dawn");
                let sent = client
                    .post(format!("{base}/v1/memory/write"))
                    .header("x-api-key", &key)
                    .json(&serde_json::json!({ "content": content }))
                    .send()
                    .await;
                let Ok(resp) = sent else { return };
                if resp.status() != StatusCode::CREATED {
                    return;
                }
                let Ok(body) = resp.json::<Value>().await else {
                    return;
                };
                let id = body["id"].as_str().unwrap().to_owned();
                acked.lock().unwrap().push((id, content));
            }
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while acknowledged.lock().unwrap().len() < 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writers were not acknowledged 60 writes in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acknowledged.lock().unwrap().clone();
    assert!(
        acked.len() < 4 * 10_000,
        "the kill interrupted the writers mid-flight"
    );

    let second = start(dir.path(), &[]);
    let (st, ready) = get(&second.base, "/readyz", &key).await;
    assert_eq!(st, StatusCode::OK, "{ready}");
    assert_eq!(
        ready["memories"], ready["index"]["vectors"],
        "index matches SQLite exactly"
    );
    // Every acknowledged write is there; at most one per writer was committed without its
    // acknowledgement reaching the client before the kill.
    let stored = ready["memories"].as_u64().unwrap();
    assert!(
        (acked.len() as u64..=acked.len() as u64 + 4).contains(&stored),
        "{stored} stored for {} acknowledged",
        acked.len()
    );
    for (id, content) in &acked {
        let (st, m) = get(&second.base, &format!("/v1/memory/{id}"), &key).await;
        assert_eq!(st, StatusCode::OK, "acknowledged {id} lost");
        assert_eq!(m["content"], content.as_str());
    }
    for (id, content) in acked.iter().step_by(5) {
        let (st, r) = post(
            &second.base,
            "/v1/memory/search",
            &key,
            serde_json::json!({ "query": content, "limit": 1 }),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(
            r["results"][0]["memory"]["id"],
            id.as_str(),
            "searchable after restart"
        );
    }
    stop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_models_database_is_refused_until_reindexed() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), &[]);
    let key = key_in(&first.stdout).unwrap();
    let (st, m) = post(
        &first.base,
        "/v1/memory/write",
        &key,
        serde_json::json!({ "content": "The cat sits on the mat." }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    stop(first);

    // Pretend the stored vectors came from another model (and are garbage).
    let conn = rusqlite::Connection::open(dir.path().join("memesh.db")).unwrap();
    conn.execute(
        "UPDATE meta SET value = 'some-other-model' WHERE key = 'embedding_model'",
        [],
    )
    .unwrap();
    conn.execute("UPDATE memories SET embedding = zeroblob(1536)", [])
        .unwrap();
    drop(conn);

    let refused = memesh(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("some-other-model") && err.contains("memesh reindex"),
        "{err}"
    );

    let reindex = memesh(dir.path()).arg("reindex").output().unwrap();
    assert!(
        reindex.status.success(),
        "{}",
        String::from_utf8_lossy(&reindex.stderr)
    );
    let said = String::from_utf8_lossy(&reindex.stdout);
    assert!(
        said.contains("the memories are embedded with all-minilm-l6-v2-int8 now"),
        "{said}"
    );

    let second = start(dir.path(), &[]);
    let (_, r) = post(
        &second.base,
        "/v1/memory/search",
        &key,
        serde_json::json!({ "query": "A feline is resting on a rug." }),
    )
    .await;
    assert_eq!(r["results"][0]["memory"]["id"], m["id"]);
    let score = r["results"][0]["score"].as_f64().unwrap();
    assert!((score - 0.571).abs() < 0.002, "real vectors again: {score}");
    stop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_claim_and_duplicates_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(dir.path(), &[]);
    let key = key_in(&first.stdout).unwrap();
    let base = first.base.clone();
    let (st, target) = post(
        &base,
        "/v1/agents/dispatch-targets",
        &key,
        serde_json::json!({ "name": "w", "kind": "LOCAL_AGENT" }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, agent) = post(
        &base,
        "/v1/keys",
        &key,
        serde_json::json!({ "name": "a", "targetId": target["id"] }),
    )
    .await;
    let agent = agent["key"].as_str().unwrap().to_owned();
    let mut executions = Vec::new();
    for i in 0..6 {
        let (st, run) = post(
            &base,
            "/v1/orchestrator/runs",
            &key,
            serde_json::json!({ "targetId": target["id"], "input": { "i": i } }),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED);
        executions.push(run["execution"]["id"].as_str().unwrap().to_owned());
    }
    for (i, exe) in executions.iter().take(3).enumerate() {
        let (st, _) = post(
            &base,
            &format!("/v1/agents/executions/{exe}/claim"),
            &agent,
            serde_json::json!({ "claimToken": format!("t{i}") }),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, _) = post(
        &base,
        &format!("/v1/agents/executions/{}/complete", executions[0]),
        &agent,
        serde_json::json!({ "claimToken": "t0", "result": 1 }),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let second = start(dir.path(), &[]);
    let base = second.base.clone();
    let (_, pending) = get(&base, "/v1/agents/executions", &agent).await;
    let pending: Vec<&str> = pending["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        pending,
        executions[3..]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "unclaimed ones are still pending"
    );
    for (i, exe) in executions.iter().enumerate().take(3).skip(1) {
        let (st, _) = post(
            &base,
            &format!("/v1/agents/executions/{exe}/claim"),
            &agent,
            serde_json::json!({ "claimToken": "intruder" }),
        )
        .await;
        assert_eq!(st, StatusCode::CONFLICT, "still held by its claimant");
        let (st, _) = post(
            &base,
            &format!("/v1/agents/executions/{exe}/heartbeat"),
            &agent,
            serde_json::json!({ "claimToken": format!("t{i}") }),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "the claim survived the crash");
        let (st, _) = post(
            &base,
            &format!("/v1/agents/executions/{exe}/complete"),
            &agent,
            serde_json::json!({ "claimToken": format!("t{i}") }),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, _) = post(
        &base,
        &format!("/v1/agents/executions/{}/complete", executions[0]),
        &agent,
        serde_json::json!({ "claimToken": "t0", "result": 1 }),
    )
    .await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "the acknowledged completion was kept; a second one is refused"
    );
    let (_, runs) = get(&base, "/v1/orchestrator/runs?state=succeeded", &key).await;
    assert_eq!(runs["total"], 3);
    let (_, all) = get(&base, "/v1/orchestrator/runs", &key).await;
    assert_eq!(all["total"], 6);
    stop(second);
}

/// `memesh backup` while writes continue, then `memesh restore` into an empty directory: the
/// restored server holds every write acknowledged before the backup began, none begun after it
/// ended, its index matches its database, and its audit chains verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_restores_every_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    let dir = tempfile::tempdir().unwrap();
    let running = start(dir.path(), &[]);
    let key = key_in(&running.stdout).unwrap();
    let base = running.base.clone();
    // (id, when the write was sent, when it was acknowledged)
    let acked = Arc::new(Mutex::new(Vec::<(String, Instant, Instant)>::new()));
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writer = {
        let (base, key, acked, stop) = (
            base.clone(),
            key.clone(),
            acked.clone(),
            stop_writing.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let sent = Instant::now();
                let resp = client
                    .post(format!("{base}/v1/memory/write"))
                    .header("x-api-key", &key)
                    .json(
                        &serde_json::json!({ "content": format!("バックアップ中の書き込み {i}") }),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::CREATED);
                let body: Value = resp.json().await.unwrap();
                let id = body["id"].as_str().unwrap().to_owned();
                acked.lock().unwrap().push((id, sent, Instant::now()));
            }
        })
    };
    while acked.lock().unwrap().len() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backup_dir = dir.path().join("backup");
    let (data, target) = (dir.path().to_owned(), backup_dir.clone());
    let began = Instant::now();
    let out =
        tokio::task::spawn_blocking(move || memesh(&data).arg("backup").arg(&target).output())
            .await
            .unwrap()
            .unwrap();
    let ended = Instant::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    while acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, s, _)| *s > ended)
        .count()
        < 5
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_writing.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    stop(running);

    let restored = tempfile::tempdir().unwrap();
    let target = restored.path().join("data");
    let out = memesh(&target)
        .arg("restore")
        .arg(&backup_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Restoring over data is refused.
    let again = memesh(&target)
        .arg("restore")
        .arg(&backup_dir)
        .output()
        .unwrap();
    assert!(!again.status.success());
    let (intact, text) = audit_verify(&target);
    assert!(intact, "{text}");

    let server = start(&target, &[]);
    let (st, ready) = get(&server.base, "/readyz", &key).await;
    assert_eq!(st, StatusCode::OK, "{ready}");
    assert_eq!(
        ready["memories"], ready["index"]["vectors"],
        "index matches the database"
    );
    let acked = acked.lock().unwrap().clone();
    let mut present = 0;
    for (id, sent, done) in &acked {
        let (st, _) = get(&server.base, &format!("/v1/memory/{id}"), &key).await;
        if *done < began {
            assert_eq!(
                st,
                StatusCode::OK,
                "{id}, acknowledged before the backup, is missing"
            );
        }
        if *sent > ended {
            assert_eq!(
                st,
                StatusCode::NOT_FOUND,
                "{id}, sent after the backup, is in it"
            );
        }
        present += usize::from(st == StatusCode::OK);
    }
    assert_eq!(
        ready["memories"].as_u64(),
        Some(present as u64),
        "nothing but acknowledged writes"
    );
    stop(server);
}

/// A request that may meet a killed server: `None` when no answer came.
async fn try_send(req: reqwest::RequestBuilder) -> Option<(StatusCode, Value)> {
    let resp = req.send().await.ok()?;
    let status = resp.status();
    let body = resp.json().await.ok()?;
    Some((status, body))
}

/// What the workload was told succeeded (and what it sent without hearing back).
#[derive(Default, Clone)]
struct Acked {
    /// Single and batch writes: idempotency key, request body, ids.
    writes: Vec<(String, Value, Vec<String>)>,
    deleted: std::collections::HashSet<String>,
    /// Deletes sent and not acknowledged: committed or not, either is right.
    deleting: std::collections::HashSet<String>,
    /// Runs: execution id, claim token, completed.
    claims: Vec<(String, String, bool)>,
    /// The last governance change sent to the held target, and whether it was acknowledged.
    hold: Option<(bool, bool)>,
}

/// One round of mixed work against `base` until the server dies: single and batch memory
/// writes (with idempotency keys) and deletes, runs claimed and completed by a worker, and a
/// target held and released (compare-and-swap on its runtime token).
async fn workload(
    base: String,
    owner: String,
    agent: String,
    targets: (String, String),
    round: u32,
    acked: std::sync::Arc<std::sync::Mutex<Acked>>,
) {
    let http = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder, k: &str| r.header("x-api-key", k.to_owned());
    let writes = {
        let (http, base, owner, acked) = (http.clone(), base.clone(), owner.clone(), acked.clone());
        async move {
            for i in 0.. {
                let (path, body) = if i % 3 == 2 {
                    let key = format!("b-{round}-{i}");
                    let memories: Vec<Value> = (0..3)
                        .map(|j| serde_json::json!({ "content": format!("round {round} batch {i}.{j} 記憶") }))
                        .collect();
                    (
                        "/v1/memory/batch",
                        serde_json::json!({ "transactional": true, "memories": memories, "idempotencyKey": key }),
                    )
                } else {
                    let key = format!("w-{round}-{i}");
                    (
                        "/v1/memory/write",
                        serde_json::json!({ "content": format!("round {round} write {i} 記憶"), "idempotencyKey": key }),
                    )
                };
                let Some((st, r)) =
                    try_send(auth(http.post(format!("{base}{path}")), &owner).json(&body)).await
                else {
                    return;
                };
                assert_eq!(st, StatusCode::CREATED, "{r}");
                let ids: Vec<String> = match r["memories"].as_array() {
                    Some(ms) => ms
                        .iter()
                        .map(|m| m["id"].as_str().unwrap().to_owned())
                        .collect(),
                    None => vec![r["id"].as_str().unwrap().to_owned()],
                };
                let key = body["idempotencyKey"].as_str().unwrap().to_owned();
                let victim = {
                    let mut a = acked.lock().unwrap();
                    a.writes.push((key, body, ids.clone()));
                    // Now and then delete an earlier acknowledged memory.
                    let victim = (i % 4 == 3)
                        .then(|| {
                            a.writes
                                .iter()
                                .flat_map(|w| w.2.iter())
                                .find(|id| !a.deleted.contains(*id) && !a.deleting.contains(*id))
                                .cloned()
                        })
                        .flatten();
                    if let Some(v) = &victim {
                        a.deleting.insert(v.clone());
                    }
                    victim
                };
                {
                    if let Some(id) = victim {
                        let Some((st, _)) =
                            try_send(auth(http.delete(format!("{base}/v1/memory/{id}")), &owner))
                                .await
                        else {
                            return;
                        };
                        assert_eq!(st, StatusCode::OK);
                        let mut a = acked.lock().unwrap();
                        a.deleting.remove(&id);
                        a.deleted.insert(id);
                    }
                }
            }
        }
    };
    let runs = {
        let (http, base, owner, agent, acked, target) = (
            http.clone(),
            base.clone(),
            owner.clone(),
            agent.clone(),
            acked.clone(),
            targets.0.clone(),
        );
        async move {
            for i in 0.. {
                let body = serde_json::json!({ "targetId": target, "input": { "round": round, "i": i }, "idempotencyKey": format!("r-{round}-{i}") });
                let Some((st, run)) = try_send(
                    auth(http.post(format!("{base}/v1/orchestrator/runs")), &owner).json(&body),
                )
                .await
                else {
                    return;
                };
                assert_eq!(st, StatusCode::CREATED, "{run}");
                let exe = run["execution"]["id"].as_str().unwrap().to_owned();
                let token = format!("c-{round}-{i}");
                let claim = serde_json::json!({ "claimToken": token });
                let Some((st, _)) = try_send(
                    auth(
                        http.post(format!("{base}/v1/agents/executions/{exe}/claim")),
                        &agent,
                    )
                    .json(&claim),
                )
                .await
                else {
                    return;
                };
                assert_eq!(st, StatusCode::OK);
                acked
                    .lock()
                    .unwrap()
                    .claims
                    .push((exe.clone(), token.clone(), false));
                let done = serde_json::json!({ "claimToken": token, "result": { "ok": i } });
                let Some((st, _)) = try_send(
                    auth(
                        http.post(format!("{base}/v1/agents/executions/{exe}/complete")),
                        &agent,
                    )
                    .json(&done),
                )
                .await
                else {
                    return;
                };
                assert_eq!(st, StatusCode::OK);
                acked.lock().unwrap().claims.last_mut().unwrap().2 = true;
            }
        }
    };
    let governance = {
        let (http, base, owner, acked, target) = (
            http.clone(),
            base.clone(),
            owner.clone(),
            acked.clone(),
            targets.1.clone(),
        );
        async move {
            loop {
                let Some((_, t)) = try_send(auth(
                    http.get(format!("{base}/v1/agents/dispatch-targets/{target}")),
                    &owner,
                ))
                .await
                else {
                    return;
                };
                let held = !t["runtime"]["hold"].is_null();
                let (op, body) = if held {
                    (
                        "release",
                        serde_json::json!({ "expectedRuntimeUpdatedAt": t["runtime"]["runtimeUpdatedAt"] }),
                    )
                } else {
                    (
                        "hold",
                        serde_json::json!({ "reason": "crash test", "expectedRuntimeUpdatedAt": t["runtime"]["runtimeUpdatedAt"] }),
                    )
                };
                acked.lock().unwrap().hold = Some((!held, false));
                let Some((st, r)) = try_send(
                    auth(
                        http.post(format!("{base}/v1/agents/dispatch-targets/{target}/{op}")),
                        &owner,
                    )
                    .json(&body),
                )
                .await
                else {
                    return;
                };
                assert_eq!(st, StatusCode::OK, "{r}");
                acked.lock().unwrap().hold = Some((!held, true));
            }
        }
    };
    tokio::join!(writes, runs, governance);
}

/// SIGKILL at random points of a mixed workload, restart, and check after each restart: every
/// acknowledged write is there exactly once (its idempotency key replays it, never creates it
/// again), no acknowledged delete came back, the index matches SQLite, the audit chains verify,
/// every acknowledged claim is still held by its token alone or completed, and the held
/// target is as its last acknowledged change left it. `MEMESH_CRASH_KILLS` kills (3 by
/// default; the long mode runs 50 or more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_of_a_mixed_workload() {
    use rand::{Rng, SeedableRng};
    use std::sync::{Arc, Mutex};

    let kills: u32 = std::env::var("MEMESH_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("MEMESH_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261130);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let owner = key_in(&server.stdout).unwrap();
    let base = server.base.clone();
    let target = |name: &str| serde_json::json!({ "name": name, "kind": "LOCAL_AGENT" });
    let (_, work) = post(&base, "/v1/agents/dispatch-targets", &owner, target("work")).await;
    let (_, governed) = post(
        &base,
        "/v1/agents/dispatch-targets",
        &owner,
        target("governed"),
    )
    .await;
    let targets = (
        work["id"].as_str().unwrap().to_owned(),
        governed["id"].as_str().unwrap().to_owned(),
    );
    let (_, agent) = post(
        &base,
        "/v1/keys",
        &owner,
        serde_json::json!({ "name": "worker", "targetId": targets.0 }),
    )
    .await;
    let agent = agent["key"].as_str().unwrap().to_owned();
    let acked = Arc::new(Mutex::new(Acked::default()));

    for round in 0..kills {
        let running = tokio::spawn(workload(
            server.base.clone(),
            owner.clone(),
            agent.clone(),
            targets.clone(),
            round,
            acked.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        running.await.unwrap();
        server = start(dir.path(), &[]);
        let base = server.base.clone();

        let (st, ready) = get(&base, "/readyz", &owner).await;
        assert_eq!(st, StatusCode::OK, "round {round}: {ready}");
        assert_eq!(
            ready["memories"], ready["index"]["vectors"],
            "round {round}: index matches SQLite"
        );
        // The round's workload has ended: a copy of what it was told.
        let a = acked.lock().unwrap().clone();
        let mut live = 0;
        for (key, body, ids) in &a.writes {
            let path = if body.get("memories").is_some() {
                "/v1/memory/batch"
            } else {
                "/v1/memory/write"
            };
            let (st, r) = post(&base, path, &owner, body.clone()).await;
            assert_eq!(
                st,
                StatusCode::OK,
                "round {round}: {key} replays, it is not written again: {r}"
            );
            let replayed: Vec<&str> = match r["memories"].as_array() {
                Some(ms) => ms.iter().map(|m| m["id"].as_str().unwrap()).collect(),
                None => vec![r["id"].as_str().unwrap()],
            };
            assert_eq!(
                replayed,
                ids.iter().map(String::as_str).collect::<Vec<_>>(),
                "round {round}: {key}"
            );
            for id in ids {
                let (st, _) = get(&base, &format!("/v1/memory/{id}"), &owner).await;
                if a.deleting.contains(id) {
                    // Its delete was in flight at the kill: committed or not, either is right.
                    assert!(
                        st == StatusCode::OK || st == StatusCode::NOT_FOUND,
                        "round {round}: {id}: {st}"
                    );
                    live += usize::from(st == StatusCode::OK);
                    continue;
                }
                let expected = if a.deleted.contains(id) {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::OK
                };
                assert_eq!(st, expected, "round {round}: memory {id}");
                live += usize::from(expected == StatusCode::OK);
            }
        }
        let (_, count) = get(&base, "/v1/memory/count", &owner).await;
        let stored = count["count"].as_u64().unwrap() as usize;
        // At most one single write and one batch of three were committed unacknowledged per
        // round; their keys were never replayed, so they stay as they are.
        assert!(
            (live..=live + 4 * (round as usize + 1)).contains(&stored),
            "round {round}: {stored} stored, {live} acknowledged and live"
        );
        for (exe, token, completed) in &a.claims {
            let (st, _) = post(
                &base,
                &format!("/v1/agents/executions/{exe}/claim"),
                &agent,
                serde_json::json!({ "claimToken": "intruder" }),
            )
            .await;
            assert_eq!(
                st,
                StatusCode::CONFLICT,
                "round {round}: {exe} is not claimable by another token"
            );
            if !completed {
                let (st, r) = post(
                    &base,
                    &format!("/v1/agents/executions/{exe}/heartbeat"),
                    &agent,
                    serde_json::json!({ "claimToken": token }),
                )
                .await;
                // Held by its token, or completed by a completion committed unacknowledged.
                assert!(
                    st == StatusCode::OK || r["error"]["code"] == "lease_lost",
                    "round {round}: {exe}: {r}"
                );
            }
        }
        if let Some((held, true)) = a.hold {
            let (_, t) = get(
                &base,
                &format!("/v1/agents/dispatch-targets/{}", targets.1),
                &owner,
            )
            .await;
            assert_eq!(
                !t["runtime"]["hold"].is_null(),
                held,
                "round {round}: the last acknowledged governance change stands"
            );
        }
        drop(a);
        let verify = memesh(dir.path())
            .args(["audit", "verify"])
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
    let a = acked.lock().unwrap().clone();
    assert!(
        a.writes.len() >= kills as usize && a.claims.iter().any(|c| c.2) && a.hold.is_some(),
        "the workload did real work between the kills"
    );
    stop(server);
}
