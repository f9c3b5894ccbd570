//! `ovc worker`: runs workflows only. Several worker processes on one PostgreSQL share the
//! work; each claims runs with a lease, so a killed worker's runs are taken over by the
//! others within a lease period. SIGTERM/SIGINT stop it gracefully.

use anyhow::Context;
use clap::Args;
use ovc_driver::sim::SimHost;
use ovc_engine::executor::{Executor, RetryPolicy};
use ovc_engine::services::Services;
use ovc_engine::worker::{Worker, WorkerOptions, WorkerReport, default_owner};
use ovc_snapshots::OpendalArtifacts;
use ovc_store::{Store, StoreConfig};
use ovc_types::time::{RandomIds, SystemClock};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Arguments of `ovc worker`.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "OVC_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// PostgreSQL schema holding ovc's tables (default: the search path).
    #[arg(long, env = "OVC_PG_SCHEMA")]
    pub pg_schema: Option<String>,
    /// The host driver. `sim` is the simulated host (knobs: OVC_SIM_LATENCY_MS,
    /// OVC_SIM_READY_MS, OVC_SIM_FAULTS); the Kubernetes driver arrives later.
    #[arg(long, value_parser = ["sim"], default_value = "sim")]
    pub host: String,
    /// Snapshot storage: a directory, file:///DIR, s3://BUCKET/PREFIX, gcs://BUCKET/PREFIX,
    /// azblob://CONTAINER/PREFIX (options in the query, e.g. ?region=&endpoint=;
    /// credentials from the environment, never in the URL) or memory://.
    #[arg(long, env = "OVC_ARTIFACTS", default_value = ".ovc/snapshots")]
    pub artifacts: String,
    /// Runs executed at once by this process.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Lease length in milliseconds (renewed every third of it).
    #[arg(long, default_value_t = 5000)]
    pub lease_ms: u64,
    /// Longest idle wait between claim attempts, in milliseconds. PostgreSQL wakes idle
    /// workers with NOTIFY; SQLite can only wake workers of the same process, so other
    /// processes see new work when they poll (default: 50 on SQLite, 500 on PostgreSQL).
    #[arg(long)]
    pub idle_poll_ms: Option<u64>,
    /// Worker name (lease owner); default `<host>-<pid>-<random>`.
    #[arg(long)]
    pub name: Option<String>,
    /// How long a step may wait (for the control plane to be ready, pods to go, ...),
    /// from its first start, before it fails and the operation compensates: `600s`,
    /// `10m`, `1h`, `500ms`.
    #[arg(long, env = "OVC_READY_TIMEOUT", default_value = "10m", value_parser = parse_ready_timeout)]
    pub ready_timeout: Duration,
    /// Which workflows to run: `vcluster` (the product) or `bench` (the five-step
    /// benchmark workflow, for `ovc bench workflows`).
    #[arg(long, value_parser = ["vcluster", "bench"], default_value = "vcluster", hide = true)]
    pub workflows: String,
}

/// Parses `--ready-timeout`: a positive whole number with a unit (`ms`, `s`, `m`, `h`).
pub fn parse_ready_timeout(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: use a positive duration such as 600s, 10m, 1h or 500ms");
    let at = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(at);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

/// Builds a worker on `store` from the arguments.
pub async fn build(store: Arc<dyn Store>, args: &WorkerArgs) -> anyhow::Result<Worker> {
    let sim = SimHost::connect_from_env(&args.database_url, args.pg_schema.as_deref())
        .await
        .context("connecting the simulated host")?;
    let artifacts = OpendalArtifacts::from_url(&args.artifacts).with_context(|| {
        format!(
            "opening snapshot storage {}",
            ovc_snapshots::object_url::redact(&args.artifacts)
        )
    })?;
    let exec = Executor {
        store,
        registry: Arc::new(if args.workflows == "bench" {
            ovc_workflows::bench_registry()
        } else {
            ovc_workflows::registry()
        }),
        driver: Arc::new(sim),
        services: Arc::new(Services {
            artifacts: Arc::new(artifacts),
        }),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        retry: RetryPolicy::default(),
        owner: String::new(),
        repeat_steps: false,
        max_step_timeout: None,
        ready_timeout: args.ready_timeout,
    };
    Ok(Worker::new(
        exec,
        WorkerOptions {
            owner: args.name.clone().unwrap_or_else(default_owner),
            concurrency: args.concurrency.max(1),
            lease: Duration::from_millis(args.lease_ms.max(300)),
            idle_poll: Duration::from_millis(args.idle_poll_ms.unwrap_or(
                if args.database_url.starts_with("sqlite:") {
                    50
                } else {
                    500
                },
            )),
            ..WorkerOptions::default()
        },
    ))
}

/// A receiver that turns true on SIGINT or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        let _ = tx.send(true);
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        let _ = tx.send(true);
    });
    rx
}

/// Prints a worker's report.
pub fn print_report(r: &WorkerReport) {
    eprintln!(
        "worker stopped: {} runs claimed, {} completed, {} rescheduled, {} released, {} lost",
        r.claimed, r.completed, r.rescheduled, r.released, r.failed
    );
}

/// Runs `ovc worker`.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let config = StoreConfig {
        pg_schema: args.pg_schema.clone(),
        ..StoreConfig::default()
    };
    let store = ovc_store::open(&args.database_url, config)
        .await
        .with_context(|| format!("cannot open {}", crate::redact(&args.database_url)))?;
    let worker = build(store, &args).await?;
    eprintln!(
        "ovc worker started on {} (host: {}, concurrency {})",
        crate::redact(&args.database_url),
        args.host,
        args.concurrency
    );
    let report = worker.run(shutdown_signal()).await;
    print_report(&report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_timeouts_parse_with_a_unit_and_refuse_the_rest() {
        assert_eq!(parse_ready_timeout("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ready_timeout("600s"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ready_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ready_timeout("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "10", "0s", "-1s", "1d", "1.5m", "m", "10 m"] {
            assert!(parse_ready_timeout(bad).is_err(), "{bad:?}");
        }
    }
}
