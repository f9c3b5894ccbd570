//! Crash tests with real processes: `ovc worker` processes run workflows on the simulated
//! host while one of them is killed with SIGKILL about every second and restarted, and
//! this process keeps submitting operations of every kind. Afterwards every operation
//! must have succeeded, no step may have succeeded twice, every stream must be gapless,
//! the simulated host must match the projections, and no two claims on one vcluster may
//! ever have overlapped.

use ovc_store::{Backend, LeaseRecord, Store};
use ovc_testkit::TestDb;
use ovc_tests::{name, ovc_bin, project, submit};
use ovc_types::command::{Command, RestoreTarget};
use ovc_types::command::{CreateParams, DeleteParams, DeleteSnapshotParams, RestoreParams};
use ovc_types::resource::host_namespace;
use ovc_types::spec::{ControlPlanePatch, ScalePatch, VClusterSpec};
use ovc_types::state::OperationKind;
use ovc_types::state::{OperationState, VClusterState};
use ovc_types::{Code, OperationId, SnapshotId};
use ovc_workflows::resume::ResumeParams;
use ovc_workflows::scale::ScaleParams;
use ovc_workflows::snapshot::SnapshotParams;
use ovc_workflows::suspend::SuspendParams;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A small deterministic PRNG (xorshift64*), seeded and printed so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Workers {
    url: String,
    schema: Option<String>,
    artifacts: String,
    log_dir: std::path::PathBuf,
    children: Vec<Child>,
    started: usize,
}

impl Workers {
    fn spawn(&mut self, slot: usize) -> Child {
        self.started += 1;
        let log = std::fs::File::create(
            self.log_dir
                .join(format!("worker-{slot}-{}.log", self.started)),
        )
        .expect("log file");
        let mut cmd = Process::new(ovc_bin());
        cmd.args([
            "worker",
            "--database-url",
            &self.url,
            "--artifacts",
            &self.artifacts,
            "--lease-ms",
            "1000",
            "--concurrency",
            "16",
            "--name",
            &format!("w{slot}-{}", self.started),
        ])
        .env("OVC_SIM_LATENCY_MS", "10")
        .env("OVC_SIM_READY_MS", "30")
        .env("OVC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
        if let Some(schema) = &self.schema {
            cmd.args(["--pg-schema", schema]);
        }
        cmd.spawn().expect("spawn ovc worker")
    }

    fn start(&mut self, n: usize) {
        for slot in 0..n {
            let child = self.spawn(slot);
            self.children.push(child);
        }
    }

    fn kill_and_restart(&mut self, slot: usize) {
        let child = &mut self.children[slot];
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let fresh = self.spawn(slot);
        self.children[slot] = fresh;
    }

    fn stop_all(&mut self) {
        for child in &mut self.children {
            let _ = Process::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A command that is valid for a vcluster in `state`, chosen at random. Until a
/// DELETE_SNAPSHOT has been accepted (`need_delete_snapshot`), the first running
/// vcluster with a snapshot deletes it: at 1 in 20 a short run could miss the kind.
fn pick(
    rng: &mut Rng,
    state: Option<VClusterState>,
    replicas: u32,
    snapshot: Option<SnapshotId>,
    vc: &str,
    need_delete_snapshot: bool,
) -> Option<Command> {
    let scale = |r: u32| {
        Command::new(ScaleParams {
            patch: ScalePatch {
                control_plane: Some(ControlPlanePatch {
                    replicas: Some(if r == 1 { 3 } else { 1 }),
                    ..ControlPlanePatch::default()
                }),
                quota: None,
            },
        })
    };
    match state {
        None | Some(VClusterState::Deleted) => Some(Command::new(CreateParams {
            spec: VClusterSpec::default(),
        })),
        Some(VClusterState::Running) if need_delete_snapshot && snapshot.is_some() => {
            Some(Command::new(DeleteSnapshotParams {
                snapshot_id: snapshot?,
            }))
        }
        Some(VClusterState::Running) => Some(match rng.below(20) {
            0..=5 => Command::new(SuspendParams {
                snapshot: rng.below(2) == 0,
                evict_workloads: rng.below(2) == 0,
            }),
            6..=9 => Command::new(SnapshotParams { description: None }),
            10..=14 => scale(replicas),
            15..=17 if snapshot.is_some() => Command::new(RestoreParams {
                snapshot_id: snapshot?,
                target: RestoreTarget::Existing(name(vc)),
            }),
            18 if snapshot.is_some() => Command::new(DeleteSnapshotParams {
                snapshot_id: snapshot?,
            }),
            _ => Command::new(DeleteParams {}),
        }),
        Some(VClusterState::Suspended) => Some(match rng.below(10) {
            0..=6 => Command::new(ResumeParams {
                reconcile_workloads: rng.below(2) == 0,
            }),
            7 if snapshot.is_some() => Command::new(RestoreParams {
                snapshot_id: snapshot?,
                target: RestoreTarget::Existing(name(vc)),
            }),
            _ => Command::new(DeleteParams {}),
        }),
        _ => None,
    }
}

fn check_leases(history: &[LeaseRecord]) -> (usize, Vec<f64>) {
    let mut by_vc: BTreeMap<_, Vec<&LeaseRecord>> = BTreeMap::new();
    for l in history {
        by_vc.entry(l.vcluster_uid).or_default().push(l);
    }
    let mut steals = 0;
    let mut recoveries = Vec::new();
    for (vc, claims) in by_vc {
        for pair in claims.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                a.held_until() <= b.claimed_at,
                "vcluster {vc}: claim {}@{} by {} overlaps the previous claim {}@{} by {} \
                 (held until {})",
                b.run_id,
                b.epoch,
                b.owner,
                a.run_id,
                a.epoch,
                a.owner,
                a.held_until()
            );
            if a.released_at.is_none() && a.run_id == b.run_id {
                steals += 1;
                recoveries.push((b.claimed_at - a.lease_until).num_milliseconds() as f64 / 1000.0);
            }
        }
    }
    (steals, recoveries)
}

async fn crash_test(
    backend: Backend,
    workers: usize,
    min_duration: Duration,
    min_ops: usize,
    vclusters: usize,
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42)
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let db = TestDb::new(backend).await;
    let store: Arc<dyn Store> = db.open().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let mut pool = Workers {
        url: db.url().to_string(),
        schema: db.config().pg_schema,
        artifacts: tmp.path().join("snapshots").display().to_string(),
        log_dir: tmp.path().to_path_buf(),
        children: Vec::new(),
        started: 0,
    };
    pool.start(workers);

    let names: Vec<String> = (0..vclusters).map(|i| format!("vc-{i:02}")).collect();
    let mut accepted: Vec<OperationId> = Vec::new();
    let mut snapshots: HashMap<String, SnapshotId> = HashMap::new();
    let mut snapshot_ops: HashMap<OperationId, String> = HashMap::new();
    let mut deleted_a_snapshot = false;
    let start = Instant::now();
    let mut next_kill = Instant::now() + Duration::from_millis(700 + rng.below(600));
    let mut kills = 0;
    let mut unavailable = 0;
    while start.elapsed() < min_duration || accepted.len() < min_ops {
        assert!(
            start.elapsed() < min_duration * 4,
            "could not submit {min_ops} operations"
        );
        if Instant::now() >= next_kill {
            let slot = rng.below(workers as u64) as usize;
            pool.kill_and_restart(slot);
            kills += 1;
            next_kill = Instant::now() + Duration::from_millis(700 + rng.below(600));
        }
        let vc = &names[rng.below(names.len() as u64) as usize];
        let current = store
            .get_vcluster(&project(), &name(vc))
            .await
            .expect("get");
        let replicas = current
            .as_ref()
            .map(|v| v.spec.control_plane.replicas)
            .unwrap_or(1);
        // Snapshots become restorable once their operation succeeded.
        for (op, owner) in snapshot_ops.clone() {
            if let Some(o) = store.get_operation(op).await.expect("op")
                && o.done
            {
                snapshot_ops.remove(&op);
                if o.state == OperationState::Succeeded {
                    snapshots.insert(owner, SnapshotId(op.as_uuid()));
                }
            }
        }
        let Some(command) = pick(
            &mut rng,
            current.as_ref().map(|v| v.state),
            replicas,
            snapshots.get(vc).copied(),
            vc,
            !deleted_a_snapshot,
        ) else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let is_snapshot = command.kind() == OperationKind::SNAPSHOT
            || command.params::<SuspendParams>().is_ok_and(|p| p.snapshot);
        // After a delete of the vcluster or of its snapshot, no restore picks that
        // snapshot again.
        let is_delete_snapshot = command.kind() == OperationKind::DELETE_SNAPSHOT;
        let is_delete = command.kind() == OperationKind::DELETE || is_delete_snapshot;
        match submit(store.as_ref(), vc, command, "crash-test").await {
            Ok(id) => {
                accepted.push(id);
                if is_snapshot {
                    snapshot_ops.insert(id, vc.clone());
                }
                if is_delete {
                    snapshots.remove(vc);
                }
                deleted_a_snapshot |= is_delete_snapshot;
            }
            // UNAVAILABLE is "safe to retry" (API.md): SQLite answers busy while a killed
            // worker's half-written transaction is rolled back. A client retries.
            Err(s) if s.code == Code::Unavailable => {
                unavailable += 1;
            }
            // Lost a race with a state change: a correct refusal, nothing was written.
            Err(s)
                if matches!(
                    s.code,
                    Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists
                ) => {}
            Err(s) => panic!("submit failed: {s}"),
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(30))).await;
    }
    eprintln!(
        "load phase: {} operations accepted in {:.1}s, {kills} workers killed, \
         {unavailable} submissions answered UNAVAILABLE",
        accepted.len(),
        start.elapsed().as_secs_f64()
    );

    // Let the surviving workers finish everything.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pending: HashSet<OperationId> = accepted.iter().copied().collect();
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} operations never finished",
            pending.len()
        );
        for id in pending.clone() {
            let op = store.get_operation(id).await.expect("get").expect("op");
            if op.done {
                if op.state != OperationState::Succeeded {
                    let events = store
                        .read_stream(&ovc_types::StreamName::operation(id), 0, 1000)
                        .await
                        .expect("events");
                    let story: Vec<String> = events
                        .iter()
                        .map(|e| {
                            format!(
                                "{} {} {} {}",
                                e.recorded_at.format("%H:%M:%S%.3f"),
                                e.metadata["actor"],
                                e.event_type,
                                e.data
                            )
                        })
                        .collect();
                    let history = store
                        .list_operations(
                            &ovc_store::OperationFilter {
                                vcluster: Some(op.vcluster.to_string()),
                                ..Default::default()
                            },
                            &ovc_store::PageRequest {
                                after: None,
                                limit: Some(1000),
                            },
                        )
                        .await
                        .expect("history");
                    let earlier: Vec<String> = history
                        .items
                        .iter()
                        .map(|o| {
                            let steps: Vec<String> = o
                                .steps
                                .iter()
                                .map(|s| format!("{}:{:?}:{}", s.name, s.state, s.attempts))
                                .collect();
                            format!(
                                "{} {:?} {:?} [{}]",
                                o.kind,
                                o.state,
                                o.command,
                                steps.join(", ")
                            )
                        })
                        .collect();
                    eprintln!("operations on {}:\n{}", op.vcluster, earlier.join("\n"));
                    let sim = ovc_driver::sim::SimHost::connect(
                        db.url(),
                        db.config().pg_schema.as_deref(),
                        Default::default(),
                    )
                    .await
                    .expect("sim");
                    let t = ovc_driver::Target {
                        host: "default".into(),
                        namespace: host_namespace(&op.vcluster, op.vcluster_uid),
                        release: op.vcluster.to_string(),
                    };
                    eprintln!("host: {:#?}", sim.release_state(&t).await.expect("release"));
                    for l in store
                        .lease_history(Some(op.vcluster_uid))
                        .await
                        .expect("leases")
                    {
                        eprintln!(
                            "lease {} {} {} {} {:?}",
                            l.run_id, l.epoch, l.owner, l.claimed_at, l.released_at
                        );
                    }
                    panic!(
                        "no faults were injected, yet {id} ended {:?}:\n{}",
                        op.state,
                        story.join("\n")
                    );
                }
                pending.remove(&id);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.stop_all();

    // Every kind of operation ran under the kills (and succeeded, checked above).
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for id in &accepted {
        let op = store.get_operation(*id).await.expect("get").expect("op");
        *kinds.entry(op.kind.as_str().to_string()).or_default() += 1;
    }
    eprintln!("operations by kind: {kinds:?}");
    for kind in [
        "CREATE",
        "SUSPEND",
        "RESUME",
        "SNAPSHOT",
        "RESTORE",
        "SCALE",
        "DELETE",
        "DELETE_SNAPSHOT",
    ] {
        assert!(kinds.contains_key(kind), "no {kind} ran: {kinds:?}");
    }

    // Streams are gapless, positions too, and no step succeeded twice.
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut succeeded: HashSet<(String, String)> = HashSet::new();
    let mut after = 0;
    loop {
        let batch = store.read_all(after, 1000).await.expect("read_all");
        if batch.is_empty() {
            break;
        }
        for e in batch {
            assert_eq!(e.position, after + 1, "gap in positions");
            after = e.position;
            let v = versions.entry(e.stream.clone()).or_default();
            assert_eq!(e.version, *v + 1, "gap in stream {}", e.stream);
            *v = e.version;
            if e.event_type == "StepSucceeded" {
                let step = e.data["step"].as_str().unwrap_or_default().to_string();
                assert!(
                    succeeded.insert((e.stream.clone(), step.clone())),
                    "step {step} of {} succeeded twice",
                    e.stream
                );
            }
        }
    }

    // The simulated host equals the projections.
    let sim = ovc_driver::sim::SimHost::connect(
        db.url(),
        db.config().pg_schema.as_deref(),
        Default::default(),
    )
    .await
    .expect("sim");
    let state = sim.state().await.expect("sim state");
    let mut live_namespaces = HashSet::new();
    for vc in &names {
        let Some(v) = store
            .get_vcluster(&project(), &name(vc))
            .await
            .expect("get")
        else {
            continue;
        };
        let ns = v.host_namespace.clone();
        let release = state.releases.iter().find(|r| r.namespace == ns);
        match v.state {
            VClusterState::Running => {
                let r = release.unwrap_or_else(|| panic!("{vc} RUNNING without a release"));
                assert!(!r.paused, "{vc} RUNNING but paused on the host");
                assert_eq!(r.replicas, v.spec.control_plane.replicas, "{vc} replicas");
                assert_eq!(r.values.control_plane, v.spec.control_plane, "{vc} values");
                live_namespaces.insert(ns);
            }
            VClusterState::Suspended => {
                let r = release.unwrap_or_else(|| panic!("{vc} SUSPENDED without a release"));
                assert!(
                    r.paused && r.replicas == 0,
                    "{vc} SUSPENDED but running on the host"
                );
                live_namespaces.insert(ns);
            }
            VClusterState::Deleted => assert!(release.is_none(), "{vc} DELETED but installed"),
            other => panic!("{vc} ended in {other}"),
        }
    }
    let on_host: HashSet<String> = state.namespaces.iter().map(|n| n.name.clone()).collect();
    assert_eq!(
        on_host, live_namespaces,
        "namespaces on the host vs live vclusters"
    );

    // No two claims on one vcluster overlapped; kills did hit running operations.
    let history = store.lease_history(None).await.expect("history");
    let (steals, mut recoveries) = check_leases(&history);
    recoveries.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        recoveries
            .get(((recoveries.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    eprintln!(
        "{} claims, {steals} leases stolen after kill -9; recovery (lease expiry -> next claim) p50 {:.3}s p99 {:.3}s",
        history.len(),
        pct(0.5),
        pct(0.99)
    );
    assert!(
        kills >= (min_duration.as_secs() as usize) / 2,
        "too few kills: {kills}"
    );
    assert!(steals >= 1, "no kill ever interrupted a running operation");
    // Projections are what the events say.
    let live = store.dump_projections().await.expect("dump");
    store.rebuild_projections().await.expect("rebuild");
    assert_eq!(store.dump_projections().await.expect("dump"), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_postgres_three_workers_killed_every_second() {
    crash_test(Backend::Postgres, 3, Duration::from_secs(30), 200, 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_sqlite_one_worker_killed_every_second() {
    crash_test(Backend::Sqlite, 1, Duration::from_secs(30), 200, 50).await;
}
