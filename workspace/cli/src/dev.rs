//! `ovc dev`: the all-in-one embedded setup on SQLite, no configuration needed.
//!
//! It creates the data directory, opens and migrates the SQLite store in it, starts
//! workflow workers on the simulated host (snapshots under `DATA_DIR/snapshots`), and
//! follows the event log, printing every event as it is committed. The API server joins
//! this command with its issue; the flags it needs (`--http`, `--grpc`) are not offered
//! before they work.

use crate::tail;
use anyhow::Context;
use clap::Args;
use ovc_store::StoreConfig;
use std::path::PathBuf;

/// Arguments of `ovc dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for the SQLite database (and, later, snapshots).
    #[arg(long, env = "OVC_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    /// Open, migrate, print the status and exit instead of following the log.
    #[arg(long)]
    pub check: bool,
    /// Address of the REST API (loopback by default: `ovc dev` has no authentication).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: std::net::SocketAddr,
}

/// Runs `ovc dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let db = args.data_dir.join("ovc.db");
    let url = format!("sqlite://{}", db.display());
    let store = ovc_store::open(&url, StoreConfig::default())
        .await
        .with_context(|| format!("cannot open {url}"))?;
    store
        .migrate()
        .await
        .context("migrating the embedded store")?;
    let head = store.head_position().await?;
    println!("ovc dev: embedded store ready");
    println!("  database   {url} (SQLite, WAL, synchronous=FULL)");
    println!("  event log  {head} events");
    if args.check {
        return Ok(());
    }
    let worker_args = crate::worker::WorkerArgs {
        database_url: url.clone(),
        pg_schema: None,
        host: "sim".into(),
        artifacts: args.data_dir.join("snapshots").display().to_string(),
        concurrency: 16,
        lease_ms: 5000,
        idle_poll_ms: None,
        name: None,
        workflows: "vcluster".into(),
    };
    let worker = crate::worker::build(store.clone(), &worker_args).await?;
    let worker = tokio::spawn(worker.run(crate::worker::shutdown_signal()));
    if !args.http.ip().is_loopback() {
        anyhow::bail!(
            "--http {} is not a loopback address: ovc dev has no authentication; use 127.0.0.1",
            args.http
        );
    }
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another ovc dev running?)",
                args.http
            )
        })?;
    let http_addr = listener.local_addr().unwrap_or(args.http);
    let host = std::sync::Arc::new(
        ovc_driver::sim::SimHost::connect_from_env(&url, None)
            .await
            .context("connecting the simulated host")?,
    );
    let app = ovc_api::router(
        ovc_api::AppState::new(
            store.clone(),
            std::sync::Arc::new(ovc_workflows::registry()),
            ovc_api::auth::AuthMode::None,
        )
        .with_host(host),
    );
    let http_shutdown = crate::worker::shutdown_signal();
    let http = tokio::spawn(crate::serve::serve_http(listener, app, http_shutdown));
    println!("  REST API   http://{http_addr}");
    println!(
        "  try        curl -s -XPOST http://{http_addr}/v1/vclusters -d '{{\"name\":\"demo\"}}'"
    );
    println!(
        "  workers    16 on the simulated host; snapshots in {}",
        worker_args.artifacts
    );
    println!("  following the event log; Ctrl-C to stop");
    println!("  (another terminal: ovc events tail --database-url {url})");
    println!();
    tail::follow(store, 0, true, false, crate::worker::shutdown_signal()).await?;
    if let Ok(report) = worker.await {
        crate::worker::print_report(&report);
    }
    if let Ok(Err(e)) = http.await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
    Ok(())
}
