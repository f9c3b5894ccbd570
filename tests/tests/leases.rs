//! Leases with real `ovc worker` processes, on both backends.
//!
//! - Clock skew: three workers whose clocks are 10 s ahead, 10 s behind and exact
//!   (`OVC_TEST_CLOCK_SKEW_MS`, a test-only knob of `ovc worker`) share the work. Leases
//!   and durable timers follow the database's clock, so no healthy lease is ever stolen,
//!   no two claims on a vcluster overlap in `run_leases`, and readiness timers fire on
//!   time (a timer set by a fast clock is not 10 s late).
//! - Self-fencing: a worker frozen with SIGSTOP in the middle of an operation, past its
//!   lease, while another worker takes the run over, makes no further host call for that
//!   run once resumed with SIGCONT (the simulated host logs every call with the lease it
//!   was made under, `OVC_SIM_RECORD_CALLS=1`).

use ovc_driver::sim::{CallRecord, SimConfig, SimHost};
use ovc_store::{Backend, LeaseRecord, Store};
use ovc_testkit::TestDb;
use ovc_tests::ovc_bin;
use ovc_types::OperationId;
use ovc_types::command::Command;
use ovc_types::command::CreateParams;
use ovc_types::spec::VClusterSpec;
use ovc_types::state::OperationState;
use ovc_workflows::resume::ResumeParams;
use ovc_workflows::suspend::SuspendParams;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Worker processes of one test; killed when dropped.
struct Workers {
    url: String,
    schema: Option<String>,
    artifacts: String,
    log_dir: std::path::PathBuf,
    children: Vec<(String, Child)>,
}

impl Workers {
    fn new(db: &TestDb, dir: &std::path::Path) -> Self {
        Self {
            url: db.url().to_string(),
            schema: db.config().pg_schema,
            artifacts: dir.join("snapshots").display().to_string(),
            log_dir: dir.to_path_buf(),
            children: Vec::new(),
        }
    }

    /// Starts `ovc worker --name NAME` with `env` on top of the common settings.
    fn spawn(&mut self, worker: &str, lease_ms: u64, env: &[(&str, String)]) -> u32 {
        let log = std::fs::File::create(self.log_dir.join(format!("{worker}.log"))).expect("log");
        let mut cmd = Process::new(ovc_bin());
        cmd.args([
            "worker",
            "--database-url",
            &self.url,
            "--artifacts",
            &self.artifacts,
            "--lease-ms",
            &lease_ms.to_string(),
            "--idle-poll-ms",
            "50",
            "--name",
            worker,
        ])
        .env("OVC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(schema) = &self.schema {
            cmd.args(["--pg-schema", schema]);
        }
        let child = cmd.spawn().expect("spawn ovc worker");
        let pid = child.id();
        self.children.push((worker.to_string(), child));
        pid
    }

    /// The logs of every worker (for failure messages).
    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(w, _)| {
                let log = std::fs::read_to_string(self.log_dir.join(format!("{w}.log")))
                    .unwrap_or_default();
                format!("--- {w}\n{log}")
            })
            .collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = Process::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Process::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

async fn submit(store: &dyn Store, vc: &str, command: Command) -> OperationId {
    ovc_tests::submit(store, vc, command, "lease-test")
        .await
        .expect("accept")
}

/// Waits until every operation is done; returns how long each took (from `since`).
async fn wait_done(
    store: &dyn Store,
    ops: &[OperationId],
    since: Instant,
    limit: Duration,
    workers: &Workers,
) -> Vec<Duration> {
    let mut took: BTreeMap<OperationId, Duration> = BTreeMap::new();
    while took.len() < ops.len() {
        assert!(
            since.elapsed() < limit,
            "operations not done after {limit:?}\n{}",
            workers.logs()
        );
        for op in ops {
            if took.contains_key(op) {
                continue;
            }
            let o = store.get_operation(*op).await.expect("get").expect("op");
            if o.done {
                assert_eq!(
                    o.state,
                    OperationState::Succeeded,
                    "{o:?}\n{}",
                    workers.logs()
                );
                took.insert(*op, since.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    took.into_values().collect()
}

/// Asserts that no claim on a vcluster overlapped the previous one, and returns the
/// steals: a claim of a run whose previous claim was never released.
fn overlaps_and_steals(history: &[LeaseRecord]) -> Vec<String> {
    let mut by_vc: BTreeMap<_, Vec<&LeaseRecord>> = BTreeMap::new();
    for l in history {
        by_vc.entry(l.vcluster_uid).or_default().push(l);
    }
    let mut steals = Vec::new();
    for (vc, claims) in by_vc {
        for pair in claims.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                a.held_until() <= b.claimed_at,
                "vcluster {vc}: claim {}@{} by {} at {} overlaps {}@{} by {} (held until {})",
                b.run_id,
                b.epoch,
                b.owner,
                b.claimed_at,
                a.run_id,
                a.epoch,
                a.owner,
                a.held_until()
            );
            if a.released_at.is_none() && a.run_id == b.run_id {
                steals.push(format!(
                    "{} stole run {} from {} (epoch {} -> {})",
                    b.owner, a.run_id, a.owner, a.epoch, b.epoch
                ));
            }
        }
    }
    steals
}

async fn skewed_worker_clocks(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store: Arc<dyn Store> = db.open().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut workers = Workers::new(&db, tmp.path());
    let sim = [
        ("OVC_SIM_LATENCY_MS", "20".to_string()),
        // Readiness waits are durable timers (Pending{check_in} → Reschedule).
        ("OVC_SIM_READY_MS", "400".to_string()),
    ];
    for (worker, skew) in [
        ("fast", Some(10_000)),
        ("slow", Some(-10_000)),
        ("exact", None),
    ] {
        let mut env = sim.to_vec();
        if let Some(ms) = skew {
            env.push(("OVC_TEST_CLOCK_SKEW_MS", format!("{ms}")));
        }
        // A lease of 3 s (renewed every second) tolerates a loaded machine; the skew
        // (10 s) is far beyond it.
        workers.spawn(worker, 3000, &env);
    }
    let names: Vec<String> = (0..8).map(|i| format!("skew-{i}")).collect();
    let mut latencies = Vec::new();
    for command in [
        Command::new(CreateParams {
            spec: VClusterSpec::default(),
        }),
        Command::new(SuspendParams {
            snapshot: false,
            evict_workloads: true,
        }),
        Command::new(ResumeParams {
            reconcile_workloads: true,
        }),
    ] {
        let since = Instant::now();
        let mut ops = Vec::new();
        for vc in &names {
            ops.push(submit(store.as_ref(), vc, command.clone()).await);
        }
        latencies.extend(
            wait_done(
                store.as_ref(),
                &ops,
                since,
                Duration::from_secs(60),
                &workers,
            )
            .await,
        );
    }
    let history = store.lease_history(None).await.expect("history");
    let steals = overlaps_and_steals(&history);
    assert!(
        steals.is_empty(),
        "healthy leases were stolen:\n{}\n{}",
        steals.join("\n"),
        workers.logs()
    );
    let owners: BTreeSet<&str> = history.iter().map(|l| l.owner.as_str()).collect();
    for w in ["fast", "slow"] {
        assert!(owners.contains(w), "{w} never claimed a run: {owners:?}");
    }
    // A readiness timer of 400 ms set by the fast worker would fire 10 s late if it
    // followed that worker's clock.
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(8),
        "an operation took {slowest:?}: a durable timer followed a skewed clock"
    );
    eprintln!(
        "{} claims by {owners:?}, no steals; slowest operation {slowest:?}",
        history.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_worker_clocks_postgres() {
    skewed_worker_clocks(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_worker_clocks_sqlite() {
    skewed_worker_clocks(Backend::Sqlite).await;
}

/// The calls of `op` made by `owner`.
fn calls_by(calls: &[CallRecord], op: OperationId, owner: &str) -> Vec<CallRecord> {
    calls
        .iter()
        .filter(|c| c.operation_id == Some(op) && c.owner.as_deref() == Some(owner))
        .cloned()
        .collect()
}

async fn frozen_worker_makes_no_host_call_after_its_lease(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store: Arc<dyn Store> = db.open().await;
    let sim = SimHost::connect(
        db.url(),
        db.config().pg_schema.as_deref(),
        SimConfig::default(),
    )
    .await
    .expect("sim");
    let tmp = tempfile::tempdir().expect("tmp");
    let mut workers = Workers::new(&db, tmp.path());
    // Slow host calls: a frozen worker is almost surely inside one (sleeping its latency,
    // about to act) when it is stopped. Several runs at once: each one races its own
    // renewal on resume, so a worker that does not fence itself is caught.
    let env = [
        ("OVC_SIM_LATENCY_MS", "600".to_string()),
        ("OVC_SIM_RECORD_CALLS", "1".to_string()),
    ];
    let lease_ms = 1000;
    let frozen = workers.spawn("frozen", lease_ms, &env);
    let mut ops = Vec::new();
    for i in 0..4 {
        let create = Command::new(CreateParams {
            spec: VClusterSpec::default(),
        });
        ops.push(submit(store.as_ref(), &format!("fence-{i}"), create).await);
    }
    // Freeze the worker once it is in the middle of every operation.
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            workers.logs()
        );
        let calls = sim.calls().await.expect("calls");
        if ops
            .iter()
            .all(|op| !calls_by(&calls, *op, "frozen").is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    signal(frozen, "-STOP");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = sim.calls().await.expect("calls");
    let before: Vec<Vec<CallRecord>> = ops
        .iter()
        .map(|op| calls_by(&calls, *op, "frozen"))
        .collect();
    // Past its lease, another worker takes every run over.
    tokio::time::sleep(Duration::from_millis(lease_ms * 2)).await;
    workers.spawn("rescuer", lease_ms, &env);
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "{}",
            workers.logs()
        );
        let history = store.lease_history(None).await.expect("history");
        let rescued = history.iter().filter(|l| l.owner == "rescuer").count();
        if rescued >= ops.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Resume the frozen worker while the rescuer is at work.
    signal(frozen, "-CONT");
    wait_done(
        store.as_ref(),
        &ops,
        Instant::now(),
        Duration::from_secs(60),
        &workers,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(lease_ms)).await;
    let calls = sim.calls().await.expect("calls");
    let mut late = Vec::new();
    for (op, before) in ops.iter().zip(&before) {
        let after = calls_by(&calls, *op, "frozen");
        late.extend(after.into_iter().skip(before.len()));
        let epoch = before.last().and_then(|c| c.epoch).expect("an epoch");
        let rescued = calls_by(&calls, *op, "rescuer");
        assert!(!rescued.is_empty(), "the rescuer made no call for {op}");
        assert!(
            rescued.iter().all(|c| c.epoch.is_some_and(|e| e > epoch)),
            "the rescuer's calls carry its own, later epoch: {rescued:?}"
        );
    }
    assert!(
        late.is_empty(),
        "the frozen worker called the host after it was resumed: {late:#?}\n{}",
        workers.logs()
    );
    let history = store.lease_history(None).await.expect("history");
    overlaps_and_steals(&history);
    eprintln!(
        "frozen worker: {} calls before SIGSTOP, none after SIGCONT",
        before.iter().map(Vec::len).sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_makes_no_host_call_after_its_lease_postgres() {
    frozen_worker_makes_no_host_call_after_its_lease(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_makes_no_host_call_after_its_lease_sqlite() {
    frozen_worker_makes_no_host_call_after_its_lease(Backend::Sqlite).await;
}
