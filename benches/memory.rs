//! The memory engine's figures (issues 3, 4 and 11), measured on this machine and printed as a
//! table, all on natural text (the comment sentences of the locked crates: `common::corpus`):
//! - write throughput: the raw model, `POST /v1/memory/batch` with 100 per request, and single
//!   `POST /v1/memory/write` calls from 8 concurrent clients, in the same sitting;
//! - the index at 100,000 memories: fill, graph build, snapshot, recall@10 against exact search
//!   and latency for several `ef_search` values, for an owner of 99% (graph) and of 1% (scan);
//! - the `memesh` binary restarted on them: time to /readyz and to the first answered search,
//!   resident memory, then end-to-end retrieval (search p50/p99, 8 clients, batch search,
//!   threshold query, export);
//! - a bulk write at the model's rate (`MEMESH_BENCH_BULK` texts, default 100,000) with a
//!   client searching throughout: search latency during it and right after, and how far the
//!   graph fell behind;
//! - the cost of scanning one partition by size (where the graph threshold belongs).
//!
//! Run: `cargo build --release && cargo bench --bench memory` (`MEMESH_BENCH_ONLY=write` stops
//! after the write path). The corpus embeddings are
//! computed once (about five minutes) and cached under target/bench-cache/.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memesh::clock::{Clock, SystemClock};
use memesh::db::Db;
use memesh::embed::{
    EmbedBackend, Embedding, MODEL_DIM, ModelFiles, ModelTokenizer, OnnxBackend, RuntimeLibrary,
};
use memesh::ids::{TenantId, UserId};
use memesh::index::{IndexConfig, MemorySource, OwnerKey, VectorIndex};
use memesh::memory::engine::SqliteVectors;
use memesh::memory::store::{self, Owner};
use serde_json::{Value, json};

mod common;

use common::{InProcess, percentile, root, rss_kib};

const CORPUS: usize = 100_000;
const SMALL_OWNER: usize = CORPUS / 100;
const QUERIES: usize = 300;

/// The corpus and, held out from it, the queries: every 334th sentence is a query.
fn corpus_and_queries() -> (Vec<String>, Vec<String>) {
    let all = common::corpus::natural_sentences(CORPUS + QUERIES);
    assert_eq!(
        all.len(),
        CORPUS + QUERIES,
        "the locked crates' comments gave too few sentences"
    );
    let (mut corpus, mut queries) = (Vec::with_capacity(CORPUS), Vec::with_capacity(QUERIES));
    for (i, s) in all.into_iter().enumerate() {
        if i % 334 == 0 && queries.len() < QUERIES {
            queries.push(s);
        } else {
            corpus.push(s);
        }
    }
    corpus.truncate(CORPUS);
    (corpus, queries)
}

fn backend() -> OnnxBackend {
    let model = common::bench_model();
    let files = ModelFiles::locate(model, Some(&root().join("models").join(model.id))).unwrap();
    let runtime =
        RuntimeLibrary::locate(Some(&root().join("runtime/libonnxruntime.so.1.31.1"))).unwrap();
    let tokenizer = std::sync::Arc::new(ModelTokenizer::load(&files).unwrap());
    OnnxBackend::load(&files, &runtime, tokenizer, 2).unwrap()
}

/// Embeddings of `texts`, cached on disk by name.
fn cached_embeddings(
    name: &str,
    texts: &[String],
    prefix: &str,
    backend: &mut OnnxBackend,
) -> Vec<Embedding> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let model = common::bench_model();
    (model.id, prefix, texts).hash(&mut h);
    let path = root()
        .join("target/bench-cache")
        .join(format!("{name}-{:016x}.bin", h.finish()));
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() == texts.len() * MODEL_DIM * 4
    {
        return bytes
            .chunks_exact(MODEL_DIM * 4)
            .map(|c| Embedding {
                vector: store::blob_to_vector(c),
                tokens: 0,
                truncated: false,
            })
            .collect();
    }
    let started = Instant::now();
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        // As the server embeds them (e5 reads `passage: …` and `query: …`).
        let chunk: Vec<String> = chunk.iter().map(|t| format!("{prefix}{t}")).collect();
        out.extend(backend.embed(&chunk).unwrap());
        if out.len() % 10_240 == 0 {
            eprintln!(
                "  embedded {}/{} ({:.0}/s)",
                out.len(),
                texts.len(),
                out.len() as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let bytes: Vec<u8> = out
        .iter()
        .flat_map(|e| store::vector_to_blob(&e.vector))
        .collect();
    std::fs::write(&path, bytes).unwrap();
    out
}

/// Raw model throughput vs. HTTP batch writes and concurrent single writes of the same texts.
async fn write_throughput(backend: &mut OnnxBackend, plain: &[String]) -> (f64, f64, f64, f64) {
    // The raw model gets the texts as the server hands them to it (e5: `passage: …`).
    let prefixed: Vec<String> = plain
        .iter()
        .map(|t| format!("{}{t}", common::bench_model().passage_prefix))
        .collect();
    let texts = &prefixed[..];
    backend.embed(&texts[..100]).unwrap();
    let started = Instant::now();
    for chunk in texts.chunks(100) {
        backend.embed(chunk).unwrap();
    }
    let raw = texts.len() as f64 / started.elapsed().as_secs_f64();
    // Eight clients writing one text each can give the model at most eight texts a call.
    let started = Instant::now();
    for chunk in texts.chunks(8) {
        backend.embed(chunk).unwrap();
    }
    let raw8 = texts.len() as f64 / started.elapsed().as_secs_f64();
    // Through the API the texts go plain: the server adds the prefix.
    let texts = plain;

    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), "bench@localhost").await;
    let (base, key) = (server.base.clone(), server.tenant.key.clone());
    let client = reqwest::Client::new();
    let send = |chunk: &[String]| {
        let memories: Vec<Value> = chunk.iter().map(|t| json!({ "content": t })).collect();
        client
            .post(format!("{base}/v1/memory/batch"))
            .header("x-api-key", &key)
            .json(&json!({ "transactional": true, "memories": memories }))
            .send()
    };
    assert_eq!(send(&texts[..100]).await.unwrap().status(), 201);
    let started = Instant::now();
    for chunk in texts.chunks(100) {
        assert_eq!(send(chunk).await.unwrap().status(), 201);
    }
    let batch = texts.len() as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut writers = Vec::new();
    for c in 0..8 {
        let mine: Vec<String> = texts.iter().skip(c).step_by(8).cloned().collect();
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        writers.push(tokio::spawn(async move {
            for text in mine {
                let resp = client
                    .post(format!("{base}/v1/memory/write"))
                    .header("x-api-key", &key)
                    .json(&json!({ "content": text }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let single = texts.len() as f64 / started.elapsed().as_secs_f64();
    server.stop().await;
    (raw, raw8, batch, single)
}

/// One import record (the export format) carrying a precomputed embedding.
fn import_line(text: &str, embedding: &Embedding) -> String {
    use base64::Engine;
    let blob = store::vector_to_blob(&embedding.vector);
    json!({
        "id": memesh::ids::MemoryId::generate(),
        "content": text,
        "space": "default",
        "summary": null,
        "tags": [],
        "sensitivity": "internal",
        "source": null,
        "createdAt": SystemClock.now(),
        "embeddingModel": common::bench_model().id,
        "embedding": base64::engine::general_purpose::STANDARD.encode(blob),
    })
    .to_string()
}

/// Fills a database with the corpus through `POST /v1/memory/import` on an in-process server,
/// with the precomputed embeddings (nothing re-embedded): the large owner gets 99%, the small
/// owner 1%, interleaved as they would be written.
async fn fill_database(
    dir: &Path,
    corpus: &[String],
    vectors: &[Embedding],
) -> (Owner, Owner, String) {
    let server = InProcess::start(dir, "big@localhost").await;
    let (base, t) = (server.base.clone(), &server.tenant);
    let client = reqwest::Client::new();
    let post = |path: &str, key: Option<&str>, body: Value| {
        let mut req = client.post(format!("{base}{path}")).json(&body);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.send()
    };
    let invited: Value = post(
        "/v1/team/members/invite",
        Some(&t.key),
        json!({ "email": "small@localhost" }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let accepted: Value = post(invited["acceptPath"].as_str().unwrap(), None, json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let small_key = accepted["apiKey"]["key"].as_str().unwrap().to_owned();
    let small_user = UserId::parse(accepted["member"]["userId"].as_str().unwrap()).unwrap();
    for (start, chunk) in corpus.chunks(1000).enumerate().map(|(i, c)| (i * 1000, c)) {
        let (mut big_lines, mut small_lines) = (String::new(), String::new());
        for (j, text) in chunk.iter().enumerate() {
            let n = start + j;
            let lines = if n % 100 == 0 {
                &mut small_lines
            } else {
                &mut big_lines
            };
            lines.push_str(&import_line(text, &vectors[n]));
            lines.push('\n');
        }
        for (key, lines) in [(&t.key, big_lines), (&small_key, small_lines)] {
            common::import_ndjson(&base, key, lines).await;
        }
    }
    let big = Owner {
        tenant: t.tenant_id.clone(),
        user: t.owner.user_id.clone(),
    };
    let small = Owner {
        tenant: t.tenant_id.clone(),
        user: small_user,
    };
    let key = t.key.clone();
    server.stop().await;
    (big, small, key)
}

/// Starts the release binary on `dir` and returns it with the time until /readyz answered 200
/// and until a first search (its query embedded by the model) was answered.
fn time_binary_start(dir: &Path, key: &str) -> (std::process::Child, Duration, Duration) {
    let exe = root().join("target/release/memesh");
    assert!(
        exe.exists(),
        "build the binary first: cargo build --release"
    );
    let log_path = dir.join("start.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let child = Command::new(&exe)
        .args([
            "--listen",
            "127.0.0.1:18766",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let elapsed = loop {
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:18766") {
            use std::io::{Read, Write};
            s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "never became ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let searched = loop {
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:18766") {
            use std::io::{Read, Write};
            let _ = write!(
                s,
                "GET /v1/memory/search?query=how+to+reset+a+timer&limit=10 HTTP/1.1\r\n\
                 host: x\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                break started.elapsed();
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    if let Some(line) = log.lines().find(|l| l.contains("memory index ready")) {
        eprintln!("  start-up: {line}");
    }
    (child, elapsed, searched)
}

async fn timed_post(client: &reqwest::Client, url: String, key: &str, body: Value) -> f64 {
    let started = Instant::now();
    let resp = client
        .post(url)
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    started.elapsed().as_secs_f64() * 1000.0
}

async fn timed_search(client: reqwest::Client, base: String, key: String, q: String) -> f64 {
    let started = Instant::now();
    let resp = client
        .get(format!("{base}/v1/memory/search"))
        .query(&[("query", q.as_str()), ("limit", "10")])
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await.unwrap();
    started.elapsed().as_secs_f64() * 1000.0
}

/// Retrieval figures (issue 4) against the running binary holding the 100,000 memories.
async fn retrieval(base: &str, key: &str, pid: u32, queries: &[String], notes: &[String]) {
    let client = reqwest::Client::new();
    for q in &queries[..20] {
        timed_search(client.clone(), base.into(), key.into(), q.clone()).await;
    }
    let mut ms = Vec::new();
    for q in queries {
        ms.push(timed_search(client.clone(), base.into(), key.into(), q.clone()).await);
    }
    ms.sort_by(f64::total_cmp);
    println!("| retrieval at {CORPUS} memories (owner of 99%) | value |\n|---|---|");
    for note in notes {
        println!("{note}");
    }
    println!(
        "| GET /v1/memory/search, 1 client, p50 / p99 (query embedding included) | {:.1} ms / {:.1} ms |",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99)
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..8 {
        let qs: Vec<String> = queries.iter().skip(c).step_by(8).cloned().collect();
        let (client, base, key) = (client.clone(), base.to_owned(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            for q in qs {
                timed_search(client.clone(), base.clone(), key.clone(), q).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "| GET /v1/memory/search, 8 concurrent clients | {:.0} searches/s |",
        queries.len() as f64 / started.elapsed().as_secs_f64()
    );

    let mut batch_ms = Vec::new();
    for round in 0..6 {
        let qs: Vec<&String> = queries.iter().skip(round * 50).take(50).collect();
        let url = format!("{base}/v1/memory/batch/search");
        batch_ms.push(timed_post(&client, url, key, json!({ "queries": qs })).await);
    }
    batch_ms.sort_by(f64::total_cmp);
    println!(
        "| POST /v1/memory/batch/search, 50 queries (median of 6) | {:.0} ms |",
        percentile(&batch_ms, 0.5)
    );

    let mut query_ms = Vec::new();
    for q in &queries[..50] {
        let url = format!("{base}/v1/memory/query");
        let body = json!({ "query": q, "limit": 10, "similarityThreshold": 0.3 });
        query_ms.push(timed_post(&client, url, key, body).await);
    }
    query_ms.sort_by(f64::total_cmp);
    println!(
        "| POST /v1/memory/query with a threshold (exact scan and total), p50 | {:.1} ms |",
        percentile(&query_ms, 0.5)
    );

    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let started = Instant::now();
    let mut resp = client
        .get(format!("{base}/v1/memory/stream/export"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let (mut events, mut bytes) = (0usize, 0usize);
    let mut line = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        bytes += chunk.len();
        for b in chunk.iter() {
            if *b == b'\n' {
                if line == b"event: memory" {
                    events += 1;
                }
                line.clear();
            } else {
                line.push(*b);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    println!(
        "| GET /v1/memory/stream/export, {events} memories ({:.0} MB) | {:.0} memories/s |",
        bytes as f64 / 1e6,
        events as f64 / secs
    );
    println!(
        "| server RSS before the export / peak during it | {} MiB / {} MiB |\n",
        before / 1024,
        peak.load(Ordering::Relaxed) / 1024
    );
}

/// Recall@10 against exact search, and the latency of the index search alone (candidates by
/// codes, exact rescoring from SQLite), p50 and p99 in µs.
fn recall(
    index: &VectorIndex,
    owner: &OwnerKey,
    queries: &[Embedding],
    ef: usize,
) -> (f64, f64, f64) {
    let mut hits = 0;
    let mut micros = Vec::new();
    for q in queries {
        let started = Instant::now();
        let got = index
            .search_with_ef(owner, &q.vector, 10, None, ef)
            .unwrap();
        micros.push(started.elapsed().as_secs_f64() * 1e6);
        let want: HashSet<i64> = index
            .exact_search(owner, &q.vector, 10)
            .unwrap()
            .iter()
            .map(|h| h.row)
            .collect();
        hits += got.iter().filter(|h| want.contains(&h.row)).count();
    }
    micros.sort_by(f64::total_cmp);
    (
        hits as f64 / (queries.len() * 10) as f64,
        percentile(&micros, 0.5),
        percentile(&micros, 0.99),
    )
}

/// A bulk write of `texts` through `POST /v1/memory/batch` (100 per request, as fast as the
/// model goes) while another client searches the same owner every 20 ms; then searches right
/// after. Prints search latency during and after, and the graph's largest backlog.
async fn bulk_write(texts: &[String], queries: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let server = InProcess::start(dir.path(), "bulk@localhost").await;
    let (base, key) = (server.base.clone(), server.tenant.key.clone());
    let index = server.state.memory.generation().index.clone();
    let client = reqwest::Client::new();
    let writing = Arc::new(AtomicBool::new(true));
    let max_pending = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (index, writing, max_pending) = (index.clone(), writing.clone(), max_pending.clone());
        std::thread::spawn(move || {
            while writing.load(Ordering::Relaxed) {
                max_pending.fetch_max(index.stats().pending, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let searcher = {
        let (client, base, key, writing) =
            (client.clone(), base.clone(), key.clone(), writing.clone());
        let queries = queries.to_vec();
        tokio::spawn(async move {
            let mut ms = Vec::new();
            let mut i = 0;
            while writing.load(Ordering::Relaxed) {
                let q = queries[i % queries.len()].clone();
                ms.push(timed_search(client.clone(), base.clone(), key.clone(), q).await);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ms
        })
    };
    let started = Instant::now();
    for chunk in texts.chunks(100) {
        let memories: Vec<Value> = chunk.iter().map(|t| json!({ "content": t })).collect();
        let resp = client
            .post(format!("{base}/v1/memory/batch"))
            .header("x-api-key", &key)
            .json(&json!({ "transactional": true, "memories": memories }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
    }
    let wrote = started.elapsed();
    let pending_at_end = index.stats().pending;
    writing.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let mut during = searcher.await.unwrap();
    during.sort_by(f64::total_cmp);
    let mut after = Vec::new();
    for q in queries {
        after.push(timed_search(client.clone(), base.clone(), key.clone(), q.clone()).await);
    }
    after.sort_by(f64::total_cmp);
    let caught_up = Instant::now();
    while index.stats().pending > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "| bulk write of {} memories | value |\n|---|---|",
        texts.len()
    );
    println!(
        "| POST /v1/memory/batch, 100 per request, while a client searches | {:.0} memories/s |",
        texts.len() as f64 / wrote.as_secs_f64()
    );
    println!(
        "| graph backlog: largest sampled / at the last write | {} / {} rows |",
        max_pending.load(Ordering::Relaxed),
        pending_at_end
    );
    println!(
        "| search during the write, p50 / p99 ({} searches) | {:.1} ms / {:.1} ms |",
        during.len(),
        percentile(&during, 0.5),
        percentile(&during, 0.99)
    );
    println!(
        "| search right after it, p50 / p99 ({} searches) | {:.1} ms / {:.1} ms |",
        after.len(),
        percentile(&after, 0.5),
        percentile(&after, 0.99)
    );
    println!(
        "| backlog left after those searches, drained in | {:.0} ms |\n",
        caught_up.elapsed().as_secs_f64() * 1000.0
    );
    server.stop().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut model = backend();
    println!(
        "## memesh memory engine benchmark ({} cores, natural text)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let (corpus, query_texts) = corpus_and_queries();

    let sample: Vec<String> = corpus.iter().step_by(33).take(3_000).cloned().collect();
    let (raw, raw8, batch, single) = runtime.block_on(write_throughput(&mut model, &sample));
    println!("| write path, 3,000 sentences | texts/s |\n|---|---|");
    println!("| raw model, batches of 100 | {raw:.0} |");
    println!(
        "| raw model, calls of 8 texts | {raw8:.0} ({:.0}% of batches of 100) |",
        raw8 / raw * 100.0
    );
    println!(
        "| POST /v1/memory/batch, 100 per request | {batch:.0} ({:.0}% of raw) |",
        batch / raw * 100.0
    );
    println!(
        "| POST /v1/memory/write, 8 concurrent clients | {single:.0} ({:.0}% of raw, {:.0}% of calls of 8) |\n",
        single / raw * 100.0,
        single / raw8 * 100.0
    );
    if std::env::var("MEMESH_BENCH_ONLY").as_deref() == Ok("write") {
        return;
    }

    eprintln!("embedding the {CORPUS}-memory corpus (cached after the first run)…");
    let vectors = cached_embeddings(
        "natural-100k",
        &corpus,
        common::bench_model().passage_prefix,
        &mut model,
    );
    let queries = cached_embeddings(
        "natural-queries-300",
        &query_texts,
        common::bench_model().query_prefix,
        &mut model,
    );
    // What a search's end-to-end time starts from: one query alone through the raw model.
    let mut alone: Vec<f64> = query_texts
        .iter()
        .map(|q| {
            let started = Instant::now();
            model.embed(std::slice::from_ref(q)).unwrap();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    alone.sort_by(f64::total_cmp);
    let query_tokens: Vec<usize> = {
        let mut t: Vec<usize> = model
            .embed(&query_texts)
            .unwrap()
            .iter()
            .map(|e| e.tokens)
            .collect();
        t.sort_unstable();
        t
    };
    drop(model);

    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (big, small, key) = runtime.block_on(fill_database(dir.path(), &corpus, &vectors));
    let filled = started.elapsed();

    // First start: fill from SQLite, build the graph, snapshot.
    let db = Db::open(&dir.path().join("memesh.db")).unwrap();
    let source = Arc::new(SqliteVectors::new(db.clone()));
    let config = IndexConfig::new(MODEL_DIM);
    let index = Arc::new(VectorIndex::new(config.clone(), source));
    let started = Instant::now();
    db.read_blocking(|c| store::for_each_vector(c, |o, r, t, v| index.insert(&o, &[(r, t, &v)])))
        .unwrap();
    let fill = started.elapsed();
    let started = Instant::now();
    index.maintain_now();
    let build = started.elapsed();
    let started = Instant::now();
    memesh::index::save_snapshot(&index, &dir.path().join("index"), common::bench_model().id)
        .unwrap();
    let snap = started.elapsed();
    let stats = index.stats();

    println!("| index at {CORPUS} memories | value |\n|---|---|");
    println!(
        "| SQLite fill through import (bench set-up) | {:.1} s |",
        filled.as_secs_f64()
    );
    println!("| index fill from SQLite | {:.2} s |", fill.as_secs_f64());
    println!(
        "| graph build, {} points (M={}, ef_construction={}) | {:.1} s |",
        CORPUS - SMALL_OWNER,
        config.max_connections,
        config.ef_construction,
        build.as_secs_f64()
    );
    println!(
        "| index arrays (codes, graphs, rows) | {:.1} MiB |",
        stats.bytes as f64 / (1 << 20) as f64
    );
    println!("| snapshot write | {:.2} s |", snap.as_secs_f64());
    for ef in [64, 96, 128, 192, 256] {
        let (r, p50, p99) = recall(&index, &big.key(), &queries, ef);
        println!(
            "| owner of 99%: recall@10 / search p50 / p99 at ef_search={ef} | {r:.4} / {p50:.0} µs / {p99:.0} µs |"
        );
    }
    let (r, p50, p99) = recall(&index, &small.key(), &queries, config.ef_search);
    println!("| owner of 1% (scan): recall@10 / p50 / p99 | {r:.4} / {p50:.0} µs / {p99:.0} µs |");
    drop(index);
    drop(db);

    let (mut server, ready, searched) = time_binary_start(dir.path(), &key);
    println!(
        "| `memesh` start to /readyz 200, from the snapshot (model load included) | {:.2} s |",
        ready.as_secs_f64()
    );
    println!(
        "| `memesh` start to the first answered search | {:.2} s |",
        searched.as_secs_f64()
    );
    println!(
        "| resident memory after that search | {} MiB |\n",
        rss_kib(server.id()) / 1024
    );
    let notes = [
        format!(
            "| the {QUERIES} queries: model tokens p50 / p99 / max | {} / {} / {} |",
            query_tokens[query_tokens.len() / 2],
            query_tokens[query_tokens.len() * 99 / 100],
            query_tokens[query_tokens.len() - 1]
        ),
        format!(
            "| one query alone through the raw model, p50 / p99 | {:.1} ms / {:.1} ms |",
            percentile(&alone, 0.5),
            percentile(&alone, 0.99)
        ),
    ];
    runtime.block_on(retrieval(
        "http://127.0.0.1:18766",
        &key,
        server.id(),
        &query_texts,
        &notes,
    ));
    Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    server.wait().unwrap();

    let bulk: usize = std::env::var("MEMESH_BENCH_BULK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CORPUS);
    runtime.block_on(bulk_write(&corpus[..bulk.min(CORPUS)], &query_texts));

    println!("| scanning one partition (int8 codes, exact rescoring) | µs/query |\n|---|---|");
    for size in [1_000usize, 5_000, 20_000, 50_000, 100_000] {
        let source = Arc::new(MemorySource::default());
        let index = VectorIndex::new(
            IndexConfig {
                graph_threshold: usize::MAX,
                ..IndexConfig::new(MODEL_DIM)
            },
            source.clone(),
        );
        let owner = OwnerKey::new(&TenantId::generate(), &UserId::generate());
        let items: Vec<(i64, i64, &[f32])> = vectors[..size]
            .iter()
            .enumerate()
            .map(|(i, e)| (i as i64, 0, e.vector.as_slice()))
            .collect();
        for (row, _, v) in &items {
            source.put(*row, v);
        }
        index.insert(&owner, &items);
        let started = Instant::now();
        for q in &queries[..50] {
            std::hint::black_box(index.search(&owner, &q.vector, 10, None).unwrap());
        }
        println!(
            "| {size} | {:.0} |",
            started.elapsed().as_secs_f64() * 1e6 / 50.0
        );
    }
}
