//! `ovc worker`: runs workflows only. Several worker processes on one PostgreSQL share the
//! work; each claims runs with a lease, so a killed worker's runs are taken over by the
//! others within a lease period. SIGTERM/SIGINT stop it gracefully.
//!
//! Test-only knob: `OVC_TEST_CLOCK_SKEW_MS` (a signed number of milliseconds), read only
//! when set, shifts this process's injected [`Clock`] (the store's and the engine's) by
//! that much, so tests can prove that leases and durable timers follow the database's
//! clock and not a worker's. Never set it in production.

use anyhow::Context;
use clap::Args;
use ovc_driver::HostDriver;
use ovc_driver::router::HostRouter;
use ovc_driver::sim::SimHost;
use ovc_engine::executor::{Executor, RetryPolicy, StepHook};
use ovc_engine::services::Services;
use ovc_engine::worker::{Worker, WorkerOptions, WorkerReport, default_owner};
use ovc_snapshots::OpendalArtifacts;
use ovc_store::{Store, StoreConfig};
use ovc_types::time::{Clock, RandomIds, SystemClock};
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
    /// The vcluster chart version a create without `spec.vcluster_version` installs
    /// (creates submitted from SQL are accepted by the workers).
    #[arg(long, env = "OVC_VCLUSTER_VERSION", default_value = ovc_driver::DEFAULT_VCLUSTER_VERSION, value_parser = crate::worker::parse_chart_version)]
    pub vcluster_version: String,
    /// The host driver. `sim` is the simulated host (knobs: OVC_SIM_LATENCY_MS,
    /// OVC_SIM_READY_MS, OVC_SIM_FAULTS, OVC_SIM_RECORD_CALLS, and --sim-etcd); `kube` is a real cluster from KUBECONFIG (or
    /// the in-cluster service account), with helm (OVC_HELM, OVC_KUBE_CHART,
    /// OVC_KUBE_CHART_VERSION, OVC_KUBE_VCLUSTER_SERVER).
    #[arg(long, env = "OVC_HOST", value_parser = HOSTS, default_value = "sim")]
    pub host: String,
    /// With `--host kube`: a named host cluster, NAME=CONTEXT (a context of KUBECONFIG),
    /// repeatable; a vcluster's `spec.host` names one. Without it: the one host
    /// `default`, the current context (or the in-cluster service account).
    #[arg(long = "kube-host", env = "OVC_KUBE_HOSTS", value_delimiter = ',', value_parser = crate::hosts::parse_kube_host)]
    pub kube_hosts: Vec<crate::hosts::KubeHostArg>,
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
    #[arg(long, env = "OVC_READY_TIMEOUT", default_value = "10m", value_parser = crate::duration::parse)]
    pub ready_timeout: Duration,
    /// How often this process checks that every READY snapshot in its storage still has
    /// its artifact (ones that do not become MISSING, and READY again once it is back):
    /// `1h`, `10m`, ..., or `off`. Lists keys and reads manifests only.
    #[arg(long, env = "OVC_INVENTORY_EVERY", default_value = "1h", value_parser = parse_inventory_every)]
    pub inventory_every: ::std::option::Option<Duration>,
    /// Which workflows to run: `vcluster` (the product) or `bench` (the five-step
    /// benchmark workflow, for `ovc bench workflows`).
    #[arg(long, value_parser = ["vcluster", "bench"], default_value = "vcluster", hide = true)]
    pub workflows: String,
    /// Writes this process's database traffic (`ovc_store::TrafficCounts` as JSON) to
    /// this file every 100 ms and at exit, for `ovc bench workflows`.
    #[arg(long, hide = true)]
    pub traffic_file: Option<std::path::PathBuf>,
    /// With `--host sim`: etcd endpoints (`http://HOST:PORT`, `,`-separated) where the
    /// vclusters created from now on keep their backing store (dumped and loaded through
    /// the etcd v3 API) instead of the simulator's database.
    #[arg(long = "sim-etcd", env = "OVC_SIM_ETCD", value_delimiter = ',', value_parser = parse_sim_etcd)]
    pub sim_etcd: Vec<String>,
    /// PostgreSQL connections this process's store may open (the group committer needs
    /// one; the rest serve reads).
    #[arg(long, env = "OVC_PG_MAX_CONNECTIONS", default_value_t = 16)]
    pub pg_max_connections: u32,
}

/// The values of `--host`.
pub const HOSTS: [&str; 2] = ["sim", "kube"];

/// The host driver named by `--host` and `--kube-host` (see [`host`]).
pub async fn host_driver(
    host: &str,
    kube_hosts: &[crate::hosts::KubeHostArg],
    database_url: &str,
    pg_schema: Option<&str>,
) -> anyhow::Result<Host> {
    self::host(host, kube_hosts, &[], database_url, pg_schema).await
}

/// Parses one `--sim-etcd` endpoint.
pub fn parse_sim_etcd(s: &str) -> Result<String, String> {
    let mut list = ovc_driver::sim::parse_endpoints(s).map_err(|e| e.to_string())?;
    match list.len() {
        1 => Ok(list.remove(0)),
        _ => Err(format!("{s:?}: expected one endpoint")),
    }
}

/// The hosts a process drives, and the simulator's fault hook when it is the simulator.
#[derive(Debug, Clone)]
pub struct Host {
    /// What the workflows call: a [`HostRouter`] over the configured hosts.
    pub driver: Arc<dyn HostDriver>,
    /// The configured host names (what accept lets a `spec.host` name).
    pub names: Vec<String>,
    /// Runs before each step and undo attempt (the simulator's `OVC_SIM_FAULTS`).
    pub step_hook: Option<Arc<dyn StepHook>>,
}

impl Host {
    /// `registry` knowing this process's host names.
    pub fn registry(&self, registry: ovc_engine::Registry) -> ovc_engine::Registry {
        registry.with_hosts(self.names.iter().cloned())
    }
}

/// Opens the hosts named by `--host` and `--kube-host`: the simulated host on the
/// store's database (one host, `default`), or the kube hosts, each checked at start (the
/// API server answers, helm is usable) so a process without a usable kubeconfig exits
/// at once with a message naming KUBECONFIG.
pub async fn host(
    host: &str,
    kube_hosts: &[crate::hosts::KubeHostArg],
    sim_etcd: &[String],
    database_url: &str,
    pg_schema: Option<&str>,
) -> anyhow::Result<Host> {
    crate::hosts::check_kube_hosts(host, kube_hosts)?;
    if host != "sim" && !sim_etcd.is_empty() {
        anyhow::bail!("--sim-etcd (OVC_SIM_ETCD) is for --host sim only");
    }
    match host {
        "kube" => {
            let router = crate::hosts::kube_router(kube_hosts).await?;
            Ok(Host {
                names: router.names(),
                driver: Arc::new(router),
                step_hook: None,
            })
        }
        _ => {
            let mut config = ovc_driver::sim::SimConfig::from_env()
                .context("the simulated host's OVC_SIM_* settings")?;
            if !sim_etcd.is_empty() {
                config.etcd_endpoints = sim_etcd.to_vec();
            }
            let sim = Arc::new(
                SimHost::connect(database_url, pg_schema, config)
                    .await
                    .context("connecting the simulated host")?,
            );
            let router = HostRouter::single(sim.clone());
            Ok(Host {
                names: router.names(),
                driver: Arc::new(router),
                step_hook: Some(sim),
            })
        }
    }
}

/// Parses `--vcluster-version`: a chart version, `MAJOR.MINOR.PATCH[-PRE]`.
pub fn parse_chart_version(s: &str) -> Result<String, String> {
    ovc_types::spec::ChartVersion::parse(s)
        .map(|_| s.to_string())
        .ok_or_else(|| format!("{s:?} is not a chart version; use MAJOR.MINOR.PATCH, e.g. 0.29.1"))
}

/// Parses `--inventory-every`: a duration ([`crate::duration`]), or `off`.
pub fn parse_inventory_every(s: &str) -> Result<Option<Duration>, String> {
    if s == "off" {
        return Ok(None);
    }
    crate::duration::parse(s)
        .map(Some)
        .map_err(|e| format!("{e}, or off"))
}

/// Test-only: the environment variable that skews `ovc worker`'s clock (see the module
/// docs).
pub const CLOCK_SKEW_ENV: &str = "OVC_TEST_CLOCK_SKEW_MS";

/// The system clock shifted by a fixed offset (the test-only skew knob).
#[derive(Debug, Clone, Copy)]
struct SkewedClock(chrono::Duration);

impl Clock for SkewedClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.0
    }
}

/// The process clock: the system clock, shifted when [`CLOCK_SKEW_ENV`] is set.
pub fn process_clock() -> anyhow::Result<Arc<dyn Clock>> {
    match std::env::var(CLOCK_SKEW_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(Arc::new(SystemClock)),
        Err(e) => anyhow::bail!("{CLOCK_SKEW_ENV}: {e}"),
        Ok(v) => {
            let ms: i64 = v.trim().parse().with_context(|| {
                format!("{CLOCK_SKEW_ENV}={v:?}: expected a signed number of milliseconds")
            })?;
            tracing::warn!(skew_ms = ms, "test-only clock skew is active");
            Ok(Arc::new(SkewedClock(chrono::Duration::milliseconds(ms))))
        }
    }
}

/// Builds a worker on `store` from the arguments, with `clock` as its process clock.
pub async fn build(
    store: Arc<dyn Store>,
    args: &WorkerArgs,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Worker> {
    let host = host(
        &args.host,
        &args.kube_hosts,
        &args.sim_etcd,
        &args.database_url,
        args.pg_schema.as_deref(),
    )
    .await?;
    build_with(store, args, clock, host).await
}

/// Builds a worker on `store` with `host`, with `clock` as its process clock.
pub async fn build_with(
    store: Arc<dyn Store>,
    args: &WorkerArgs,
    clock: Arc<dyn Clock>,
    host: Host,
) -> anyhow::Result<Worker> {
    let artifacts = OpendalArtifacts::from_url(&args.artifacts).with_context(|| {
        format!(
            "opening snapshot storage {}",
            ovc_snapshots::object_url::redact(&args.artifacts)
        )
    })?;
    let artifacts: Arc<dyn ovc_snapshots::ArtifactStore> = Arc::new(artifacts);
    if let Some(every) = args.inventory_every {
        tokio::spawn(
            Arc::new(ovc_engine::inventory::SnapshotInventory::default()).run(
                store.clone(),
                artifacts.clone(),
                every,
                shutdown_signal(),
            ),
        );
    }
    let exec = Executor {
        store,
        // The registry's default chart version is what a create submitted from SQL
        // (accepted here, by the worker) gets.
        registry: Arc::new(
            host.registry(if args.workflows == "bench" {
                ovc_workflows::bench_registry()
            } else {
                ovc_workflows::registry()
            })
            .with_default_vcluster_version(args.vcluster_version.clone()),
        ),
        driver: host.driver,
        step_hook: host.step_hook,
        services: Arc::new(Services { artifacts }),
        clock,
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
    anyhow::ensure!(
        args.pg_max_connections >= 2,
        "--pg-max-connections must be at least 2 (the group committer and one reader)"
    );
    let config = StoreConfig {
        pg_schema: args.pg_schema.clone(),
        pg_max_connections: args.pg_max_connections,
        ..StoreConfig::default()
    };
    let clock = process_clock()?;
    let store = ovc_store::open_with_clock(&args.database_url, config, clock.clone())
        .await
        .with_context(|| format!("cannot open {}", crate::redact(&args.database_url)))?;
    tokio::spawn(
        std::sync::Arc::new(ovc_store::housekeeping::IdempotencyPurger::default()).run(
            store.clone(),
            ovc_store::housekeeping::PURGE_EVERY,
            shutdown_signal(),
        ),
    );
    let traffic = args.traffic_file.clone().map(|path| {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                write_traffic(&path, store.as_ref());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let host = host(
        &args.host,
        &args.kube_hosts,
        &args.sim_etcd,
        &args.database_url,
        args.pg_schema.as_deref(),
    )
    .await?;
    let names = host.names.join(", ");
    let worker = build_with(store.clone(), &args, clock, host).await?;
    eprintln!(
        "ovc worker started on {} (host: {}, hosts: {names}, concurrency {})",
        crate::redact(&args.database_url),
        args.host,
        args.concurrency
    );
    let report = worker.run(shutdown_signal()).await;
    if let (Some(task), Some(path)) = (traffic, &args.traffic_file) {
        task.abort();
        write_traffic(path, store.as_ref());
    }
    print_report(&report);
    Ok(())
}

/// Replaces `path` with the store's traffic counts (written aside, then renamed, so a
/// reader never sees half a file).
fn write_traffic(path: &std::path::Path, store: &dyn Store) {
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(&store.traffic()).unwrap_or_default();
    if let Err(e) = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, path)) {
        tracing::warn!(error = %e, path = %path.display(), "cannot write the traffic file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_intervals_parse_or_turn_it_off() {
        assert_eq!(
            parse_inventory_every("1h"),
            Ok(Some(Duration::from_secs(3600)))
        );
        assert_eq!(parse_inventory_every("off"), Ok(None));
        for bad in ["", "0s", "never", "OFF"] {
            assert!(parse_inventory_every(bad).is_err(), "{bad:?}");
        }
    }
}
