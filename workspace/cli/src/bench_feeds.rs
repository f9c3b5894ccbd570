//! `ovc bench feeds`: what live SSE followers cost an API server. An `ovc serve` child
//! process runs on a SQLite log prefilled with `--events` events; this process runs a
//! worker on the simulated host and the clients. It reports the server's RSS and the
//! client-observed create → RUNNING time idle, then with `--followers` SSE connections
//! following `/v1/events` from the head (each receives every new event), and checks that
//! the followers received every event committed meanwhile.

use crate::worker::WorkerArgs;
use anyhow::Context;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use ovc_store::{Commit, ExpectedVersion, NewEvent, Store, StoreConfig, StreamAppend};
use ovc_types::event::{Event, StreamName};
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Arguments of `ovc bench feeds`.
#[derive(Debug, Args)]
pub struct FeedsBenchArgs {
    /// Concurrent SSE followers of `/v1/events`.
    #[arg(long, default_value_t = 1000)]
    pub followers: usize,
    /// Events in the log before the followers connect.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Sequential creates per create → RUNNING figure.
    #[arg(long, default_value_t = 20)]
    pub creates: usize,
}

/// One HTTP/1 request on a new connection; returns status and body.
async fn call(addr: &str, method: Method, path: &str, body: &str) -> anyhow::Result<(u16, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let res = sender.send_request(req).await?;
    let status = res.status().as_u16();
    Ok((status, res.into_body().collect().await?.to_bytes()))
}

/// Resident set size of `pid` in MiB (Linux `/proc`).
fn rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmRSS:")
}

/// The `/proc/<pid>/status` field `key` (a size in kB, e.g. `VmRSS:`, `VmHWM:`) in MiB;
/// NaN when it cannot be read.
pub(crate) fn proc_status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

async fn prefill(store: &Arc<dyn Store>, events: u64) -> anyhow::Result<()> {
    let per_commit = (store.config().max_events_per_commit as u64).clamp(1, 500);
    let mut written = 0u64;
    while written < events {
        let n = per_commit.min(events - written);
        let stream = StreamName::new(format!("bench-{}", written / per_commit))?;
        let batch = (0..n)
            .map(|_| {
                NewEvent::new(Event::StepStarted {
                    step: "bench".into(),
                    attempt: 1,
                })
            })
            .collect();
        store
            .commit(Commit {
                appends: vec![StreamAppend {
                    stream,
                    expected: ExpectedVersion::Any,
                    events: batch,
                }],
                ..Commit::default()
            })
            .await?;
        written += n;
    }
    Ok(())
}

/// Sequential creates, each until RUNNING; the latencies in ms, sorted.
async fn creates(addr: &str, prefix: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let (s, body) = call(
            addr,
            Method::POST,
            "/v1/vclusters",
            &format!(r#"{{"name":"{prefix}-{i}"}}"#),
        )
        .await?;
        anyhow::ensure!(
            s == 202,
            "create answered {s}: {}",
            String::from_utf8_lossy(&body)
        );
        let op: serde_json::Value = serde_json::from_slice(&body)?;
        let id = op["id"].as_str().context("operation id")?.to_string();
        let (s, body) = call(
            addr,
            Method::GET,
            &format!("/v1/operations/{id}/wait?timeout=60s"),
            "",
        )
        .await?;
        let done: serde_json::Value = serde_json::from_slice(&body)?;
        anyhow::ensure!(
            s == 200 && done["state"] == "SUCCEEDED",
            "create {prefix}-{i} did not succeed: {done}"
        );
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(ms: &[f64]) -> String {
    format!(
        "n={} p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms.len(),
        pct(ms, 0.5),
        pct(ms, 0.9),
        pct(ms, 1.0)
    )
}

/// One follower: opens the SSE feed after `after` and counts the events it receives.
async fn follow(addr: String, after: u64, received: Arc<AtomicU64>) -> anyhow::Result<()> {
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/v1/events")
        .header("host", &addr)
        .header("accept", "text/event-stream")
        .header("last-event-id", after.to_string())
        .body(Full::new(Bytes::new()))?;
    let res = sender.send_request(req).await?;
    anyhow::ensure!(res.status() == 200, "feed answered {}", res.status());
    let mut body = res.into_body();
    let mut carry = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        carry.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = carry.find("\n\n") {
            let block: String = carry.drain(..end + 2).collect();
            if block.lines().any(|l| l.starts_with("id:")) {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Runs `ovc bench feeds`.
pub async fn run(args: FeedsBenchArgs) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let url = format!("sqlite://{}", tmp.path().join("bench.db").display());
    let store = ovc_store::open(&url, StoreConfig::default()).await?;
    store.migrate().await?;
    let t = Instant::now();
    prefill(&store, args.events).await?;
    eprintln!(
        "prefilled {} events in {:.1} s",
        args.events,
        t.elapsed().as_secs_f64()
    );
    let max_feeds = (args.followers + 16).to_string();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", "--database-url", &url, "--auth", "none"])
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .args(["--rate-limit", "0", "--max-live-feeds", &max_feeds])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("spawn ovc serve")?;
    let pid = child.id();
    let result = measure(&args, &url, store, &mut child, pid).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn measure(
    args: &FeedsBenchArgs,
    url: &str,
    store: Arc<dyn Store>,
    child: &mut std::process::Child,
    pid: u32,
) -> anyhow::Result<()> {
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(a) = line
                .strip_prefix("ovc serve: REST API on http://")
                .and_then(|r| r.split_whitespace().next())
            {
                let _ = tx.send(a.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .context("ovc serve did not print its address")?;
    let worker_args = WorkerArgs {
        database_url: url.to_string(),
        pg_schema: None,
        vcluster_version: ovc_driver::DEFAULT_VCLUSTER_VERSION.into(),
        host: "sim".into(),
        kube_hosts: Vec::new(),
        artifacts: "memory://".into(),
        concurrency: 32,
        lease_ms: 5000,
        idle_poll_ms: None,
        name: Some("bench-feeds".into()),
        ready_timeout: ovc_engine::model::DEFAULT_READY_TIMEOUT,
        inventory_every: None,
        workflows: "vcluster".into(),
        traffic_file: None,
        pg_max_connections: 16,
        sim_etcd: Vec::new(),
    };
    let worker = crate::worker::build(
        store.clone(),
        &worker_args,
        std::sync::Arc::new(ovc_types::time::SystemClock),
    )
    .await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(worker.run(stopped));
    // Warm up (first connections, page cache), then measure idle.
    creates(&addr, "warm", 3).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = rss_mib(pid);
    let idle = creates(&addr, "idle", args.creates).await?;
    let head = store.head_position().await?;
    let received = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut followers = Vec::with_capacity(args.followers);
    for _ in 0..args.followers {
        followers.push(tokio::spawn(follow(addr.clone(), head, received.clone())));
    }
    // Every follower is connected once the server counts them.
    let metrics_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = call(&addr, Method::GET, "/metrics", "").await?;
        let open = String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("ovc_live_feeds "))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if open >= args.followers {
            break;
        }
        anyhow::ensure!(
            Instant::now() < metrics_deadline,
            "only {open} of {} followers connected after 60 s",
            args.followers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_followers = rss_mib(pid);
    let busy = creates(&addr, "busy", args.creates).await?;
    let rss_after = rss_mib(pid);
    let new_head = store.head_position().await?;
    let want = (new_head - head) * args.followers as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = received.load(Ordering::Relaxed);
    for f in &followers {
        f.abort();
    }
    let _ = stop.send(true);
    let _ = worker.await;
    println!(
        "log: {head} events before the followers; {} followers connected in {connect_s:.1} s",
        args.followers
    );
    println!(
        "server RSS: idle {rss_idle:.1} MiB; with {} followers {rss_followers:.1} MiB; after the creates {rss_after:.1} MiB",
        args.followers
    );
    println!("create -> RUNNING idle:           {}", summary(&idle));
    println!("create -> RUNNING with followers: {}", summary(&busy));
    println!(
        "followers received {got} of {want} events ({} new events x {} followers)",
        new_head - head,
        args.followers
    );
    Ok(())
}
