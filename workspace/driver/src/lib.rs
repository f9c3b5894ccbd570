//! Host drivers: what the workflows do to the host cluster, behind one trait.
//!
//! [`HostDriver`] covers exactly the effects of docs/vcluster-mechanics.md: namespaces,
//! the Helm release, the control plane's scale and readiness, workload pods, the quota,
//! the kubeconfig, and the backing store's dump/load (streamed to and from the snapshot
//! artifact through [`BackingStoreSink`] / [`BackingStoreSource`]). Every method is an *ensure*: calling
//! it twice has the effect of calling it once, and removals tolerate "already gone", so
//! a step that ran but was not journaled can simply run again after a crash.
//!
//! Implementations: [`sim::SimHost`] (embedded default, tests, benchmarks; state in the
//! store database, fault injection) and [`kube::KubeHost`] (a real cluster: kube-rs +
//! the helm binary). The `conformance` feature adds [`conformance`], the behaviours every
//! driver must have, and `kube::fake`, a fake Kubernetes API server to run them on.
//! [`etcd`] dumps and loads an etcd backing store through the etcd v3 API.
//! [`router::HostRouter`] puts several host clusters behind one driver, by
//! [`Target::host`].

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod etcd;
pub mod kube;
pub mod router;
pub mod sim;

/// The vcluster chart version a new vcluster gets unless the service is configured with
/// another (`--vcluster-version`) or its spec names one.
pub const DEFAULT_VCLUSTER_VERSION: &str = kube::DEFAULT_CHART_VERSION;

use async_trait::async_trait;
use bytes::Bytes;
use ovc_types::error::{Code, Status};
use ovc_types::spec::{ControlPlaneSpec, QuotaSpec};
use ovc_types::{ObjectLocation, OperationId, ProjectName, VClusterId, VClusterName};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Who is calling, under which lease, and until when: the context of every host call.
///
/// The engine builds one per step attempt ([`CallCtx::for_step`] plus
/// [`CallCtx::with_fence`] / [`CallCtx::with_deadline`]); a call made outside any
/// operation (the API reading a kubeconfig) uses [`CallCtx::read`], which has no
/// operation and no lease.
///
/// **Every driver call must call [`CallCtx::check`] before it acts on the host** (and
/// again before each further write of a call that makes several): a worker whose lease
/// is gone or passed must not touch the host again, even if it was frozen in the middle
/// of a step. A real driver also tags what it writes with [`Fence::epoch`] (e.g. an
/// annotation), so a write can be traced to the claim that made it.
#[derive(Debug, Clone)]
pub struct CallCtx {
    /// The operation (`None`: a read outside any operation, e.g. the API's kubeconfig).
    pub operation_id: Option<OperationId>,
    /// The workflow's name, e.g. `suspend` (`api` for reads outside an operation).
    pub workflow: String,
    /// The step's name, e.g. `scale_to_zero`; `undo:<step>` while undoing.
    pub step: String,
    /// The attempt of the step, from 1 (0 outside a step).
    pub attempt: u32,
    /// The lease the call is made under ([`Fence::unfenced`] outside a worker).
    pub fence: Fence,
    /// When the step's time limit ends (`None`: no limit).
    pub deadline: Option<Instant>,
    /// The tracing span of the step; drivers record their own spans under it.
    pub span: tracing::Span,
}

impl CallCtx {
    /// The context of a step attempt of an operation: no lease and no deadline yet.
    pub fn for_step(
        operation_id: OperationId,
        workflow: impl Into<String>,
        step: impl Into<String>,
        attempt: u32,
    ) -> Self {
        Self {
            operation_id: Some(operation_id),
            workflow: workflow.into(),
            step: step.into(),
            attempt,
            fence: Fence::unfenced(),
            deadline: None,
            span: tracing::Span::current(),
        }
    }

    /// The context of a read outside any operation (workflow `api`, step `what`).
    pub fn read(what: impl Into<String>) -> Self {
        Self {
            operation_id: None,
            workflow: "api".into(),
            step: what.into(),
            attempt: 0,
            fence: Fence::unfenced(),
            deadline: None,
            span: tracing::Span::current(),
        }
    }

    /// The same context under `fence`.
    pub fn with_fence(mut self, fence: Fence) -> Self {
        self.fence = fence;
        self
    }

    /// The same context with a deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The same context with `span`.
    pub fn with_span(mut self, span: tracing::Span) -> Self {
        self.span = span;
        self
    }

    /// What a driver calls before it acts: fails (transient, so nothing is given up
    /// for good) when the lease is lost or passed, or the deadline passed.
    pub fn check(&self) -> DriverResult<()> {
        self.fence.check()?;
        if let Some(deadline) = self.deadline
            && Instant::now() >= deadline
        {
            return Err(DriverError::transient(format!(
                "{}/{}: the step's deadline passed; not calling the host",
                self.workflow, self.step
            )));
        }
        Ok(())
    }
}

/// The lease a worker holds on a run, as the worker itself reckons it: its fencing epoch
/// and, on the worker's **monotonic** clock, until when it is surely still held (the time
/// the last successful renewal was *sent* plus the lease length, which is never later
/// than the database's lease end). The worker moves it on every renewal and marks it
/// lost when a renewal answers that the epoch moved; every clone sees the change.
///
/// Why monotonic time and not the database's: a worker frozen (SIGSTOP, a long GC or VM
/// pause) does not know that time passed until it looks, and by then another worker may
/// own the run. [`Fence::check`] compares the monotonic clock with the last renewal, so a
/// resumed worker refuses before its next host call, without a round trip.
#[derive(Clone, Default)]
pub struct Fence(Option<Arc<FenceState>>);

struct FenceState {
    epoch: i64,
    owner: String,
    valid_until: Mutex<Instant>,
    lost: AtomicBool,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Fence(unfenced)"),
            Some(s) => f
                .debug_struct("Fence")
                .field("epoch", &s.epoch)
                .field("owner", &s.owner)
                .field("held", &self.is_held())
                .finish(),
        }
    }
}

impl Fence {
    /// No lease: calls outside a worker (reads of the API, tests of a driver).
    pub fn unfenced() -> Self {
        Self(None)
    }

    /// The lease of claim `epoch` by `owner`, surely held until `valid_until`.
    pub fn new(epoch: i64, owner: impl Into<String>, valid_until: Instant) -> Self {
        Self(Some(Arc::new(FenceState {
            epoch,
            owner: owner.into(),
            valid_until: Mutex::new(valid_until),
            lost: AtomicBool::new(false),
        })))
    }

    /// The claim's fencing epoch (`None`: unfenced).
    pub fn epoch(&self) -> Option<i64> {
        self.0.as_ref().map(|s| s.epoch)
    }

    /// The worker holding the lease (`None`: unfenced).
    pub fn owner(&self) -> Option<&str> {
        self.0.as_ref().map(|s| s.owner.as_str())
    }

    /// A renewal succeeded: the lease is surely held until `valid_until` (never moves
    /// back).
    pub fn extend(&self, valid_until: Instant) {
        if let Some(s) = &self.0 {
            let mut until = s.valid_until.lock().unwrap_or_else(|e| e.into_inner());
            if valid_until > *until {
                *until = valid_until;
            }
        }
    }

    /// The store said another claim owns the run: the lease is gone for good.
    pub fn lose(&self) {
        if let Some(s) = &self.0 {
            s.lost.store(true, Ordering::SeqCst);
        }
    }

    /// How long the lease is still surely held (`None`: unfenced; zero: gone).
    pub fn remaining(&self) -> Option<Duration> {
        let s = self.0.as_ref()?;
        if s.lost.load(Ordering::SeqCst) {
            return Some(Duration::ZERO);
        }
        let until = *s.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        Some(until.saturating_duration_since(Instant::now()))
    }

    /// True unless the lease was lost or has passed (always true when unfenced).
    pub fn is_held(&self) -> bool {
        self.remaining().is_none_or(|r| !r.is_zero())
    }

    /// `Ok` while the lease is held; else a transient error saying why.
    pub fn check(&self) -> DriverResult<()> {
        let Some(s) = &self.0 else {
            return Ok(());
        };
        if self.is_held() {
            return Ok(());
        }
        let why = if s.lost.load(Ordering::SeqCst) {
            "was taken over by another claim"
        } else {
            "has passed without a successful renewal"
        };
        Err(DriverError::transient(format!(
            "lease epoch {} of worker {} {why}; not calling the host",
            s.epoch, s.owner
        )))
    }
}

/// Identifies one vcluster on its host: the host cluster, its namespace and Helm release
/// name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// The host cluster, the vcluster's `spec.host` (see [`router::HostRouter`]; a
    /// single driver serves whatever it is given).
    #[serde(default = "default_host")]
    pub host: String,
    /// Host namespace, as recorded in the vcluster's projection
    /// (`ovc_types::resource::host_namespace`; older vclusters keep `ovc-<project>-<name>`).
    pub namespace: String,
    /// Helm release name (the vcluster's name).
    pub release: String,
}

fn default_host() -> String {
    router::DEFAULT_HOST.to_string()
}

/// Label on every namespace ovc creates: `app.kubernetes.io/managed-by=ovc`.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label naming the owning vcluster's project (a project name fits a label value: ≤ 63).
pub const LABEL_PROJECT: &str = "ovc.dev/project";
/// Label naming the owning vcluster (≤ 40 characters).
pub const LABEL_VCLUSTER: &str = "ovc.dev/vcluster";
/// Label with the owning vcluster's uid (36 characters): *the* ownership test.
pub const LABEL_UID: &str = "ovc.dev/uid";
/// Annotation naming the operation that created the namespace, so a step re-run after a
/// crash still knows that its operation created it (and its undo may delete it).
pub const ANNOTATION_CREATED_BY: &str = "ovc.dev/created-by-operation";

/// The vcluster a namespace belongs to; [`HostDriver::ensure_namespace`] labels what it
/// creates with it and refuses a namespace labelled with anyone else (or no one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The vcluster's project.
    pub project: ProjectName,
    /// The vcluster's name.
    pub vcluster: VClusterName,
    /// The vcluster's uid (unique; what ownership is decided on).
    pub uid: VClusterId,
}

impl Owner {
    /// The labels of a namespace owned by this vcluster.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), "ovc".to_string()),
            (LABEL_PROJECT.to_string(), self.project.to_string()),
            (LABEL_VCLUSTER.to_string(), self.vcluster.to_string()),
            (LABEL_UID.to_string(), self.uid.to_string()),
        ])
    }

    /// Whether a namespace with `labels` is this vcluster's (its uid label is ours).
    pub fn owns(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(LABEL_UID) == Some(&self.uid.to_string())
    }

    /// The permanent error for namespace `namespace`, which exists with `labels` and is
    /// not ours: names the owner its labels give, or says ovc did not create it.
    pub fn refusal(&self, namespace: &str, labels: &BTreeMap<String, String>) -> DriverError {
        let found = match (
            labels.get(LABEL_PROJECT),
            labels.get(LABEL_VCLUSTER),
            labels.get(LABEL_UID),
        ) {
            (Some(p), Some(v), Some(u)) => format!("belongs to vcluster {p}/{v} (uid {u})"),
            (_, _, Some(u)) => format!("belongs to the vcluster with uid {u}"),
            _ => "was not created by ovc".to_string(),
        };
        DriverError::Permanent(
            Status::new(
                Code::FailedPrecondition,
                format!(
                    "host namespace {namespace} already exists and {found}; refusing to use it \
                     for vcluster {}/{} (uid {})",
                    self.project, self.vcluster, self.uid
                ),
            )
            .with_reason("NAMESPACE_NOT_OWNED"),
        )
    }
}

/// What [`HostDriver::ensure_namespace`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceOutcome {
    /// This operation created it: this call, or an earlier call of the same operation (its
    /// [`ANNOTATION_CREATED_BY`] names the call's operation), so the operation's undo may
    /// delete it.
    Created,
    /// It already existed, owned by this vcluster, created by another operation: an undo
    /// must leave it.
    AlreadyOwned,
}

/// The values ovc renders into the vcluster chart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseValues {
    /// Virtual Kubernetes version.
    pub kubernetes_version: String,
    /// Control-plane size.
    pub control_plane: ControlPlaneSpec,
    /// Namespace quota.
    pub quota: QuotaSpec,
    /// Labels of the vcluster.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Extra chart values.
    pub helm_values: serde_json::Map<String, serde_json::Value>,
    /// The chart (= vcluster) version; `None`: the driver's configured default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart_version: Option<String>,
}

/// Helm's status of a release (`helm status`'s `info.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseStatus {
    /// Installed and current.
    Deployed,
    /// An install did not finish.
    PendingInstall,
    /// An upgrade did not finish.
    PendingUpgrade,
    /// A rollback did not finish.
    PendingRollback,
    /// The last install or upgrade failed.
    Failed,
    /// Being uninstalled.
    Uninstalling,
}

impl ReleaseStatus {
    /// From helm's status (`superseded`/`uninstalled`/`unknown` never describe the
    /// current revision of an installed release; they read as `failed`).
    pub fn from_helm(s: kube::HelmStatus) -> Self {
        use kube::HelmStatus as H;
        match s {
            H::Deployed => ReleaseStatus::Deployed,
            H::PendingInstall => ReleaseStatus::PendingInstall,
            H::PendingUpgrade => ReleaseStatus::PendingUpgrade,
            H::PendingRollback => ReleaseStatus::PendingRollback,
            H::Uninstalling => ReleaseStatus::Uninstalling,
            H::Failed | H::Superseded | H::Uninstalled | H::Unknown => ReleaseStatus::Failed,
        }
    }
}

/// The installed Helm release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// Helm revision, from 1.
    pub revision: u32,
    /// The values of that revision.
    pub values: ReleaseValues,
    /// Helm's status of that revision.
    pub status: ReleaseStatus,
    /// The chart version of that revision.
    pub chart_version: String,
}

/// The control plane (StatefulSet) as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneStatus {
    /// `spec.replicas`.
    pub replicas: u32,
    /// Pods that exist (`status.replicas`).
    pub pods: u32,
    /// Pods ready.
    pub ready: u32,
    /// Annotated `loft.sh/paused=true`.
    pub paused: bool,
    /// `loft.sh/paused-replicas`, while paused.
    pub paused_replicas: Option<u32>,
}

impl ControlPlaneStatus {
    /// Every wanted replica exists and is ready (and there is at least one).
    pub fn is_ready(&self) -> bool {
        self.replicas > 0 && self.ready == self.replicas && self.pods == self.replicas
    }
}

/// Why a driver call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    /// Worth retrying (host unreachable, conflict, timeout).
    #[error("transient host error: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// A hint for when to retry.
        retry_after: Option<Duration>,
    },
    /// Retrying will not help (invalid values, missing prerequisite).
    #[error("{0}")]
    Permanent(Status),
}

impl DriverError {
    /// A transient error without a retry hint.
    pub fn transient(message: impl Into<String>) -> Self {
        DriverError::Transient {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A permanent error with `code`.
    pub fn permanent(code: Code, message: impl Into<String>) -> Self {
        DriverError::Permanent(Status::new(code, message))
    }
}

impl From<DriverError> for Status {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Transient { message, .. } => {
                Status::new(Code::Unavailable, message).with_reason("HOST_UNAVAILABLE")
            }
            DriverError::Permanent(status) => status,
        }
    }
}

/// Shorthand for driver results.
pub type DriverResult<T> = Result<T, DriverError>;

/// What ovc does to a host cluster. Every method is idempotent (an *ensure*), and every
/// method calls [`CallCtx::check`] before it acts (self-fencing, see [`Fence`]).
#[async_trait]
pub trait HostDriver: Send + Sync + std::fmt::Debug {
    /// Creates the namespace labelled with `owner` ([`Owner::labels`]) and annotated with
    /// the call's operation ([`ANNOTATION_CREATED_BY`]) unless it exists. An existing
    /// namespace that is not `owner`'s ([`Owner::owns`]) is refused with the permanent
    /// error [`Owner::refusal`] and left untouched.
    async fn ensure_namespace(
        &self,
        ctx: &CallCtx,
        t: &Target,
        owner: &Owner,
    ) -> DriverResult<NamespaceOutcome>;
    /// Deletes the namespace; `Ok(true)` once it is gone (404 counts as gone).
    async fn delete_namespace(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool>;
    /// True when the namespace exists.
    async fn namespace_exists(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool>;
    /// `helm upgrade --install` with `values`; returns the new revision.
    async fn install_release(
        &self,
        ctx: &CallCtx,
        t: &Target,
        values: &ReleaseValues,
    ) -> DriverResult<u32>;
    /// The installed release, if any.
    async fn release(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Option<ReleaseInfo>>;
    /// `helm uninstall` (no release: nothing to do) and the PVCs `data-NAME-*`.
    async fn uninstall_release(&self, ctx: &CallCtx, t: &Target) -> DriverResult<()>;
    /// The control plane's status (`None`: no release).
    async fn control_plane(
        &self,
        ctx: &CallCtx,
        t: &Target,
    ) -> DriverResult<Option<ControlPlaneStatus>>;
    /// Annotates paused (remembering the replicas) and scales to 0; already paused → no-op.
    /// Returns the remembered replicas.
    async fn pause_control_plane(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32>;
    /// Scales back to the remembered replicas and removes the pause annotations; not
    /// paused → no-op. Returns the replicas.
    async fn resume_control_plane(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32>;
    /// Names of the workload pods synced into the namespace.
    async fn workload_pods(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Vec<String>>;
    /// Deletes every workload pod (404 ok); returns how many were deleted.
    async fn evict_workload_pods(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32>;
    /// Asks the syncer to recreate workloads after a resume.
    async fn reconcile_workloads(&self, ctx: &CallCtx, t: &Target) -> DriverResult<()>;
    /// The virtual cluster's kubeconfig (`None` until the control plane wrote it).
    async fn kubeconfig(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Option<String>>;
    /// True when the virtual API answers (e.g. GET serviceaccounts/default).
    async fn health_check(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool>;
    /// Streams the backing store's content (etcd snapshot / kine export) into `sink`, the
    /// snapshot's artifact. Needs a running control plane.
    ///
    /// Two ways, one result: a driver that can read the backing store itself (the
    /// simulator) writes it through [`BackingStoreSink::write`]; a host that writes its
    /// snapshot straight to object storage (a real vcluster, mechanics §4) is pointed at
    /// [`BackingStoreSink::object`] and, once it is done, the driver hands the object to
    /// the sink with [`BackingStoreSink::adopt_written`]. Either way the return value is
    /// the size in bytes of the data object as the sink measured it.
    async fn dump_backing_store(
        &self,
        ctx: &CallCtx,
        t: &Target,
        sink: &mut dyn BackingStoreSink,
    ) -> DriverResult<u64>;
    /// Replaces the backing store's content with the data of `source`, committing only
    /// once it is known whole (a streamed source fails at its end when the data is
    /// damaged, and the target must then be left as it was). Needs a paused control plane.
    ///
    /// A driver whose host reads the object itself (a vcluster restore pod) uses
    /// [`BackingStoreSource::object`] instead of the stream; the caller has verified the
    /// object against its manifest before. Returns the bytes loaded (by location: the
    /// object's size, [`BackingStoreSource::size`]).
    async fn load_backing_store(
        &self,
        ctx: &CallCtx,
        t: &Target,
        source: &mut dyn BackingStoreSource,
    ) -> DriverResult<u64>;
    /// Before a fresh install that a restore will fill: keeps the new control plane from
    /// starting (`hold`) or lets it start again (`!hold`). vcluster's tooling does this
    /// with the ResourceQuota `vcluster-restore` (mechanics §5); a host whose control
    /// plane does not write state on its first start (the simulator) has nothing to do.
    async fn hold_new_control_plane(
        &self,
        ctx: &CallCtx,
        t: &Target,
        hold: bool,
    ) -> DriverResult<()> {
        let _ = (t, hold);
        ctx.check()
    }
}

/// Where a backing-store dump goes: the snapshot artifact's data object, written as a
/// stream (never a whole backing store in memory).
#[async_trait]
pub trait BackingStoreSink: Send {
    /// The URL of the object being written (`Snapshot.location` plus the file name), for
    /// messages.
    fn location(&self) -> &str;
    /// The object being written, for a host that writes it itself.
    fn object(&self) -> ObjectLocation;
    /// Appends `chunk`.
    async fn write(&mut self, chunk: Bytes) -> DriverResult<()>;
    /// The host has written the object at [`object`](Self::object) itself: take it as the
    /// dump (nothing may have been written through [`write`](Self::write)). Returns its
    /// size in bytes; the object missing is an error.
    async fn adopt_written(&mut self) -> DriverResult<u64>;
    /// One object of the per-object export (DESIGN.md §8, for selective restore), taken
    /// from the same read as the data written through [`write`](Self::write), so the
    /// export and the backing-store data describe the same state. Called in the order the
    /// driver reads the store; the sink streams them out (never all in memory).
    async fn write_object(&mut self, object: &ExportedObject) -> DriverResult<()>;
    /// The driver cannot export objects from this dump (the host wrote its own archive,
    /// which ovc does not read): the manifest says so with `reason` instead of listing an
    /// export. A driver that writes the data itself and calls neither this nor
    /// [`write_object`](Self::write_object) exported zero objects.
    fn objects_unavailable(&mut self, reason: String);
    /// What the driver knows about the dump it wrote (kind, the etcd revision), recorded
    /// in the manifest.
    fn record_backing_store(&mut self, info: BackingStoreInfo);
}

/// One object of a snapshot's per-object export: a line of `objects.ndjson`.
///
/// `apiVersion`, `kind`, `namespace` and `name` identify it (as `kubectl` would); the
/// content is `object` when the backing store keeps it as JSON (custom resources, the
/// simulator), or `protobuf` (base64 of the stored bytes, Kubernetes' `k8s\0` envelope)
/// when it keeps Kubernetes protobuf, which ovc does not decode into JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedObject {
    /// `apiVersion`, e.g. `v1` or `apps/v1` (empty when the store does not say).
    pub api_version: String,
    /// `kind`, e.g. `ConfigMap` (from the key's resource when the store does not say).
    pub kind: String,
    /// The namespace; `None` for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// Its key in the backing store (etcd: `/registry/<resource>/<namespace>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The object itself, when stored as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<serde_json::Value>,
    /// The stored bytes, base64, when stored as Kubernetes protobuf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protobuf: Option<String>,
}

impl ExportedObject {
    /// `KIND/NAMESPACE/NAME`, or `KIND/NAME` for a cluster-scoped object: how the CLI
    /// names it.
    pub fn reference(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

/// What a driver says about the data of a dump, recorded in the snapshot's manifest
/// (`backing_store`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackingStoreInfo {
    /// `etcd` (an [`etcd::EtcdBackingStore`] dump), `sim` (the simulator's document),
    /// `vcluster` (vcluster's own snapshot archive).
    pub kind: String,
    /// The etcd revision every key was read at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Keys (etcd) or objects dumped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<u64>,
}

/// Where a backing-store load comes from: a snapshot artifact's data object, read as a
/// stream and checked against its manifest as it goes.
#[async_trait]
pub trait BackingStoreSource: Send {
    /// The URL of the object being read, for messages.
    fn location(&self) -> &str;
    /// The object being read, for a host that reads it itself.
    fn object(&self) -> ObjectLocation;
    /// The object's size in bytes (its manifest's).
    fn size(&self) -> u64;
    /// The next chunk; `Ok(None)` at the end, only once the whole object matched its
    /// manifest (size and sha256). An error means: commit nothing.
    async fn next_chunk(&mut self) -> DriverResult<Option<Bytes>>;
}

/// A [`BackingStoreSink`] that keeps what it is given in memory (tests, small data).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemorySink {
    /// Everything written so far.
    pub data: Vec<u8>,
    /// The exported objects, in order.
    pub objects: Vec<ExportedObject>,
    /// Why there is no export, when the driver said so.
    pub objects_unavailable: Option<String>,
    /// What the driver recorded about the dump.
    pub info: Option<BackingStoreInfo>,
}

#[async_trait]
impl BackingStoreSink for MemorySink {
    fn location(&self) -> &str {
        "memory:"
    }

    fn object(&self) -> ObjectLocation {
        ObjectLocation::Local {
            url: "memory:".into(),
        }
    }

    async fn write(&mut self, chunk: Bytes) -> DriverResult<()> {
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn adopt_written(&mut self) -> DriverResult<u64> {
        Err(DriverError::permanent(
            Code::FailedPrecondition,
            "an in-memory sink cannot be written by the host itself",
        ))
    }

    async fn write_object(&mut self, object: &ExportedObject) -> DriverResult<()> {
        self.objects.push(object.clone());
        Ok(())
    }

    fn objects_unavailable(&mut self, reason: String) {
        self.objects_unavailable = Some(reason);
    }

    fn record_backing_store(&mut self, info: BackingStoreInfo) {
        self.info = Some(info);
    }
}

/// A [`BackingStoreSource`] over bytes in memory, in chunks of at most
/// [`MemorySource::CHUNK`] bytes (tests, small data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemorySource {
    data: Bytes,
    size: u64,
}

impl MemorySource {
    /// The chunk size.
    pub const CHUNK: usize = 1 << 20;

    /// A source of `data`.
    pub fn new(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            size: data.len() as u64,
            data,
        }
    }
}

#[async_trait]
impl BackingStoreSource for MemorySource {
    fn location(&self) -> &str {
        "memory:"
    }

    fn object(&self) -> ObjectLocation {
        ObjectLocation::Local {
            url: "memory:".into(),
        }
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn next_chunk(&mut self) -> DriverResult<Option<Bytes>> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let n = self.data.len().min(Self::CHUNK);
        Ok(Some(self.data.split_to(n)))
    }
}
