//! `ovc bench inflight`: many operations waiting on a slow host at once, in one worker
//! process (issue 11's in-flight aim: 10,000 with RSS under 300 MB, none holding a worker
//! slot).
//!
//! The simulated host's control planes take an hour to become ready
//! (`OVC_SIM_READY_MS`), so every CREATE parks in `wait_ready`, which answers pending and
//! is rescheduled durably instead of holding its slot. With all of them parked the bench
//! prints the worker's RSS (now and peak), the database traffic the parked waits cost
//! per second (their check-ins), and how long one more CREATE takes to get through its
//! first two steps to its own wait: if parked operations held slots, it would never get
//! there.

use crate::bench_feeds::proc_status_mib;
use crate::bench_workflows::{pct, submit_create};
use anyhow::Context;
use clap::Args;
use ovc_store::{OperationFilter, PageRequest, Store, StoreConfig, TrafficCounts};
use ovc_types::OperationId;
use ovc_types::event::StreamName;
use ovc_types::state::OperationState;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `ovc bench inflight`.
#[derive(Debug, Args)]
pub struct InflightBenchArgs {
    /// Database (default: a temporary SQLite file); postgres://... works too.
    #[arg(long, env = "OVC_BENCH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Operations parked on the slow host at once.
    #[arg(long, default_value_t = 10_000)]
    pub ops: usize,
    /// The worker's concurrency (slots).
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Seconds over which the parked waits' database traffic is measured.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// The one worker process; killed on drop.
struct Worker {
    child: Child,
    traffic: std::path::PathBuf,
}

impl Worker {
    fn traffic(&self) -> TrafficCounts {
        std::fs::read(&self.traffic)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many RUNNING operations have started `wait_ready` (are parked).
async fn parked(store: &dyn Store) -> anyhow::Result<usize> {
    let filter = OperationFilter {
        state: Some(OperationState::Running),
        ..OperationFilter::default()
    };
    let mut page = PageRequest {
        after: None,
        limit: Some(1000),
    };
    let mut n = 0;
    loop {
        let found = store.list_operations(&filter, &page).await?;
        n += found
            .items
            .iter()
            .filter(|op| {
                op.steps
                    .iter()
                    .any(|s| s.name == "wait_ready" && s.attempts > 0)
            })
            .count();
        match found.next {
            Some(next) => page.after = Some(next),
            None => return Ok(n),
        }
    }
}

/// Milliseconds from `id`'s command to its first `StepStarted` and to its
/// `StepStarted` of `wait_ready` (its own park), waiting up to `limit`.
async fn probe(store: &dyn Store, id: OperationId, limit: Duration) -> anyhow::Result<(f64, f64)> {
    let deadline = Instant::now() + limit;
    loop {
        let events = store
            .read_stream(&StreamName::operation(id), 0, 100)
            .await?;
        let started = |step: Option<&str>| {
            events.iter().find(|e| {
                e.event_type == "StepStarted"
                    && step.is_none_or(|s| e.data["step"].as_str() == Some(s))
            })
        };
        if let (Some(first), Some(wait)) = (started(None), started(Some("wait_ready"))) {
            let ms = |e: &ovc_store::RecordedEvent| {
                (e.recorded_at - events[0].recorded_at)
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0
            };
            return Ok((ms(first), ms(wait)));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the probe CREATE did not reach wait_ready within {limit:?}: parked operations hold the worker's slots"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `ovc bench inflight`.
pub async fn run(args: InflightBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("inflight.db").display()));
    let store: Arc<dyn Store> = ovc_store::open(&url, StoreConfig::default())
        .await
        .with_context(|| format!("cannot open {}", crate::redact(&url)))?;
    store.migrate().await?;
    let traffic = dir.path().join("traffic.json");
    let child = Process::new(std::env::current_exe()?)
        .args(["worker", "--database-url", &url, "--artifacts", "memory://"])
        .args(["--concurrency", &args.concurrency.to_string()])
        .args(["--ready-timeout", "2h", "--inventory-every", "off"])
        .arg("--traffic-file")
        .arg(&traffic)
        .env("OVC_SIM_LATENCY_MS", "0")
        .env("OVC_SIM_READY_MS", "3600000")
        .env_remove("OVC_SIM_FAULTS")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let worker = Worker { child, traffic };
    let pid = worker.child.id();

    eprintln!("inflight: submitting {} CREATEs ...", args.ops);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let registry = Arc::new(ovc_workflows::registry());
    for client in 0..8 {
        let store = store.clone();
        let registry = registry.clone();
        let ops = args.ops;
        tasks.push(tokio::spawn(async move {
            for i in (client..ops).step_by(8) {
                submit_create(store.as_ref(), &registry, &format!("park-{i}")).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let submitted_in = start.elapsed();
    eprintln!(
        "inflight: submitted in {:.1} s; waiting until all are parked ...",
        submitted_in.as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(1800);
    let parked_in = loop {
        let n = parked(store.as_ref()).await?;
        if n >= args.ops {
            break start.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {n} of {} operations parked after 30 minutes",
            args.ops
        );
        eprintln!("inflight: {n} parked");
        tokio::time::sleep(Duration::from_secs(2)).await;
    };

    // The parked waits' own cost: the worker's database traffic over `seconds`.
    let before = worker.traffic();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let after = worker.traffic();
    let per_s = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / args.seconds as f64;
    let rss = proc_status_mib(pid, "VmRSS:");
    let peak = proc_status_mib(pid, "VmHWM:");

    // One more CREATE, three times: its first two steps run while everything is parked.
    let mut first = Vec::new();
    let mut to_wait = Vec::new();
    for i in 0..3 {
        let id = submit_create(store.as_ref(), &registry, &format!("probe-{i}")).await?;
        let (a, b) = probe(store.as_ref(), id, Duration::from_secs(120)).await?;
        first.push(a);
        to_wait.push(b);
    }
    println!(
        "{} operations parked on the slow host in one worker process (concurrency {}), {}",
        args.ops,
        args.concurrency,
        if url.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    println!(
        "  submitted in {:.1} s, all parked after {:.1} s",
        submitted_in.as_secs_f64(),
        parked_in.as_secs_f64()
    );
    println!("  worker RSS: {rss:.1} MiB now, {peak:.1} MiB peak");
    println!(
        "  parked waits' check-ins: {:.0} write transactions/s, {:.0} statements/s",
        per_s(before.write_transactions, after.write_transactions),
        per_s(
            before.write_statements + before.read_statements,
            after.write_statements + after.read_statements
        )
    );
    println!(
        "  one more CREATE meanwhile: command -> first step {:.0} ms, -> its own wait {:.0} ms (median of 3)",
        pct(&mut first, 0.5),
        pct(&mut to_wait, 0.5)
    );
    drop(worker);
    Ok(())
}
