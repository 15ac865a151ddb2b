//! Keyword, hybrid and semantic retrieval (issue 17): latency of `POST /v1/memory/query` at
//! 100,000 memories, and retrieval quality (nDCG@10) on a labelled set in English, Japanese and
//! Chinese.
//!
//! Latency: one user, 100,000 natural English sentences (`common::corpus`: the comments of the
//! locked crates) imported with synthetic vectors (the vectors do not matter to keyword cost,
//! and importing skips embedding 100k texts); 200 held-out sentences cut to their first ten
//! words as queries (common words included, as people ask); limit 10, one client, keep-alive;
//! every mode right after the import (while the index's upkeep catches up) and idle.
//!
//! Quality: `benches/data/appstream.jsonl` (see `extract_appstream.py` there): AppStream
//! metadata of Debian 12's applications; each component's description is a memory and its
//! summary a query whose one relevant memory is that description. And JSQuAD v1.3's validation
//! split as a retrieval set (`benches/data/jsquad-valid/`, CC BY-SA 4.0: paragraphs are
//! memories, questions queries). One user per set, written through `POST /v1/memory/batch` with
//! the real model (`MEMESH_BENCH_MODEL`, default MiniLM; `MEMESH_BENCH_SETS=JSQuAD,…` for some).
//!
//! Run: `cargo bench --bench keyword` (`MEMESH_BENCH_PART=latency` or `quality` for one half).

mod common;

use std::collections::HashMap;
use std::time::Instant;

use base64::Engine;
use common::{InProcess, percentile, root};
use serde_json::{Value, json};

const CORPUS: usize = 100_000;
const QUERIES: usize = 200;

fn questions(sentences: &[String]) -> Vec<String> {
    sentences
        .iter()
        .map(|s| s.split_whitespace().take(10).collect::<Vec<_>>().join(" "))
        .collect()
}

async fn post(client: &reqwest::Client, url: &str, key: &str, body: &Value) -> (f64, Value) {
    let started = Instant::now();
    let resp = client
        .post(url)
        .header("x-api-key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{status}: {answer}");
    (started.elapsed().as_secs_f64() * 1000.0, answer)
}

/// Every query in each of `modes`, interleaved query by query: per mode, the sorted latencies
/// and the sum of the answers' `total`.
async fn interleaved(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    qs: &[String],
    modes: &[&str],
) -> Vec<(Vec<f64>, u64)> {
    let mut out = vec![(Vec::new(), 0u64); modes.len()];
    for q in qs {
        for (i, mode) in modes.iter().enumerate() {
            let body = json!({ "query": q, "limit": 10, "mode": mode });
            let (t, answer) = post(client, url, key, &body).await;
            out[i].0.push(t);
            out[i].1 += answer["total"].as_u64().unwrap_or(0);
        }
    }
    for (ms, _) in &mut out {
        ms.sort_by(f64::total_cmp);
    }
    out
}

async fn latency() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), "owner@localhost").await;
    let key = server.tenant.key.clone();
    let client = reqwest::Client::new();
    let all = common::corpus::natural_sentences(CORPUS + QUERIES);
    assert_eq!(all.len(), CORPUS + QUERIES, "too few sentences");
    let (mut corpus, mut held) = (Vec::new(), Vec::new());
    for (i, s) in all.into_iter().enumerate() {
        if i % 500 == 0 && held.len() < QUERIES {
            held.push(s);
        } else {
            corpus.push(s);
        }
    }
    corpus.truncate(CORPUS);
    // The English labelled set goes in too, among the 100k: its queries then measure keyword
    // quality where common words are many (the quality part's corpora are too small for that).
    let labelled: Vec<Value> = std::fs::read_to_string(root().join("benches/data/appstream.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["lang"] == "en")
        .collect();
    let mut relevant: Vec<(String, String)> = Vec::new();
    let mut texts: Vec<(String, String)> = corpus
        .iter()
        .map(|t| {
            (
                memesh::ids::MemoryId::generate().as_str().to_owned(),
                t.clone(),
            )
        })
        .collect();
    for (i, r) in labelled.iter().enumerate() {
        let id = memesh::ids::MemoryId::generate().as_str().to_owned();
        relevant.push((r["query"].as_str().unwrap().to_owned(), id.clone()));
        // Spread among the corpus, so their ids and rowids are not one block.
        let at = (i * 50).min(texts.len());
        texts.insert(at, (id, r["document"].as_str().unwrap().to_owned()));
    }
    let started = Instant::now();
    let mut lines = String::new();
    let vectors = common::synthetic_vectors(texts.len());
    for (i, ((id, text), v)) in texts.iter().zip(vectors).enumerate() {
        let blob: Vec<u8> = v.iter().flat_map(|a| a.to_le_bytes()).collect();
        let record = json!({
            "id": id,
            "content": text, "space": "default", "tags": [], "sensitivity": "internal",
            "createdAt": "2026-11-29T00:00:00.000Z",
            "embeddingModel": common::bench_model().id,
            "embedding": base64::engine::general_purpose::STANDARD.encode(blob),
        });
        lines.push_str(&record.to_string());
        lines.push('\n');
        if (i + 1) % 5_000 == 0 || i + 1 == texts.len() {
            common::import_ndjson(&server.base, &key, std::mem::take(&mut lines)).await;
        }
    }
    eprintln!(
        "  imported {} in {:.0} s",
        texts.len(),
        started.elapsed().as_secs_f64()
    );
    let qs = questions(&held);
    let url = format!("{}/v1/memory/query", server.base);
    const MODES: [&str; 3] = ["keyword", "hybrid", "semantic"];
    // Right after the import, while the index's upkeep (graph feed, snapshot, WAL checkpoint)
    // catches up: the modes interleaved query by query, so each sees the same catch-up.
    for mode in MODES {
        for q in qs.iter().take(3) {
            post(&client, &url, &key, &json!({ "query": q, "mode": mode })).await;
        }
    }
    let after_import = interleaved(&client, &url, &key, &qs, &MODES).await;
    let state = server.state.clone();
    tokio::task::spawn_blocking(move || state.memory.generation().index.maintain_now())
        .await
        .unwrap();
    // Warm-up: the model session, SQLite's page cache.
    for mode in MODES {
        for q in qs.iter().take(20) {
            post(&client, &url, &key, &json!({ "query": q, "mode": mode })).await;
        }
    }
    let idle = interleaved(&client, &url, &key, &qs, &MODES).await;
    println!(
        "## POST /v1/memory/query at {} memories, one client, limit 10\n",
        texts.len()
    );
    println!(
        "| mode | idle p50 | idle p99 | mean `total` | right after the import p50 / p99 | p99 after / idle |\n|---|---|---|---|---|---|"
    );
    for (i, mode) in MODES.iter().enumerate() {
        let ((ms, totals), (after, _)) = (&idle[i], &after_import[i]);
        println!(
            "| {mode} | {:.1} ms | {:.1} ms | {:.0} | {:.1} / {:.1} ms | {:.1} × |",
            percentile(ms, 0.5),
            percentile(ms, 0.99),
            *totals as f64 / qs.len() as f64,
            percentile(after, 0.5),
            percentile(after, 0.99),
            percentile(after, 0.99) / percentile(ms, 0.99)
        );
    }
    println!();
    let mut sum = 0.0;
    let mut ms = Vec::new();
    for (q, id) in &relevant {
        let body = json!({ "query": q, "limit": 10, "mode": "keyword" });
        let (t, answer) = post(&client, &url, &key, &body).await;
        ms.push(t);
        sum += ndcg_at_10(&ranked_ids(&answer), id);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "English labelled queries among them (keyword): nDCG@10 {:.3} over {} queries, p50 {:.1} ms, p99 {:.1} ms\n",
        sum / relevant.len() as f64,
        relevant.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.99)
    );
    server.stop().await;

    // The refill a database gets at its first start after migration 13: empty the index and
    // mark it as just re-created, then time the opening.
    let path = dir.path().join("memesh.db");
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
    let started = Instant::now();
    let db = memesh::db::Db::open(&path).unwrap();
    println!(
        "Refilling the full-text index of {} memories at the first start after migration 13: {:.1} s\n",
        texts.len(),
        started.elapsed().as_secs_f64()
    );
    drop(db);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (indexed, pending): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM memories_fts WHERE memories_fts MATCH 'the'),
                    (SELECT COUNT(*) FROM fts_rebuild)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(indexed > 10_000 && pending == 0, "{indexed} {pending}");
}

/// The memory ids of a query's answer, best first.
fn ranked_ids(answer: &Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["memory"]["id"].as_str().unwrap().to_owned())
        .collect()
}

/// nDCG@10 with one relevant document: 1 / log2(rank + 1) if it is in the first ten.
fn ndcg_at_10(ranking: &[String], relevant: &str) -> f64 {
    ranking
        .iter()
        .take(10)
        .position(|id| id == relevant)
        .map_or(0.0, |i| 1.0 / ((i + 2) as f64).log2())
}

/// A labelled set: documents (id, text) and queries (text, the one relevant document's id).
struct Labelled {
    name: String,
    docs: Vec<(String, String)>,
    queries: Vec<(String, String)>,
}

/// The AppStream sets, one per language.
fn appstream() -> Vec<Labelled> {
    let data = std::fs::read_to_string(root().join("benches/data/appstream.jsonl")).unwrap();
    let records: Vec<Value> = data
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    ["en", "ja", "zh"]
        .into_iter()
        .map(|lang| {
            let set: Vec<&Value> = records.iter().filter(|r| r["lang"] == lang).collect();
            let text = |v: &Value| v.as_str().unwrap().to_owned();
            Labelled {
                name: format!("AppStream {lang}"),
                docs: set
                    .iter()
                    .map(|r| (text(&r["id"]), text(&r["document"])))
                    .collect(),
                queries: set
                    .iter()
                    .map(|r| (text(&r["query"]), text(&r["id"])))
                    .collect(),
            }
        })
        .collect()
}

/// JSQuAD v1.3 validation as a retrieval set (`benches/data/jsquad-valid/`, CC BY-SA 4.0).
fn jsquad() -> Labelled {
    let dir = root().join("benches/data/jsquad-valid");
    let jsonl = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    let docs = jsonl("corpus.jsonl")
        .iter()
        .map(|d| (text(&d["_id"]), text(&d["text"])))
        .collect();
    let questions: HashMap<String, String> = jsonl("queries.jsonl")
        .iter()
        .map(|q| (text(&q["_id"]), text(&q["text"])))
        .collect();
    let qrels = std::fs::read_to_string(dir.join("qrels.tsv")).unwrap();
    let queries = qrels
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split('\t');
            let (q, d) = (f.next().unwrap(), f.next().unwrap());
            (questions[q].clone(), d.to_owned())
        })
        .collect();
    Labelled {
        name: "JSQuAD".into(),
        docs,
        queries,
    }
}

async fn quality() {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), "owner@localhost").await;
    let client = reqwest::Client::new();
    let only = std::env::var("MEMESH_BENCH_SETS").unwrap_or_default();
    let mut sets = appstream();
    sets.push(jsquad());
    sets.retain(|s| only.is_empty() || only.split(',').any(|o| s.name.contains(o.trim())));
    println!(
        "## Retrieval quality, nDCG@10 through `POST /v1/memory/query`, model {}\n",
        common::bench_model().id
    );
    println!(
        "| set | memories | queries | keyword | hybrid | semantic |\n|---|---|---|---|---|---|"
    );
    for (n, set) in sets.iter().enumerate() {
        let tenant = server.create_tenant(&format!("quality-{n}"), &format!("q{n}@q.test"));
        let key = tenant.key.clone();
        // Document id → memory id.
        let mut by_doc: HashMap<String, String> = HashMap::new();
        for chunk in set.docs.chunks(100) {
            let memories: Vec<Value> = chunk.iter().map(|(_, t)| json!({ "content": t })).collect();
            let (_, answer) = post(
                &client,
                &format!("{}/v1/memory/batch", server.base),
                &key,
                &json!({ "memories": memories, "transactional": true }),
            )
            .await;
            let stored = answer["memories"].as_array().unwrap();
            for ((doc, _), m) in chunk.iter().zip(stored) {
                by_doc.insert(doc.clone(), m["id"].as_str().unwrap().to_owned());
            }
        }
        // MEMESH_BENCH_DUMP=FILE: each query's semantic and keyword rankings, 100 deep, as JSON
        // lines, to study fusion offline.
        if let Ok(path) = std::env::var("MEMESH_BENCH_DUMP") {
            use std::io::Write;
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            let url = format!("{}/v1/memory/query", server.base);
            for (query, doc) in &set.queries {
                let mut line = json!({ "set": set.name, "query": query, "relevant": by_doc[doc] });
                for mode in ["semantic", "keyword"] {
                    let body = json!({ "query": query, "limit": 100, "mode": mode });
                    let (_, answer) = post(&client, &url, &key, &body).await;
                    let ranked: Vec<Value> = answer["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| json!([h["memory"]["id"], h["score"]]))
                        .collect();
                    line[mode] = json!(ranked);
                }
                writeln!(out, "{line}").unwrap();
            }
        }
        let mut row = format!(
            "| {} | {} | {} |",
            set.name,
            set.docs.len(),
            set.queries.len()
        );
        for mode in ["keyword", "hybrid", "semantic"] {
            let mut sum = 0.0;
            for (query, doc) in &set.queries {
                let body = json!({ "query": query, "limit": 10, "mode": mode });
                let url = format!("{}/v1/memory/query", server.base);
                let (_, answer) = post(&client, &url, &key, &body).await;
                sum += ndcg_at_10(&ranked_ids(&answer), &by_doc[doc]);
            }
            row.push_str(&format!(" {:.3} |", sum / set.queries.len() as f64));
        }
        println!("{row}");
    }
    println!();
    server.stop().await;
}

/// Imports `texts` for `key` with one fixed vector each (keyword cost and quality do not depend
/// on the vectors, and importing skips the model); returns the memory ids in order.
async fn import_plain(base: &str, key: &str, texts: &[String]) -> Vec<String> {
    let mut v = vec![0f32; memesh::embed::MODEL_DIM];
    v[0] = 1.0;
    let blob: Vec<u8> = v.iter().flat_map(|a| a.to_le_bytes()).collect();
    let embedding = base64::engine::general_purpose::STANDARD.encode(blob);
    let mut ids = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(5_000) {
        let mut lines = String::new();
        for text in chunk {
            let id = memesh::ids::MemoryId::generate().to_string();
            let record = json!({
                "id": id, "content": text, "space": "default", "tags": [],
                "sensitivity": "internal", "createdAt": "2026-11-29T00:00:00.000Z",
                "embeddingModel": common::bench_model().id, "embedding": embedding,
            });
            lines.push_str(&record.to_string());
            lines.push('\n');
            ids.push(id);
        }
        common::import_ndjson(base, key, lines).await;
    }
    ids
}

/// The rule for common words (issue 23, item 6): each labelled set among 10,000 English
/// sentences of another domain (so its owner has enough memories for the rule to act, as in a
/// real store), keyword nDCG@10 and latency with common words only scoring what rarer words
/// find, against every word finding.
async fn common_words() {
    const DISTRACTORS: usize = 10_000;
    let distractors = common::corpus::natural_sentences(DISTRACTORS);
    let only = std::env::var("MEMESH_BENCH_SETS").unwrap_or_default();
    let mut sets = appstream();
    sets.push(jsquad());
    sets.retain(|s| only.is_empty() || only.split(',').any(|o| s.name.contains(o.trim())));
    println!("## Common words: keyword nDCG@10 among {DISTRACTORS} other memories, p50 / p99\n");
    println!("| set | every word finds | common words only score (default) |\n|---|---|---|");
    for set in &sets {
        let mut row = format!("| {} |", set.name);
        for share in [1.0, memesh::memory::store::COMMON_SHARE] {
            let dir = tempfile::tempdir().unwrap();
            let settings = memesh::state::Settings {
                keyword_common_share: share,
                ..Default::default()
            };
            let server = InProcess::start_with(
                dir.path(),
                "owner@localhost",
                settings,
                memesh::db::Durability::Normal,
            )
            .await;
            let key = server.tenant.key.clone();
            let texts: Vec<String> = set.docs.iter().map(|(_, t)| t.clone()).collect();
            let ids = import_plain(&server.base, &key, &texts).await;
            import_plain(&server.base, &key, &distractors).await;
            let by_doc: HashMap<&str, &str> = set
                .docs
                .iter()
                .zip(&ids)
                .map(|((d, _), m)| (d.as_str(), m.as_str()))
                .collect();
            let (client, url) = (
                reqwest::Client::new(),
                format!("{}/v1/memory/query", server.base),
            );
            let (mut sum, mut ms) = (0.0, Vec::new());
            for (query, doc) in &set.queries {
                let body = json!({ "query": query, "limit": 10, "mode": "keyword" });
                let (t, answer) = post(&client, &url, &key, &body).await;
                ms.push(t);
                sum += ndcg_at_10(&ranked_ids(&answer), by_doc[doc.as_str()]);
            }
            ms.sort_by(f64::total_cmp);
            row.push_str(&format!(
                " {:.3} ({:.1} / {:.1} ms) |",
                sum / set.queries.len() as f64,
                percentile(&ms, 0.5),
                percentile(&ms, 0.99)
            ));
            server.stop().await;
        }
        println!("{row}");
    }
    println!();
}

fn main() {
    let part = std::env::var("MEMESH_BENCH_PART").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if part.is_empty() || part == "quality" {
            quality().await;
        }
        if part.is_empty() || part == "common" {
            common_words().await;
        }
        if part.is_empty() || part == "latency" {
            latency().await;
        }
    });
}
