//! `ovc serve`: the REST and gRPC APIs only (run workers with `ovc worker`), and
//! `ovc token create|list|revoke`. `serve` requires bearer tokens unless both APIs listen on loopback
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
    #[arg(long, env = "OVC_DATABASE_URL", hide_env_values = true)]
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
    /// The host the kubeconfig route reads: `sim` or `kube` (the cluster of KUBECONFIG).
    #[arg(long, env = "OVC_HOST", value_parser = crate::worker::HOSTS, default_value = "sim")]
    pub host: String,
    /// With `--host kube`: the named host clusters, NAME=CONTEXT, as for `ovc worker`
    /// (give the API the same hosts as the workers: a create naming another is refused).
    #[arg(long = "kube-host", env = "OVC_KUBE_HOSTS", value_delimiter = ',', value_parser = crate::hosts::parse_kube_host)]
    pub kube_hosts: Vec<crate::hosts::KubeHostArg>,
    /// `token` (bearer tokens, see `ovc token create`) or `none` (loopback only).
    #[arg(long, value_parser = ["token", "none"], default_value = "token")]
    pub auth: String,
    /// Requests per second allowed per token (0: unlimited); over it: 429 + Retry-After.
    #[arg(long, env = "OVC_RATE_LIMIT", default_value_t = 100.0)]
    pub rate_limit: f64,
    /// Requests a token may make at once before the rate applies.
    #[arg(long, env = "OVC_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,
    /// PEM certificate chain: serve both APIs over TLS (https://, gRPC over TLS); needs
    /// --tls-key.
    #[arg(long, env = "OVC_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "OVC_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Live event feeds (SSE, StreamEvents, WatchOperation) served at once; over it: 429
    /// + Retry-After.
    #[arg(long, env = "OVC_MAX_LIVE_FEEDS", default_value_t = ovc_api::feeds::DEFAULT_MAX_LIVE_FEEDS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_feeds: u32,
    /// The vcluster chart version a create without `spec.vcluster_version` installs.
    #[arg(long, env = "OVC_VCLUSTER_VERSION", default_value = ovc_driver::DEFAULT_VCLUSTER_VERSION, value_parser = crate::worker::parse_chart_version)]
    pub vcluster_version: String,
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
    let host = crate::worker::host_driver(
        &args.host,
        &args.kube_hosts,
        &args.database_url,
        args.pg_schema.as_deref(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {}", args.http))?;
    let addr = listener.local_addr().unwrap_or(args.http);
    let grpc_listener = tokio::net::TcpListener::bind(args.grpc)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc))?;
    let grpc_addr = grpc_listener.local_addr().unwrap_or(args.grpc);
    let registry = Arc::new(
        host.registry(ovc_workflows::registry())
            .with_default_vcluster_version(args.vcluster_version.clone()),
    );
    let state = ovc_api::AppState::new(store, registry, auth)
        .with_rate_limit(args.rate_limit, args.rate_burst)
        .with_max_live_feeds(args.max_live_feeds as usize)
        .with_host(host.driver);
    tokio::spawn(state.purger.clone().run(
        state.store.clone(),
        ovc_store::housekeeping::PURGE_EVERY,
        crate::worker::shutdown_signal(),
    ));
    let grpc_routes = ovc_api::grpc::grpc_router(state.clone()).context("gRPC services")?;
    let app = ovc_api::router(state);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
        _ => None,
    };
    let (scheme, grpc_tls) = match tls {
        Some(_) => ("https", " over TLS"),
        None => ("http", ""),
    };
    eprintln!(
        "ovc serve: REST API on {scheme}://{addr} (auth: {})",
        args.auth
    );
    eprintln!(
        "ovc serve: gRPC API on {grpc_addr}{grpc_tls} (auth: {})",
        args.auth
    );
    let stop = crate::worker::shutdown_signal();
    match tls {
        Some((cert, key)) => {
            let config = crate::tls::server_config(cert, key)?;
            let grpc_identity = tonic::transport::Identity::from_pem(
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
                std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
            );
            let listener = crate::tls::TlsListener::new(listener, config);
            tokio::try_join!(
                serve_http(listener, app, stop.clone()),
                serve_grpc(grpc_listener, grpc_routes, Some(grpc_identity), stop)
            )?;
        }
        None => {
            tokio::try_join!(
                serve_http(listener, app, stop.clone()),
                serve_grpc(grpc_listener, grpc_routes, None, stop)
            )?;
        }
    }
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
pub async fn serve_http<L>(
    listener: L,
    app: axum::Router,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
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
    tls: Option<tonic::transport::Identity>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let server = ovc_api::grpc::serve_with_tls(listener, routes, tls, stopped(stop.clone()));
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

/// Where the commands that work on the database directly (`ovc token`, `ovc snapshot
/// import`) find the store.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "OVC_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// PostgreSQL schema holding ovc's tables.
    #[arg(long, env = "OVC_PG_SCHEMA")]
    pub pg_schema: Option<String>,
}

impl DatabaseArgs {
    /// Opens the store (not migrated here: the server or `ovc migrate` does that).
    pub async fn open(&self) -> anyhow::Result<Arc<dyn ovc_store::Store>> {
        let config = StoreConfig {
            pg_schema: self.pg_schema.clone(),
            ..StoreConfig::default()
        };
        ovc_store::open(&self.database_url, config)
            .await
            .with_context(|| format!("cannot open {}", crate::redact(&self.database_url)))
    }
}

/// Arguments of `ovc token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub store: DatabaseArgs,
    /// The project the token may see and touch.
    #[arg(long)]
    pub project: String,
    /// viewer (read, not kubeconfigs), operator (also run operations and read
    /// kubeconfigs) or admin (also delete vclusters and snapshots). Least privilege
    /// unless told.
    #[arg(long, value_parser = ["viewer", "operator", "admin"], default_value = "viewer")]
    pub role: String,
    /// A name for people: who or what uses the token.
    #[arg(long, default_value = "cli")]
    pub name: String,
    /// Refuse the token after this long: e.g. 90s, 30m, 12h, 30d, 4w (default: never).
    #[arg(long)]
    pub expires_in: Option<String>,
}

/// Runs `ovc token create`: prints the token once; only its SHA-256 is stored.
pub async fn create_token(args: TokenCreateArgs) -> anyhow::Result<()> {
    let project = args
        .project
        .parse()
        .map_err(|e: ovc_types::name::NameError| anyhow::anyhow!("--project: {e}"))?;
    let role = Role::parse(&args.role).context("role")?;
    let expires_in = args
        .expires_in
        .as_deref()
        .map(|s| crate::duration::parse_chrono(s).map_err(|e| anyhow::anyhow!("--expires-in {e}")))
        .transpose()?;
    let store = args.store.open().await?;
    let now = store.clock().now();
    let expires_at = expires_in
        .map(|d| {
            now.checked_add_signed(d)
                .context("--expires-in is too far in the future")
        })
        .transpose()?;
    let token = new_token();
    let record = TokenRecord {
        id: uuid::Uuid::now_v7(),
        name: args.name.clone(),
        project,
        role,
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    store.create_token(&record, &token_sha256(&token)).await?;
    let until = expires_at.map_or_else(
        || "never expires".to_string(),
        |t| format!("expires {}", t.to_rfc3339()),
    );
    eprintln!(
        "token {} for project {} ({}, {until}); shown once, store it now:",
        record.id, args.project, args.role
    );
    println!("{token}");
    Ok(())
}

/// Arguments of `ovc token list`.
#[derive(Debug, Args)]
pub struct TokenListArgs {
    #[command(flatten)]
    pub store: DatabaseArgs,
    /// Only this project's tokens.
    #[arg(long)]
    pub project: Option<String>,
    /// `table` or `json` (one array; never the secrets, which are not stored).
    #[arg(short = 'o', long, value_parser = ["table", "json"], default_value = "table")]
    pub output: String,
}

/// Runs `ovc token list`: id, name, project, role, created, expires, revoked.
pub async fn list_tokens(args: TokenListArgs) -> anyhow::Result<()> {
    let project: Option<ovc_types::ProjectName> = args
        .project
        .as_deref()
        .map(|p| {
            p.parse()
                .map_err(|e: ovc_types::name::NameError| anyhow::anyhow!("--project: {e}"))
        })
        .transpose()?;
    let store = args.store.open().await?;
    let tokens = store.list_tokens(project.as_ref()).await?;
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&tokens)?);
        return Ok(());
    }
    let time = |t: Option<chrono::DateTime<chrono::Utc>>, none: &str| {
        t.map_or_else(
            || none.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        )
    };
    println!(
        "{:<36}  {:<16}  {:<16}  {:<8}  {:<20}  {:<20}  REVOKED",
        "ID", "NAME", "PROJECT", "ROLE", "CREATED", "EXPIRES"
    );
    for t in tokens {
        println!(
            "{:<36}  {:<16}  {:<16}  {:<8}  {:<20}  {:<20}  {}",
            t.id,
            t.name,
            t.project,
            t.role.as_str(),
            time(Some(t.created_at), "-"),
            time(t.expires_at, "never"),
            time(t.revoked_at, "-"),
        );
    }
    Ok(())
}

/// Arguments of `ovc token revoke`.
#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    #[command(flatten)]
    pub store: DatabaseArgs,
    /// The token's id (from `ovc token list`).
    pub id: String,
}

/// Runs `ovc token revoke ID`: the token is refused (UNAUTHENTICATED) from now on.
pub async fn revoke_token(args: TokenRevokeArgs) -> anyhow::Result<()> {
    let id = uuid::Uuid::parse_str(&args.id)
        .with_context(|| format!("{:?} is not a token id (see `ovc token list`)", args.id))?;
    let store = args.store.open().await?;
    let Some(t) = store.revoke_token(id).await? else {
        anyhow::bail!("no token {id} (see `ovc token list`)");
    };
    let at = t.revoked_at.map(|t| t.to_rfc3339()).unwrap_or_default();
    println!(
        "token {id} ({}, {}) revoked at {at}",
        t.project,
        t.role.as_str()
    );
    Ok(())
}
