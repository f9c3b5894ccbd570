//! The simulated host: a [`HostDriver`] whose "cluster" lives in the store database.
//!
//! # Why it exists
//!
//! `ovc dev` runs without a Kubernetes cluster, the engine's tests need a host whose
//! failures they can script, and benchmarks need a host that costs a known amount per
//! call. [`SimHost`] is that host. It is a product feature, not a mock: it follows
//! docs/vcluster-mechanics.md (namespaces, Helm revisions, the paused annotations, the
//! one-vcluster-per-namespace rule, readiness that takes time, the backing store that
//! can only be dumped while running and loaded while stopped), so a workflow that is
//! correct against the simulation does the right things in the right order on a real
//! host.
//!
//! # State
//!
//! Everything is in the store database (tables of migration `0002_sim_host.sql`, see
//! the `db` submodule), never in memory: a worker killed with `kill -9` finds the host
//! as it left it, and several worker processes share one host. Every state change is
//! one transaction (SQLite `BEGIN IMMEDIATE`; PostgreSQL locks the namespace row), so
//! concurrent workers never lose an update and an ensure raced by two workers changes
//! the state once.
//!
//! Every call that changes state adds 1 to the effect counter `"<method>:<namespace>"`
//! (e.g. `install_release:ovc-default-team-a`) in the same transaction; a call that finds
//! the desired state in place changes nothing and counts nothing. [`SimHost::effects`]
//! reads the counters, so tests can assert "exactly once".
//!
//! Time is the wall clock ([`chrono::Utc::now`]): a control plane scaled at `t` has its
//! pods and is ready at `t + ready_delay`.
//!
//! # Semantics in brief
//!
//! - `ensure_namespace` labels what it creates with the owner (`ovc.dev/project`,
//!   `ovc.dev/vcluster`, `ovc.dev/uid`) and the creating operation; it refuses (permanent
//!   `FAILED_PRECONDITION`, reason `NAMESPACE_NOT_OWNED`) a namespace whose `ovc.dev/uid`
//!   is not the caller's, naming the owner found or saying ovc did not create it.
//! - Reads that have a natural "absent" answer do not fail on a missing release:
//!   `release`/`control_plane`/`kubeconfig` → `None`, `workload_pods` → empty,
//!   `health_check` → false. Removals tolerate absence: `uninstall_release` → `Ok`,
//!   `evict_workload_pods` → `Ok(0)`, `delete_namespace` → `Ok(true)`.
//! - Actions that need the release (`pause`, `resume`, `reconcile_workloads`,
//!   `dump_backing_store`, `load_backing_store`) fail with a permanent `NOT_FOUND`
//!   "release X not found in namespace Y".
//! - `install_release` needs the namespace (permanent `FAILED_PRECONDITION`) and refuses
//!   a second release in one namespace (mechanics §1 step 2). Upgrading a *paused*
//!   release keeps it paused and records the new replica count in `paused_replicas`:
//!   mechanics §6 says a plain `helm upgrade` would reset the StatefulSet from 0 to N
//!   while `loft.sh/paused` stays, waking a suspended vcluster behind the engine's back,
//!   so the driver contract is "an upgrade never unpauses" and the sim models exactly that.
//! - `reconcile_workloads` recreates the workload pods only on a running control plane:
//!   paused or scaled to 0 → permanent `FAILED_PRECONDITION`; scaled up but not ready
//!   yet → transient (retry after the readiness wait).
//!
//! # Configuration
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `OVC_SIM_LATENCY_MS` | `0` | slept at the start of every host call |
//! | `OVC_SIM_READY_MS` | `0` | time from a scale until the pods exist and are ready |
//! | `OVC_SIM_FAULTS` | none | `;`-separated fault rules `workflow/step:kind[:count]` |
//! | `OVC_SIM_RECORD_CALLS` | `0` | `1`: log every call with its lease in `sim_calls` |
//! | `OVC_SIM_ETCD` | none | etcd endpoints: new vclusters keep their backing store there |
//!
//! # The backing store
//!
//! By default a simulated vcluster's backing store is a JSON document in its database
//! row. With `OVC_SIM_ETCD` (`ovc dev --sim-etcd`) every vcluster installed from then on
//! keeps it in that etcd under `/ovc-sim/<namespace>/<release>/` instead (the choice is
//! recorded in the release and kept for life), laid out as Kubernetes does
//! (`registry/<resource>/[<namespace>/]<name>`, the four objects of
//! [`model::initial_objects`] written on the first start): a snapshot dumps it through
//! [`crate::etcd::EtcdBackingStore`] at one revision (recorded in the manifest), a restore
//! wipes the prefix and loads it, and an uninstall deletes it. Either way the dump carries
//! its per-object export. A dump of one kind is refused (before anything changes) by a
//! vcluster of the other.
//!
//! # Self-fencing
//!
//! Every call checks [`CallCtx::check`] after its latency and before it touches the
//! state, as a real driver must: a worker whose lease was lost or has passed (by its own
//! monotonic reckoning, see [`crate::Fence`]) gets a transient error and changes
//! nothing. With `OVC_SIM_RECORD_CALLS=1` every call that passed the check is logged
//! with its operation, step, lease epoch and owner ([`SimHost::calls`]), so a test can
//! prove that a frozen and resumed worker made no further call.
//!
//! # Faults
//!
//! A rule names a workflow and a step of [`CallCtx`] (`*` for any step, undo steps
//! included; an undo is the step `undo:<step>`, so `suspend/undo:scale_to_zero` names
//! one), a kind and an optional count. Rules are checked at the start of every host call,
//! after the latency and before any effect, and by the engine before every step attempt
//! through [`SimHost::inject_faults`] (so a step that never calls the host can be
//! faulted too; the engine's `StepHook`, not the [`HostDriver`] trait). Matching calls are counted per
//! `(operation, workflow, step)` in `sim_fault_hits` (persisted: the count survives
//! restarts and is shared by processes); the `n`-th call fails when a matching rule's
//! count is at least `n` (default: transient 1, permanent and hang unlimited).
//! `transient` returns [`DriverError::Transient`] ("injected transient fault at
//! create/install_release (1 of 2)"), `permanent` a permanent `FAILED_PRECONDITION` with
//! reason `INJECTED_FAULT`, `hang` never returns (the engine's step timeout must cancel
//! the call).

mod config;
mod db;
mod model;

pub use config::{
    ConfigError, ETCD_ENV, FAULTS_ENV, FaultKind, FaultParseError, FaultRule, LATENCY_ENV,
    READY_ENV, RECORD_CALLS_ENV, SimConfig, parse_endpoints,
};
pub use model::{
    SimNamespace, SimRelease, SimState, WORKLOAD_PODS, initial_backing_store, initial_objects,
    render_kubeconfig, sim_export,
};

use crate::etcd::EtcdBackingStore;
use crate::{
    ANNOTATION_CREATED_BY, BackingStoreInfo, BackingStoreSink, BackingStoreSource, CallCtx,
    ControlPlaneStatus, DriverError, DriverResult, HostDriver, MemorySource, NamespaceOutcome,
    Owner, ReleaseInfo, ReleaseValues, Target,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use db::{NAMESPACE, Pool, RELEASE, Tx};
use ovc_types::error::{Code, Status};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why the simulated host could not do its own work (as opposed to a simulated host
/// error, which is a [`DriverError`]).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The database failed (unreachable, locked too long, missing tables: run the store's
    /// migrations first).
    #[error("sim host database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored document does not decode.
    #[error("sim host state is corrupt ({what}): {message}")]
    Corrupt {
        /// Which object.
        what: String,
        /// The decoding error.
        message: String,
    },
    /// Neither `sqlite:` nor `postgres:`.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    /// A PostgreSQL schema name that is not a plain identifier.
    #[error("schema {0:?}: use lowercase letters, digits and '_' (not starting with a digit)")]
    InvalidSchema(String),
    /// The sim tables cannot be read: the store's migrations have not run on this
    /// database (or schema).
    #[error(
        "the simulated host's tables are missing or unreadable (run the store migrations, \
         e.g. `ovc migrate`, first): {0}"
    )]
    NotMigrated(#[source] Box<SimError>),
    /// Bad `OVC_SIM_*` configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The etcd of `OVC_SIM_ETCD` cannot be reached.
    #[error("the simulated host's etcd ({endpoints}): {message}")]
    Etcd {
        /// The endpoints.
        endpoints: String,
        /// Why.
        message: String,
    },
}

impl From<SimError> for DriverError {
    fn from(e: SimError) -> Self {
        match e {
            // Like an unreachable API server: worth retrying.
            SimError::Database(_) => DriverError::transient(e.to_string()),
            _ => DriverError::Permanent(Status::internal(e.to_string())),
        }
    }
}

/// The effect counter key of `method` in `namespace`: `"<method>:<namespace>"`.
pub fn effect_key(method: &str, namespace: &str) -> String {
    format!("{method}:{namespace}")
}

/// One logged host call (`OVC_SIM_RECORD_CALLS=1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// Order of the calls (1, 2, ...).
    pub seq: u64,
    /// The [`HostDriver`] method.
    pub method: String,
    /// The target namespace.
    pub namespace: String,
    /// The operation (`None`: a read outside any operation).
    pub operation_id: Option<ovc_types::OperationId>,
    /// The workflow.
    pub workflow: String,
    /// The step.
    pub step: String,
    /// The lease epoch the call was made under (`None`: unfenced).
    pub epoch: Option<i64>,
    /// The worker holding that lease.
    pub owner: Option<String>,
}

/// The simulated host. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct SimHost {
    pool: Pool,
    config: Arc<SimConfig>,
    /// The etcd of [`SimConfig::etcd_endpoints`], unscoped (`None`: not configured).
    etcd: Option<EtcdBackingStore>,
}

/// The key (under a vcluster's etcd prefix) where a Kubernetes upgrade marks the storage
/// version, as [`model::at_storage_version`] does in the database document.
pub const STORAGE_VERSION_KEY: &str = "registry/ovc-sim/storage-version";

/// Where the simulator keeps the backing store of `t` in its etcd.
pub fn etcd_prefix(t: &Target) -> String {
    format!("/ovc-sim/{}/{}/", t.namespace, t.release)
}

/// What a state-changing call sees inside its transaction.
struct Slot {
    now: DateTime<Utc>,
    namespace_exists: bool,
    /// Other releases in the namespace.
    others: Vec<String>,
    /// The target release (settled at `now`); set to `None` to delete it.
    release: Option<SimRelease>,
}

fn to_doc<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, SimError> {
    serde_json::to_value(value).map_err(|e| SimError::Corrupt {
        what: "document to store".into(),
        message: e.to_string(),
    })
}

fn from_doc<T: serde::de::DeserializeOwned>(
    what: impl FnOnce() -> String,
    doc: serde_json::Value,
) -> Result<T, SimError> {
    serde_json::from_value(doc).map_err(|e| SimError::Corrupt {
        what: what(),
        message: e.to_string(),
    })
}

fn not_found(t: &Target) -> DriverError {
    DriverError::permanent(
        Code::NotFound,
        format!(
            "release {} not found in namespace {}",
            t.release, t.namespace
        ),
    )
}

fn not_running(t: &Target) -> DriverError {
    DriverError::permanent(
        Code::FailedPrecondition,
        format!(
            "control plane of {} (namespace {}) is not running",
            t.release, t.namespace
        ),
    )
}

fn running(t: &Target) -> DriverError {
    DriverError::permanent(
        Code::FailedPrecondition,
        format!(
            "control plane of {} (namespace {}) is running: pause it before loading its \
             backing store",
            t.release, t.namespace
        ),
    )
}

fn check_namespace(t: &Target) -> DriverResult<()> {
    if t.namespace.is_empty() {
        return Err(DriverError::permanent(
            Code::InvalidArgument,
            "the target namespace is empty",
        ));
    }
    Ok(())
}

fn check_target(t: &Target) -> DriverResult<()> {
    check_namespace(t)?;
    if t.release.is_empty() {
        return Err(DriverError::permanent(
            Code::InvalidArgument,
            "the target release name is empty",
        ));
    }
    Ok(())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl SimHost {
    /// Opens the simulated host on the store database at `database_url` (`sqlite://PATH`
    /// or `postgres://...`; with `pg_schema`, the schema the store uses). The tables come
    /// from the store's migrations: run them first ([`SimError::NotMigrated`] otherwise).
    pub async fn connect(
        database_url: &str,
        pg_schema: Option<&str>,
        config: SimConfig,
    ) -> Result<SimHost, SimError> {
        let pool = Pool::connect(database_url, pg_schema).await?;
        if let Err(e) = pool.effects().await {
            pool.close().await;
            return Err(SimError::NotMigrated(Box::new(e)));
        }
        let etcd = if config.etcd_endpoints.is_empty() {
            None
        } else {
            let endpoints = config.etcd_endpoints.join(",");
            let store = EtcdBackingStore::connect(&config.etcd_endpoints, Vec::new()).await;
            // A first request, so an etcd that is not there stops the process at start.
            let probe = match &store {
                Ok(s) => s
                    .scoped(b"/ovc-sim/".to_vec())
                    .count(&CallCtx::read("sim start"))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e.clone()),
            };
            if let Err(e) = probe {
                pool.close().await;
                return Err(SimError::Etcd {
                    endpoints,
                    message: e.to_string(),
                });
            }
            tracing::info!(%endpoints, "sim host: backing stores of new vclusters in etcd");
            store.ok()
        };
        tracing::info!(
            latency_ms = config.latency.as_millis() as u64,
            ready_ms = config.ready_delay.as_millis() as u64,
            faults = %config.faults.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(";"),
            "sim host connected"
        );
        Ok(SimHost {
            pool,
            config: Arc::new(config),
            etcd,
        })
    }

    /// [`SimHost::connect`] with [`SimConfig::from_env`].
    pub async fn connect_from_env(
        database_url: &str,
        pg_schema: Option<&str>,
    ) -> Result<SimHost, SimError> {
        Self::connect(database_url, pg_schema, SimConfig::from_env()?).await
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Closes the database connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The effect counters (`"<method>:<namespace>"` → how many state changes).
    pub async fn effects(&self) -> Result<BTreeMap<String, u64>, SimError> {
        Ok(self.pool.effects().await?.into_iter().collect())
    }

    /// The call log, oldest first (empty unless [`SimConfig::record_calls`]).
    pub async fn calls(&self) -> Result<Vec<CallRecord>, SimError> {
        self.pool.calls().await
    }

    /// Everything on the host, as of now.
    pub async fn state(&self) -> Result<SimState, SimError> {
        let namespaces = self
            .pool
            .list(NAMESPACE)
            .await?
            .into_iter()
            .map(|row| from_doc(|| format!("namespace {}", row.namespace), row.doc))
            .collect::<Result<Vec<SimNamespace>, _>>()?;
        let now = Utc::now();
        let releases = self
            .pool
            .list(RELEASE)
            .await?
            .into_iter()
            .map(|row| {
                let mut r: SimRelease = from_doc(
                    || format!("release {}/{}", row.namespace, row.name),
                    row.doc,
                )?;
                r.settle(now);
                Ok(r)
            })
            .collect::<Result<Vec<SimRelease>, SimError>>()?;
        Ok(SimState {
            namespaces,
            releases,
        })
    }

    /// Creates namespace `name` with `labels` as someone other than ovc would (a team's
    /// own namespace, another tool's), for tests and demos of the ownership rules: ovc
    /// refuses to use it unless its labels name the vcluster. Counts no effect; an
    /// existing namespace is left as it is (`false`).
    pub async fn create_foreign_namespace(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<bool, SimError> {
        let doc = to_doc(&SimNamespace {
            name: name.to_string(),
            labels,
            annotations: BTreeMap::new(),
            created_at: Utc::now(),
        })?;
        let mut tx = self.pool.begin().await?;
        let inserted = tx.insert_if_absent(NAMESPACE, name, "", &doc).await?;
        tx.commit().await?;
        Ok(inserted)
    }

    /// The release of `t`, as of now.
    pub async fn release_state(&self, t: &Target) -> Result<Option<SimRelease>, SimError> {
        let Some(doc) = self.pool.get(RELEASE, &t.namespace, &t.release).await? else {
            return Ok(None);
        };
        let mut r: SimRelease = from_doc(|| format!("release {}/{}", t.namespace, t.release), doc)?;
        r.settle(Utc::now());
        Ok(Some(r))
    }

    /// The etcd backing store of release `r` of `t` (`None`: kept in the database).
    fn etcd_of(&self, t: &Target, r: &SimRelease) -> DriverResult<Option<EtcdBackingStore>> {
        let Some(prefix) = &r.etcd_prefix else {
            return Ok(None);
        };
        match &self.etcd {
            Some(etcd) => Ok(Some(etcd.scoped(prefix.as_bytes().to_vec()))),
            None => Err(DriverError::permanent(
                Code::FailedPrecondition,
                format!(
                    "vcluster {} (namespace {}) keeps its backing store in etcd, and this \
                     simulated host has none configured ({ETCD_ENV} / --sim-etcd)",
                    t.release, t.namespace
                ),
            )),
        }
    }

    /// Latency, the lease check, the call log, then fault injection: the start of every
    /// host call.
    async fn enter(&self, ctx: &CallCtx, method: &str, t: &Target) -> DriverResult<()> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        ctx.check()?;
        if self.config.record_calls {
            self.pool
                .record_call(&CallRecord {
                    seq: 0,
                    method: method.to_string(),
                    namespace: t.namespace.clone(),
                    operation_id: ctx.operation_id,
                    workflow: ctx.workflow.clone(),
                    step: ctx.step.clone(),
                    epoch: ctx.fence.epoch(),
                    owner: ctx.fence.owner().map(str::to_string),
                })
                .await?;
        }
        self.inject_faults(ctx).await
    }

    /// Fires the fault rules matching `ctx`, counting the hit (see the module docs).
    /// Called at the start of every host call, and by the engine before every step
    /// attempt, so a step that never calls the host can be faulted too.
    pub async fn inject_faults(&self, ctx: &CallCtx) -> DriverResult<()> {
        let rules: Vec<&FaultRule> = self
            .config
            .faults
            .iter()
            .filter(|r| r.matches(&ctx.workflow, &ctx.step))
            .collect();
        if rules.is_empty() {
            return Ok(());
        }
        let hit = self
            .pool
            .hit_fault(
                ctx.operation_id
                    .unwrap_or(ovc_types::OperationId(uuid::Uuid::nil())),
                &ctx.workflow,
                &ctx.step,
            )
            .await?;
        let Some(rule) = rules.into_iter().find(|r| r.fires_on(hit)) else {
            return Ok(());
        };
        let at = format!("{}/{}", ctx.workflow, ctx.step);
        let which = match rule.times {
            Some(times) => format!("{hit} of {times}"),
            None => format!("hit {hit}"),
        };
        tracing::info!(
            operation_id = ?ctx.operation_id,
            %at,
            %rule,
            hit,
            "sim host: injecting fault"
        );
        match rule.kind {
            FaultKind::Transient => Err(DriverError::transient(format!(
                "injected transient fault at {at} ({which})"
            ))),
            FaultKind::Permanent => Err(DriverError::Permanent(
                Status::new(
                    Code::FailedPrecondition,
                    format!("injected permanent fault at {at} ({which})"),
                )
                .with_reason("INJECTED_FAULT"),
            )),
            FaultKind::Hang => {
                let never: std::convert::Infallible = std::future::pending().await;
                match never {}
            }
        }
    }

    /// The committed release of `t`, settled at the returned time.
    async fn read(&self, t: &Target) -> DriverResult<(Option<SimRelease>, DateTime<Utc>)> {
        check_target(t)?;
        let release = self.release_state(t).await?;
        Ok((release, Utc::now()))
    }

    /// The committed release of `t`, or `NOT_FOUND`.
    async fn read_required(&self, t: &Target) -> DriverResult<(SimRelease, DateTime<Utc>)> {
        match self.read(t).await? {
            (Some(r), now) => Ok((r, now)),
            (None, _) => Err(not_found(t)),
        }
    }

    /// Runs `f` on the namespace and release of `t` in one transaction; when the release
    /// changed, saves (or deletes) it and counts the effect `method`, else writes nothing.
    async fn change<T>(
        &self,
        t: &Target,
        method: &'static str,
        f: impl FnOnce(&mut Slot) -> DriverResult<T>,
    ) -> DriverResult<T> {
        check_target(t)?;
        let mut tx = self.pool.begin().await?;
        match Self::change_in(&mut tx, t, method, f).await {
            Ok((out, true)) => {
                tx.commit().await?;
                tracing::debug!(
                    method,
                    namespace = %t.namespace,
                    release = %t.release,
                    "sim host: changed"
                );
                Ok(out)
            }
            Ok((out, false)) => {
                tx.rollback_quietly().await;
                Ok(out)
            }
            Err(e) => {
                tx.rollback_quietly().await;
                Err(e)
            }
        }
    }

    async fn change_in<T>(
        tx: &mut Tx,
        t: &Target,
        method: &'static str,
        f: impl FnOnce(&mut Slot) -> DriverResult<T>,
    ) -> DriverResult<(T, bool)> {
        // Taken after the lock, so the clock never runs behind a committed change.
        let namespace_exists = tx.lock(NAMESPACE, &t.namespace, "").await?.is_some();
        let now = Utc::now();
        let mut slot = Slot {
            now,
            namespace_exists,
            others: Vec::new(),
            release: None,
        };
        for row in tx.list_in(RELEASE, &t.namespace).await? {
            if row.name == t.release {
                let mut r: SimRelease = from_doc(
                    || format!("release {}/{}", row.namespace, row.name),
                    row.doc,
                )?;
                r.settle(now);
                slot.release = Some(r);
            } else {
                slot.others.push(row.name);
            }
        }
        let before = slot.release.clone();
        let out = f(&mut slot)?;
        if slot.release == before {
            return Ok((out, false));
        }
        match &slot.release {
            Some(r) => {
                tx.put(RELEASE, &t.namespace, &t.release, &to_doc(r)?)
                    .await?
            }
            None => {
                tx.delete(RELEASE, &t.namespace, &t.release).await?;
            }
        }
        tx.bump_effect(&effect_key(method, &t.namespace)).await?;
        Ok((out, true))
    }

    /// Commits `tx` and counts `method` when `changed`, else rolls back.
    async fn finish(&self, tx: Tx, changed: bool, method: &str, t: &Target) -> DriverResult<()> {
        if !changed {
            tx.rollback_quietly().await;
            return Ok(());
        }
        tx.commit().await?;
        tracing::debug!(method, namespace = %t.namespace, "sim host: changed");
        Ok(())
    }
}

#[async_trait]
impl HostDriver for SimHost {
    async fn ensure_namespace(
        &self,
        ctx: &CallCtx,
        t: &Target,
        owner: &Owner,
    ) -> DriverResult<NamespaceOutcome> {
        self.enter(ctx, "ensure_namespace", t).await?;
        check_namespace(t)?;
        let doc = to_doc(&SimNamespace::owned(
            &t.namespace,
            owner,
            ctx.operation_id,
            Utc::now(),
        ))?;
        let mut tx = self.pool.begin().await?;
        let found = async {
            if tx
                .insert_if_absent(NAMESPACE, &t.namespace, "", &doc)
                .await?
            {
                tx.bump_effect(&effect_key("ensure_namespace", &t.namespace))
                    .await?;
                return Ok(None);
            }
            // It exists (a concurrent insert has committed by now): whose is it?
            let doc = tx.lock(NAMESPACE, &t.namespace, "").await?;
            doc.map(|d| from_doc::<SimNamespace>(|| format!("namespace {}", t.namespace), d))
                .transpose()
        }
        .await;
        match found {
            Ok(None) => {
                self.finish(tx, true, "ensure_namespace", t).await?;
                Ok(NamespaceOutcome::Created)
            }
            Ok(Some(ns)) => {
                tx.rollback_quietly().await;
                if !owner.owns(&ns.labels) {
                    return Err(owner.refusal(&t.namespace, &ns.labels));
                }
                let ours = ns
                    .annotations
                    .get(ANNOTATION_CREATED_BY)
                    .map(String::as_str)
                    == ctx.operation_id.map(|o| o.to_string()).as_deref();
                Ok(if ours {
                    NamespaceOutcome::Created
                } else {
                    NamespaceOutcome::AlreadyOwned
                })
            }
            Err(e) => {
                tx.rollback_quietly().await;
                Err(e.into())
            }
        }
    }

    async fn delete_namespace(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool> {
        self.enter(ctx, "delete_namespace", t).await?;
        check_namespace(t)?;
        let mut tx = self.pool.begin().await?;
        let deleted = async {
            // Lock first: a concurrent install holding the lock commits its release
            // before the DELETE below takes its snapshot, so nothing is left behind.
            tx.lock(NAMESPACE, &t.namespace, "").await?;
            let n = tx.delete_namespace(&t.namespace).await?;
            if n > 0 {
                tx.bump_effect(&effect_key("delete_namespace", &t.namespace))
                    .await?;
            }
            Ok::<_, SimError>(n > 0)
        }
        .await;
        match deleted {
            Ok(changed) => self.finish(tx, changed, "delete_namespace", t).await?,
            Err(e) => {
                tx.rollback_quietly().await;
                return Err(e.into());
            }
        }
        Ok(true)
    }

    async fn namespace_exists(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool> {
        self.enter(ctx, "namespace_exists", t).await?;
        check_namespace(t)?;
        Ok(self.pool.get(NAMESPACE, &t.namespace, "").await?.is_some())
    }

    async fn install_release(
        &self,
        ctx: &CallCtx,
        t: &Target,
        values: &ReleaseValues,
    ) -> DriverResult<u32> {
        self.enter(ctx, "install_release", t).await?;
        let want = values.control_plane.replicas;
        if want == 0 {
            return Err(DriverError::permanent(
                Code::InvalidArgument,
                "control_plane.replicas must be at least 1",
            ));
        }
        let delay = self.config.ready_delay;
        let prefix = self.etcd.as_ref().map(|_| etcd_prefix(t));
        let (revision, seed, rewrite) = self.change(t, "install_release", |s| {
            if !s.namespace_exists {
                return Err(DriverError::permanent(
                    Code::FailedPrecondition,
                    format!("namespace {} does not exist", t.namespace),
                ));
            }
            if let Some(other) = s.others.first() {
                return Err(DriverError::permanent(
                    Code::FailedPrecondition,
                    format!(
                        "namespace {} already holds the vcluster release {other} \
                         (one vcluster per namespace)",
                        t.namespace
                    ),
                ));
            }
            let now = s.now;
            let Some(r) = s.release.as_mut() else {
                let r = SimRelease::install(&t.namespace, &t.release, values, now, delay, prefix);
                let seed = r.etcd_prefix.is_some();
                s.release = Some(r);
                return Ok((1, seed, None));
            };
            // The first install again (a re-run after a crash): the first start's objects
            // may not have been written yet.
            let seed = r.revision == 1 && r.etcd_prefix.is_some();
            if r.values == *values {
                return Ok((r.revision, seed, None));
            }
            if r.paused {
                // Mechanics §6: a helm upgrade would reset the replicas 0→N while
                // `loft.sh/paused` stays; the real driver refuses, so does the simulation.
                return Err(DriverError::Permanent(
                    Status::new(
                        Code::FailedPrecondition,
                        format!(
                            "vcluster {} is paused: ovc never upgrades a paused vcluster (resume it first)",
                            t.release
                        ),
                    )
                    .with_reason("CONTROL_PLANE_PAUSED"),
                ));
            }
            // A new chart or Kubernetes version rolls the control plane: its pods
            // restart and are not ready until the rollout settles.
            let new_kubernetes = r.values.kubernetes_version != values.kubernetes_version;
            let rolls = new_kubernetes || r.values.chart_version != values.chart_version;
            r.revision = r.revision.saturating_add(1);
            r.values = values.clone();
            if r.replicas != want || rolls {
                r.scale(want, now, delay);
                if rolls {
                    r.ready_before = 0;
                }
            }
            if new_kubernetes {
                // The new API server rewrites stored objects at its storage version, as
                // a real one does: going back needs the data from before, not only the
                // old chart (what an upgrade's undo restores from its snapshot).
                r.backing_store =
                    model::at_storage_version(&r.backing_store, &values.kubernetes_version);
            }
            r.updated_at = now;
            let rewrite = (new_kubernetes && r.etcd_prefix.is_some())
                .then(|| values.kubernetes_version.clone());
            Ok((r.revision, false, rewrite))
        })
        .await?;
        if let (Some(version), Some(etcd)) = (rewrite, &self.etcd) {
            // The same storage-version mark, in etcd (a key that is no object).
            etcd.scoped(etcd_prefix(t).into_bytes())
                .put(ctx, STORAGE_VERSION_KEY.as_bytes(), version.as_bytes())
                .await?;
        }
        if seed && let Some(etcd) = &self.etcd {
            // What the control plane writes on its first start (never over what is there).
            let etcd = etcd.scoped(etcd_prefix(t).into_bytes());
            for (key, object) in initial_objects() {
                etcd.put_if_absent(ctx, key.as_bytes(), object.to_string().as_bytes())
                    .await?;
            }
        }
        Ok(revision)
    }

    async fn release(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Option<ReleaseInfo>> {
        self.enter(ctx, "release", t).await?;
        Ok(self.read(t).await?.0.map(|r| r.info()))
    }

    async fn uninstall_release(&self, ctx: &CallCtx, t: &Target) -> DriverResult<()> {
        self.enter(ctx, "uninstall_release", t).await?;
        self.change(t, "uninstall_release", |s| {
            // The release, its pods and the PVC data-NAME-0 (mechanics §7).
            s.release = None;
            Ok(())
        })
        .await?;
        // Its data in etcd goes with it; the prefix is the target's, so a re-run after a
        // crash between the two still deletes it.
        if let Some(etcd) = &self.etcd {
            etcd.scoped(etcd_prefix(t).into_bytes()).wipe(ctx).await?;
        }
        Ok(())
    }

    async fn control_plane(
        &self,
        ctx: &CallCtx,
        t: &Target,
    ) -> DriverResult<Option<ControlPlaneStatus>> {
        self.enter(ctx, "control_plane", t).await?;
        let (release, now) = self.read(t).await?;
        Ok(release.map(|r| r.control_plane(now)))
    }

    async fn pause_control_plane(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32> {
        self.enter(ctx, "pause_control_plane", t).await?;
        let delay = self.config.ready_delay;
        self.change(t, "pause_control_plane", |s| {
            let now = s.now;
            let r = s.release.as_mut().ok_or_else(|| not_found(t))?;
            if r.paused {
                return Ok(r.paused_replicas.filter(|n| *n > 0).unwrap_or(1));
            }
            // Mechanics §2: already at 0 (stopped from outside) → remember the
            // configured size, so the pause never records 0.
            let remember = if r.replicas == 0 {
                r.values.control_plane.replicas.max(1)
            } else {
                r.replicas
            };
            r.scale(0, now, delay);
            r.paused = true;
            r.paused_replicas = Some(remember);
            r.paused_at = Some(now);
            r.updated_at = now;
            Ok(remember)
        })
        .await
    }

    async fn resume_control_plane(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32> {
        self.enter(ctx, "resume_control_plane", t).await?;
        let delay = self.config.ready_delay;
        self.change(t, "resume_control_plane", |s| {
            let now = s.now;
            let r = s.release.as_mut().ok_or_else(|| not_found(t))?;
            if !r.paused {
                return Ok(r.replicas);
            }
            // Mechanics §3: bad or missing paused-replicas → 1.
            let want = r.paused_replicas.filter(|n| *n > 0).unwrap_or(1);
            r.scale(want, now, delay);
            r.paused = false;
            r.paused_replicas = None;
            r.paused_at = None;
            r.updated_at = now;
            Ok(want)
        })
        .await
    }

    async fn workload_pods(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Vec<String>> {
        self.enter(ctx, "workload_pods", t).await?;
        Ok(self
            .read(t)
            .await?
            .0
            .map(|r| r.workload_pods)
            .unwrap_or_default())
    }

    async fn evict_workload_pods(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32> {
        self.enter(ctx, "evict_workload_pods", t).await?;
        self.change(t, "evict_workload_pods", |s| {
            let now = s.now;
            let Some(r) = s.release.as_mut() else {
                return Ok(0);
            };
            let n = count(r.workload_pods.len());
            if n > 0 {
                r.workload_pods.clear();
                r.updated_at = now;
            }
            Ok(n)
        })
        .await
    }

    async fn reconcile_workloads(&self, ctx: &CallCtx, t: &Target) -> DriverResult<()> {
        self.enter(ctx, "reconcile_workloads", t).await?;
        self.change(t, "reconcile_workloads", |s| {
            let now = s.now;
            let r = s.release.as_mut().ok_or_else(|| not_found(t))?;
            if r.paused || r.replicas == 0 {
                return Err(not_running(t));
            }
            if !r.is_running(now) {
                return Err(DriverError::Transient {
                    message: format!(
                        "control plane of {} (namespace {}) is not ready yet",
                        t.release, t.namespace
                    ),
                    retry_after: (r.settles_at - now).to_std().ok(),
                });
            }
            let mut changed = false;
            for pod in WORKLOAD_PODS {
                if !r.workload_pods.iter().any(|p| p == pod) {
                    r.workload_pods.push(pod.to_string());
                    changed = true;
                }
            }
            if changed {
                r.workload_pods.sort();
                r.updated_at = now;
            }
            Ok(())
        })
        .await
    }

    async fn kubeconfig(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Option<String>> {
        self.enter(ctx, "kubeconfig", t).await?;
        let (release, now) = self.read(t).await?;
        Ok(release.and_then(|r| r.kubeconfig(now)))
    }

    async fn health_check(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool> {
        self.enter(ctx, "health_check", t).await?;
        let (release, now) = self.read(t).await?;
        Ok(release.is_some_and(|r| r.is_running(now)))
    }

    async fn dump_backing_store(
        &self,
        ctx: &CallCtx,
        t: &Target,
        sink: &mut dyn BackingStoreSink,
    ) -> DriverResult<u64> {
        self.enter(ctx, "dump_backing_store", t).await?;
        let (r, now) = self.read_required(t).await?;
        if !r.is_running(now) {
            return Err(not_running(t));
        }
        if let Some(etcd) = self.etcd_of(t, &r)? {
            return Ok(etcd.dump(ctx, sink).await?.bytes);
        }
        match sim_export(&r.backing_store) {
            Ok(objects) => {
                for object in &objects {
                    sink.write_object(object).await?;
                }
                sink.record_backing_store(BackingStoreInfo {
                    kind: "sim".into(),
                    revision: None,
                    keys: Some(objects.len() as u64),
                });
            }
            Err(why) => {
                sink.objects_unavailable(why);
                sink.record_backing_store(BackingStoreInfo {
                    kind: "sim".into(),
                    revision: None,
                    keys: None,
                });
            }
        }
        let data = bytes::Bytes::from(r.backing_store);
        let size = data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(MemorySource::CHUNK));
            sink.write(chunk).await?;
        }
        Ok(size)
    }

    async fn load_backing_store(
        &self,
        ctx: &CallCtx,
        t: &Target,
        source: &mut dyn BackingStoreSource,
    ) -> DriverResult<u64> {
        self.enter(ctx, "load_backing_store", t).await?;
        let (r, _) = self.read_required(t).await?;
        if let Some(etcd) = self.etcd_of(t, &r)? {
            if !r.paused && r.replicas > 0 {
                return Err(running(t));
            }
            // The load itself refuses what is not an etcd dump, before it wipes.
            let loaded = etcd.load(ctx, source).await?;
            self.change(t, "load_backing_store", |s| {
                if let Some(r) = s.release.as_mut() {
                    r.updated_at = s.now;
                }
                Ok(())
            })
            .await?;
            return Ok(loaded.bytes);
        }
        // The simulated backing store lives in one database row: collect the stream
        // (it has checked itself when it ends), then commit in one change.
        let mut data = Vec::new();
        while let Some(chunk) = source.next_chunk().await? {
            data.extend_from_slice(&chunk);
        }
        if data.starts_with(crate::etcd::MAGIC) || data.starts_with(crate::etcd::MAGIC_V1) {
            return Err(DriverError::permanent(
                Code::FailedPrecondition,
                format!(
                    "this snapshot holds an etcd dump, and vcluster {} (namespace {}) keeps \
                     its backing store in the simulator's database: restore it into a \
                     vcluster created with {ETCD_ENV} / --sim-etcd",
                    t.release, t.namespace
                ),
            ));
        }
        let size = data.len() as u64;
        let data = data.as_slice();
        self.change(t, "load_backing_store", |s| {
            let now = s.now;
            let r = s.release.as_mut().ok_or_else(|| not_found(t))?;
            if !r.paused && r.replicas > 0 {
                return Err(running(t));
            }
            if r.backing_store != data {
                r.backing_store = data.to_vec();
                r.updated_at = now;
            }
            Ok(())
        })
        .await?;
        Ok(size)
    }
}
