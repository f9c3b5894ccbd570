//! The in-process test harness: a fresh migrated database (ovc-testkit), the simulated
//! host on it, a snapshot directory and one worker running [`crate::registry`]. It lives
//! here, behind the `harness` feature, so that the sweeps at the end of every workflow
//! file (`crate::sweep`) and the integration tests of `tests/` (which re-export it as
//! `ovc_tests::Harness`) share one copy. It cannot live in ovc-testkit: the driver and
//! engine dev-depend on ovc-testkit, and the harness needs both.

use ovc_driver::sim::{FaultRule, SimConfig, SimHost};
use ovc_engine::accept::{Accepted, CommandRequest, accept};
use ovc_engine::executor::{Executor, RetryPolicy};
use ovc_engine::services::Services;
use ovc_engine::worker::{Worker, WorkerOptions, WorkerReport};
use ovc_snapshots::{ArtifactStore, OpendalArtifacts};
use ovc_store::{Backend, Store};
use ovc_testkit::TestDb;
use ovc_types::command::Command;
use ovc_types::resource::{Operation, VCluster};
use ovc_types::time::{RandomIds, SystemClock};
use ovc_types::{OperationId, ProjectName, Status, VClusterName};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Options of a [`Harness`].
#[derive(Debug, Clone, Default)]
pub struct HarnessOptions {
    /// The simulated host's behaviour (faults, latency).
    pub sim: SimConfig,
    /// Run every step twice (crash after effect, before journal).
    pub repeat_steps: bool,
    /// Caps step time limits (for hang tests).
    pub max_step_timeout: Option<Duration>,
    /// The wait limit of steps (default: the engine's 10 minutes).
    pub ready_timeout: Option<Duration>,
    /// Host names the worker's driver answers to: the simulator behind a
    /// `HostRouter` under each (empty: the simulator itself, whatever a target's host).
    pub hosts: Vec<String>,
}

impl HarnessOptions {
    /// The defaults, with the simulated host injecting `faults`.
    pub fn with_faults(faults: Vec<FaultRule>) -> Self {
        Self {
            sim: SimConfig {
                faults,
                ..SimConfig::default()
            },
            ..Self::default()
        }
    }

    /// The defaults, with the fault rules `rules` (`OVC_SIM_FAULTS` syntax; `""`: none).
    pub fn with_fault_rules(rules: &str) -> Self {
        if rules.is_empty() {
            return Self::default();
        }
        Self::with_faults(FaultRule::parse_list(rules).expect("fault rules"))
    }
}

/// A fresh database, the simulated host on it, a snapshot directory, and one in-process
/// worker.
pub struct Harness {
    /// The database (kept alive for the harness's lifetime).
    pub db: TestDb,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The simulated host.
    pub sim: Arc<SimHost>,
    /// Snapshot storage.
    pub artifacts: Arc<dyn ArtifactStore>,
    _artifacts_dir: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
    worker: Option<tokio::task::JoinHandle<WorkerReport>>,
}

/// Accepts `command` for vcluster `vc` of [`project`] with the product's registry, as
/// the API would, recording `actor`; the operation's id.
pub async fn submit(
    store: &dyn Store,
    vc: &str,
    command: Command,
    actor: &str,
) -> Result<OperationId, Status> {
    accept(
        store,
        &crate::registry(),
        &RandomIds,
        CommandRequest {
            project: project(),
            vcluster: name(vc),
            command,
            request_id: None,
            actor: Some(actor.into()),
            traceparent: None,
        },
    )
    .await
    .map(|a| a.operation_id)
}

/// The project every harness call uses.
pub fn project() -> ProjectName {
    "default".parse().expect("project")
}

/// A vcluster name.
pub fn name(s: &str) -> VClusterName {
    s.parse().expect("name")
}

/// A retry policy with tiny backoffs, so tests of retries run fast.
pub fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        in_process_retries: 1,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        min_durable_backoff: Duration::from_millis(5),
        max_durable_backoff: Duration::from_millis(20),
    }
}

async fn spawn_worker(
    db: &TestDb,
    store: &Arc<dyn Store>,
    artifacts: &Arc<dyn ArtifactStore>,
    options: &HarnessOptions,
) -> (
    Arc<SimHost>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<WorkerReport>,
) {
    let schema = db.config().pg_schema;
    let sim = Arc::new(
        SimHost::connect(db.url(), schema.as_deref(), options.sim.clone())
            .await
            .expect("sim host"),
    );
    let driver: Arc<dyn ovc_driver::HostDriver> = if options.hosts.is_empty() {
        sim.clone()
    } else {
        let mut router = ovc_driver::router::HostRouter::new();
        for h in &options.hosts {
            router.add(h.clone(), sim.clone()).expect("host name");
        }
        Arc::new(router)
    };
    let exec = Executor {
        store: store.clone(),
        registry: Arc::new(crate::registry()),
        driver,
        step_hook: Some(sim.clone()),
        services: Arc::new(Services {
            artifacts: artifacts.clone(),
        }),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
        retry: fast_retries(),
        owner: String::new(),
        repeat_steps: options.repeat_steps,
        max_step_timeout: options.max_step_timeout,
        ready_timeout: options
            .ready_timeout
            .unwrap_or(ovc_engine::model::DEFAULT_READY_TIMEOUT),
    };
    let worker = Worker::new(
        exec,
        WorkerOptions {
            owner: "test-worker".into(),
            concurrency: 8,
            lease: Duration::from_secs(5),
            idle_poll: Duration::from_millis(20),
            grace: Duration::from_secs(5),
        },
    );
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(worker.run(rx));
    (sim, tx, handle)
}

impl Harness {
    /// Starts a harness on `backend`.
    pub async fn start(backend: Backend, options: HarnessOptions) -> Harness {
        let db = TestDb::new(backend).await;
        let store = db.open().await;
        // As `ovc migrate` does (the worker does it too, but asynchronously).
        let registry = crate::registry();
        store
            .sync_call_rules(&ovc_store::RuleTables::of(&registry, registry.kinds()))
            .await
            .expect("call rules");
        let dir = tempfile::tempdir().expect("artifacts dir");
        let artifacts: Arc<dyn ArtifactStore> = Arc::new(
            OpendalArtifacts::from_url(&dir.path().display().to_string()).expect("artifacts"),
        );
        let (sim, shutdown, handle) = spawn_worker(&db, &store, &artifacts, &options).await;
        Harness {
            db,
            store,
            sim,
            artifacts,
            _artifacts_dir: dir,
            shutdown,
            worker: Some(handle),
        }
    }

    /// Stops the worker and starts a new one with `options` on the same database (an
    /// operator fixed the host, a deploy changed the config, ...).
    pub async fn restart_worker(&mut self, options: HarnessOptions) {
        let _ = self.shutdown.send(true);
        if let Some(h) = self.worker.take() {
            h.await.expect("worker task");
        }
        let (sim, shutdown, handle) =
            spawn_worker(&self.db, &self.store, &self.artifacts, &options).await;
        self.sim = sim;
        self.shutdown = shutdown;
        self.worker = Some(handle);
    }

    /// Submits `command` on vcluster `vc`.
    pub async fn submit(&self, vc: &str, command: Command) -> Result<OperationId, Status> {
        self.submit_with(vc, command, None)
            .await
            .map(|a| a.operation_id)
    }

    /// Submits `command` on vcluster `vc` with an idempotency key.
    pub async fn submit_with(
        &self,
        vc: &str,
        command: Command,
        request_id: Option<&str>,
    ) -> Result<Accepted, Status> {
        self.submit_as(&project(), vc, command, request_id, &RandomIds)
            .await
    }

    /// Submits `command` on vcluster `vc` of `project`, minting ids with `ids`.
    pub async fn submit_as(
        &self,
        project: &ProjectName,
        vc: &str,
        command: Command,
        request_id: Option<&str>,
        ids: &dyn ovc_types::time::IdSource,
    ) -> Result<Accepted, Status> {
        accept(
            self.store.as_ref(),
            &crate::registry(),
            ids,
            CommandRequest {
                project: project.clone(),
                vcluster: name(vc),
                command,
                request_id: request_id.map(str::to_string),
                actor: Some("test".into()),
                traceparent: None,
            },
        )
        .await
    }

    /// Waits until operation `id` is done (panics after 30 s).
    pub async fn wait(&self, id: OperationId) -> Operation {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let op = self
                .store
                .get_operation(id)
                .await
                .expect("get operation")
                .expect("operation exists");
            if op.done {
                return op;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "operation {id} not done after 30 s: {op:#?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Submits and waits.
    pub async fn run(&self, vc: &str, command: Command) -> Operation {
        let id = self
            .submit(vc, command)
            .await
            .unwrap_or_else(|e| panic!("submit on {vc}: {e}"));
        self.wait(id).await
    }

    /// The vcluster `vc` (live, else last deleted).
    pub async fn vcluster(&self, vc: &str) -> Option<VCluster> {
        self.store
            .get_vcluster(&project(), &name(vc))
            .await
            .expect("get vcluster")
    }

    /// Stops the worker gracefully.
    pub async fn stop(mut self) -> WorkerReport {
        let _ = self.shutdown.send(true);
        match self.worker.take() {
            Some(h) => h.await.expect("worker task"),
            None => WorkerReport::default(),
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
