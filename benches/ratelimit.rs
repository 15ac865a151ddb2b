//! What the request limiter costs (issue 14): the release `memesh` binary serving
//! `GET /v1/billing/plan` (a cheap authenticated GET: key lookup from the cache, the limiter,
//! a small JSON answer) to `wrk` on loopback, with the default plan's per-key limit on (set far
//! above the offered load, so every request passes through the limiter and none is refused)
//! and off (`--rate-limit-per-second 0`), alternating, several rounds; the medians and the
//! overhead. wrk is installed from Debian's packages if missing.
//!
//! Run: `cargo bench --bench ratelimit` (`MEMESH_BENCH_ROUNDS`, default 3;
//! `MEMESH_BENCH_SECONDS` per run, default 10; `MEMESH_BENCH_CONNECTIONS`, default 32).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod common;

const KEY: &str = "mk_benchbenchbenchbenchbenchbenchbenchbenchben";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ensure_wrk() {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n");
    let mut cmd = if root.unwrap_or(false) {
        Command::new("apt-get")
    } else {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    };
    let ok = cmd
        .args(["install", "-y", "-qq", "wrk"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "could not install wrk (apt-get install wrk)");
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(limiter: bool) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let rate = if limiter { "100000000" } else { "0" };
    let mut child = Command::new(env!("CARGO_BIN_EXE_memesh"))
        .current_dir(common::root())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--bootstrap-key", KEY, "--rate-limit-per-second", rate])
        .args([
            "--rate-limit-burst",
            "100000000",
            "--embed-query-threads",
            "0",
        ])
        .env("MEMESH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (Server { child, base }, dir);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("memesh exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("memesh did not start");
}

/// One wrk run: requests per second, and the count of non-2xx answers.
fn wrk(base: &str, seconds: u64, connections: u64) -> (f64, u64) {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["-H", &format!("x-api-key: {KEY}")])
        .arg(format!("{base}/v1/billing/plan"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut rps = 0.0;
    let mut bad = 0;
    for line in BufReader::new(text.as_bytes())
        .lines()
        .map_while(Result::ok)
    {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(0.0);
        }
        if let Some(v) = line.trim().strip_prefix("Non-2xx or 3xx responses:") {
            bad = v.trim().parse().unwrap_or(0);
        }
    }
    assert!(rps > 0.0, "wrk printed no rate:\n{text}");
    (rps, bad)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The limiter's own cost, measured directly: one `check_key` (the plan lookup and governor's
/// GCRA step) in a loop, in nanoseconds per call.
fn check_cost() -> f64 {
    use memesh::ids::{KeyId, TenantId};
    use memesh::plans::{PlanBook, RateOverride, Registry};
    let rate = RateOverride {
        per_second: Some(100_000_000),
        burst: Some(100_000_000),
    };
    let registry = Registry::new(PlanBook::load(None, rate).unwrap(), (0, 0));
    let (tenant, key) = (TenantId::generate(), KeyId::generate());
    let n = 2_000_000;
    let start = std::time::Instant::now();
    for _ in 0..n {
        std::hint::black_box(registry.check_key(&tenant, &key, false).unwrap());
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    ensure_wrk();
    let rounds = env("MEMESH_BENCH_ROUNDS", 5);
    let seconds = env("MEMESH_BENCH_SECONDS", 10);
    let connections = env("MEMESH_BENCH_CONNECTIONS", 32);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "ratelimit: GET /v1/billing/plan, wrk -t1 -c{connections} -d{seconds}s on the same {cores}-core machine, {rounds} rounds"
    );
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for limiter in [false, true] {
            let (server, _dir) = start(limiter);
            // Warm the key cache and the connection pool.
            wrk(&server.base, 1, connections);
            let (rps, bad) = wrk(&server.base, seconds, connections);
            assert_eq!(
                bad, 0,
                "requests were refused: the limiter must let this load through"
            );
            println!(
                "  round {round}, limiter {}: {rps:.0} req/s",
                if limiter { "on " } else { "off" }
            );
            if limiter { on.push(rps) } else { off.push(rps) }
        }
    }
    let (on, off) = (median(on), median(off));
    let cost = (off - on) / off * 100.0;
    println!("median without the limiter: {off:.0} req/s");
    println!("median with the limiter:    {on:.0} req/s");
    println!(
        "limiter cost by throughput: {cost:.1}% (the figure: at most 5%; run-to-run noise is larger than the effect)"
    );
    let ns = check_cost();
    let per_request_ns = 1e9 / off;
    println!(
        "limiter cost measured directly: {ns:.0} ns per check = {:.2}% of a request's {per_request_ns:.0} ns at {off:.0} req/s",
        ns / per_request_ns * 100.0
    );
}
