//! The background jobs, each its own supervised task: hold expiry, lease recovery, probes of
//! remote agents, and index snapshots. A failing pass is logged and retried at the next tick; a
//! panicking job is logged and restarted; the last successful pass of each is on `/healthz`.
//! The passes are public so tests can drive them with a manual clock instead of waiting.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agents::governance::{self, Change};
use crate::agents::{card, store as targets};
use crate::auth::Write;
use crate::auth::perm::{AgentsWrite, RunsAdmin};
use crate::clock::{SharedClock, Timestamp};
use crate::db::run_blocking;
use crate::error::{ApiError, ApiResult};
use crate::ids::{TargetId, TenantId};
use crate::orchestrator::remote::Look;
use crate::orchestrator::{lifecycle, store as runs};
use crate::state::AppState;

/// What operators see of one job.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub every_ms: u64,
    pub passes: u64,
    pub last_success_at: Option<Timestamp>,
    /// What the last successful pass did (holds released, leases recovered, …).
    pub last_result: Option<usize>,
    pub last_error_at: Option<Timestamp>,
    pub last_error: Option<String>,
    pub restarts: u32,
}

/// The status of every job, shared with `/healthz`.
#[derive(Debug, Default)]
pub struct JobBoard(Mutex<BTreeMap<&'static str, JobStatus>>);

impl JobBoard {
    fn update(&self, name: &'static str, f: impl FnOnce(&mut JobStatus)) {
        let mut jobs = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(jobs.entry(name).or_default());
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, JobStatus> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

type PassFuture = Pin<Box<dyn Future<Output = ApiResult<usize>> + Send>>;

/// One job: a name, how often it runs, and one pass of it over its context (the app state).
struct Job<C> {
    name: &'static str,
    every: Duration,
    pass: fn(C) -> PassFuture,
}

/// Where a supervised job reports: the board, and the clock that stamps its passes.
#[derive(Clone)]
struct Reporter {
    board: Arc<JobBoard>,
    clock: SharedClock,
}

/// Writes the counted refusals of every minute that is over (`all`: of every minute, at
/// shutdown), one audit row each; returns how many rows.
pub async fn write_refusal_digest(state: &AppState, all: bool) -> ApiResult<usize> {
    let now = state.clock.now();
    let due = state.refusals.due(now, all);
    let rows = due.len();
    if rows == 0 {
        return Ok(0);
    }
    state
        .db
        .write(move |tx| {
            for r in due {
                crate::audit::store::record_repeated(tx, r, now)?;
            }
            Ok(())
        })
        .await?;
    Ok(rows)
}

/// Starts every job; they stop when `cancel` fires (join the handles to wait for them).
pub fn start(state: &AppState, cancel: &CancellationToken) -> Vec<JoinHandle<()>> {
    let s = &state.settings;
    let jobs: [Job<AppState>; 7] = [
        Job {
            name: "holdExpiry",
            every: s.sweep_interval,
            pass: |st| Box::pin(async move { release_expired_holds(&st).await }),
        },
        Job {
            name: "leaseRecovery",
            every: s.sweep_interval,
            pass: |st| Box::pin(async move { recover_leases(&st).await }),
        },
        Job {
            name: "probes",
            every: s.probe_interval,
            pass: |st| Box::pin(async move { probe_remote_targets(&st).await }),
        },
        Job {
            name: "remoteRefresh",
            every: s.remote_refresh_interval,
            pass: |st| Box::pin(async move { refresh_remote_runs(&st).await }),
        },
        Job {
            name: "plans",
            every: s.plans.reload_interval,
            pass: |st| Box::pin(async move { crate::plans::store::reload(&st).await.map(|()| 0) }),
        },
        Job {
            name: "refusalDigest",
            every: s.sweep_interval,
            pass: |st| Box::pin(async move { write_refusal_digest(&st, false).await }),
        },
        Job {
            name: "indexSnapshot",
            every: state.memory.snapshot_interval(),
            pass: |st| Box::pin(async move { snapshot_index(&st).await }),
        },
    ];
    let reporter = Reporter {
        board: state.jobs.clone(),
        clock: state.clock.clone(),
    };
    jobs.into_iter()
        .map(|job| {
            // On the board before the first request is served, not when the task first runs.
            let every_ms = u64::try_from(job.every.as_millis()).unwrap_or(u64::MAX);
            reporter.board.update(job.name, |s| s.every_ms = every_ms);
            let run = supervise(state.clone(), reporter.clone(), job, cancel.clone());
            tokio::spawn(run)
        })
        .collect()
}

/// Runs `job` in its own task and restarts it whenever it panics.
async fn supervise<C: Clone + Send + 'static>(
    ctx: C,
    reporter: Reporter,
    job: Job<C>,
    cancel: CancellationToken,
) {
    let every_ms = u64::try_from(job.every.as_millis()).unwrap_or(u64::MAX);
    reporter.board.update(job.name, |s| s.every_ms = every_ms);
    loop {
        let run = run_job(
            ctx.clone(),
            reporter.clone(),
            job.name,
            job.every,
            job.pass,
            cancel.clone(),
        );
        match tokio::spawn(run).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                tracing::error!(job = job.name, "background job panicked; restarting it");
                reporter.board.update(job.name, |s| s.restarts += 1);
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(RESTART_DELAY) => {}
                }
            }
            Err(_) => return,
        }
    }
}

/// How long a panicked job waits before it is started again.
const RESTART_DELAY: Duration = Duration::from_millis(500);

async fn run_job<C: Clone>(
    ctx: C,
    reporter: Reporter,
    name: &'static str,
    every: Duration,
    pass: fn(C) -> PassFuture,
    cancel: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = pass(ctx.clone()).await;
        let now = reporter.clock.now();
        match result {
            Ok(done) => reporter.board.update(name, |s| {
                s.passes += 1;
                s.last_success_at = Some(now);
                s.last_result = Some(done);
            }),
            Err(e) => {
                tracing::error!(job = name, error = %e, "background job pass failed");
                reporter.board.update(name, |s| {
                    s.passes += 1;
                    s.last_error_at = Some(now);
                    s.last_error = Some(e.message.clone());
                });
            }
        }
    }
}

/// Lifts every hold whose `releaseAfter` has passed, as the system (runs the hold kept back move
/// on in the same transaction). Returns how many were lifted.
pub async fn release_expired_holds(state: &AppState) -> ApiResult<usize> {
    let now = state.clock.now();
    let due = state
        .db
        .read(move |c| targets::expired_holds(c, now))
        .await?;
    let mut released = 0;
    for (tenant, id) in due {
        let result = state
            .db
            .write(move |tx| {
                let w = Write::<AgentsWrite>::system(tx, tenant, now);
                // Re-checked under the write lock: a manual release may have come first.
                let target = targets::load(&w, w.tenant(), &id)?;
                let release_after = target.runtime.hold.and_then(|h| h.release_after);
                if release_after.is_none_or(|t| t > now) {
                    return Ok(false);
                }
                let note = Some("releaseAfter reached".to_owned());
                lifecycle::govern(&w, &id, None, Change::Release { note })?;
                Ok(true)
            })
            .await;
        match result {
            Ok(true) => released += 1,
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "automatic hold release failed"),
        }
    }
    Ok(released)
}

/// Returns every execution whose lease ran out to its queue, or ends its run (see
/// [`lifecycle::recover_lease`]), one tenant's leases per transaction. Returns how many.
pub async fn recover_leases(state: &AppState) -> ApiResult<usize> {
    let now = state.clock.now();
    let max = i64::from(state.settings.max_attempts);
    let expired = state.db.read(move |c| runs::expired_leases(c, now)).await?;
    let mut by_tenant: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for lease in expired {
        by_tenant
            .entry(lease.tenant.clone())
            .or_default()
            .push(lease);
    }
    let mut recovered = 0;
    for (tenant, leases) in by_tenant {
        recovered += state
            .db
            .write(move |tx| {
                let w = Write::<RunsAdmin>::system(tx, tenant, now);
                let mut n = 0;
                for lease in &leases {
                    n += usize::from(lifecycle::recover_lease(&w, lease, max)?);
                }
                Ok(n)
            })
            .await?;
    }
    Ok(recovered)
}

/// Probes that run at once, and at most per tenant: a tenant with many unreachable agents
/// slows its own probes, not everyone's.
const PROBE_CONCURRENCY: usize = 8;
const PROBES_PER_TENANT: usize = 2;

/// Probes every remote target once (fetches its Agent Card, each within its own deadline) and
/// records the result; after `probe_failure_threshold` consecutive failures an incident is
/// opened by the system. Tenants take turns. Returns the number of incidents opened.
pub async fn probe_remote_targets(state: &AppState) -> ApiResult<usize> {
    let targets = state.db.read(targets::probe_targets).await?;
    let mut by_tenant: BTreeMap<TenantId, Vec<(TargetId, String)>> = BTreeMap::new();
    for (tenant, id, url) in targets {
        by_tenant.entry(tenant).or_default().push((id, url));
    }
    // Round-robin across tenants, and a small share of slots each.
    let slots: BTreeMap<TenantId, Arc<Semaphore>> = by_tenant
        .keys()
        .map(|t| (t.clone(), Arc::new(Semaphore::new(PROBES_PER_TENANT))))
        .collect();
    let mut queues: Vec<_> = by_tenant
        .into_iter()
        .map(|(t, v)| (t, v.into_iter()))
        .collect();
    let mut order = Vec::new();
    while !queues.is_empty() {
        queues.retain_mut(|(tenant, rest)| match rest.next() {
            Some((id, url)) => {
                order.push((tenant.clone(), id, url));
                true
            }
            None => false,
        });
    }
    let probes = order.into_iter().map(|(tenant, id, url)| {
        let slot = slots[&tenant].clone();
        async move {
            let _slot = slot.acquire_owned().await;
            probe_one(state, tenant, id, &url).await
        }
    });
    let opened = futures_util::stream::iter(probes)
        .buffer_unordered(PROBE_CONCURRENCY)
        .filter(|opened| std::future::ready(*opened))
        .count()
        .await;
    Ok(opened)
}

/// Remote tasks looked at per pass, and at once.
const REMOTE_PER_PASS: u32 = 64;
const REMOTE_CONCURRENCY: usize = 4;

/// Looks at the remote tasks that are due (sends those never accepted, reads the unfinished)
/// and applies what it saw; returns how many runs changed state.
pub async fn refresh_remote_runs(state: &AppState) -> ApiResult<usize> {
    let now = state.clock.now();
    let due = state
        .db
        .read(move |c| runs::due_remote(c, now, REMOTE_PER_PASS))
        .await?;
    let rules = crate::orchestrator::remote::rules(state);
    let looks = due.into_iter().map(|row| async move {
        let tenant = row.tenant_id.clone();
        let outcome = crate::orchestrator::remote::fetch(state, &tenant, &row.run_id, Look::Due)
            .await
            .ok()??;
        let now = state.clock.now();
        let id = row.run_id.clone();
        let applied = state
            .db
            .write(move |tx| {
                let w = Write::<RunsAdmin>::system(tx, tenant, now);
                lifecycle::apply_remote(&w, &id, outcome, rules)
            })
            .await;
        match applied {
            Ok(summary) => Some(summary["changed"] == true),
            Err(e) => {
                tracing::error!(error = %e, run = %row.run_id, "recording a remote task failed");
                None
            }
        }
    });
    let changed = futures_util::stream::iter(looks)
        .buffer_unordered(REMOTE_CONCURRENCY)
        .filter(|c| std::future::ready(*c == Some(true)))
        .count()
        .await;
    Ok(changed)
}

/// Probes one target and records the outcome; true if that opened an incident.
async fn probe_one(state: &AppState, tenant: TenantId, id: TargetId, url: &str) -> bool {
    let outcome = match card::fetch(&state.outbound, url).await {
        Ok(card) => card::validate(&card).map(|_| ()).map_err(|e| e.message),
        Err(e) => Err(e.to_string()),
    };
    let threshold = i64::from(state.settings.probe_failure_threshold);
    let now = state.clock.now();
    let result = state
        .db
        .write(move |tx| {
            let w = Write::<AgentsWrite>::system(tx, tenant, now);
            governance::record_probe(&w, &id, outcome, threshold)
        })
        .await;
    result.unwrap_or_else(|e| {
        tracing::error!(error = %e, "recording a probe failed");
        false
    })
}

/// Writes an index snapshot if the graphs changed since the last one (1 if it wrote one).
pub async fn snapshot_index(state: &AppState) -> ApiResult<usize> {
    let s = state.clone();
    run_blocking(move || {
        s.memory
            .snapshot_if_changed()
            .map(usize::from)
            .map_err(ApiError::internal)
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::clock::ManualClock;

    static PASSES: AtomicUsize = AtomicUsize::new(0);

    /// A pass that panics the first time it runs and succeeds after.
    fn flaky(_: ()) -> PassFuture {
        Box::pin(async {
            if PASSES.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("the first pass blows up");
            }
            Ok(7)
        })
    }

    #[tokio::test]
    async fn a_panicking_job_is_restarted_and_its_passes_are_visible() {
        let reporter = Reporter {
            board: Arc::new(JobBoard::default()),
            clock: Arc::new(ManualClock::new(Timestamp(1_000))),
        };
        let cancel = CancellationToken::new();
        let job = Job {
            name: "flaky",
            every: Duration::from_millis(10),
            pass: flaky,
        };
        let running = tokio::spawn(supervise((), reporter.clone(), job, cancel.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            let status = reporter
                .board
                .snapshot()
                .remove("flaky")
                .unwrap_or_default();
            if status.last_success_at.is_some() {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never recovered: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(status.restarts, 1);
        assert_eq!(status.last_result, Some(7));
        assert_eq!(status.last_success_at, Some(Timestamp(1_000)));
        assert_eq!(status.every_ms, 10);
        cancel.cancel();
        running.await.unwrap();
    }

    /// The system capability is made only where the system itself acts: these jobs, bootstrap,
    /// and an invitation being accepted. A request handler that made one would bypass every
    /// permission check, so any other use fails this test.
    #[test]
    fn system_capability_is_confined() {
        let allowed = [
            "src/jobs.rs",
            "src/bootstrap.rs",
            "src/team/store.rs",
            "src/auth/grant.rs",
            "src/audit/store.rs",
            "src/device/store.rs",
            "src/plans/store.rs",
        ];
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut stack = vec![root.join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let uses = [
                    ">::system(",
                    "Write::system(",
                    "::by_invitation(",
                    "::recording_refusal(",
                    "::recording_refusal(",
                ]
                .iter()
                .any(|needle| text.contains(needle));
                assert!(
                    !uses || allowed.contains(&rel.as_str()),
                    "{rel} makes a system capability"
                );
            }
        }
    }
}
