//! `ovc dev`: the all-in-one embedded setup on SQLite, no configuration needed.
//!
//! It creates the data directory, opens and migrates the SQLite store in it (or the
//! database of `--database-url`, e.g. a PostgreSQL to try the production backend), starts
//! workflow workers on the simulated host (snapshots under `DATA_DIR/snapshots`), and
//! follows the event log, printing every event as it is committed. It serves the REST
//! API (`--http`) and the gRPC API (`--grpc`), both on loopback only (no authentication).

use crate::tail;
use anyhow::Context;
use clap::Args;
use ovc_store::StoreConfig;
use std::path::PathBuf;

/// Arguments of `ovc dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for the SQLite database and the snapshots.
    #[arg(long, env = "OVC_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    /// Use this database instead of DATA_DIR/ovc.db (sqlite://PATH or postgres://...).
    #[arg(long, env = "OVC_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Open, migrate, print the status and exit instead of following the log.
    #[arg(long)]
    pub check: bool,
    /// Address of the REST API (loopback by default: `ovc dev` has no authentication).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: std::net::SocketAddr,
    /// Snapshot storage (default: DATA_DIR/snapshots): a directory, file:///DIR,
    /// s3://BUCKET/PREFIX, gcs://BUCKET/PREFIX or azblob://CONTAINER/PREFIX, as for
    /// `ovc worker --artifacts`; credentials come from the environment.
    #[arg(long, env = "OVC_ARTIFACTS")]
    pub artifacts: Option<String>,
    /// Address of the gRPC API (loopback only, like `--http`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub grpc: std::net::SocketAddr,
    /// The host driver: `sim` (simulated) or `kube` (the cluster of KUBECONFIG).
    #[arg(long, env = "OVC_HOST", value_parser = crate::worker::HOSTS, default_value = "sim")]
    pub host: String,
    /// With `--host kube`: the named host clusters, NAME=CONTEXT, as for `ovc worker`.
    #[arg(long = "kube-host", env = "OVC_KUBE_HOSTS", value_delimiter = ',', value_parser = crate::hosts::parse_kube_host)]
    pub kube_hosts: Vec<crate::hosts::KubeHostArg>,
    /// Live event feeds (SSE, StreamEvents, WatchOperation) served at once; over it: 429
    /// + Retry-After.
    #[arg(long, env = "OVC_MAX_LIVE_FEEDS", default_value_t = ovc_api::feeds::DEFAULT_MAX_LIVE_FEEDS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_feeds: u32,
    /// How long a step may wait (readiness and the like) before it fails and the
    /// operation compensates (as `ovc worker --ready-timeout`).
    #[arg(long, env = "OVC_READY_TIMEOUT", default_value = "10m", value_parser = crate::duration::parse)]
    pub ready_timeout: std::time::Duration,
    /// How often the snapshot inventory runs (`off` to disable), as for `ovc worker`.
    #[arg(long, env = "OVC_INVENTORY_EVERY", default_value = "1h", value_parser = crate::worker::parse_inventory_every)]
    pub inventory_every: ::std::option::Option<std::time::Duration>,
    /// With `--host sim`: keep the backing store of vclusters created from now on in this
    /// etcd (`http://HOST:PORT`, `,`-separated), as for `ovc worker --sim-etcd`.
    #[arg(long = "sim-etcd", env = "OVC_SIM_ETCD", value_delimiter = ',', value_parser = crate::worker::parse_sim_etcd)]
    pub sim_etcd: Vec<String>,
    /// The vcluster chart version a create without `spec.vcluster_version` installs.
    #[arg(long, env = "OVC_VCLUSTER_VERSION", default_value = ovc_driver::DEFAULT_VCLUSTER_VERSION, value_parser = crate::worker::parse_chart_version)]
    pub vcluster_version: String,
}

/// Runs `ovc dev`.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let url = match &args.database_url {
        Some(u) => u.clone(),
        None => format!("sqlite://{}", args.data_dir.join("ovc.db").display()),
    };
    let store = ovc_store::open(&url, StoreConfig::default())
        .await
        .with_context(|| format!("cannot open {}", crate::redact(&url)))?;
    store
        .migrate()
        .await
        .context("migrating the embedded store")?;
    let head = store.head_position().await?;
    println!("ovc dev: embedded store ready");
    let kind = match store.backend() {
        ovc_store::Backend::Sqlite => "SQLite, WAL, synchronous=FULL",
        ovc_store::Backend::Postgres => "PostgreSQL",
    };
    println!("  database   {} ({kind})", crate::redact(&url));
    println!("  event log  {head} events");
    if args.check {
        return Ok(());
    }
    let worker_args = crate::worker::WorkerArgs {
        database_url: url.clone(),
        pg_schema: None,
        vcluster_version: args.vcluster_version.clone(),
        host: args.host.clone(),
        kube_hosts: args.kube_hosts.clone(),
        artifacts: args
            .artifacts
            .clone()
            .unwrap_or_else(|| args.data_dir.join("snapshots").display().to_string()),
        concurrency: 16,
        lease_ms: 5000,
        idle_poll_ms: None,
        name: None,
        ready_timeout: args.ready_timeout,
        inventory_every: args.inventory_every,
        workflows: "vcluster".into(),
        traffic_file: None,
        pg_max_connections: 16,
        sim_etcd: args.sim_etcd.clone(),
    };
    // One driver for the workers and the kubeconfig route.
    let host =
        crate::worker::host(&args.host, &args.kube_hosts, &args.sim_etcd, &url, None).await?;
    let host_names = host.names.join(", ");
    let worker = crate::worker::build_with(
        store.clone(),
        &worker_args,
        std::sync::Arc::new(ovc_types::time::SystemClock),
        host.clone(),
    )
    .await?;
    let worker = tokio::spawn(worker.run(crate::worker::shutdown_signal()));
    for (flag, addr) in [("--http", args.http), ("--grpc", args.grpc)] {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "{flag} {addr} is not a loopback address: ovc dev has no authentication; use 127.0.0.1"
            );
        }
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
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another ovc dev running?)",
                args.grpc
            )
        })?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(args.grpc);
    let state = ovc_api::AppState::new(
        store.clone(),
        std::sync::Arc::new(
            host.registry(ovc_workflows::registry())
                .with_default_vcluster_version(args.vcluster_version.clone()),
        ),
        ovc_api::auth::AuthMode::None,
    )
    .with_max_live_feeds(args.max_live_feeds as usize)
    .with_host(host.driver);
    // The one purge of this process (its workers and API share the store).
    tokio::spawn(state.purger.clone().run(
        store.clone(),
        ovc_store::housekeeping::PURGE_EVERY,
        crate::worker::shutdown_signal(),
    ));
    let grpc_routes = ovc_api::grpc::grpc_router(state.clone()).context("gRPC services")?;
    let app = ovc_api::router(state);
    let stop = crate::worker::shutdown_signal();
    let http = tokio::spawn(async move {
        tokio::try_join!(
            crate::serve::serve_http(listener, app, stop.clone()),
            crate::serve::serve_grpc(grpc_listener, grpc_routes, None, stop)
        )
    });
    println!("  REST API   http://{http_addr}");
    println!("  gRPC API   {grpc_addr}");
    println!("  OpenAPI    http://{http_addr}/openapi.json   metrics: http://{http_addr}/metrics");
    println!("  try        ovc vc create demo --server http://{http_addr} --wait");
    println!(
        "  try        curl -s -XPOST http://{http_addr}/v1/vclusters -d '{{\"name\":\"demo\"}}'"
    );
    println!("  try        grpcurl -plaintext {grpc_addr} list");
    println!(
        "  workers    16 on the {} host (hosts: {host_names}); snapshots in {}",
        if args.host == "kube" {
            "kube (KUBECONFIG)"
        } else {
            "simulated"
        },
        ovc_snapshots::object_url::redact(&worker_args.artifacts)
    );
    if !args.sim_etcd.is_empty() {
        println!(
            "  backing    new vclusters keep their backing store in etcd {}",
            args.sim_etcd.join(",")
        );
    }
    println!("  following the event log; Ctrl-C to stop");
    println!("  (another terminal: ovc events tail --follow --server http://{http_addr})");
    println!();
    tail::follow(store, 0, true, false, crate::worker::shutdown_signal()).await?;
    if let Ok(report) = worker.await {
        crate::worker::print_report(&report);
    }
    if let Ok(Err(e)) = http.await {
        tracing::error!(error = %e, "API server stopped");
    }
    Ok(())
}
