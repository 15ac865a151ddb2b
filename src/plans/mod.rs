//! Plans, usage, quotas and rate limits.
//!
//! A plan is configuration: the built-in `default` (generous, for self-hosting) and the named
//! plans of a TOML file (`--plans-file`, default `<data-dir>/plans.toml`), each field of a named
//! plan falling back to the default's. A tenant is on the plan `memesh plan set` assigned it
//! (`tenants.plan`), else the default.
//!
//! - Quotas (memories per user, bytes per tenant, keys per user, targets per tenant, seats, runs
//!   waiting) are enforced by the database: triggers keep the usage counters in the same
//!   transaction as the change they count and abort a statement that would cross the limit
//!   the tenant's row of `tenant_limits` holds (migration 12). No code path can forget them.
//!   This module keeps `tenant_limits` in step with the plans ([`store::sync`]).
//! - Request rates are per API key, sustained rate and burst, with a lower budget for expensive
//!   calls (batch search, import, export), checked by `governor` when a key is authenticated;
//!   unauthenticated endpoints are limited per client address ([`Registry::check_address`]).
//!
//! The server re-reads the plans file and the tenants' assignments every few seconds (the
//! `plans` job), so a plan change takes effect without a restart.

pub mod handlers;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use governor::clock::{Clock as _, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{ApiError, Code};
use crate::ids::{KeyId, TenantId};

/// The name of the built-in plan.
pub const DEFAULT_PLAN: &str = "default";

/// What a plan allows. `None`: no limit (a named plan's missing field: the default's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub memories_per_user: Option<u64>,
    pub bytes_per_tenant: Option<u64>,
    pub keys_per_user: Option<u64>,
    pub targets_per_tenant: Option<u64>,
    /// Members plus invitations still open.
    pub seats: Option<u64>,
    /// Runs queued, awaiting approval, blocked or dispatched.
    pub runs_waiting: Option<u64>,
    /// Requests per second per key, sustained.
    pub requests_per_second: Option<u32>,
    /// Requests a key may make at once above the sustained rate.
    pub burst: Option<u32>,
    /// The budget of expensive calls (batch search, import, export) per key.
    pub expensive_per_second: Option<u32>,
    pub expensive_burst: Option<u32>,
}

impl Limits {
    /// The built-in default: limits a single machine can hold, so one runaway agent cannot
    /// exhaust it, and nobody self-hosting meets them by accident.
    pub fn builtin_default() -> Limits {
        Limits {
            memories_per_user: Some(10_000_000),
            bytes_per_tenant: Some(100 * 1024 * 1024 * 1024),
            keys_per_user: Some(1_000),
            targets_per_tenant: Some(1_000),
            seats: Some(10_000),
            runs_waiting: Some(1_000_000),
            requests_per_second: Some(5_000),
            burst: Some(10_000),
            expensive_per_second: Some(100),
            expensive_burst: Some(200),
        }
    }

    /// Each field missing here taken from `base`.
    fn over(self, base: &Limits) -> Limits {
        Limits {
            memories_per_user: self.memories_per_user.or(base.memories_per_user),
            bytes_per_tenant: self.bytes_per_tenant.or(base.bytes_per_tenant),
            keys_per_user: self.keys_per_user.or(base.keys_per_user),
            targets_per_tenant: self.targets_per_tenant.or(base.targets_per_tenant),
            seats: self.seats.or(base.seats),
            runs_waiting: self.runs_waiting.or(base.runs_waiting),
            requests_per_second: self.requests_per_second.or(base.requests_per_second),
            burst: self.burst.or(base.burst),
            expensive_per_second: self.expensive_per_second.or(base.expensive_per_second),
            expensive_burst: self.expensive_burst.or(base.expensive_burst),
        }
    }

    /// The general request quota; `None` (no rate set, or 0) is unlimited.
    fn quota(per_second: Option<u32>, burst: Option<u32>) -> Option<Quota> {
        let rate = NonZeroU32::new(per_second?)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
        Some(Quota::per_second(rate).allow_burst(burst))
    }
}

/// The plans file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    #[serde(default)]
    plans: BTreeMap<String, Limits>,
}

/// Every plan, each complete (named plans filled in from the default).
#[derive(Debug, Clone)]
pub struct PlanBook {
    pub plans: BTreeMap<String, Limits>,
    /// The file they came from, and its modification time when read.
    pub source: Option<(PathBuf, SystemTime)>,
}

/// How the default plan's request rate is set from the command line, over the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateOverride {
    pub per_second: Option<u32>,
    pub burst: Option<u32>,
}

impl PlanBook {
    /// Reads the plans file (none: only the default plan).
    pub fn load(path: Option<&Path>, rate: RateOverride) -> anyhow::Result<PlanBook> {
        let (file, source) = match path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)?;
                let file: PlansFile =
                    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                let mtime = std::fs::metadata(p)?.modified()?;
                (file, Some((p.to_owned(), mtime)))
            }
            _ => (PlansFile::default(), None),
        };
        let mut plans = file.plans;
        let mut default = plans
            .remove(DEFAULT_PLAN)
            .unwrap_or_default()
            .over(&Limits::builtin_default());
        if let Some(r) = rate.per_second {
            default.requests_per_second = Some(r);
            if r == 0 {
                // `--rate-limit-per-second 0`: the default plan limits no request rate at all.
                default.expensive_per_second = Some(0);
            }
        }
        if let Some(b) = rate.burst {
            default.burst = Some(b);
        }
        for (name, limits) in &mut plans {
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                anyhow::bail!("plan name {name:?}: 1 to 64 characters, no control characters");
            }
            *limits = std::mem::take(limits).over(&default);
        }
        plans.insert(DEFAULT_PLAN.to_owned(), default);
        Ok(PlanBook { plans, source })
    }

    /// The plan named `name`, else the default (an assignment to a plan no longer in the file).
    pub fn get(&self, name: Option<&str>) -> (&str, &Limits) {
        name.and_then(|n| self.plans.get_key_value(n))
            .or_else(|| self.plans.get_key_value(DEFAULT_PLAN))
            .map(|(k, v)| (k.as_str(), v))
            .expect("the default plan is always in the book")
    }

    /// Whether the file changed since it was read.
    pub fn stale(&self, path: Option<&Path>) -> bool {
        let now = path
            .filter(|p| p.exists())
            .and_then(|p| std::fs::metadata(p).ok()?.modified().ok());
        match (&self.source, now) {
            (Some((_, was)), Some(now)) => *was != now,
            (None, None) => false,
            _ => true,
        }
    }
}

type KeyedLimiter<K> = RateLimiter<
    K,
    governor::state::keyed::DefaultKeyedStateStore<K>,
    DefaultClock,
    StateInformationMiddleware,
>;

fn keyed<K: Clone + std::hash::Hash + Eq>(quota: Quota) -> KeyedLimiter<K> {
    RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>()
}

/// One plan's request limiters: every request, and the expensive ones.
struct PlanLimiters {
    limits: Limits,
    general: Option<KeyedLimiter<KeyId>>,
    expensive: Option<KeyedLimiter<KeyId>>,
}

impl PlanLimiters {
    fn new(limits: &Limits) -> PlanLimiters {
        PlanLimiters {
            limits: limits.clone(),
            general: Limits::quota(limits.requests_per_second, limits.burst).map(keyed),
            expensive: Limits::quota(limits.expensive_per_second, limits.expensive_burst)
                .map(keyed),
        }
    }
}

/// A key's request budget after a request: what `usage/summary` and the 429 headers say.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateState {
    /// The burst: requests that may be made at once.
    pub limit: u32,
    pub per_second: u32,
    pub remaining: u32,
    /// Seconds until the budget is whole again.
    pub reset_seconds: u64,
}

/// The plans in force, who is on which, and the request limiters.
pub struct Registry {
    book: RwLock<Arc<PlanBook>>,
    assigned: RwLock<HashMap<TenantId, String>>,
    limiters: RwLock<HashMap<String, Arc<PlanLimiters>>>,
    /// Each assigned tenant's limiters, resolved at install: one lookup per request.
    by_tenant: RwLock<HashMap<TenantId, Arc<PlanLimiters>>>,
    public: Option<KeyedLimiter<IpAddr>>,
    /// The per-address rate and burst, for the 429's message.
    public_quota: (u32, u32),
    clock: DefaultClock,
}

impl Registry {
    pub fn new(book: PlanBook, public: (u32, u32)) -> Registry {
        let limiters = book
            .plans
            .iter()
            .map(|(n, l)| (n.clone(), Arc::new(PlanLimiters::new(l))))
            .collect();
        Registry {
            book: RwLock::new(Arc::new(book)),
            assigned: RwLock::new(HashMap::new()),
            limiters: RwLock::new(limiters),
            by_tenant: RwLock::new(HashMap::new()),
            public: Limits::quota(Some(public.0), Some(public.1)).map(keyed),
            public_quota: public,
            clock: DefaultClock::default(),
        }
    }

    pub fn book(&self) -> Arc<PlanBook> {
        self.book
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The plan a tenant is on: its name and limits.
    pub fn plan_of(&self, tenant: &TenantId) -> (String, Limits) {
        let name = self
            .assigned
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .cloned();
        let book = self.book();
        let (n, l) = book.get(name.as_deref());
        (n.to_owned(), l.clone())
    }

    /// Installs a new book and assignments; limiters of plans whose rates did not change keep
    /// their state.
    pub fn install(&self, book: PlanBook, assigned: HashMap<TenantId, String>) {
        let by_tenant = {
            let mut limiters = self
                .limiters
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            limiters.retain(|name, l| book.plans.get(name) == Some(&l.limits));
            for (name, limits) in &book.plans {
                limiters
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(PlanLimiters::new(limits)));
            }
            for l in limiters.values() {
                if let Some(g) = &l.general {
                    g.retain_recent();
                }
                if let Some(e) = &l.expensive {
                    e.retain_recent();
                }
            }
            assigned
                .iter()
                .filter_map(|(t, plan)| Some((t.clone(), limiters.get(plan)?.clone())))
                .collect()
        };
        *self
            .by_tenant
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = by_tenant;
        *self
            .assigned
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = assigned;
        *self
            .book
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(book);
        if let Some(p) = &self.public {
            p.retain_recent();
        }
    }

    fn limiters_of(&self, tenant: &TenantId) -> Option<Arc<PlanLimiters>> {
        if let Some(l) = self
            .by_tenant
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
        {
            return Some(l.clone());
        }
        // A tenant created since the last plans pass: the default plan.
        self.limiters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(DEFAULT_PLAN)
            .cloned()
    }

    /// Counts one request of `key` against its tenant's plan (and, for an expensive call, the
    /// expensive budget too): the state after it, or 429 `rate_limited`.
    pub fn check_key(
        &self,
        tenant: &TenantId,
        key: &KeyId,
        expensive: bool,
    ) -> Result<Option<RateState>, ApiError> {
        let Some(l) = self.limiters_of(tenant) else {
            return Ok(None);
        };
        if expensive {
            self.check_expensive_of(&l, key)?;
        }
        match &l.general {
            Some(g) => self
                .check(
                    g,
                    key,
                    l.limits.requests_per_second,
                    l.limits.burst,
                    "requests",
                )
                .map(Some),
            None => Ok(None),
        }
    }

    /// Counts one call against `key`'s expensive budget only: for a call whose cost its body
    /// decides (a keyword or hybrid query), once the body is read.
    pub fn check_expensive(&self, tenant: &TenantId, key: &KeyId) -> Result<(), ApiError> {
        match self.limiters_of(tenant) {
            Some(l) => self.check_expensive_of(&l, key),
            None => Ok(()),
        }
    }

    fn check_expensive_of(&self, l: &PlanLimiters, key: &KeyId) -> Result<(), ApiError> {
        if let Some(e) = &l.expensive {
            self.check(
                e,
                key,
                l.limits.expensive_per_second,
                l.limits.expensive_burst,
                "expensive calls",
            )?;
        }
        Ok(())
    }

    /// Counts one unauthenticated request from `addr` (an IPv6 client by its /64, which one
    /// subscriber usually holds whole).
    pub fn check_address(&self, addr: Option<IpAddr>) -> Result<(), ApiError> {
        let (Some(p), Some(addr)) = (&self.public, addr) else {
            return Ok(());
        };
        let (rate, burst) = self.public_quota;
        self.check(
            p,
            &per_network(addr),
            Some(rate),
            Some(burst),
            "requests from this address",
        )
        .map(|_| ())
    }

    fn check<K: Clone + std::hash::Hash + Eq>(
        &self,
        limiter: &KeyedLimiter<K>,
        key: &K,
        per_second: Option<u32>,
        burst: Option<u32>,
        what: &str,
    ) -> Result<RateState, ApiError> {
        let per_second = per_second.unwrap_or(0);
        let limit = burst.unwrap_or(per_second);
        match limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = limit.saturating_sub(remaining);
                let reset_seconds = if per_second == 0 {
                    0
                } else {
                    u64::from(used).div_ceil(u64::from(per_second))
                };
                Ok(RateState {
                    limit,
                    per_second,
                    remaining,
                    reset_seconds,
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let retry = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let retry = retry.max(1);
                Err(ApiError::new(
                    Code::RateLimited,
                    format!(
                        "too many {what}: the limit is {per_second} per second with bursts of {limit}; retry in {retry} s"
                    ),
                )
                .with_details(json!({
                    "limit": limit, "perSecond": per_second, "remaining": 0,
                    "resetSeconds": retry, "retryAfterSeconds": retry,
                })))
            }
        }
    }
}

/// The address a per-address limit counts: an IPv4 address itself, an IPv6 address by its /64.
pub fn per_network(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
        v4 => v4,
    }
}

/// Calls that draw on the expensive budget too, by route (method and matched path).
pub fn is_expensive(method: &axum::http::Method, route: &str) -> bool {
    matches!(
        (method.as_str(), route),
        ("POST", "/v1/memory/batch/search")
            | ("POST", "/v1/memory/import")
            | ("GET", "/v1/memory/stream/export")
    )
}
