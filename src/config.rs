//! The command line: `memesh [serve]`, `init`, `tenant create`, `audit verify`. Every flag is
//! also an environment variable (`MEMESH_*`), validated once here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::state::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "memesh",
    version,
    about = "Long-term memory and governance server for AI agents"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
    /// `memesh` alone serves, with these flags.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Directory holding the SQLite database and index snapshots.
    #[arg(long, env = "MEMESH_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,
    /// `full`: every commit fsynced (survives power loss); `normal`: survives a crash of memesh
    /// but not of the machine, with several times the write throughput.
    #[arg(long, env = "MEMESH_DURABILITY", value_enum, default_value_t = crate::db::Durability::Full, global = true)]
    pub durability: crate::db::Durability,
    /// The plans file (TOML; default: plans.toml in the data directory, if it exists).
    #[arg(long, env = "MEMESH_PLANS_FILE", global = true)]
    pub plans_file: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "MEMESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start
pub enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Create the first tenant and its owner, and print the owner's API key once.
    Init(InitArgs),
    /// Operator commands for tenants (workspaces) on this server.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Re-embed every memory with a bundled model (`--model`, default the multilingual one) and
    /// make it the data directory's model; stop the server first.
    Reindex(ModelArgs),
    /// Sign this machine in to a memesh server: approve a code in a browser, get an API key
    /// (stored in the config directory, mode 0600).
    Login {
        /// The server, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "MEMESH_SERVER")]
        server: String,
        /// Space-separated key scopes to ask for (default: what the approving key may do).
        #[arg(long)]
        scope: Option<String>,
    },
    /// Take a consistent online backup of the data directory into PATH (a new directory), while
    /// the server runs.
    Backup {
        /// Where the backup goes (must not exist, or be empty).
        path: PathBuf,
    },
    /// Restore the backup at PATH into the data directory (which must be empty).
    Restore {
        /// A directory `memesh backup` wrote.
        path: PathBuf,
    },
    /// Plans: list them, put a tenant on one.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Revoke the stored key on its server and forget it.
    Logout,
    /// Show the server, user, tenant, role and scopes of the stored key.
    Whoami,
    /// Serve MCP on stdin/stdout for a client that launches it, forwarding to a memesh server
    /// with the key `memesh login` stored.
    Mcp {
        /// The memesh server (default: the one `memesh login` signed in to).
        #[arg(long, env = "MEMESH_SERVER")]
        server: Option<String>,
        /// An API key to use instead of the stored one.
        #[arg(long = "api-key", env = "MEMESH_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Every plan (the built-in default and the plans file's) and the tenants on each.
    List,
    /// Put a tenant on a plan; its quotas apply at once, its request rates within seconds.
    Set {
        /// The tenant's id or name.
        #[arg(long)]
        tenant: String,
        /// A plan of the plans file, or `default`.
        #[arg(long)]
        plan: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The bundled embedding model: `multilingual-e5-small` (about 100 languages; the default
    /// for a new data directory) or `minilm` (English only, faster, smaller). Default: the
    /// model the data directory's memories were embedded with.
    #[arg(long, env = "MEMESH_MODEL")]
    pub model: Option<String>,
    /// Directory of the model's files (default: models/<model id> beside the binary, in the
    /// checkout, or in the working directory).
    #[arg(long, env = "MEMESH_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// The ONNX Runtime shared library (default: runtime/libonnxruntime.so.1.31.1, found like
    /// the model and checked against its pinned checksum).
    #[arg(long, env = "MEMESH_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Threads the embedding model may use (default: all cores).
    #[arg(long, env = "MEMESH_EMBED_THREADS",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub embed_threads: Option<u16>,
    /// Threads of a second session of the model that embeds only queries (search, query,
    /// batch search), so a search never waits for a write's model call; 0 embeds queries with
    /// the one model, between its calls (saves the second session's memory).
    #[arg(long, env = "MEMESH_EMBED_QUERY_THREADS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(0..=256))]
    pub embed_query_threads: u16,
}

impl ModelArgs {
    /// The model asked for by name, if any (an unknown name is an error listing the names).
    pub fn asked(&self) -> anyhow::Result<Option<&'static crate::embed::BundledModel>> {
        self.model
            .as_deref()
            .filter(|name| !name.trim().is_empty())
            .map(|name| {
                crate::embed::catalog::by_name(name).ok_or_else(|| {
                    anyhow::anyhow!(
                        "--model {name:?} is not a bundled model; choose one of: {}",
                        crate::embed::catalog::names()
                    )
                })
            })
            .transpose()
    }

    pub fn threads(&self) -> usize {
        self.embed_threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            usize::from,
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    /// An owner's memories get an HNSW graph from this many on; fewer are searched exactly.
    #[arg(long, env = "MEMESH_INDEX_GRAPH_THRESHOLD", default_value_t = 20_000,
          value_parser = clap::value_parser!(u32).range(100..))]
    pub index_graph_threshold: u32,
    /// HNSW search breadth (higher: better recall, slower). 256 gives recall@10 0.996-0.998 on
    /// natural text at 100k in about 0.7 ms (docs/benchmarks.md).
    #[arg(long, env = "MEMESH_INDEX_EF_SEARCH", default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(10..=4096))]
    pub index_ef_search: u16,
    /// Seconds between graph snapshots (when the graphs changed); one is also written at shutdown.
    #[arg(long, env = "MEMESH_SNAPSHOT_INTERVAL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub snapshot_interval_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct OwnerArgs {
    /// Name of the first tenant.
    #[arg(long, env = "MEMESH_TENANT_NAME", default_value = "default")]
    pub tenant_name: String,
    /// Email of the first tenant's owner.
    #[arg(
        long = "owner-email",
        env = "MEMESH_OWNER_EMAIL",
        default_value = "owner@localhost"
    )]
    pub email: String,
    /// Use this owner API key instead of a random one (mk_ + 43 base64url characters).
    #[arg(long, env = "MEMESH_BOOTSTRAP_KEY", hide_env_values = true)]
    pub bootstrap_key: Option<String>,
    /// Write the first owner key made at first start into this new file (mode 0600) instead of
    /// printing it on standard output, which journald and container logs keep.
    #[arg(long, env = "MEMESH_BOOTSTRAP_KEY_FILE")]
    pub bootstrap_key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MEMESH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MEMESH_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub max_body_bytes: u64,
    /// Seconds a request may take before it is answered 408.
    #[arg(long, env = "MEMESH_REQUEST_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout_secs: u64,
    /// Hours an invitation stays valid.
    #[arg(long, env = "MEMESH_INVITATION_TTL_HOURS", default_value_t = 72,
          value_parser = clap::value_parser!(u64).range(1..=24 * 365))]
    pub invitation_ttl_hours: u64,
    /// Seconds between probes of remote A2A targets.
    #[arg(long, env = "MEMESH_PROBE_INTERVAL_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub probe_interval_secs: u64,
    /// Seconds between looks at an unfinished remote task (a failing agent is looked at less
    /// often: doubling, with jitter, up to five minutes).
    #[arg(long, env = "MEMESH_REMOTE_REFRESH_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub remote_refresh_secs: u64,
    /// Failed attempts to cancel a task on a remote agent (no answer, an error, or accepted and
    /// not carried out in time) after which memesh stops and an operator resolves the run.
    #[arg(long, env = "MEMESH_REMOTE_CANCEL_ATTEMPTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub remote_cancel_attempts: u32,
    /// Seconds a remote agent that accepted a cancel has to stop the task before the attempt
    /// counts as failed.
    #[arg(long, env = "MEMESH_REMOTE_CANCEL_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub remote_cancel_timeout_secs: u64,
    /// Requests per second an API key of the default plan may make, sustained (0: no request
    /// limits on the default plan).
    #[arg(long, env = "MEMESH_RATE_LIMIT_PER_SECOND")]
    pub rate_limit_per_second: Option<u32>,
    /// Requests an API key of the default plan may make at once above the sustained rate.
    #[arg(long, env = "MEMESH_RATE_LIMIT_BURST",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: Option<u32>,
    /// Unauthenticated requests (device login, invitation acceptance) per second per client
    /// address (0: unlimited).
    #[arg(long, env = "MEMESH_PUBLIC_RATE_LIMIT_PER_SECOND", default_value_t = 5)]
    pub public_rate_limit_per_second: u32,
    /// Unauthenticated requests per client address at once.
    #[arg(long, env = "MEMESH_PUBLIC_RATE_LIMIT_BURST", default_value_t = 30)]
    pub public_rate_limit_burst: u32,
    /// OAuth client ids that may ask for a key by device authorization, comma-separated.
    #[arg(
        long,
        env = "MEMESH_DEVICE_CLIENTS",
        default_value = "memesh-cli,memesh-mcp",
        value_delimiter = ','
    )]
    pub device_clients: Vec<String>,
    /// Seconds a device code (and its user code) stays valid.
    #[arg(long, env = "MEMESH_DEVICE_CODE_TTL_SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub device_code_ttl_secs: u64,
    /// Seconds a device client waits between polls (RFC 8628 `interval`).
    #[arg(long, env = "MEMESH_DEVICE_POLL_INTERVAL_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=60))]
    pub device_poll_interval_secs: u64,
    /// The URL people reach this server at, for the verification links device clients show
    /// (default: from each request's Host header).
    #[arg(long, env = "MEMESH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Reverse proxies (addresses or CIDR blocks, comma-separated) whose `X-Forwarded-For`
    /// names the client: per-address limits and the device page then count the client, not
    /// the proxy. Requests from anywhere else are taken at their connection's address.
    #[arg(long, env = "MEMESH_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections served at once; past it, new ones wait in the listen backlog.
    #[arg(long, env = "MEMESH_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// Consecutive failed probes that open a provider incident.
    #[arg(long, env = "MEMESH_PROBE_FAILURE_THRESHOLD", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub probe_failure_threshold: u32,
    /// Seconds a claim holds an execution without a heartbeat.
    #[arg(long, env = "MEMESH_EXECUTION_LEASE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(3..=86_400))]
    pub execution_lease_secs: u64,
    /// Claims an execution gets (lease expiries included) before its run fails.
    #[arg(long, env = "MEMESH_MAX_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Largest result an agent may complete an execution with, in bytes of JSON (413 beyond).
    #[arg(long, env = "MEMESH_MAX_RESULT_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=256 * 1024 * 1024))]
    pub max_result_bytes: u64,
    /// Let Agent Card URLs, agent endpoints and probes reach loopback, private and link-local
    /// addresses (for labs and tests; refused by default).
    #[arg(long, env = "MEMESH_ALLOW_PRIVATE_AGENT_URLS")]
    pub allow_private_agent_urls: bool,
    /// Send every request made on a user's behalf (Agent Cards, probes, A2A calls) through
    /// this HTTP(S) proxy. The proxy then resolves names, so memesh can only check literal
    /// addresses: give the proxy an egress policy of its own. `HTTP(S)_PROXY` and `ALL_PROXY`
    /// are never used for these requests.
    #[arg(long, env = "MEMESH_AGENT_PROXY")]
    pub agent_proxy: Option<String>,
    #[command(flatten)]
    pub owner: OwnerArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub index: IndexArgs,
}

impl ServeArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            invitation_ttl: Duration::from_secs(self.invitation_ttl_hours * 3600),
            probe_interval: Duration::from_secs(self.probe_interval_secs),
            probe_failure_threshold: self.probe_failure_threshold,
            execution_lease: Duration::from_secs(self.execution_lease_secs),
            max_attempts: self.max_attempts,
            max_result_bytes: usize::try_from(self.max_result_bytes).unwrap_or(usize::MAX),
            allow_private_agent_urls: self.allow_private_agent_urls,
            agent_proxy: self.agent_proxy.clone(),
            sweep_interval: Duration::from_secs(1),
            remote_refresh_interval: Duration::from_secs(self.remote_refresh_secs),
            remote_cancel_attempts: self.remote_cancel_attempts,
            remote_cancel_timeout: Duration::from_secs(self.remote_cancel_timeout_secs),
            plans: crate::state::PlansSettings {
                file: None,
                rate: crate::plans::RateOverride {
                    per_second: self.rate_limit_per_second,
                    burst: self.rate_limit_burst,
                },
                public_per_second: self.public_rate_limit_per_second,
                public_burst: self.public_rate_limit_burst,
                reload_interval: Duration::from_secs(2),
            },
            trusted_proxies: self.trusted_proxies.clone(),
            max_connections: self.max_connections as usize,
            keyword_common_share: crate::memory::store::COMMON_SHARE,
            device: crate::state::DeviceSettings {
                clients: self
                    .device_clients
                    .iter()
                    .map(|c| c.trim().to_owned())
                    .filter(|c| !c.is_empty())
                    .collect(),
                code_ttl: Duration::from_secs(self.device_code_ttl_secs),
                interval: Duration::from_secs(self.device_poll_interval_secs),
                public_url: self
                    .public_url
                    .as_deref()
                    .map(|u| u.trim_end_matches('/').to_owned()),
            },
        }
    }
}

/// An address or a CIDR block (`10.0.0.0/8`, `2001:db8::/32`, `127.0.0.1`).
fn parse_net(raw: &str) -> Result<ipnet::IpNet, String> {
    let raw = raw.trim();
    raw.parse::<ipnet::IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{raw:?} is not an IP address or CIDR block"))
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Largest result an agent may complete an execution with, in bytes of JSON (413 beyond).
    #[arg(long, env = "MEMESH_MAX_RESULT_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=256 * 1024 * 1024))]
    pub max_result_bytes: u64,
    /// Let Agent Card URLs, agent endpoints and probes reach loopback, private and link-local
    /// addresses (for labs and tests; refused by default).
    #[arg(long, env = "MEMESH_ALLOW_PRIVATE_AGENT_URLS")]
    pub allow_private_agent_urls: bool,
    #[command(flatten)]
    pub owner: OwnerArgs,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create another tenant and print its owner's API key once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner_email: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every tenant's hash chain and report the first broken link.
    Verify,
    /// Print the newest sequence and hash of every tenant's chain, to keep outside memesh.
    Head,
}

impl GlobalArgs {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("memesh.db")
    }

    /// The plans file: as given (it must exist), else `plans.toml` in the data directory
    /// (read if and when it exists).
    pub fn plans_path(&self) -> anyhow::Result<PathBuf> {
        match &self.plans_file {
            Some(p) if !p.exists() => {
                anyhow::bail!("the plans file {} does not exist", p.display())
            }
            Some(p) => Ok(p.clone()),
            None => Ok(self.data_dir.join("plans.toml")),
        }
    }

    pub fn index_dir(&self) -> PathBuf {
        self.data_dir.join("index")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn bare_invocation_serves_with_flags() {
        let cli = Cli::try_parse_from(["memesh", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.port(), 0);
        let cli = Cli::try_parse_from(["memesh", "audit", "verify", "--data-dir", "/x"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Audit(AuditCommand::Verify))
        ));
        assert_eq!(cli.global.data_dir, PathBuf::from("/x"));
    }
}
