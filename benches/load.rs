//! A mixed read/write load for several minutes (issue 15): the release `memesh` binary, seeded
//! with memories, under `wrk` on loopback running `benches/load/mixed.lua` (writes, semantic
//! searches, keyword queries, counts, spaces, usage). Reports requests per second, latency
//! percentiles, the error count (must be zero: the bench fails otherwise) and the server's
//! resident memory before and after. wrk is installed from Debian's packages if missing.
//!
//! Two phases of the mix back to back, then a third without writes: memory grows with the data
//! and the caches in the first two; in the third, with no new data, what still grew would be a
//! leak.
//!
//! Run: `cargo bench --bench load` (`MEMESH_BENCH_SECONDS` per phase, default 120;
//! `MEMESH_BENCH_CONNECTIONS`, default 8; `MEMESH_BENCH_SEED_MEMORIES`, default 5,000).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

const KEY: &str = "mk_loadloadloadloadloadloadloadloadloadloadloa";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    common::rss_kib(pid) as f64 / 1024.0
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-qq", "wrk"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "could not install wrk (apt-get install wrk)");
    }
    let seconds = env("MEMESH_BENCH_SECONDS", 120);
    let connections = env("MEMESH_BENCH_CONNECTIONS", 8);
    let seed = env("MEMESH_BENCH_SEED_MEMORIES", 5_000) as usize;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_memesh"))
            .current_dir(common::root())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--bootstrap-key", KEY])
            .env("MEMESH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let sentences = common::corpus::natural_sentences(seed);
        for chunk in sentences.chunks(100) {
            let memories: Vec<_> = chunk
                .iter()
                .map(|c| serde_json::json!({ "content": c, "space": "seed" }))
                .collect();
            let resp = http
                .post(format!("{base}/v1/memory/batch"))
                .header("x-api-key", KEY)
                .json(&serde_json::json!({ "memories": memories, "transactional": true }))
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
        }
    });
    let pid = server.0.id();
    let count = || {
        runtime.block_on(async {
            let v: serde_json::Value = reqwest::Client::new()
                .get(format!("{base}/v1/memory/count"))
                .header("x-api-key", KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["count"].as_u64().unwrap_or(0)
        })
    };
    println!(
        "load: mixed workload (benches/load/mixed.lua), {seed} seeded memories, wrk -t1 -c{connections} -d{seconds}s --latency, two phases, same machine"
    );
    println!(
        "  before: resident memory {:.0} MiB, {} memories",
        rss_mib(pid),
        count()
    );
    // Two phases of the mixed load, then one without writes: with no new data, what still
    // grows would be a leak.
    for phase in 1..=3 {
        let read_only = phase == 3;
        let out = Command::new("wrk")
            .args([
                "-t1",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
                "--latency",
            ])
            .arg("-s")
            .arg(common::root().join("benches/load/mixed.lua"))
            .arg(&base)
            .env("MEMESH_KEY", KEY)
            .env("MEMESH_READ_ONLY", if read_only { "1" } else { "0" })
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let errors: u64 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(u64::MAX));
        let socket_errors = text.lines().find(|l| l.contains("Socket errors"));
        println!(
            "  phase {phase}{}:",
            if read_only { " (no writes)" } else { "" }
        );
        for l in text.lines().filter(|l| {
            let l = l.trim();
            l.starts_with("50%")
                || l.starts_with("75%")
                || l.starts_with("90%")
                || l.starts_with("99%")
                || l.starts_with("Requests/sec")
                || l.contains("requests in")
        }) {
            println!("    {}", l.trim());
        }
        println!(
            "    errors (non-2xx): {errors}; socket errors: {}",
            socket_errors.unwrap_or("none")
        );
        println!(
            "    after: resident memory {:.0} MiB, {} memories",
            rss_mib(pid),
            count()
        );
        assert_eq!(errors, 0, "the load produced errors:\n{text}");
        assert!(socket_errors.is_none(), "{text}");
    }
}
