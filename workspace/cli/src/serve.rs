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
}

/// How long `serve` lets calls in flight (e.g. live event streams, which never end by
/// themselves) finish after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {}", args.http))?;
    let addr = listener.local_addr().unwrap_or(args.http);
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc))?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(args.grpc);
    let state = ovc_api::AppState::new(store, Arc::new(ovc_workflows::registry()), auth);
    let grpc_routes = ovc_api::grpc::grpc_router(state.clone()).context("gRPC services")?;
    let app = ovc_api::router(state);
    eprintln!("ovc serve: REST API on http://{addr} (auth: {})", args.auth);
    eprintln!("ovc serve: gRPC API on {grpc_addr} (auth: {})", args.auth);
    let stop = crate::worker::shutdown_signal();
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let rest = async {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped(stop.clone()))
            .await
            .context("HTTP server")
    };
    let grpc = async {
        ovc_api::grpc::serve(grpc_listener, grpc_routes, stopped(stop.clone()))
            .await
            .context("gRPC server")
    };
    let grace = async {
        stopped(stop.clone()).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = async { tokio::try_join!(rest, grpc) } => { r?; }
        () = grace => {
            eprintln!("ovc serve: calls still open {SHUTDOWN_GRACE:?} after the signal; stopping");
        }
    }
    Ok(())
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
