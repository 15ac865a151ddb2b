//! Keyword and hybrid retrieval (issue 17): English is stemmed, Japanese and Chinese words are
//! found inside longer runs of text, `explain` names the words that matched, and the full-text
//! index is rebuilt after a migration. Real server, real model.

mod common;

use common::TestServer;
use serde_json::{Value, json};

async fn write_all(s: &TestServer, texts: &[&str]) -> Vec<String> {
    let memories: Vec<Value> = texts.iter().map(|t| json!({ "content": t })).collect();
    let (st, body) = s
        .post(
            "/v1/memory/batch",
            &s.owner_key,
            json!({ "memories": memories, "transactional": true }),
        )
        .await;
    assert_eq!(st, 201, "{body}");
    body["memories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn query(s: &TestServer, q: &str, mode: &str) -> Value {
    let (st, body) = s
        .post(
            "/v1/memory/query",
            &s.owner_key,
            json!({ "query": q, "mode": mode, "limit": 5, "explain": true }),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    body
}

/// The ids of the results, best first.
fn ranked(body: &Value) -> Vec<&str> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["memory"]["id"].as_str().unwrap())
        .collect()
}

/// Asserts that `id` is the keyword side's best result, in keyword mode and in hybrid mode,
/// with these matched words.
async fn found_first(s: &TestServer, q: &str, id: &str, matched: &[&str]) {
    let kw = query(s, q, "keyword").await;
    assert_eq!(ranked(&kw).first(), Some(&id), "keyword {q}: {kw}");
    assert_eq!(
        kw["results"][0]["explain"]["matchedTerms"],
        json!(matched),
        "{q}"
    );
    let hybrid = query(s, q, "hybrid").await;
    let hit = hybrid["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["memory"]["id"] == id)
        .unwrap_or_else(|| panic!("hybrid {q} lost it: {hybrid}"));
    assert_eq!(hit["explain"]["keywordRank"], 1, "hybrid {q}: {hybrid}");
    assert_eq!(hit["explain"]["matchedTerms"], json!(matched), "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn english_is_stemmed() {
    let s = TestServer::start().await;
    let ids = write_all(
        &s,
        &[
            "The database migrations failed twice on Friday night",
            "We deploy the billing service every Tuesday morning",
            "Lunch with the design team moved to Thursday",
            "Our cat sleeps on the sofa all afternoon",
            "Invoices are due at the end of the month",
            "The printer on the third floor jams often",
        ],
    )
    .await;
    // Plural and singular, past tense and present, other forms: one stem each.
    found_first(&s, "migration", &ids[0], &["migration"]).await;
    found_first(&s, "migrating", &ids[0], &["migrating"]).await;
    found_first(&s, "deployed", &ids[1], &["deployed"]).await;
    found_first(&s, "billing deploys", &ids[1], &["billing", "deploys"]).await;
    found_first(&s, "invoice", &ids[4], &["invoice"]).await;
    let kw = query(&s, "migrations", "keyword").await;
    assert_eq!(ranked(&kw), [ids[0].as_str()], "{kw}");
    assert_eq!(kw["total"], 1);
    assert_eq!(kw["keywordTerms"]["searched"], json!(["migrations"]));
    assert_eq!(kw["keywordTerms"]["ignored"], json!([]));
    // A word nowhere: nothing, and the total says so.
    let none = query(&s, "kubernetes", "keyword").await;
    assert_eq!(none["total"], 0);
    assert!(ranked(&none).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn japanese_and_chinese_words_are_found_inside_longer_runs() {
    let s = TestServer::start().await;
    let ids = write_all(
        &s,
        &[
            "データベースの移行が失敗したので週末にやり直す",
            "来週の会議は東京オフィスで行います",
            "数据库迁移失败了，周末重新执行",
            "我们下周在上海开会",
            "The database migration failed",
        ],
    )
    .await;
    // A katakana word in the middle of a sentence with no spaces.
    found_first(&s, "データベース", &ids[0], &["データベース"]).await;
    // Two-character words (most Chinese and many Japanese words): a trigram index misses these.
    found_first(&s, "移行", &ids[0], &["移行"]).await;
    found_first(&s, "东京 会議", &ids[1], &["会議"]).await;
    found_first(&s, "迁移", &ids[2], &["迁移"]).await;
    found_first(&s, "数据库", &ids[2], &["数据库"]).await;
    found_first(&s, "上海", &ids[3], &["上海"]).await;
    // A run of several words as the query: the memory holding most of it first, and only
    // the words it holds whole are reported as matched.
    let kw = query(&s, "データベースの移行", "keyword").await;
    assert_eq!(ranked(&kw)[0], ids[0]);
    // Mixed scripts in one query: each side finds its own.
    let mixed = query(&s, "database 数据库", "keyword").await;
    let top: Vec<&str> = ranked(&mixed).into_iter().take(2).collect();
    assert!(
        top.contains(&ids[2].as_str()) && top.contains(&ids[4].as_str()),
        "{mixed}"
    );
    // A word that occurs nowhere inside any run: nothing.
    let none = query(&s, "大阪", "keyword").await;
    assert_eq!(none["total"], 0, "{none}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_text_index_is_rebuilt_after_the_migration() {
    let s = TestServer::start().await;
    let ids = write_all(
        &s,
        &[
            "The database migrations failed twice",
            "データベースの移行が失敗した",
        ],
    )
    .await;
    let path = s.db_path();
    let s = s.restart().await;
    assert_eq!(
        ranked(&query(&s, "migration", "keyword").await),
        [ids[0].as_str()]
    );

    // As a database the re-creating migration just ran on: the index empty, the refill due.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO memories_fts (memories_fts) VALUES ('delete-all')",
            [],
        )
        .unwrap();
        conn.execute("INSERT INTO fts_rebuild VALUES (0)", [])
            .unwrap();
    }
    let s = s.restart().await;
    assert_eq!(
        ranked(&query(&s, "migration", "keyword").await),
        [ids[0].as_str()]
    );
    assert_eq!(
        ranked(&query(&s, "移行", "keyword").await),
        [ids[1].as_str()]
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let pending: i64 = conn
        .query_row("SELECT COUNT(*) FROM fts_rebuild", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pending, 0, "the refill finished and cleared its marker");

    // Deleting a memory takes it out of the index (by rowid, the index keeps no text).
    let (st, _) = s
        .delete(&format!("/v1/memory/{}", ids[0]), &s.owner_key)
        .await;
    assert_eq!(st, 200);
    let none = query(&s, "migration", "keyword").await;
    assert_eq!(none["total"], 0, "{none}");
}

/// Imports `n` memories for `key` with a fixed embedding (no model time): each holds the word
/// `common` and a word of its own.
async fn import_many(s: &TestServer, key: &str, n: usize, common: &str) {
    use base64::Engine;
    let mut v = vec![0f32; memesh::embed::MODEL_DIM];
    v[0] = 1.0;
    let blob: Vec<u8> = v.iter().flat_map(|a| a.to_le_bytes()).collect();
    let embedding = base64::engine::general_purpose::STANDARD.encode(blob);
    let mut lines = String::new();
    for i in 0..n {
        let record = json!({
            "id": memesh::ids::MemoryId::generate(),
            "content": format!("{common} note number{i} about item{i}"),
            "space": "default", "tags": [], "sensitivity": "internal",
            "createdAt": common::START, "embeddingModel": common::TEST_MODEL.id,
            "embedding": embedding,
        });
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    let resp = s
        .client
        .post(s.url("/v1/memory/import"))
        .header("x-api-key", key)
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .await
        .unwrap();
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["failed"], 0, "{report}");
}

/// Writes `contents` for the owner in turn, the clock a second on after each.
async fn write_a_second_apart(s: &TestServer, contents: &[&str]) {
    for content in contents {
        let (st, _) = s
            .post(
                "/v1/memory/write",
                &s.owner_key,
                json!({ "content": content }),
            )
            .await;
        assert_eq!(st, 201);
        s.clock.advance_ms(1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_words_are_dropped_by_the_owners_own_memories() {
    let s = TestServer::start().await;
    import_many(&s, &s.owner_key, 2_500, "everywhere").await;
    // Alpha's 2,500 memories all hold `everywhere`: a stopword for alpha.
    let (st, alpha) = s
        .post(
            "/v1/memory/query",
            &s.owner_key,
            json!({ "query": "everywhere item42", "mode": "keyword", "explain": true }),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        alpha["keywordTerms"]["ignored"],
        json!(["everywhere"]),
        "{alpha}"
    );
    assert_eq!(alpha["total"], 1, "only the rare word is searched by");
    assert_eq!(
        alpha["results"][0]["explain"]["matchedTerms"],
        json!(["everywhere", "item42"])
    );
    // A query of common words only keeps the rarest: still an answer.
    let (_, only) = s
        .post(
            "/v1/memory/query",
            &s.owner_key,
            json!({ "query": "everywhere note", "mode": "keyword", "explain": true }),
        )
        .await;
    assert_eq!(only["total"], 2_500, "{}", only["keywordTerms"]);
    // A common word (here in about 10% of the memories: not a stopword proper, which is in
    // more than 20%) finds nothing by itself but still counts in the score of what the rarer
    // words find: of two memories holding the rare word, the one that also holds the common
    // one ranks first, though it is the older (ties go to the newer).
    import_many(&s, &s.owner_key, 300, "occasionally").await;
    write_a_second_apart(&s, &["zebracorn occasionally here", "zebracorn plain here"]).await;
    let (_, ranked) = s
        .post(
            "/v1/memory/query",
            &s.owner_key,
            json!({ "query": "occasionally zebracorn", "mode": "keyword", "explain": true }),
        )
        .await;
    assert_eq!(ranked["total"], 2, "{ranked}");
    assert_eq!(ranked["keywordTerms"]["ignored"], json!(["occasionally"]));
    assert_eq!(
        ranked["results"][0]["memory"]["content"], "zebracorn occasionally here",
        "{ranked}"
    );
    // Where a common word occurs is remembered from that query; memories written since count
    // all the same.
    write_a_second_apart(
        &s,
        &["zebracorn plain later", "zebracorn occasionally later"],
    )
    .await;
    let (_, ranked) = s
        .post(
            "/v1/memory/query",
            &s.owner_key,
            json!({ "query": "occasionally zebracorn", "mode": "keyword" }),
        )
        .await;
    let order: Vec<&str> = ranked["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["memory"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "zebracorn occasionally later",
            "zebracorn occasionally here",
            "zebracorn plain later",
            "zebracorn plain here"
        ]
    );
    // Another tenant's few memories: nothing of alpha's decides what beta's query drops.
    let beta = s.create_tenant("beta", "owner@beta.test");
    let (st, _) = s
        .post(
            "/v1/memory/write",
            &beta.owner_key,
            json!({ "content": "everywhere we went it rained" }),
        )
        .await;
    assert_eq!(st, 201);
    let (_, b) = s
        .post(
            "/v1/memory/query",
            &beta.owner_key,
            json!({ "query": "everywhere item42", "mode": "keyword", "explain": true }),
        )
        .await;
    assert_eq!(b["keywordTerms"]["ignored"], json!([]), "{b}");
    assert_eq!(b["total"], 1);
    assert_eq!(
        b["results"][0]["memory"]["content"],
        "everywhere we went it rained"
    );
}
