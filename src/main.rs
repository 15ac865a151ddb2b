//! The `memesh` binary: parse the command line, set up logging, open the data directory, and
//! serve (or run an operator command).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use memesh::bootstrap::{self, NewTenant, TenantSpec};
use memesh::clock::{Clock, SystemClock};
use memesh::config::{
    AuditCommand, Cli, Command, GlobalArgs, LogFormat, ModelArgs, OwnerArgs, PlanCommand,
    ServeArgs, TenantCommand,
};
use memesh::db::Db;
use memesh::embed::{BundledModel, DEFAULT_MODEL, MODEL_DIM};
use memesh::index::IndexConfig;
use memesh::memory::engine::{EngineConfig, MemoryEngine};
use memesh::state::AppState;
use tracing_subscriber::EnvFilter;

/// mimalloc: a server that allocates many small, short-lived values (JSON, rows, requests)
/// spends markedly less in the allocator than with the system's (measured in the queue bench).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    memesh::tune_allocator();
    // The data directory holds every memory in plain text: nothing memesh creates is readable
    // by anyone but its own user.
    memesh::private::restrict_umask();
    let cli = Cli::parse();
    init_tracing(cli.global.log_format);
    let result = match cli.command {
        None => serve(&cli.global, cli.serve),
        Some(Command::Serve(args)) => serve(&cli.global, args),
        Some(Command::Init(args)) => init(&cli.global, &args.owner),
        Some(Command::Tenant(TenantCommand::Create { name, owner_email })) => {
            create_tenant(&cli.global, &name, &owner_email)
        }
        Some(Command::Audit(AuditCommand::Verify)) => verify_audit(&cli.global),
        Some(Command::Audit(AuditCommand::Head)) => audit_heads(&cli.global),
        Some(Command::Reindex(model)) => reindex(&cli.global, &model),
        Some(Command::Backup { path }) => {
            memesh::backup::backup(&cli.global.data_dir, &path).map(|m| {
                println!(
                    "memesh: backup of {} written to {} ({} memories)",
                    cli.global.data_dir.display(),
                    path.display(),
                    m["database"]["memories"]
                );
                ExitCode::SUCCESS
            })
        }
        Some(Command::Restore { path }) => memesh::backup::restore(&path, &cli.global.data_dir)
            .map(|m| {
                println!(
                    "memesh: backup taken at {} restored into {}; start the server on it",
                    m["takenAt"].as_str().unwrap_or("?"),
                    cli.global.data_dir.display()
                );
                ExitCode::SUCCESS
            }),
        Some(Command::Plan(PlanCommand::List)) => list_plans(&cli.global),
        Some(Command::Plan(PlanCommand::Set { tenant, plan })) => {
            set_plan(&cli.global, &tenant, &plan)
        }
        Some(Command::Login { server, scope }) => client(async move {
            memesh::client::login(&server, scope.as_deref()).await?;
            Ok(())
        }),
        Some(Command::Logout) => client(async {
            let server = memesh::client::logout().await?;
            println!("memesh: signed out of {server}; the key is revoked and forgotten");
            Ok(())
        }),
        Some(Command::Whoami) => client(async {
            let me = memesh::client::whoami().await?;
            let text = |k: &str| me[k].as_str().unwrap_or("?").to_owned();
            println!("server:  {}", text("server"));
            println!("user:    {} ({})", text("email"), text("userId"));
            println!("tenant:  {} ({})", text("tenantName"), text("tenantId"));
            println!("role:    {}", text("role"));
            let scopes: Vec<&str> = me["scopes"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            println!("scopes:  {}", scopes.join(" "));
            println!("model:   {}", text("embeddingModel"));
            Ok(())
        }),
        Some(Command::Mcp { server, api_key }) => client(async move {
            let (server, key) = memesh::mcp::stdio::resolve(server, api_key)?;
            memesh::mcp::stdio::run(&server, &key).await
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a client command (login, logout, whoami) on a small runtime of its own.
fn client(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)?;
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MEMESH_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Opens the database. A data directory that holds no database yet (a fresh clone's `data/`)
/// becomes owner-only first; an existing one that others can read is warned about.
fn open_db(global: &GlobalArgs) -> anyhow::Result<Db> {
    use std::os::unix::fs::PermissionsExt;
    let path = global.database_path();
    if !path.exists() && global.data_dir.is_dir() {
        std::fs::set_permissions(&global.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} owner-only", global.data_dir.display()))?;
    } else if let Some(warning) = memesh::private::exposure(&global.data_dir) {
        tracing::warn!("{warning}");
    }
    Db::open_with(&path, global.durability)
}

fn print_new_tenant(t: &NewTenant) {
    println!(
        "memesh: tenant {:?} ({}) created",
        t.tenant_name, t.tenant_id
    );
    println!("memesh: owner {} ({})", t.owner.email, t.owner.user_id);
    println!(
        "memesh: owner API key (shown once, store it now): {}",
        t.key
    );
}

/// Announces a new tenant, its owner key written to `key_file` (a new file, mode 0600) when
/// given, else printed. The key exists only here: if the file cannot be written, it is printed
/// after all rather than lost.
fn announce_new_tenant(t: &NewTenant, key_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let Some(path) = key_file else {
        print_new_tenant(t);
        return Ok(());
    };
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        writeln!(f, "{}", t.key)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        tracing::error!(error = %e, file = %path.display(), "cannot write the bootstrap key file; printing the key instead");
        print_new_tenant(t);
        return Ok(());
    }
    println!(
        "memesh: tenant {:?} ({}) created",
        t.tenant_name, t.tenant_id
    );
    println!("memesh: owner {} ({})", t.owner.email, t.owner.user_id);
    println!(
        "memesh: owner API key written to {} (mode 0600)",
        path.display()
    );
    Ok(())
}

fn spec(owner: &OwnerArgs) -> TenantSpec<'_> {
    TenantSpec {
        name: &owner.tenant_name,
        owner_email: &owner.email,
        owner_key: owner.bootstrap_key.as_deref(),
    }
}

fn init(global: &GlobalArgs, owner: &OwnerArgs) -> anyhow::Result<ExitCode> {
    let db = open_db(global)?;
    match bootstrap::initialize(&db, &spec(owner), SystemClock.now())? {
        Some(t) => {
            announce_new_tenant(&t, owner.bootstrap_key_file.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "memesh: {} is already initialized; its owner key was printed when it was created",
                global.data_dir.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn create_tenant(global: &GlobalArgs, name: &str, owner_email: &str) -> anyhow::Result<ExitCode> {
    let db = open_db(global)?;
    let spec = TenantSpec {
        name,
        owner_email,
        owner_key: None,
    };
    let t = bootstrap::create_tenant(&db, &spec, SystemClock.now())?;
    // The new tenant's quotas hold at once, even before a running server's next plans pass.
    let book = plan_book(global)?;
    db.write_blocking(|tx| memesh::plans::store::sync(tx, &book).map(|_| ()))?;
    print_new_tenant(&t);
    Ok(ExitCode::SUCCESS)
}

fn plan_book(global: &GlobalArgs) -> anyhow::Result<memesh::plans::PlanBook> {
    memesh::plans::PlanBook::load(Some(&global.plans_path()?), Default::default())
}

/// `memesh plan list`: every plan and its limits, and the tenants on each.
fn list_plans(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let book = plan_book(global)?;
    let db = open_db(global)?;
    let on: Vec<(String, String, Option<String>)> = db.read_blocking(|c| {
        Ok(
            c.prepare("SELECT id, name, plan FROM tenants ORDER BY name")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?,
        )
    })?;
    match &book.source {
        Some((path, _)) => println!("plans from {}", path.display()),
        None => println!("no plans file: only the built-in default plan"),
    }
    for (name, limits) in &book.plans {
        println!("\n[{name}]");
        print!("{}", toml::to_string(limits)?);
        let tenants: Vec<String> = on
            .iter()
            .filter(|(_, _, p)| book.get(p.as_deref()).0 == name)
            .map(|(id, n, _)| format!("{n} ({id})"))
            .collect();
        println!(
            "# tenants: {}",
            if tenants.is_empty() {
                "none".into()
            } else {
                tenants.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `memesh plan set --tenant ID|NAME --plan NAME`.
fn set_plan(global: &GlobalArgs, tenant: &str, plan: &str) -> anyhow::Result<ExitCode> {
    let book = plan_book(global)?;
    let db = open_db(global)?;
    let found = db.read_blocking(|c| memesh::plans::store::find_tenant(c, tenant))?;
    let Some((id, name)) = found else {
        anyhow::bail!("no tenant {tenant:?} (give its id or name)");
    };
    let now = SystemClock.now();
    db.write_blocking(|tx| memesh::plans::store::assign(tx, &book, &id, plan, now))?;
    println!(
        "memesh: tenant {name} ({id}) is on plan {plan}; its quotas apply now, its request rates within seconds on a running server"
    );
    Ok(ExitCode::SUCCESS)
}

fn verify_audit(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let db = open_db(global)?;
    let report = db.read_blocking(memesh::audit::store::verify)?;
    if report.broken.is_empty() {
        println!(
            "memesh: audit log intact: {} rows in {} tenants",
            report.rows, report.tenants
        );
        return Ok(ExitCode::SUCCESS);
    }
    for b in &report.broken {
        println!(
            "memesh: audit chain broken in tenant {} at sequence {} (row {}): {}",
            b.tenant_id, b.seq, b.id, b.reason
        );
    }
    Ok(ExitCode::FAILURE)
}

/// One line per tenant: `tenant sequence hash`. Kept somewhere memesh cannot write (a ticket, a
/// log shipper, a printout), a head proves later that no row up to it was changed or dropped.
fn audit_heads(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let db = open_db(global)?;
    for (tenant, seq, hash) in db.read_blocking(memesh::audit::store::heads)? {
        println!("{tenant} {seq} {hash}");
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut settings = args.settings();
    settings.plans.file = Some(global.plans_path()?);
    if settings.device.public_url.is_none() && !args.listen.ip().is_loopback() {
        tracing::warn!(
            "--listen {} reaches beyond loopback without --public-url: device login builds its \
             verification link from each request's Host header, which a caller chooses; set \
             --public-url to the address people reach this server at",
            args.listen
        );
    }
    // A plans file that does not parse stops the server here, before it serves anything.
    memesh::plans::PlanBook::load(settings.plans.file.as_deref(), settings.plans.rate)?;
    let db = open_db(global)?;
    let clock = Arc::new(SystemClock);
    if let Some(t) = bootstrap::initialize(&db, &spec(&args.owner), clock.now())? {
        announce_new_tenant(&t, args.owner.bootstrap_key_file.as_deref())?;
    } else if args.owner.bootstrap_key.is_some() {
        tracing::info!("MEMESH_BOOTSTRAP_KEY ignored: the data directory is already initialized");
    }
    let Some(_serving) = memesh::hold_data_dir(&global.data_dir)? else {
        anyhow::bail!(
            "another memesh process is using the data directory {} (a server, or `memesh \
             reindex` with no server running); stop it first",
            global.data_dir.display()
        );
    };
    let model = serving_model(&db, &args.model)?;
    tracing::info!(model = model.id, "embedding model");
    let engine = MemoryEngine::open(
        &db,
        model.id,
        // The worker thread runs detached for the life of the process.
        || load_embedder(model, &args.model, true).map(|(embedder, _worker)| embedder),
        EngineConfig {
            index: IndexConfig {
                graph_threshold: args.index.index_graph_threshold as usize,
                ef_search: usize::from(args.index.index_ef_search),
                ..IndexConfig::new(MODEL_DIM)
            },
            snapshot_dir: global.index_dir(),
            snapshot_interval: Duration::from_secs(args.index.snapshot_interval_secs),
        },
    )?;
    let state = AppState::new(db, clock, settings, engine)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let loader = switch_loader(&args.model);
    runtime.block_on(async move {
        memesh::memory::switch::spawn_watcher(state.clone(), loader);
        // Signals are caught from before the server says it listens: a SIGTERM right after
        // that line stops it gracefully, never by the default action.
        let shutdown = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!("listening on http://{addr}");
        memesh::serve(listener, state, shutdown).await?;
        tracing::info!("shut down cleanly");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The model a server uses: the one `--model` names, else the one the data directory's
/// memories were embedded with, else (a new data directory) the multilingual default. A
/// `--model` other than the recorded one is refused at start until `memesh reindex` moves the
/// memories to it.
fn serving_model(db: &Db, args: &ModelArgs) -> anyhow::Result<&'static BundledModel> {
    if let Some(asked) = args.asked()? {
        return Ok(asked);
    }
    let recorded = db.read_blocking(memesh::memory::store::stored_model)?;
    match recorded {
        None => Ok(DEFAULT_MODEL),
        Some(id) => memesh::embed::catalog::by_name(&id).ok_or_else(|| {
            anyhow::anyhow!(
                "this data directory's memories were embedded with {id:?}, which this memesh                  does not bundle; run `memesh reindex --model NAME` with one of: {}",
                memesh::embed::catalog::names()
            )
        }),
    }
}

/// Loads the model; a server (`queries`) also gets the query session `--embed-query-threads`
/// asks for, an operator command does not.
fn load_embedder(
    bundled: &'static BundledModel,
    model: &ModelArgs,
    queries: bool,
) -> anyhow::Result<(memesh::embed::Embedder, memesh::embed::EmbedWorker)> {
    memesh::embed::load_bundled(
        bundled,
        model.model_dir.as_deref(),
        model.ort_lib.as_deref(),
        model.threads(),
        if queries {
            usize::from(model.embed_query_threads)
        } else {
            0
        },
    )
}

/// Loads a model for a switch, configured as the served one (it serves once the switch
/// commits): with a query helper, its bulk session runs at nice 10 (`load_bundled` sees to it),
/// so re-embedding gives the cores to requests; without one, the whole model is loaded on a
/// thread of lower priority (its session's threads and its worker inherit it).
fn switch_loader(args: &ModelArgs) -> memesh::memory::switch::Loader {
    let (ort_lib, threads) = (args.ort_lib.clone(), args.threads());
    let query_threads = usize::from(args.embed_query_threads);
    Arc::new(move |model| {
        let ort_lib = ort_lib.clone();
        std::thread::Builder::new()
            .name("memesh-switch".into())
            .spawn(move || {
                if query_threads == 0 {
                    memesh::lower_thread_priority();
                }
                memesh::embed::load_bundled(model, None, ort_lib.as_deref(), threads, query_threads)
                    .map(|(embedder, _worker)| embedder)
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("loading the model panicked"))?
    })
}

/// `memesh reindex --model NAME`: moves the data directory's memories to another model. With a
/// server running, asks it to (it re-embeds in the background and keeps serving) and shows its
/// progress; with none, does the same work itself. Either way an interrupted switch resumes
/// where it stopped, and the database never holds vectors of two models in one column (see
/// `memory/switch.rs`).
fn reindex(global: &GlobalArgs, model: &ModelArgs) -> anyhow::Result<ExitCode> {
    use memesh::memory::switch::{self, Request};
    let db = open_db(global)?;
    let bundled = model.asked()?.unwrap_or(DEFAULT_MODEL);
    let serving = memesh::hold_data_dir(&global.data_dir)?;
    match db.write_blocking(|tx| switch::request(tx, bundled.id))? {
        Request::AlreadyInUse => {
            println!(
                "memesh: the memories are already embedded with {}",
                bundled.id
            );
            return Ok(ExitCode::SUCCESS);
        }
        Request::Cancelled => {
            println!(
                "memesh: the model switch under way was cancelled; {} stays",
                bundled.id
            );
            return Ok(ExitCode::SUCCESS);
        }
        Request::Started | Request::UnderWay => {}
    }
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("re-embedding with {}", bundled.id));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let switched = if serving.is_none() {
        println!("memesh: a server is running: it re-embeds in the background and keeps serving");
        watch_switch(&db, bundled.id, &bar)?
    } else {
        let (embedder, worker) = load_embedder(bundled, model, false)?;
        let switched = runtime.block_on(async {
            let counters = switch::Counters::default();
            let tick = |c: &switch::Counters| {
                bar.set_length(c.memories.load(std::sync::atomic::Ordering::Relaxed));
                bar.set_position(c.embedded.load(std::sync::atomic::Ordering::Relaxed));
            };
            loop {
                if !switch::embed_missing(&db, &embedder, bundled.id, None, &counters, tick).await?
                {
                    return anyhow::Ok(false);
                }
                let id = bundled.id;
                if db.write(move |tx| switch::finish(tx, id)).await? {
                    return anyhow::Ok(true);
                }
            }
        })?;
        drop(embedder);
        worker.join();
        if switched {
            // The graph snapshot holds the old model's vectors: the next start rebuilds it.
            let index_dir = global.index_dir();
            if index_dir.exists() {
                std::fs::remove_dir_all(&index_dir).with_context(|| {
                    format!("removing the stale graph snapshot {}", index_dir.display())
                })?;
            }
        }
        switched
    };
    if !switched {
        bar.abandon_with_message("cancelled");
        println!(
            "memesh: the switch to {} was cancelled or retargeted",
            bundled.id
        );
        return Ok(ExitCode::FAILURE);
    }
    bar.finish_with_message("re-embedded");
    println!("memesh: the memories are embedded with {} now", bundled.id);
    Ok(ExitCode::SUCCESS)
}

/// Shows a running server's progress on a switch to `to` until it finishes; `false` when it
/// was cancelled or retargeted.
fn watch_switch(db: &Db, to: &str, bar: &indicatif::ProgressBar) -> anyhow::Result<bool> {
    loop {
        match db.read_blocking(memesh::memory::switch::progress)? {
            Some(p) if p.to == to => {
                bar.set_length(p.memories.max(0) as u64);
                bar.set_position(p.embedded.max(0) as u64);
            }
            Some(_) => return Ok(false),
            None => {
                let model = db.read_blocking(memesh::memory::store::stored_model)?;
                return Ok(model.as_deref() == Some(to));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future resolves at the first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received; finishing in-flight requests");
    })
}
