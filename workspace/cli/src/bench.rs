//! `ovc bench store`: throughput of the store on this machine, printed as figures.
//!
//! Measured per backend, each on a fresh database (a temp SQLite file; a throwaway
//! PostgreSQL schema, dropped afterwards): single-event appends/s with 1 and 8 concurrent
//! writers, enqueue+claim+complete runs/s with 4 workers (three transactions per run),
//! and tail throughput (read_all in pages of 1000). Compare with
//! `pgbench -n -N -c 8 -T 20` on the same database in the same sitting.

use anyhow::Context;
use chrono::Duration as ChronoDuration;
use clap::Args;
use ovc_store::{
    Commit, ExpectedVersion, NewEvent, NewRun, RunUpdate, Store, StoreConfig, StreamAppend,
};
use ovc_types::event::{Event, StreamName};
use ovc_types::{OperationId, RunId, VClusterId};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Arguments of `ovc bench store`.
#[derive(Debug, Args)]
pub struct StoreBenchArgs {
    /// Which backends to measure.
    #[arg(long, value_parser = ["sqlite", "postgres", "both"], default_value = "both")]
    pub backend: String,
    /// PostgreSQL database to measure in (a throwaway schema is created and dropped).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
}

struct Figures {
    label: String,
    append_1: f64,
    append_8: f64,
    runs: f64,
    tail: f64,
}

async fn appends(store: &Arc<dyn Store>, writers: usize, secs: u64) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                let stream = StreamName::new(format!("bench-{w}-{}", i % 64))?;
                store
                    .commit(Commit {
                        appends: vec![StreamAppend {
                            stream,
                            expected: ExpectedVersion::Any,
                            events: vec![NewEvent::new(Event::StepStarted {
                                step: "bench".into(),
                                attempt: 1,
                            })],
                        }],
                        ..Commit::default()
                    })
                    .await?;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn runs(store: &Arc<dyn Store>, workers: usize, secs: u64) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let owner = format!("bench-{w}");
            while Instant::now() < deadline {
                store
                    .commit(Commit {
                        enqueue: vec![NewRun {
                            id: RunId(uuid::Uuid::now_v7()),
                            operation_id: OperationId(uuid::Uuid::now_v7()),
                            vcluster_uid: VClusterId(uuid::Uuid::now_v7()),
                            run_at: None,
                            priority: 0,
                        }],
                        ..Commit::default()
                    })
                    .await?;
                for run in store
                    .claim_runs(&owner, ChronoDuration::seconds(30), 1)
                    .await?
                {
                    store
                        .commit(Commit {
                            fence: Some(run.lease()),
                            run_update: Some(RunUpdate::Complete),
                            ..Commit::default()
                        })
                        .await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

async fn tail(store: &Arc<dyn Store>) -> anyhow::Result<f64> {
    let head = store.head_position().await?;
    let start = Instant::now();
    let mut after = 0;
    let mut n = 0u64;
    while after < head {
        let batch = store.read_all(after, 1000).await?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        n += batch.len() as u64;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn measure(label: String, store: Arc<dyn Store>, secs: u64) -> anyhow::Result<Figures> {
    store.migrate().await?;
    eprintln!("{label}: 1 writer ...");
    let append_1 = appends(&store, 1, secs).await?;
    eprintln!("{label}: 8 writers ...");
    let append_8 = appends(&store, 8, secs).await?;
    eprintln!("{label}: runs ...");
    let runs = runs(&store, 4, secs).await?;
    eprintln!("{label}: tail ...");
    let tail = tail(&store).await?;
    Ok(Figures {
        label,
        append_1,
        append_8,
        runs,
        tail,
    })
}

/// Runs `ovc bench store`.
pub async fn run_store(args: StoreBenchArgs) -> anyhow::Result<()> {
    let mut results = Vec::new();
    if args.backend != "postgres" {
        for full in [true, false] {
            let dir = tempfile::tempdir()?;
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            let config = StoreConfig {
                sqlite_synchronous_full: full,
                ..StoreConfig::default()
            };
            let store = ovc_store::open(&url, config).await?;
            let label = format!(
                "sqlite synchronous={}",
                if full { "FULL" } else { "NORMAL" }
            );
            results.push(measure(label, store, args.seconds).await?);
        }
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
        let store = ovc_store::open(&url, config).await?;
        let outcome = measure("postgres".into(), store, args.seconds).await;
        ovc_store::postgres::drop_schema(&url, &schema).await;
        results.push(outcome?);
    }
    println!(
        "{:<26} {:>16} {:>16} {:>14} {:>16}",
        "backend", "appends/s (1w)", "appends/s (8w)", "runs/s (4w)", "tail events/s"
    );
    for f in &results {
        println!(
            "{:<26} {:>16.0} {:>16.0} {:>14.0} {:>16.0}",
            f.label, f.append_1, f.append_8, f.runs, f.tail
        );
    }
    println!();
    println!("one append = one transaction (stream version check, projection, position, event);");
    println!("one run = three transactions (enqueue, claim with lease, fenced complete).");
    println!("compare: pgbench -n -N -c 8 -T 20 <database> in the same sitting.");
    Ok(())
}
