//! `ovc bench api`: the REST API's accept latency and the end-to-end time of a create,
//! measured over real HTTP against an in-process server on a fresh store, through the
//! typed client `ovc-client` as a service would call it (a request id per mutation,
//! keep-alive connections) but with its retries off, so a refusal is counted.
//!
//! - accept latency of `POST /v1/vclusters/{name}/suspend`, open loop at fixed rates
//!   (default 200 and 1000 requests/s): each request is sent at its scheduled instant,
//!   to a RUNNING vcluster of its own, and its latency is counted from that instant (so
//!   a slow server cannot hide its queueing: no coordinated omission). Workers are
//!   stopped while this runs, so the figure is the accept path (validation, one commit of
//!   command event, operation, run and idempotency key) and not the machine's CPU shared
//!   with workflows;
//! - create → RUNNING: sequential `POST /v1/vclusters` then `GET .../wait`, with an
//!   in-process worker on the simulated host at 0 ms latency, measured by the client.

use crate::bench_workflows::pct;
use crate::worker::WorkerArgs;
use anyhow::Context;
use clap::Args;
use ovc_client::{Client, CreateVCluster, RetryPolicy, SuspendVCluster};
use ovc_store::{Store, StoreConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `ovc bench api`.
#[derive(Debug, Args)]
pub struct ApiBenchArgs {
    /// sqlite://PATH or postgres://... (PostgreSQL: a throwaway schema is created and
    /// dropped). Default: $DATABASE_URL, else a temporary SQLite file.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Request rates to measure, per second, comma-separated.
    #[arg(long, default_value = "200,1000", value_delimiter = ',')]
    pub rates: Vec<u32>,
    /// Seconds at each rate.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Sequential creates for the create → RUNNING figure.
    #[arg(long, default_value_t = 100)]
    pub creates: usize,
}

/// A worker running in this process until `stop` is sent.
struct RunningWorker {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<ovc_engine::worker::WorkerReport>,
}

async fn start_worker(
    store: Arc<dyn Store>,
    url: &str,
    schema: Option<String>,
) -> anyhow::Result<RunningWorker> {
    let args = WorkerArgs {
        database_url: url.to_string(),
        pg_schema: schema,
        vcluster_version: ovc_driver::DEFAULT_VCLUSTER_VERSION.into(),
        host: "sim".into(),
        kube_hosts: Vec::new(),
        artifacts: "memory://".into(),
        concurrency: 32,
        lease_ms: 5000,
        idle_poll_ms: None,
        name: Some(format!("bench-api-{}", uuid::Uuid::new_v4().simple())),
        ready_timeout: ovc_engine::model::DEFAULT_READY_TIMEOUT,
        inventory_every: None,
        workflows: "vcluster".into(),
        traffic_file: None,
        pg_max_connections: 16,
        sim_etcd: Vec::new(),
    };
    let worker = crate::worker::build(
        store,
        &args,
        std::sync::Arc::new(ovc_types::time::SystemClock),
    )
    .await?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    Ok(RunningWorker {
        stop,
        task: tokio::spawn(worker.run(rx)),
    })
}

impl RunningWorker {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Creates `names` (16 at a time) and waits until every one is RUNNING.
async fn create_all(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let chunks: Vec<Vec<String>> = names
        .chunks(names.len().div_ceil(16).max(1))
        .map(<[String]>::to_vec)
        .collect();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for name in chunk {
                let req = CreateVCluster {
                    name: name.clone(),
                    ..CreateVCluster::default()
                };
                let accepted = client
                    .create_vcluster(&req)
                    .await
                    .with_context(|| format!("create {name}"))?;
                let op = client
                    .wait(accepted.operation.id, None)
                    .await
                    .with_context(|| format!("create {name}"))?;
                anyhow::ensure!(
                    op.state == ovc_types::OperationState::Succeeded,
                    "create {name}: {}",
                    serde_json::to_string(&op).unwrap_or_default()
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

struct RateRow {
    rate: u32,
    sent: usize,
    accepted: usize,
    refused: usize,
    achieved: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Open-loop suspends at `rate`/s over `names`.
async fn suspend_at(client: &Client, rate: u32, names: &[String]) -> RateRow {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let at = start + interval * i as u32;
        let client = client.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let r = client
                .suspend_vcluster(&name, &SuspendVCluster::default())
                .await;
            let ms = at.elapsed().as_secs_f64() * 1000.0;
            (r.is_ok_and(|a| !a.duplicate), ms)
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let (mut accepted, mut refused) = (0, 0);
    for t in tasks {
        if let Ok((new_operation, ms)) = t.await {
            if new_operation {
                accepted += 1;
                lat.push(ms);
            } else {
                refused += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let max = lat.iter().copied().fold(0.0, f64::max);
    RateRow {
        rate,
        sent: names.len(),
        accepted,
        refused,
        achieved: names.len() as f64 / elapsed.max(1e-9),
        p50: pct(&mut lat, 0.50),
        p90: pct(&mut lat, 0.90),
        p99: pct(&mut lat, 0.99),
        max,
    }
}

/// Runs `ovc bench api`.
pub async fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let (url, schema) = match &args.database_url {
        Some(u) if u.starts_with("postgres") => (
            u.clone(),
            Some(format!("bench_api_{}", uuid::Uuid::new_v4().simple())),
        ),
        Some(u) => (u.clone(), None),
        None => (
            format!("sqlite://{}", tmp.path().join("bench.db").display()),
            None,
        ),
    };
    let result = measure(&args, &url, schema.clone()).await;
    if let Some(s) = &schema {
        ovc_store::postgres::drop_schema(&url, s).await;
    }
    result
}

async fn measure(args: &ApiBenchArgs, url: &str, schema: Option<String>) -> anyhow::Result<()> {
    let config = StoreConfig {
        pg_schema: schema.clone(),
        pg_max_connections: std::env::var("OVC_PG_MAX_CONNECTIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(StoreConfig::default().pg_max_connections),
        ..StoreConfig::default()
    };
    let store = ovc_store::open(url, config)
        .await
        .with_context(|| format!("cannot open {}", crate::redact(url)))?;
    store.migrate().await?;
    let app = ovc_api::router(ovc_api::AppState::new(
        store.clone(),
        Arc::new(ovc_workflows::registry()),
        ovc_api::auth::AuthMode::None,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    // No retries: a refusal is counted, not hidden behind a second attempt.
    let client = Client::builder(format!("http://{addr}"))
        .retry(RetryPolicy::none())
        .build()?;
    let backend = if url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };

    // Setup: one RUNNING vcluster per suspend to send.
    let total: usize = args
        .rates
        .iter()
        .map(|r| (*r as usize) * args.seconds as usize)
        .sum();
    let names: Vec<String> = (0..total).map(|i| format!("s-{i}")).collect();
    eprintln!("bench api ({backend}): creating {total} vclusters to suspend ...");
    let worker = start_worker(store.clone(), url, schema.clone()).await?;
    let t = Instant::now();
    create_all(&client, &names).await?;
    eprintln!(
        "  {total} creates done in {:.1} s ({:.0} creates/s, 16 clients)",
        t.elapsed().as_secs_f64(),
        total as f64 / t.elapsed().as_secs_f64()
    );
    worker.stop().await;

    let mut rows = Vec::new();
    let mut offset = 0;
    for &rate in &args.rates {
        let n = rate as usize * args.seconds as usize;
        eprintln!("  {rate} suspends/s for {} s ...", args.seconds);
        rows.push(suspend_at(&client, rate, &names[offset..offset + n]).await);
        offset += n;
    }

    // create → RUNNING, sequential, with a worker.
    let worker = start_worker(store.clone(), url, schema).await?;
    create_all(&client, &["e2e-warmup".to_string()]).await?;
    let mut e2e = Vec::with_capacity(args.creates);
    for i in 0..args.creates {
        let t = Instant::now();
        create_all(&client, &[format!("e2e-{i}")]).await?;
        e2e.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    worker.stop().await;

    println!();
    println!(
        "accept latency of POST /v1/vclusters/{{name}}/suspend ({backend}, open loop, workers stopped)"
    );
    println!(
        "{:>8} {:>8} {:>9} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "rate/s",
        "sent",
        "accepted",
        "refused",
        "achieved/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms"
    );
    for r in &rows {
        println!(
            "{:>8} {:>8} {:>9} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            r.rate, r.sent, r.accepted, r.refused, r.achieved, r.p50, r.p90, r.p99, r.max
        );
    }
    let n = e2e.len();
    let max = e2e.iter().copied().fold(0.0, f64::max);
    println!();
    println!(
        "create -> RUNNING ({backend}, sim host at 0 ms, sequential, client-observed): n={n} p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(&mut e2e, 0.5),
        pct(&mut e2e, 0.9),
        pct(&mut e2e, 0.99),
        max
    );
    Ok(())
}
