//! The shared application state every handler gets: database, clock, configuration and the
//! memory engine (embedder and vector index).

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::KeyCache;
use crate::clock::SharedClock;
use crate::db::Db;
use crate::jobs::JobBoard;
use crate::memory::MemoryEngine;
use crate::outbound::Outbound;

/// Settings the running server needs (the CLI's `serve` flags, validated).
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub invitation_ttl: Duration,
    /// How often remote A2A targets are probed (their Agent Card fetched).
    pub probe_interval: Duration,
    /// Consecutive failed probes that open a provider incident.
    pub probe_failure_threshold: u32,
    /// How long a claim holds an execution without a heartbeat.
    pub execution_lease: Duration,
    /// Claims an execution gets before its run fails.
    pub max_attempts: u32,
    /// Lets Agent Card URLs, agent endpoints and probes reach loopback and private addresses
    /// (labs, tests); refused by default.
    pub allow_private_agent_urls: bool,
    /// `--agent-proxy`: the one proxy requests on a user's behalf go through (none: direct).
    pub agent_proxy: Option<String>,
    /// Largest result an agent may complete an execution with, as JSON text.
    pub max_result_bytes: usize,
    /// How often expired holds and leases are looked for (the snapshot interval is the memory
    /// engine's).
    pub sweep_interval: Duration,
    /// How often an unfinished remote task is looked at (failed looks back off from it).
    pub remote_refresh_interval: Duration,
    /// Failed attempts to cancel a remote task after which an operator resolves the run.
    pub remote_cancel_attempts: u32,
    /// How long a cancel the agent accepted may take to stop its task before it counts as
    /// failed.
    pub remote_cancel_timeout: Duration,
    /// Device authorization: the clients that may ask for a key, how long a code lives, how
    /// often a client may poll, and the URL people open (None: from the request's Host).
    pub device: DeviceSettings,
    pub plans: PlansSettings,
    /// Reverse proxies whose `X-Forwarded-For` is believed (`--trusted-proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// A keyword-query word in more than this share of its owner's memories only scores what
    /// the query's rarer words find (1: every word finds; benches compare the two).
    pub keyword_common_share: f64,
}

/// Where plans come from, the default plan's request rate from the command line, the limit on
/// unauthenticated requests per address (0: none), and how often the plans are re-read.
#[derive(Debug, Clone)]
pub struct PlansSettings {
    pub file: Option<std::path::PathBuf>,
    pub rate: crate::plans::RateOverride,
    pub public_per_second: u32,
    pub public_burst: u32,
    pub reload_interval: Duration,
}

impl Default for PlansSettings {
    fn default() -> Self {
        PlansSettings {
            file: None,
            rate: crate::plans::RateOverride::default(),
            public_per_second: 5,
            public_burst: 30,
            reload_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeviceSettings {
    pub clients: Vec<String>,
    pub code_ttl: Duration,
    pub interval: Duration,
    pub public_url: Option<String>,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            clients: vec!["memesh-cli".into(), "memesh-mcp".into()],
            code_ttl: Duration::from_secs(600),
            interval: Duration::from_secs(5),
            public_url: None,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_body_bytes: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            invitation_ttl: Duration::from_secs(72 * 3600),
            probe_interval: Duration::from_secs(60),
            probe_failure_threshold: 3,
            execution_lease: Duration::from_secs(30),
            max_attempts: 3,
            max_result_bytes: 1024 * 1024,
            allow_private_agent_urls: false,
            agent_proxy: None,
            sweep_interval: Duration::from_secs(1),
            remote_refresh_interval: Duration::from_secs(5),
            remote_cancel_attempts: 5,
            remote_cancel_timeout: Duration::from_secs(60),
            device: DeviceSettings::default(),
            plans: PlansSettings::default(),
            trusted_proxies: Vec::new(),
            max_connections: 4096,
            keyword_common_share: crate::memory::store::COMMON_SHARE,
        }
    }
}

pub struct App {
    pub db: Db,
    pub clock: SharedClock,
    pub settings: Settings,
    pub memory: MemoryEngine,
    /// Requests made on a user's behalf (Agent Cards, probes), guarded.
    pub outbound: Outbound,
    /// How the background jobs are doing.
    pub jobs: Arc<JobBoard>,
    /// Recently authenticated keys.
    pub keys: KeyCache,
    /// Wrong user codes entered on the device page, by address and by session.
    pub device_guesses: crate::device::Guesses,
    /// The plans in force and the request limiters.
    pub plans: crate::plans::Registry,
    /// Refused mutations counted, to be audited one row a key, route and minute.
    pub refusals: crate::audit::refusals::RefusalDigest,
    /// Imports running per tenant.
    pub imports: crate::memory::transfer::ImportSlots,
    /// Keyword words' document frequencies per owner, remembered between queries.
    pub keyword_df: crate::memory::store::DocFrequencies,
}

#[derive(Clone)]
pub struct AppState(Arc<App>);

impl AppState {
    /// Fails when the guarded outbound client cannot be built (a bad `--agent-proxy`): the
    /// server does not start rather than make requests unguarded.
    pub fn new(
        db: Db,
        clock: SharedClock,
        settings: Settings,
        memory: MemoryEngine,
    ) -> anyhow::Result<Self> {
        let outbound = Outbound::new(
            settings.allow_private_agent_urls,
            settings.agent_proxy.as_deref(),
        )?;
        let p = &settings.plans;
        let book = crate::plans::PlanBook::load(p.file.as_deref(), p.rate).unwrap_or_else(|e| {
            // `serve` reads the file before it gets here and stops on an error; a file broken
            // since keeps the built-in default until it is fixed.
            tracing::error!(error = %e, "the plans file could not be read; the default plan applies");
            crate::plans::PlanBook::load(None, p.rate).expect("the built-in plans load")
        });
        let plans = crate::plans::Registry::new(book, (p.public_per_second, p.public_burst));
        Ok(AppState(Arc::new(App {
            db,
            clock,
            settings,
            memory,
            outbound,
            jobs: Arc::new(JobBoard::default()),
            keys: KeyCache::default(),
            device_guesses: crate::device::Guesses::default(),
            plans,
            refusals: crate::audit::refusals::RefusalDigest::default(),
            imports: crate::memory::transfer::ImportSlots::default(),
            keyword_df: crate::memory::store::DocFrequencies::default(),
        })))
    }
}

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}
