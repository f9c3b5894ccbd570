//! `ovc`: the one binary of open-vcluster-api.
//!
//! Today it runs the embedded store with workers on the simulated host (`ovc dev`),
//! workers alone (`ovc worker`), migrations (`ovc migrate`), the event log
//! (`ovc events tail`) and benchmarks (`ovc bench store`). The API server and the client
//! commands join as their issue lands.

mod bench;
mod bench_api;
mod bench_feeds;
mod bench_inflight;
mod bench_workflows;
mod client;
mod dev;
mod duration;
mod hosts;
mod serve;
mod snapshot_import;
mod snapshot_objects;
mod tail;
mod telemetry;
mod tls;
mod worker;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ovc_store::StoreConfig;
use std::path::PathBuf;

/// open-vcluster-api: a VM-style API for virtual Kubernetes clusters, run as durable
/// event-sourced workflows.
#[derive(Debug, Parser)]
#[command(name = "ovc", version, about, long_about = None)]
struct Cli {
    /// Log lines on stderr: `text`, or `json` (one object per line, with the trace_id and
    /// span_id of the span it was logged in). Which lines: OVC_LOG (default `warn`).
    #[arg(long, global = true, env = "OVC_LOG_FORMAT", value_enum, default_value_t = telemetry::LogFormat::Text)]
    log_format: telemetry::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// All in one: REST + gRPC APIs, workers and the simulated host on SQLite under --data-dir; follows the event log.
    #[command(after_help = TRACING_HELP)]
    Dev(dev::DevArgs),
    /// Run workflow workers only (several processes may share one PostgreSQL).
    #[command(after_help = TRACING_HELP)]
    Worker(worker::WorkerArgs),
    /// Serve the REST and gRPC APIs only (bearer tokens required unless --auth none on loopback).
    #[command(after_help = TRACING_HELP)]
    Serve(serve::ServeArgs),
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Apply database migrations (SQLite or PostgreSQL) and exit.
    Migrate {
        /// sqlite://PATH or postgres://USER@HOST/DB.
        #[arg(long, env = "OVC_DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// vclusters on a running server (`--server`, `OVC_SERVER`).
    Vc {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        command: client::VcCommand,
    },
    /// Operations on a running server.
    Ops {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        command: client::OpsCommand,
    },
    /// Snapshots on a running server (and `import`, on the database and storage).
    Snapshot {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        command: SnapshotCli,
    },
    /// Events of the log (the progress feed).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// `ovc snapshot ...`.
#[derive(Debug, Subcommand)]
enum SnapshotCli {
    #[command(flatten)]
    Server(client::SnapshotCommand),
    /// Register artifacts of the snapshot storage whose index entries were lost, from
    /// their manifests (works on the database and the storage directly, like `ovc token`;
    /// honours --project and -o json). Exit 1 when a manifest was refused.
    Import(snapshot_import::ImportArgs),
    /// List the objects a snapshot holds, from its per-object export in the snapshot
    /// storage (`--artifacts`; checksum-verified); `--kind`, `--namespace` filter.
    Objects(snapshot_objects::ObjectsArgs),
    /// Print one object of a snapshot (KIND/NAMESPACE/NAME or KIND/NAME) as YAML (`-o
    /// json`: JSON), ready to re-apply by hand; exit 1 when there is no such object.
    Object(snapshot_objects::ObjectArgs),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token for one project and role (default viewer); prints it once.
    Create(serve::TokenCreateArgs),
    /// List tokens: id, name, project, role, created, expires, revoked (never secrets).
    List(serve::TokenListArgs),
    /// Revoke a token by id: it is refused from now on.
    Revoke(serve::TokenRevokeArgs),
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print events after a position; with --follow, keep printing new ones.
    Tail(tail::TailArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Appends/s (1 and 8 writers), runs/s (enqueue+claim+complete), tail throughput.
    Store(bench::StoreBenchArgs),
    /// Workflows/s, steps/s, pickup latency and kill -9 recovery with worker processes.
    Workflows(bench_workflows::WorkflowBenchArgs),
    /// REST accept latency at fixed request rates, and create -> RUNNING time.
    Api(bench_api::ApiBenchArgs),
    /// Server RSS and create -> RUNNING time with many live SSE followers.
    Feeds(bench_feeds::FeedsBenchArgs),
    /// Worker RSS and check-in cost with 10,000 operations waiting on a slow host.
    Inflight(bench_inflight::InflightBenchArgs),
}

/// The tracing part of the help of `ovc dev`, `ovc serve` and `ovc worker`.
const TRACING_HELP: &str = "\
Tracing: every API request, operation run and step attempt is a span; the request's W3C \
traceparent (header or gRPC metadata, else a new trace) is stored with the command, and \
the worker running the operation continues that trace, across processes and crashes.
  OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:4317   export spans over OTLP/gRPC (nothing is exported otherwise)
  OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER[_ARG], OTEL_BSP_SCHEDULE_DELAY,
  OTEL_EXPORTER_OTLP_HEADERS/_TIMEOUT/_INSECURE and their _TRACES_ forms are honoured;
  an OTEL_* setting ovc cannot honour (e.g. OTEL_EXPORTER_OTLP_PROTOCOL=http/json, compression,
  TLS files, metrics or logs exporters) stops it at start.
Logs: OVC_LOG (filter, default warn), --log-format json (lines carry trace_id and span_id).";

/// Where `ovc dev` keeps its data unless told otherwise.
pub(crate) fn default_data_dir() -> PathBuf {
    PathBuf::from(".ovc")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The long-running commands trace (and export over OTLP when OTEL_* says so).
    let traced = match &cli.command {
        Command::Dev(_) => Some("dev"),
        Command::Worker(_) => Some("worker"),
        Command::Serve(_) => Some("serve"),
        _ => None,
    };
    let telemetry = telemetry::init(cli.log_format, traced)?;
    tls::install_provider();
    let result = run(cli.command).await;
    telemetry.shutdown().await;
    result
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Dev(args) => dev::run(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Vc { conn, command } => std::process::exit(client::vc(conn, command).await.code()),
        Command::Ops { conn, command } => {
            std::process::exit(client::ops(conn, command).await.code())
        }
        Command::Snapshot {
            conn,
            command: SnapshotCli::Server(command),
        } => std::process::exit(client::snapshot(conn, command).await.code()),
        Command::Snapshot {
            conn,
            command: SnapshotCli::Import(args),
        } => std::process::exit(
            snapshot_import::run(args, conn.project, conn.output == "json").await?,
        ),
        Command::Snapshot {
            conn,
            command: SnapshotCli::Objects(args),
        } => std::process::exit(
            snapshot_objects::list(args, conn.project, conn.output == "json").await?,
        ),
        Command::Snapshot {
            conn,
            command: SnapshotCli::Object(args),
        } => std::process::exit(
            snapshot_objects::get(args, conn.project, conn.output == "json").await?,
        ),
        Command::Serve(args) => serve::run(args).await,
        Command::Token { command } => match command {
            TokenCommand::Create(args) => serve::create_token(args).await,
            TokenCommand::List(args) => serve::list_tokens(args).await,
            TokenCommand::Revoke(args) => serve::revoke_token(args).await,
        },
        Command::Migrate { database_url } => {
            let store = ovc_store::open(&database_url, StoreConfig::default())
                .await
                .with_context(|| format!("cannot open {}", redact(&database_url)))?;
            store.migrate().await.context("migration failed")?;
            // `ovc_submit` answers from this build's registry (workers rewrite it too).
            let registry = ovc_workflows::registry();
            store
                .sync_call_rules(&ovc_store::RuleTables::of(&registry, registry.kinds()))
                .await
                .context("writing the SQL call rules failed")?;
            println!(
                "migrations applied to {} ({:?}); event log head at position {}",
                redact(&database_url),
                store.backend(),
                store.head_position().await?
            );
            Ok(())
        }
        Command::Events {
            command: EventsCommand::Tail(args),
        } => std::process::exit(tail::run(args).await?),
        Command::Bench {
            command: BenchCommand::Store(args),
        } => bench::run_store(args).await,
        Command::Bench {
            command: BenchCommand::Workflows(args),
        } => bench_workflows::run(args).await,
        Command::Bench {
            command: BenchCommand::Api(args),
        } => bench_api::run(args).await,
        Command::Bench {
            command: BenchCommand::Feeds(args),
        } => bench_feeds::run(args).await,
        Command::Bench {
            command: BenchCommand::Inflight(args),
        } => bench_inflight::run(args).await,
    }
}

/// The URL without its password, for printing.
pub(crate) fn redact(url: &str) -> String {
    ovc_store::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://ovc:secret@db:5432/ovc"),
            "postgres://ovc:***@db:5432/ovc"
        );
        assert_eq!(redact("postgres://ovc@db/ovc"), "postgres://ovc@db/ovc");
        assert_eq!(redact("sqlite://.ovc/ovc.db"), "sqlite://.ovc/ovc.db");
        assert_eq!(
            redact("postgres://ovc:p@ss@db/ovc?sslmode=require"),
            "postgres://ovc:***@db/ovc?sslmode=require"
        );
        assert_eq!(
            redact("postgres://db/ovc?user=ovc&password=secret"),
            "postgres://db/ovc?user=ovc&password=***"
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
