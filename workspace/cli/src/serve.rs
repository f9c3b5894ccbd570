//! `ovc serve`: the REST and gRPC APIs only (run workers with `ovc worker`), and
//! `ovc token create`. `serve` requires bearer tokens unless both APIs listen on loopback
//! addresses and it is told `--auth none`.

use anyhow::Context;
use clap::Args;
use ovc_api::auth::{AuthMode, new_token, token_sha256};
use ovc_store::{Role, StoreConfig, TokenRecord};
use std::sync::Arc;
use std::time::Duration;

/// Arguments of `ovc serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "OVC_DATABASE_URL")]
    pub database_url: String,
    /// PostgreSQL schema holding ovc's tables.
    #[arg(long, env = "OVC_PG_SCHEMA")]
    pub pg_schema: Option<String>,
    /// Address of the REST API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: std::net::SocketAddr,
    /// Address of the gRPC API (same auth rules as `--http`).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub grpc: std::net::SocketAddr,
    /// `token` (bearer tokens, see `ovc token create`) or `none` (loopback only).
    #[arg(long, value_parser = ["token", "none"], default_value = "token")]
    pub auth: String,
    /// Requests per second allowed per token (0: unlimited); over it: 429 + Retry-After.
    #[arg(long, env = "OVC_RATE_LIMIT", default_value_t = 100.0)]
    pub rate_limit: f64,
    /// Requests a token may make at once before the rate applies.
    #[arg(long, env = "OVC_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,
    /// Live event feeds (SSE, StreamEvents, WatchOperation) served at once; over it: 429
    /// + Retry-After.
    #[arg(long, env = "OVC_MAX_LIVE_FEEDS", default_value_t = ovc_api::feeds::DEFAULT_MAX_LIVE_FEEDS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_feeds: u32,
}

/// Runs `ovc serve`.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let auth = if args.auth == "none" {
        for (flag, addr) in [("--http", args.http), ("--grpc", args.grpc)] {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "--auth none is only allowed on loopback addresses (got {flag} {addr}); create \
                 tokens with `ovc token create` and use --auth token"
            );
        }
        AuthMode::None
    } else {
        AuthMode::Token
    };
    let config = StoreConfig {
        pg_schema: args.pg_schema.clone(),
        ..StoreConfig::default()
    };
    let store = ovc_store::open(&args.database_url, config)
        .await
        .with_context(|| format!("cannot open {}", crate::redact(&args.database_url)))?;
    // The kubeconfig route reads the host live, through the same driver as the workers.
    let host = Arc::new(
        ovc_driver::sim::SimHost::connect_from_env(&args.database_url, args.pg_schema.as_deref())
            .await
            .context("connecting the simulated host")?,
    );
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {}", args.http))?;
    let addr = listener.local_addr().unwrap_or(args.http);
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc))?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(args.grpc);
    let state = ovc_api::AppState::new(store, Arc::new(ovc_workflows::registry()), auth)
        .with_rate_limit(args.rate_limit, args.rate_burst)
        .with_max_live_feeds(args.max_live_feeds as usize)
        .with_host(host);
    tokio::spawn(state.purger.clone().run(
        state.store.clone(),
        ovc_store::housekeeping::PURGE_EVERY,
        crate::worker::shutdown_signal(),
    ));
    let grpc_routes = ovc_api::grpc::grpc_router(state.clone()).context("gRPC services")?;
    let app = ovc_api::router(state);
    eprintln!("ovc serve: REST API on http://{addr} (auth: {})", args.auth);
    eprintln!("ovc serve: gRPC API on {grpc_addr} (auth: {})", args.auth);
    let stop = crate::worker::shutdown_signal();
    tokio::try_join!(
        serve_http(listener, app, stop.clone()),
        serve_grpc(grpc_listener, grpc_routes, stop)
    )?;
    Ok(())
}

/// How long a stopping server waits for open requests before it closes them. Live event
/// feeds (SSE, `StreamEvents`, `WatchOperation`) never end by themselves; clients resume
/// them by position.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Waits until `stop` turns true.
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Serves `app` until `stop` turns true, then lets open requests finish for at most
/// [`SHUTDOWN_GRACE`].
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let server = axum::serve(listener, app).with_graceful_shutdown(stopped(stop.clone()));
    tokio::select! {
        r = server => r.context("HTTP server"),
        () = async move {
            stopped(stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::info!("HTTP server: closed the connections still open after the grace period");
            Ok(())
        }
    }
}

/// Serves the gRPC `routes` until `stop` turns true, then lets open calls finish for at
/// most [`SHUTDOWN_GRACE`].
pub async fn serve_grpc(
    listener: tokio::net::TcpListener,
    routes: ovc_api::grpc::Routes,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let server = ovc_api::grpc::serve(listener, routes, stopped(stop.clone()));
    tokio::select! {
        r = server => r.context("gRPC server"),
        () = async move {
            stopped(stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::info!("gRPC server: closed the calls still open after the grace period");
            Ok(())
        }
    }
}

/// Arguments of `ovc token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "OVC_DATABASE_URL")]
    pub database_url: String,
    /// PostgreSQL schema holding ovc's tables.
    #[arg(long, env = "OVC_PG_SCHEMA")]
    pub pg_schema: Option<String>,
    /// The project the token may see and touch.
    #[arg(long)]
    pub project: String,
    /// viewer (read), operator (read and run operations) or admin.
    #[arg(long, value_parser = ["viewer", "operator", "admin"], default_value = "operator")]
    pub role: String,
    /// A name for people: who or what uses the token.
    #[arg(long, default_value = "cli")]
    pub name: String,
}

/// Runs `ovc token create`: prints the token once; only its SHA-256 is stored.
pub async fn create_token(args: TokenCreateArgs) -> anyhow::Result<()> {
    let config = StoreConfig {
        pg_schema: args.pg_schema.clone(),
        ..StoreConfig::default()
    };
    let store = ovc_store::open(&args.database_url, config).await?;
    let project = args
        .project
        .parse()
        .map_err(|e: ovc_types::name::NameError| anyhow::anyhow!("{e}"))?;
    let role = Role::parse(&args.role).context("role")?;
    let token = new_token();
    store
        .create_token(
            &TokenRecord {
                id: uuid::Uuid::now_v7(),
                name: args.name.clone(),
                project,
                role,
            },
            &token_sha256(&token),
        )
        .await?;
    eprintln!(
        "token for project {} ({}); shown once, store it now:",
        args.project, args.role
    );
    println!("{token}");
    Ok(())
}
