//! `ovc bench workflows`: the engine's throughput and latencies with real worker
//! processes on the simulated host (0 ms latency), for SQLite and PostgreSQL and 1, 2 and
//! 4 worker processes. The workload is the five-step bench workflow
//! (`workflows/src/bench.rs`). Figures come from the events' commit timestamps:
//!
//! - workflows/s and steps/s: a burst of operations submitted by 8 concurrent clients,
//!   from the first command's commit to the last operation's end;
//! - pickup latency: command commit → first `StepStarted`, at a steady 100 operations/s;
//! - recovery: a worker is killed with SIGKILL three times under load; lease expiry → the
//!   next claim, and → the next `StepStarted` of that operation. Lease times are the
//!   database's clock and event times the processes' clocks: the bench measures the
//!   offset between the two and puts every figure on the database's clock.
//! - cost per workflow during the burst: write transactions and statements counted by
//!   the stores of the worker processes (`--traffic-file`) and of the submitting clients
//!   (their accept commits; not the bench's own polling), and on PostgreSQL the
//!   server's committed transactions (`pg_stat_database.xact_commit`, which also counts
//!   read-only ones and the simulated host's; the bench's polling is subtracted).
//! - the commit-rate reference: `pgbench -n -N -c 8` against the same server (in a
//!   scratch database `<db>_pgbench`), when `pgbench` is on PATH; every throughput is
//!   also given per 1,000 pgbench tps measured in the same run.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use ovc_engine::accept::{CommandRequest, accept};
use ovc_store::{Store, StoreConfig, TrafficCounts};
use ovc_types::command::{Command, CreateParams};
use ovc_types::event::StreamName;
use ovc_types::spec::VClusterSpec;
use ovc_types::time::RandomIds;
use ovc_types::{OperationId, ProjectName};
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

/// Arguments of `ovc bench workflows`.
#[derive(Debug, Args)]
pub struct WorkflowBenchArgs {
    /// Which backends to measure.
    #[arg(long, value_parser = ["sqlite", "postgres", "both"], default_value = "both")]
    pub backend: String,
    /// PostgreSQL database (a throwaway schema is created and dropped).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Worker process counts to measure, comma-separated.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Operations in the throughput burst.
    #[arg(long, default_value_t = 2000)]
    pub ops: usize,
    /// Seconds pgbench runs for the commit-rate reference (0: skip it).
    #[arg(long, default_value_t = 10)]
    pub pgbench_seconds: u64,
    /// Skip the embedded SQLite setup (the `ovc dev` shape: one worker inside the
    /// submitting process, on the same store, so commits share its group committer and
    /// wake-ups are in-process), which is otherwise measured once besides the worker
    /// processes.
    #[arg(long)]
    pub skip_embedded: bool,
}

struct Row {
    label: String,
    workflows_per_s: f64,
    pickup: (f64, f64),
    recovery: Option<(f64, f64, f64, f64, usize)>,
    /// Write transactions and statements per workflow, counted by the stores.
    traffic: (f64, f64),
    /// Server-side committed transactions per workflow (PostgreSQL).
    server_xacts: Option<f64>,
}

/// The `p` quantile (0..=1) of `v` (sorted in place); NaN when empty.
pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// The settings of every bench worker, in a process of its own or embedded.
const BENCH_WORKER: [&str; 8] = [
    "--workflows",
    "bench",
    "--artifacts",
    "memory://",
    "--concurrency",
    "64",
    "--lease-ms",
    "1000",
];

struct Fleet {
    children: Vec<Child>,
    url: String,
    schema: Option<String>,
    /// Where each worker writes its store's traffic counts.
    traffic_dir: tempfile::TempDir,
    /// Each worker's PostgreSQL pool size: 32 connections shared by the fleet (at
    /// least 8 each), so four workers and the bench stay under a default
    /// max_connections of 100.
    pg_connections: usize,
}

impl Fleet {
    fn spawn(&self, i: usize) -> anyhow::Result<Child> {
        let mut cmd = Process::new(std::env::current_exe()?);
        cmd.args(["worker", "--database-url", &self.url])
            .args(BENCH_WORKER)
            .args([
                "--pg-max-connections",
                &self.pg_connections.to_string(),
                "--name",
                &format!("bench-w{i}-{}", uuid::Uuid::new_v4().simple()),
                "--traffic-file",
            ])
            .arg(
                self.traffic_dir
                    .path()
                    .join(format!("w{i}-{}.json", uuid::Uuid::new_v4().simple())),
            )
            .env("OVC_SIM_LATENCY_MS", "0")
            .env_remove("OVC_SIM_FAULTS")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(s) = &self.schema {
            cmd.args(["--pg-schema", s]);
        }
        Ok(cmd.spawn()?)
    }

    /// The traffic of every worker process started so far (killed ones as last written).
    fn traffic(&self) -> TrafficCounts {
        let mut total = TrafficCounts::default();
        if let Ok(dir) = std::fs::read_dir(self.traffic_dir.path()) {
            for entry in dir.flatten() {
                if entry.path().extension().is_some_and(|e| e == "json")
                    && let Ok(bytes) = std::fs::read(entry.path())
                    && let Ok(t) = serde_json::from_slice::<TrafficCounts>(&bytes)
                {
                    total = total + t;
                }
            }
        }
        total
    }

    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
        self.children[i] = self.spawn(i)?;
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = Process::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Accepts a CREATE of vcluster `name` with the default spec through `registry`.
pub(crate) async fn submit_create(
    store: &dyn Store,
    registry: &ovc_engine::Registry,
    name: &str,
) -> anyhow::Result<OperationId> {
    let accepted = accept(
        store,
        registry,
        &RandomIds,
        CommandRequest {
            project: ProjectName::default_project(),
            vcluster: name.parse()?,
            command: Command::new(CreateParams {
                spec: VClusterSpec::default(),
            }),
            request_id: None,
            actor: Some("bench".into()),
            traceparent: None,
        },
    )
    .await
    .map_err(|s| anyhow::anyhow!("{s}"))?;
    Ok(accepted.operation_id)
}

/// Waits until `ops` are done; returns (requested_at, first StepStarted, ended_at) each.
async fn wait_all(
    store: &dyn Store,
    ops: &[OperationId],
) -> anyhow::Result<Vec<(DateTime<Utc>, Option<DateTime<Utc>>, DateTime<Utc>)>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut out = Vec::with_capacity(ops.len());
    for id in ops {
        loop {
            let events = store
                .read_stream(&StreamName::operation(*id), 0, 1000)
                .await?;
            if let Some(last) = events.last()
                && matches!(
                    last.event_type.as_str(),
                    "OperationSucceeded"
                        | "OperationFailed"
                        | "OperationCancelled"
                        | "OperationStuck"
                )
            {
                anyhow::ensure!(
                    last.event_type == "OperationSucceeded",
                    "{id} ended {}",
                    last.event_type
                );
                let started = events
                    .iter()
                    .find(|e| e.event_type == "StepStarted")
                    .map(|e| e.recorded_at);
                out.push((events[0].recorded_at, started, last.recorded_at));
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "operation {id} did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(out)
}

/// Starts one worker inside this process on `store` (the embedded shape), with the
/// settings the worker processes get; stopped when the sender turns true.
async fn embedded_worker(
    store: std::sync::Arc<dyn Store>,
    url: &str,
) -> anyhow::Result<(
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<ovc_engine::worker::WorkerReport>,
)> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        worker: crate::worker::WorkerArgs,
    }
    let cli = <Cli as clap::Parser>::try_parse_from(
        ["worker", "--database-url", url]
            .into_iter()
            .chain(BENCH_WORKER),
    )?;
    let sim = std::sync::Arc::new(
        ovc_driver::sim::SimHost::connect(url, None, ovc_driver::sim::SimConfig::default()).await?,
    );
    let router = ovc_driver::router::HostRouter::single(sim.clone());
    let host = crate::worker::Host {
        names: router.names(),
        driver: std::sync::Arc::new(router),
        step_hook: Some(sim),
    };
    let worker = crate::worker::build_with(
        store,
        &cli.worker,
        std::sync::Arc::new(ovc_types::time::SystemClock),
        host,
    )
    .await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    Ok((stop, tokio::spawn(worker.run(stopped))))
}

/// Measures one setup: `workers` worker processes, or (`workers == 0`) one embedded
/// worker.
async fn measure(
    label: String,
    url: String,
    config: StoreConfig,
    workers: usize,
    ops: usize,
) -> anyhow::Result<Row> {
    let store = ovc_store::open(&url, config.clone()).await?;
    store.migrate().await?;
    let mut fleet = Fleet {
        children: Vec::new(),
        url: url.clone(),
        schema: config.pg_schema.clone(),
        traffic_dir: tempfile::tempdir()?,
        pg_connections: (32 / workers.max(1)).max(8),
    };
    for i in 0..workers {
        let child = fleet.spawn(i)?;
        fleet.children.push(child);
    }
    let embedded = if workers == 0 {
        Some(embedded_worker(store.clone(), &url).await?)
    } else {
        None
    };
    // The bench's own polling reads through a store of its own, so the traffic of
    // `store` is the submitting clients' (and the embedded worker's) alone.
    let watcher = ovc_store::open(&url, config.clone()).await?;
    // Warm up: every worker is up once this finishes.
    let warm = submit_create(store.as_ref(), &ovc_workflows::bench_registry(), "warm-up").await?;
    wait_all(watcher.as_ref(), &[warm]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    eprintln!("{label}: burst of {ops} ...");
    let pg = url.starts_with("postgres");
    // Stats reach pg_stat_database within about a second of a backend's last commit.
    let settle = || tokio::time::sleep(Duration::from_millis(1500));
    settle().await;
    let xacts_before = if pg {
        Some(ovc_store::postgres::committed_transactions(&url).await?)
    } else {
        None
    };
    let workers_before = fleet.traffic();
    let client_before = store.traffic();
    let watcher_before = watcher.traffic();
    let mut tasks = Vec::new();
    for c in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (c..ops).step_by(8) {
                ids.push(
                    submit_create(
                        store.as_ref(),
                        &ovc_workflows::bench_registry(),
                        &format!("burst-{i}"),
                    )
                    .await?,
                );
            }
            anyhow::Ok(ids)
        }));
    }
    let mut burst = Vec::new();
    for t in tasks {
        burst.extend(t.await??);
    }
    let times = wait_all(watcher.as_ref(), &burst).await?;
    let first = times.iter().map(|t| t.0).min().context("no operations")?;
    let last = times.iter().map(|t| t.2).max().context("no operations")?;
    let workflows_per_s = ops as f64 / (ms(first, last) / 1000.0);
    settle().await;
    let worker_traffic = fleet.traffic() - workers_before;
    let client = store.traffic() - client_before;
    let polling = watcher.traffic() - watcher_before;
    let server_xacts = match xacts_before {
        Some(before) => {
            let after = ovc_store::postgres::committed_transactions(&url).await?;
            // Every statement of the bench's polling was a read-only transaction.
            let own = (polling.read_statements + polling.write_transactions) as i64;
            Some((after - before - own) as f64 / ops as f64)
        }
        None => None,
    };
    let n = ops as f64;
    let traffic = (
        (worker_traffic.write_transactions + client.write_transactions) as f64 / n,
        (worker_traffic.write_statements
            + worker_traffic.read_statements
            + client.write_statements
            + client.read_statements) as f64
            / n,
    );

    eprintln!("{label}: pickup at 100/s ...");
    let mut steady = Vec::new();
    let t0 = Instant::now();
    for i in 0..300 {
        let due = t0 + Duration::from_millis(10 * i as u64);
        tokio::time::sleep_until(due.into()).await;
        steady.push(
            submit_create(
                store.as_ref(),
                &ovc_workflows::bench_registry(),
                &format!("steady-{i}"),
            )
            .await?,
        );
    }
    let mut pickups: Vec<f64> = wait_all(watcher.as_ref(), &steady)
        .await?
        .iter()
        .filter_map(|(req, started, _)| started.map(|s| ms(*req, s)))
        .collect();
    let pickup = (pct(&mut pickups, 0.5), pct(&mut pickups, 0.99));

    let mut recovery = None;
    if workers >= 2 {
        eprintln!("{label}: kill -9 under load ...");
        let mut load = Vec::new();
        let t0 = Instant::now();
        let mut kills = 0;
        for i in 0..600 {
            let due = t0 + Duration::from_millis(10 * i as u64);
            tokio::time::sleep_until(due.into()).await;
            if i % 200 == 100 {
                fleet.kill(0)?;
                kills += 1;
            }
            load.push(
                submit_create(
                    store.as_ref(),
                    &ovc_workflows::bench_registry(),
                    &format!("load-{i}"),
                )
                .await?,
            );
        }
        wait_all(watcher.as_ref(), &load).await?;
        // Event times are the processes' clock, lease times the database's: put the events
        // on the database's clock (offset measured around one round trip).
        let before = chrono::Utc::now();
        let db_now = store.database_now().await?;
        let after = chrono::Utc::now();
        let offset = db_now - (before + (after - before) / 2);
        let history = store.lease_history(None).await?;
        let mut to_claim = Vec::new();
        let mut to_step = Vec::new();
        for (i, a) in history.iter().enumerate() {
            if a.released_at.is_some() {
                continue;
            }
            if let Some(b) = history[i + 1..]
                .iter()
                .find(|b| b.run_id == a.run_id && b.epoch > a.epoch)
            {
                to_claim.push(ms(a.lease_until, b.claimed_at));
                if let Some(run) = store.get_run(a.run_id).await? {
                    let events = store
                        .read_stream(&StreamName::operation(run.operation_id), 0, 1000)
                        .await?;
                    if let Some(s) = events.iter().find(|e| {
                        e.event_type == "StepStarted" && e.recorded_at + offset >= b.claimed_at
                    }) {
                        to_step.push(ms(a.lease_until, s.recorded_at + offset));
                    }
                }
            }
        }
        let steals = to_claim.len();
        eprintln!("{label}: {kills} kills, {steals} runs taken over");
        recovery = Some((
            pct(&mut to_claim, 0.5),
            pct(&mut to_claim, 0.99),
            pct(&mut to_step, 0.5),
            pct(&mut to_step, 0.99),
            steals,
        ));
    }
    drop(fleet);
    if let Some((stop, worker)) = embedded {
        let _ = stop.send(true);
        worker.await?;
    }
    Ok(Row {
        label,
        workflows_per_s,
        pickup,
        recovery,
        traffic,
        server_xacts,
    })
}

/// Runs `ovc bench workflows`.
pub async fn run(args: WorkflowBenchArgs) -> anyhow::Result<()> {
    let tps = match (&args.database_url, args.pgbench_seconds) {
        (Some(url), secs) if secs > 0 && args.backend != "sqlite" => pgbench(url, secs).await?,
        _ => None,
    };
    let mut rows = Vec::new();
    if args.backend != "postgres" && !args.skip_embedded {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        rows.push(
            measure(
                "sqlite, embedded".into(),
                url,
                StoreConfig::default(),
                0,
                args.ops,
            )
            .await?,
        );
    }
    for &n in &args.workers {
        if args.backend != "postgres" {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            rows.push(
                measure(
                    format!("sqlite, {n} worker(s)"),
                    url,
                    StoreConfig::default(),
                    n,
                    args.ops,
                )
                .await?,
            );
        }
        if args.backend != "sqlite" {
            let url = args
                .database_url
                .clone()
                .context("postgres needs --database-url or DATABASE_URL")?;
            let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
            let config = StoreConfig {
                pg_schema: Some(schema.clone()),
                ..StoreConfig::default()
            };
            let row = measure(
                format!("postgres, {n} worker(s)"),
                url.clone(),
                config,
                n,
                args.ops,
            )
            .await;
            ovc_store::postgres::drop_schema(&url, &schema).await;
            rows.push(row?);
        }
    }
    match tps {
        Some(tps) => println!(
            "pgbench -n -N -c 8 -T {}: {tps:.0} tps",
            args.pgbench_seconds
        ),
        None => {
            println!("pgbench: not run (no PostgreSQL URL, not on PATH, or --pgbench-seconds 0)")
        }
    }
    println!(
        "{:<22} {:>8} {:>8} {:>9} {:>7} {:>7} {:>7} {:>14} {:>18} {:>16}",
        "setup",
        "wf/s",
        "steps/s",
        "wf/s/ktps",
        "tx/wf",
        "stm/wf",
        "pgx/wf",
        "pickup p50/p99",
        "expiry->claim",
        "expiry->step"
    );
    for r in rows {
        let rec = match r.recovery {
            Some((a, b, c, d, n)) => (format!("{a:.0}/{b:.0} (n={n})"), format!("{c:.0}/{d:.0}")),
            None => ("-".into(), "-".into()),
        };
        let ratio = match tps {
            Some(tps) if r.label.starts_with("postgres") => {
                format!("{:.0}", r.workflows_per_s * 1000.0 / tps)
            }
            _ => "-".into(),
        };
        println!(
            "{:<22} {:>8.0} {:>8.0} {:>9} {:>7.1} {:>7.1} {:>7} {:>14} {:>18} {:>16}",
            r.label,
            r.workflows_per_s,
            r.workflows_per_s * 5.0,
            ratio,
            r.traffic.0,
            r.traffic.1,
            r.server_xacts.map_or("-".into(), |x| format!("{x:.1}")),
            format!("{:.1}/{:.1}", r.pickup.0, r.pickup.1),
            rec.0,
            rec.1
        );
    }
    println!();
    println!(
        "five-step bench workflow, sim host at 0 ms, real `ovc worker` processes (concurrency 64, \
         lease 1 s; `embedded`: one such worker inside the submitting process, as in \
         `ovc dev`); SQLite synchronous=FULL. wf/s/ktps: workflows/s per 1,000 pgbench tps. \
         tx/wf, stm/wf: write transactions and statements (reads included) per workflow, \
         counted by the stores (workers + accepting clients; the sim host's own queries \
         excluded). pgx/wf: pg_stat_database xact_commit per workflow (read-only and sim \
         host transactions included). Pickup: command commit -> first StepStarted at 100/s; \
         recovery in ms on the database's clock."
    );
    Ok(())
}

/// Runs `pgbench -n -N -c 8` for `secs` seconds in the scratch database `<db>_pgbench` of
/// the same server (initialised first); its tps, or `None` when pgbench is not on PATH.
async fn pgbench(url: &str, secs: u64) -> anyhow::Result<Option<f64>> {
    if Process::new("pgbench").arg("--version").output().is_err() {
        return Ok(None);
    }
    let db = ovc_store::postgres::database_name(url).await?;
    let scratch = ovc_store::postgres::ensure_database(url, &format!("{db}_pgbench")).await?;
    eprintln!("pgbench: initialising {db}_pgbench ...");
    let init = Process::new("pgbench")
        .args(["-i", "-q", &scratch])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(init.success(), "pgbench -i failed");
    eprintln!("pgbench: -n -N -c 8 -j 2 -T {secs} ...");
    let out = Process::new("pgbench")
        .args([
            "-n",
            "-N",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            &scratch,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench's output: {text}"))?;
    Ok(Some(tps))
}
