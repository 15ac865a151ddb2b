//! The `memesh` binary: parse the command line, set up logging, open the data directory, and
//! serve (or run an operator command).

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use memesh::bootstrap::{self, NewTenant, TenantSpec};
use memesh::clock::{Clock, SystemClock};
use memesh::config::{
    AuditCommand, Cli, Command, GlobalArgs, LogFormat, OwnerArgs, ServeArgs, TenantCommand,
};
use memesh::db::Db;
use memesh::state::AppState;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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

fn open_db(global: &GlobalArgs) -> anyhow::Result<Db> {
    Db::open(&global.database_path())
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
            print_new_tenant(&t);
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
    print_new_tenant(&t);
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

fn serve(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let db = open_db(global)?;
    let clock = Arc::new(SystemClock);
    if let Some(t) = bootstrap::initialize(&db, &spec(&args.owner), clock.now())? {
        print_new_tenant(&t);
    } else if args.owner.bootstrap_key.is_some() {
        tracing::info!("MEMESH_BOOTSTRAP_KEY ignored: the data directory is already initialized");
    }
    let state = AppState::new(db, clock, args.settings());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!("listening on http://{addr}");
        memesh::serve(listener, state, shutdown_signal()).await?;
        tracing::info!("shut down cleanly");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
