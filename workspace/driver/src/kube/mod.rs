//! The real host: a [`HostDriver`] on a Kubernetes cluster, through kube-rs and the `helm`
//! binary, call for call as vcluster's own tooling does (docs/vcluster-mechanics.md; the
//! section of each call is named in its doc comment).
//!
//! The substance lives in inherent methods of [`KubeHost`] (they speak Kubernetes:
//! owner labels, snapshot URLs, restore progress); `impl HostDriver for KubeHost` at the
//! bottom only adapts the trait's calls to them, so the trait can change shape without
//! touching the mechanics.
//!
//! Every method is an ensure: it reads first and changes only what differs, a 404 on a
//! removal is success, and the API server's errors map to transient (429, 5xx, time-outs,
//! connection errors; with `Retry-After`) or permanent (other 4xx, with the server's
//! message), see [`error`].

pub mod error;
pub mod helm;
pub mod storage;
pub mod values;

#[cfg(feature = "conformance")]
pub mod fake;

pub use error::{KubeError, KubeResult};
pub use helm::{ChartSource, DEFAULT_CHART_VERSION, Helm, HelmConfig, HelmRelease, HelmStatus};
pub use storage::{StorageCredentials, VclusterStorage, vcluster_storage};

use crate::{
    ANNOTATION_CREATED_BY, BackingStoreSink, BackingStoreSource, CallCtx, ControlPlaneStatus,
    DriverError, DriverResult, HostDriver, NamespaceOutcome, Owner, ReleaseInfo, ReleaseStatus,
    ReleaseValues, Target,
};
use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, ResourceQuota, Secret, Service,
    ServiceAccount,
};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use ovc_types::error::Code;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Annotation: the control plane is paused (mechanics §2).
pub const PAUSED: &str = "loft.sh/paused";
/// Annotation: the replicas to restore on resume.
pub const PAUSED_REPLICAS: &str = "loft.sh/paused-replicas";
/// Annotation: when it was paused.
pub const PAUSED_DATE: &str = "loft.sh/paused-date";
/// Annotation: paused for a restore (mechanics §5).
pub const RESTORING: &str = "loft.sh/restoring";
/// Label: vCluster Platform's sleep mode owns the control plane.
pub const SLEEP_MODE: &str = "loft.sh/sleep-mode";
/// Annotation on a namespace vcluster tooling created (mechanics §1).
pub const CREATED: &str = "vcluster.loft.sh/created";
/// Label of the pods the syncer created on the host.
pub const MANAGED_BY: &str = "vcluster.loft.sh/managed-by";
/// Label of ovc's namespaces.
pub const OVC_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label (and annotation) naming the snapshot request objects (mechanics §4).
pub const SNAPSHOT_REQUEST: &str = "vcluster.loft.sh/snapshot-request";
/// Label: the vcluster of a snapshot request.
pub const SNAPSHOT_VCLUSTER_NAME: &str = "vcluster.loft.sh/vcluster-name";
/// Label: the namespace of a snapshot request.
pub const SNAPSHOT_VCLUSTER_NAMESPACE: &str = "vcluster.loft.sh/vcluster-namespace";
/// The ResourceQuota that keeps a new vcluster's pods from starting until its restore
/// (mechanics §5).
pub const RESTORE_QUOTA: &str = "vcluster-restore";
/// Annotation on a restore's options Secret: whether it restores into a new vcluster
/// (`--new-vcluster`), so a re-run after the hold was lifted still knows.
pub const NEW_VCLUSTER: &str = "ovc.dev/new-vcluster";
/// Finalizers vcluster's snapshot/restore controllers put on request ConfigMaps.
pub const REQUEST_FINALIZERS: [&str; 2] = [
    "vcluster.loft.sh/snapshot-controller",
    "vcluster.loft.sh/restore-controller",
];

/// Builds a client for the virtual cluster's API from its (rewritten) kubeconfig. The
/// default parses the kubeconfig; tests route it to a mock.
pub type VirtualApiFactory =
    Arc<dyn Fn(String) -> futures::future::BoxFuture<'static, KubeResult<Client>> + Send + Sync>;

/// How the kube driver is set up.
#[derive(Debug, Clone)]
pub struct KubeHostConfig {
    /// How helm runs, and which chart.
    pub helm: HelmConfig,
    /// The server written into returned kubeconfigs and used for the virtual API probe:
    /// `{release}`, `{namespace}` and `{cluster_ip}` (of Service `NAME`) are replaced
    /// (default `https://{release}.{namespace}:443`, the Service, reachable from inside
    /// the host cluster; `https://{cluster_ip}:443` from a machine routing the Service
    /// network, e.g. a kind node).
    pub server_template: String,
    /// Longest one API call may take (then: transient).
    pub call_timeout: Duration,
    /// How often a call that waits on the host looks again (a Terminating namespace, a
    /// snapshot request, a restore pod).
    pub poll_interval: Duration,
    /// The longest such a wait lasts when the call has no deadline of its own (then:
    /// transient, and the step is retried).
    pub max_wait: Duration,
}

impl Default for KubeHostConfig {
    fn default() -> Self {
        KubeHostConfig {
            helm: HelmConfig::default(),
            server_template: "https://{release}.{namespace}:443".into(),
            call_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            max_wait: Duration::from_secs(300),
        }
    }
}

/// Environment variable: the helm binary.
pub const HELM_ENV: &str = "OVC_HELM";
/// Environment variable: the chart (`oci://...`, `https://REPO[#CHART]` or a path).
pub const CHART_ENV: &str = "OVC_KUBE_CHART";
/// Environment variable: the chart version.
pub const CHART_VERSION_ENV: &str = "OVC_KUBE_CHART_VERSION";
/// Environment variable: the server template of returned kubeconfigs.
pub const SERVER_ENV: &str = "OVC_KUBE_VCLUSTER_SERVER";

impl KubeHostConfig {
    /// The defaults, overridden by `OVC_HELM`, `OVC_KUBE_CHART`, `OVC_KUBE_CHART_VERSION`
    /// and `OVC_KUBE_VCLUSTER_SERVER`.
    pub fn from_env() -> KubeResult<Self> {
        let mut c = KubeHostConfig::default();
        if let Ok(h) = std::env::var(HELM_ENV) {
            c.helm.binary = h.into();
        }
        if let Ok(chart) = std::env::var(CHART_ENV) {
            c.helm.chart = ChartSource::parse(&chart)?;
        }
        if let Ok(v) = std::env::var(CHART_VERSION_ENV) {
            c.helm.version = v;
        }
        if let Ok(s) = std::env::var(SERVER_ENV) {
            c.server_template = s;
        }
        if !c.server_template.starts_with("https://") && !c.server_template.starts_with("http://") {
            return Err(KubeError::Config(format!(
                "{SERVER_ENV}={:?} must start with https://",
                c.server_template
            )));
        }
        Ok(c)
    }
}

/// Which workload kind runs the control plane (mechanics §0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// StatefulSet NAME (persistence or embedded etcd), or NAME-etcd.
    StatefulSet,
    /// Deployment NAME.
    Deployment,
}

/// A control-plane workload as the driver reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// StatefulSet or Deployment.
    pub kind: WorkloadKind,
    /// Object name.
    pub name: String,
    /// `spec.replicas`.
    pub replicas: u32,
    /// `status.replicas`.
    pub pods: u32,
    /// `status.readyReplicas`.
    pub ready: u32,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

impl Workload {
    /// Annotated `loft.sh/paused=true`.
    pub fn paused(&self) -> bool {
        self.annotations.get(PAUSED).is_some_and(|v| v == "true")
    }

    /// `loft.sh/paused-replicas`, if it parses.
    pub fn paused_replicas(&self) -> Option<u32> {
        self.annotations.get(PAUSED_REPLICAS)?.parse().ok()
    }

    fn sleeping(&self) -> bool {
        self.labels.get(SLEEP_MODE).is_some_and(|v| v == "true")
    }
}

/// The control plane of one release: the workload and a deployed etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlane {
    /// StatefulSet or Deployment `NAME`.
    pub workload: Workload,
    /// StatefulSet `NAME-etcd`, when etcd is deployed.
    pub etcd: Option<Workload>,
}

/// The three readiness checks of mechanics §1 step 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// Every wanted control-plane replica exists and is ready.
    pub control_plane: bool,
    /// Secret `vc-NAME` has `config`.
    pub kubeconfig: bool,
    /// `GET serviceaccounts/default` in `default` through the virtual API answered.
    pub virtual_api: bool,
}

impl Readiness {
    /// All three.
    pub fn is_ready(&self) -> bool {
        self.control_plane && self.kubeconfig && self.virtual_api
    }
}

/// Phase of a snapshot request (`status.phase` of the request ConfigMap, mechanics §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotPhase {
    /// Accepted, not started (`""`).
    Pending,
    /// `CreatingEtcdBackup` (or another in-progress phase).
    InProgress(String),
    /// `Completed`.
    Completed,
    /// `Failed`, with `status.error.message`.
    Failed(String),
    /// `Canceled` (a newer request for the same URL).
    Canceled,
}

/// What a restore step found (mechanics §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreProgress {
    /// The restore pod runs; look again later.
    Running,
    /// The restore pod exited 0, it is removed and the control plane resumed.
    Done,
}

/// The kube driver.
#[derive(Clone)]
pub struct KubeHost {
    client: Client,
    config: KubeHostConfig,
    helm: Arc<Helm>,
    virtual_api: VirtualApiFactory,
    credentials: StorageCredentials,
}

impl std::fmt::Debug for KubeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeHost")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn list_labels(selector: &str) -> ListParams {
    ListParams::default().labels(selector)
}

fn merge_patch() -> PatchParams {
    PatchParams::default()
}

fn annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations.clone().unwrap_or_default()
}

fn to_u32(v: Option<i32>) -> u32 {
    v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
}

/// Installs ring as rustls's process-wide crypto provider (the binary's one TLS stack)
/// unless one is installed: OpenDAL's HTTP client also compiles aws-lc-rs, and rustls
/// refuses to guess between two providers.
fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl KubeHost {
    /// A driver on `client` (the host cluster).
    pub fn new(client: Client, config: KubeHostConfig) -> Self {
        ensure_crypto_provider();
        KubeHost {
            client,
            helm: Arc::new(Helm::new(config.helm.clone())),
            config,
            virtual_api: Arc::new(|k| Box::pin(default_virtual_api(k))),
            credentials: StorageCredentials::from_env(),
        }
    }

    /// Replaces the snapshot-storage credentials handed to vclusters (default: the
    /// process environment's, [`StorageCredentials::from_env`]).
    pub fn with_storage_credentials(mut self, credentials: StorageCredentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// The host from `KUBECONFIG` (or `~/.kube/config`, or the in-cluster service account)
    /// and the `OVC_*` settings of [`KubeHostConfig::from_env`]. Fails with a message
    /// naming `KUBECONFIG` when there is no usable configuration.
    pub async fn from_env() -> KubeResult<Self> {
        ensure_crypto_provider();
        let config = KubeHostConfig::from_env()?;
        let kube = kube::Config::infer().await.map_err(|e| {
            KubeError::Config(format!(
                "no usable kubeconfig: set KUBECONFIG to the host cluster's kubeconfig \
                 (or run in a pod with a service account): {e}"
            ))
        })?;
        let client = Client::try_from(kube).map_err(|e| {
            KubeError::Config(format!(
                "the kubeconfig of KUBECONFIG does not make a client: {e}"
            ))
        })?;
        Ok(KubeHost::new(client, config))
    }

    /// The host of kubeconfig context `context` (of `KUBECONFIG`, or `~/.kube/config`)
    /// and the `OVC_*` settings of [`KubeHostConfig::from_env`]: one of several named
    /// hosts (`--kube-host NAME=CONTEXT`). Fails with a message naming `KUBECONFIG` when
    /// there is no kubeconfig, and naming the context when it has no such context.
    pub async fn from_context(context: &str) -> KubeResult<Self> {
        let kubeconfig = kube::config::Kubeconfig::read().map_err(|e| {
            KubeError::Config(format!(
                "no usable kubeconfig for context {context:?}: set KUBECONFIG to a kubeconfig \
                 that has it: {e}"
            ))
        })?;
        Self::from_kubeconfig_context(kubeconfig, context).await
    }

    /// The host of context `context` of `kubeconfig` (see [`KubeHost::from_context`]).
    pub async fn from_kubeconfig_context(
        kubeconfig: kube::config::Kubeconfig,
        context: &str,
    ) -> KubeResult<Self> {
        ensure_crypto_provider();
        let config = KubeHostConfig::from_env()?;
        let known: Vec<String> = kubeconfig.contexts.iter().map(|c| c.name.clone()).collect();
        if !known.iter().any(|c| c == context) {
            return Err(KubeError::Config(format!(
                "the kubeconfig of KUBECONFIG has no context {context:?} (it has: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        let options = kube::config::KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        };
        let kube = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| {
                KubeError::Config(format!(
                    "context {context:?} of the kubeconfig of KUBECONFIG is not usable: {e}"
                ))
            })?;
        let client = Client::try_from(kube).map_err(|e| {
            KubeError::Config(format!(
                "context {context:?} of the kubeconfig of KUBECONFIG does not make a client: {e}"
            ))
        })?;
        Ok(KubeHost::new(client, config))
    }

    /// Replaces how the virtual API client is built (tests).
    pub fn with_virtual_api(mut self, factory: VirtualApiFactory) -> Self {
        self.virtual_api = factory;
        self
    }

    /// The helm runner.
    pub fn helm(&self) -> &Helm {
        &self.helm
    }

    /// Checks at start-up that the API server answers and helm is usable.
    pub async fn check(&self) -> KubeResult<()> {
        self.call("GET /version", self.client.apiserver_version())
            .await?;
        self.helm.check_version().await?;
        Ok(())
    }

    async fn call<T>(
        &self,
        what: impl Into<String>,
        fut: impl Future<Output = Result<T, kube::Error>>,
    ) -> KubeResult<T> {
        let what = what.into();
        match tokio::time::timeout(self.config.call_timeout, fut).await {
            Err(_) => Err(KubeError::Timeout {
                what,
                after: self.config.call_timeout,
            }),
            Ok(r) => r.map_err(|e| KubeError::from_kube(what, e)),
        }
    }

    /// A removal: 404 is success.
    async fn delete_ok<K>(&self, api: &Api<K>, kind: &str, name: &str) -> KubeResult<bool>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match self
            .call(
                format!("DELETE {kind}/{name}"),
                api.delete(name, &DeleteParams::default()),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn ns_api<K>(&self, ns: &str) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), ns)
    }

    /// The server template with `{release}` and `{namespace}` filled in.
    fn server_template_for(&self, t: &Target) -> String {
        self.config
            .server_template
            .replace("{release}", &t.release)
            .replace("{namespace}", &t.namespace)
    }

    /// The server a returned kubeconfig points at; `{cluster_ip}` is the ClusterIP of
    /// Service `NAME` (`None` while it has none).
    pub async fn server_for(&self, t: &Target) -> KubeResult<Option<String>> {
        let server = self.server_template_for(t);
        if !server.contains("{cluster_ip}") {
            return Ok(Some(server));
        }
        let api: Api<Service> = self.ns_api(&t.namespace);
        let svc = self
            .call(
                format!("GET services/{}", t.release),
                api.get_opt(&t.release),
            )
            .await?;
        let ip = svc
            .and_then(|s| s.spec)
            .and_then(|s| s.cluster_ip)
            .filter(|ip| !ip.is_empty() && ip != "None");
        Ok(ip.map(|ip| server.replace("{cluster_ip}", &ip)))
    }

    /// Waits one [`KubeHostConfig::poll_interval`] before a call that waits on the host
    /// looks again, unless that would outlast the wait: the call's deadline (less one
    /// interval, so the step's own timeout never cuts the call off mid-request), or
    /// [`KubeHostConfig::max_wait`] from `started` without a deadline. Then a transient
    /// error saying what was waited for, so the step is retried later.
    async fn wait_again(
        &self,
        ctx: &CallCtx,
        started: tokio::time::Instant,
        waiting_for: impl FnOnce() -> String,
    ) -> DriverResult<()> {
        let interval = self.config.poll_interval;
        let now = tokio::time::Instant::now();
        let out_of_time = match ctx.deadline {
            Some(deadline) => std::time::Instant::now() + interval * 2 >= deadline,
            None => now + interval > started + self.config.max_wait,
        };
        if out_of_time {
            return Err(DriverError::Transient {
                message: format!(
                    "{} after {:?}; the step will look again",
                    waiting_for(),
                    now - started
                ),
                retry_after: Some(interval),
            });
        }
        tokio::time::sleep(interval).await;
        ctx.check()
    }

    // ---- namespace (mechanics §1 step 1, §7 step 6) ----

    fn is_ours(ns: &Namespace, owner: &BTreeMap<String, String>) -> bool {
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.get(OVC_MANAGED_BY).is_some_and(|v| v == "ovc")
            && owner.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Creates namespace `t.namespace` with ovc's labels, `owner`'s labels and the
    /// annotation `vcluster.loft.sh/created=true`. A Terminating namespace is
    /// [`KubeError::NotYet`] (the trait's `ensure_namespace` waits it out, bounded); an existing one must carry `owner`'s labels, else the
    /// call is refused. Returns true when this call created it.
    pub async fn ensure_namespace_owned(
        &self,
        t: &Target,
        owner: &BTreeMap<String, String>,
        created_by: Option<&str>,
    ) -> KubeResult<NamespaceOutcome> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let what = format!("GET namespaces/{}", t.namespace);
        let outcome = |ns: &Namespace| {
            let annotated = ns
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_CREATED_BY))
                .map(String::as_str);
            if created_by.is_some() && annotated == created_by {
                NamespaceOutcome::Created
            } else {
                NamespaceOutcome::AlreadyOwned
            }
        };
        if let Some(ns) = self.call(&what, api.get_opt(&t.namespace)).await? {
            return self.verify_namespace(&ns, t, owner).map(|()| outcome(&ns));
        }
        let mut labels: BTreeMap<String, String> = owner.clone();
        labels.insert(OVC_MANAGED_BY.into(), "ovc".into());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(t.namespace.clone()),
                labels: Some(labels),
                annotations: Some(
                    [(CREATED.to_string(), "true".to_string())]
                        .into_iter()
                        .chain(
                            created_by
                                .map(|op| (ANNOTATION_CREATED_BY.to_string(), op.to_string())),
                        )
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        match self
            .call("POST namespaces", api.create(&PostParams::default(), &ns))
            .await
        {
            Ok(_) => Ok(NamespaceOutcome::Created),
            Err(e) if e.is_already_exists() => {
                let ns = self.call(&what, api.get(&t.namespace)).await?;
                self.verify_namespace(&ns, t, owner).map(|()| outcome(&ns))
            }
            Err(e) => Err(e),
        }
    }

    fn verify_namespace(
        &self,
        ns: &Namespace,
        t: &Target,
        owner: &BTreeMap<String, String>,
    ) -> KubeResult<()> {
        if ns.metadata.deletion_timestamp.is_some() {
            return Err(KubeError::NotYet {
                message: format!(
                    "namespace {} is terminating; waiting until it is gone",
                    t.namespace
                ),
                retry_after: Duration::from_secs(2),
            });
        }
        if !Self::is_ours(ns, owner) {
            return Err(KubeError::refused(
                Code::FailedPrecondition,
                "NAMESPACE_NOT_OURS",
                format!(
                    "namespace {} exists on the host and was not created by ovc for this vcluster",
                    t.namespace
                ),
            ));
        }
        Ok(())
    }

    /// True when the namespace exists (Terminating included).
    pub async fn namespace_exists_now(&self, t: &Target) -> KubeResult<bool> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        Ok(self
            .call(
                format!("GET namespaces/{}", t.namespace),
                api.get_opt(&t.namespace),
            )
            .await?
            .is_some())
    }

    /// Deletes the namespace if ovc created it (`vcluster.loft.sh/created=true` and our
    /// label) and no other vcluster lives in it; true once it is gone (or not ours).
    pub async fn delete_namespace_if_ours(&self, t: &Target) -> KubeResult<bool> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let what = format!("GET namespaces/{}", t.namespace);
        let Some(ns) = self.call(&what, api.get_opt(&t.namespace)).await? else {
            return Ok(true);
        };
        let created = annotations(&ns.metadata)
            .get(CREATED)
            .is_some_and(|v| v == "true");
        if !created || !Self::is_ours(&ns, &BTreeMap::new()) {
            tracing::info!(namespace = %t.namespace, "namespace not created by ovc: left in place");
            return Ok(true);
        }
        if ns.metadata.deletion_timestamp.is_some() {
            return Ok(false);
        }
        let others = self.other_vclusters(t).await?;
        if !others.is_empty() {
            tracing::info!(namespace = %t.namespace, ?others, "namespace holds other vclusters: left in place");
            return Ok(true);
        }
        self.delete_ok(&api, "namespaces", &t.namespace).await?;
        Ok(self.call(&what, api.get_opt(&t.namespace)).await?.is_none())
    }

    /// Releases of other vclusters in the namespace (`app=vcluster` workloads).
    pub async fn other_vclusters(&self, t: &Target) -> KubeResult<Vec<String>> {
        let lp = list_labels("app=vcluster");
        let sts: Api<StatefulSet> = self.ns_api(&t.namespace);
        let dep: Api<Deployment> = self.ns_api(&t.namespace);
        let mut out = Vec::new();
        for item in self.call("LIST statefulsets", sts.list(&lp)).await?.items {
            out.extend(item.metadata.labels.and_then(|l| l.get("release").cloned()));
        }
        for item in self.call("LIST deployments", dep.list(&lp)).await?.items {
            out.extend(item.metadata.labels.and_then(|l| l.get("release").cloned()));
        }
        out.retain(|r| *r != t.release);
        out.sort();
        out.dedup();
        Ok(out)
    }

    // ---- helm (mechanics §1 step 3, §6, §7 step 1) ----

    /// The release as helm reports it (after recovering a stuck `pending-*`).
    pub async fn helm_release(&self, t: &Target) -> KubeResult<Option<HelmRelease>> {
        self.helm.status(&t.namespace, &t.release).await
    }

    /// `helm upgrade --install` with `values` rendered; a release with exactly these values
    /// and chart version is left alone (no new revision). Refuses a paused control plane
    /// (mechanics §6: an upgrade would reset replicas 0→N while `loft.sh/paused` stays), a
    /// second vcluster in the namespace and a missing namespace. Returns the revision.
    pub async fn upgrade_release(&self, t: &Target, values: &ReleaseValues) -> KubeResult<u32> {
        // With `{cluster_ip}` the address is known only after the install; the ClusterIP
        // is among the certificate's SANs anyway (mechanics §0).
        let server = self.server_template_for(t);
        let export = (!server.contains("{cluster_ip}")).then_some(server.as_str());
        let rendered = values::render(values, export)?;
        let version = values
            .chart_version
            .clone()
            .unwrap_or_else(|| self.config.helm.version.clone());
        let current = self.helm.recover_pending(&t.namespace, &t.release).await?;
        if let Some(rel) = &current {
            let same = Value::Object(rel.config.clone()) == rendered
                // A local chart has its own version; `--version` does not pick it.
                && (matches!(self.config.helm.chart, ChartSource::Local(_))
                    || rel.chart_version() == version)
                && rel.info.status == HelmStatus::Deployed;
            if same {
                return Ok(rel.version);
            }
            if let Some(cp) = self.discover(t).await?
                && cp.workload.paused()
            {
                return Err(KubeError::refused(
                    Code::FailedPrecondition,
                    "CONTROL_PLANE_PAUSED",
                    format!(
                        "vcluster {} is paused: ovc never upgrades a paused vcluster (resume it first)",
                        t.release
                    ),
                ));
            }
        } else {
            if !self.namespace_exists_now(t).await? {
                return Err(KubeError::refused(
                    Code::FailedPrecondition,
                    "NAMESPACE_MISSING",
                    format!("namespace {} does not exist", t.namespace),
                ));
            }
            if let Some(other) = self.other_vclusters(t).await?.first() {
                return Err(KubeError::refused(
                    Code::FailedPrecondition,
                    "NAMESPACE_TAKEN",
                    format!(
                        "namespace {} already holds the vcluster release {other} (one vcluster per namespace)",
                        t.namespace
                    ),
                ));
            }
        }
        self.helm
            .upgrade_install(&t.namespace, &t.release, &version, &rendered)
            .await?;
        match self.helm.status(&t.namespace, &t.release).await? {
            Some(rel) => Ok(rel.version),
            None => Err(KubeError::Helm {
                transient: true,
                message: format!(
                    "helm upgrade of {} finished but helm status finds no release",
                    t.release
                ),
            }),
        }
    }

    /// The release as ovc's [`ReleaseInfo`].
    pub async fn release_info(&self, t: &Target) -> KubeResult<Option<ReleaseInfo>> {
        let Some(rel) = self.helm_release(t).await? else {
            return Ok(None);
        };
        let Some(mut values) = values::parse(&rel.config) else {
            return Err(KubeError::refused(
                Code::FailedPrecondition,
                "RELEASE_NOT_OURS",
                format!(
                    "helm release {} in {} was not installed by ovc",
                    t.release, t.namespace
                ),
            ));
        };
        values.chart_version = Some(rel.chart_version().to_owned());
        Ok(Some(ReleaseInfo {
            revision: rel.version,
            values,
            status: ReleaseStatus::from_helm(rel.info.status),
            chart_version: rel.chart_version().to_owned(),
        }))
    }

    /// Mechanics §7: `helm uninstall` (no release: fine), then every PVC `data-NAME-*`
    /// (`data-NAME-etcd-*` included), then the snapshot request ConfigMaps of the vcluster
    /// (finalizers stripped, since no controller is left to remove them).
    pub async fn uninstall(&self, t: &Target) -> KubeResult<()> {
        self.helm.uninstall(&t.namespace, &t.release).await?;
        let pvcs: Api<PersistentVolumeClaim> = self.ns_api(&t.namespace);
        let prefix = format!("data-{}-", t.release);
        match self
            .call(
                "LIST persistentvolumeclaims",
                pvcs.list(&ListParams::default()),
            )
            .await
        {
            Ok(list) => {
                for pvc in list.items {
                    let name = pvc.metadata.name.unwrap_or_default();
                    if name.starts_with(&prefix) {
                        self.delete_ok(&pvcs, "persistentvolumeclaims", &name)
                            .await?;
                    }
                }
            }
            // The namespace is gone: so are its PVCs.
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
        let cms: Api<ConfigMap> = self.ns_api(&t.namespace);
        let selector = format!("{SNAPSHOT_REQUEST},{SNAPSHOT_VCLUSTER_NAME}={}", t.release);
        for cm in self
            .call("LIST configmaps", cms.list(&list_labels(&selector)))
            .await?
            .items
        {
            let name = cm.metadata.name.clone().unwrap_or_default();
            let ours: Vec<String> = cm.metadata.finalizers.clone().unwrap_or_default();
            if ours
                .iter()
                .any(|f| REQUEST_FINALIZERS.contains(&f.as_str()))
            {
                let keep: Vec<String> = ours
                    .into_iter()
                    .filter(|f| !REQUEST_FINALIZERS.contains(&f.as_str()))
                    .collect();
                let body = json!({"metadata": {"finalizers": keep}});
                match self
                    .call(
                        format!("PATCH configmaps/{name}"),
                        cms.patch(&name, &merge_patch(), &Patch::Merge(&body)),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                }
            }
            self.delete_ok(&cms, "configmaps", &name).await?;
        }
        Ok(())
    }

    // ---- control plane (mechanics §0, §2, §3) ----

    fn workload_from_sts(s: StatefulSet) -> Workload {
        let status = s.status.unwrap_or_default();
        Workload {
            kind: WorkloadKind::StatefulSet,
            name: s.metadata.name.clone().unwrap_or_default(),
            replicas: to_u32(s.spec.as_ref().and_then(|s| s.replicas).or(Some(1))),
            pods: to_u32(Some(status.replicas)),
            ready: to_u32(status.ready_replicas),
            annotations: annotations(&s.metadata),
            labels: s.metadata.labels.unwrap_or_default(),
        }
    }

    fn workload_from_deploy(d: Deployment) -> Workload {
        let status = d.status.unwrap_or_default();
        Workload {
            kind: WorkloadKind::Deployment,
            name: d.metadata.name.clone().unwrap_or_default(),
            replicas: to_u32(d.spec.as_ref().and_then(|s| s.replicas).or(Some(1))),
            pods: to_u32(status.replicas),
            ready: to_u32(status.ready_replicas),
            annotations: annotations(&d.metadata),
            labels: d.metadata.labels.unwrap_or_default(),
        }
    }

    /// Finds the control plane: StatefulSet `-l app=vcluster,release=NAME`, else the
    /// Deployment; plus StatefulSet `-l app=vcluster-etcd,release=NAME`.
    pub async fn discover(&self, t: &Target) -> KubeResult<Option<ControlPlane>> {
        let sts: Api<StatefulSet> = self.ns_api(&t.namespace);
        let lp = list_labels(&format!("app=vcluster,release={}", t.release));
        let found = match self.call("LIST statefulsets", sts.list(&lp)).await {
            Ok(l) => l.items,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let workload = match found.into_iter().next() {
            Some(s) => Self::workload_from_sts(s),
            None => {
                let dep: Api<Deployment> = self.ns_api(&t.namespace);
                match self
                    .call("LIST deployments", dep.list(&lp))
                    .await?
                    .items
                    .into_iter()
                    .next()
                {
                    Some(d) => Self::workload_from_deploy(d),
                    None => return Ok(None),
                }
            }
        };
        let etcd_lp = list_labels(&format!("app=vcluster-etcd,release={}", t.release));
        let etcd = self
            .call("LIST statefulsets", sts.list(&etcd_lp))
            .await?
            .items
            .into_iter()
            .next()
            .map(Self::workload_from_sts);
        Ok(Some(ControlPlane { workload, etcd }))
    }

    async fn patch_workload(&self, ns: &str, w: &Workload, body: &Value) -> KubeResult<()> {
        let patch = Patch::Merge(body);
        match w.kind {
            WorkloadKind::StatefulSet => {
                let api: Api<StatefulSet> = self.ns_api(ns);
                self.call(
                    format!("PATCH statefulsets/{}", w.name),
                    api.patch(&w.name, &merge_patch(), &patch),
                )
                .await?;
            }
            WorkloadKind::Deployment => {
                let api: Api<Deployment> = self.ns_api(ns);
                self.call(
                    format!("PATCH deployments/{}", w.name),
                    api.patch(&w.name, &merge_patch(), &patch),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// `controlPlane.statefulSet.highAvailability.replicas` of Secret `vc-config-NAME`
    /// (`config.yaml`), default 1: what a control plane already at 0 resumes to.
    async fn configured_replicas(&self, t: &Target) -> KubeResult<u32> {
        let api: Api<Secret> = self.ns_api(&t.namespace);
        let name = format!("vc-config-{}", t.release);
        let Some(secret) = self
            .call(format!("GET secrets/{name}"), api.get_opt(&name))
            .await?
        else {
            return Ok(1);
        };
        let Some(bytes) = secret.data.and_then(|d| d.get("config.yaml").cloned()) else {
            return Ok(1);
        };
        let text = String::from_utf8_lossy(&bytes.0);
        let config: Value = serde_saphyr::from_str(&text).unwrap_or(Value::Null);
        Ok(values::ha_replicas(&config))
    }

    fn pause_body(replicas: u32, restoring: bool) -> Value {
        let date = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut ann = json!({
            PAUSED: "true",
            PAUSED_REPLICAS: replicas.to_string(),
            PAUSED_DATE: date,
        });
        if restoring {
            ann[RESTORING] = json!("true");
        }
        json!({"metadata": {"annotations": ann}, "spec": {"replicas": 0}})
    }

    async fn pause_one(&self, t: &Target, w: &Workload, restoring: bool) -> KubeResult<u32> {
        if w.paused() {
            let r = w.paused_replicas().filter(|r| *r > 0).unwrap_or(1);
            if restoring && !w.annotations.contains_key(RESTORING) {
                let body = json!({"metadata": {"annotations": {RESTORING: "true"}}});
                self.patch_workload(&t.namespace, w, &body).await?;
            }
            return Ok(r);
        }
        let r = if w.replicas > 0 {
            w.replicas
        } else {
            self.configured_replicas(t).await?
        };
        self.patch_workload(&t.namespace, w, &Self::pause_body(r, restoring))
            .await?;
        Ok(r)
    }

    fn not_found(t: &Target) -> KubeError {
        KubeError::refused(
            Code::NotFound,
            "RELEASE_NOT_FOUND",
            format!(
                "release {} not found in namespace {}",
                t.release, t.namespace
            ),
        )
    }

    fn refuse_sleep_mode(t: &Target, cp: &ControlPlane) -> KubeResult<()> {
        if cp.workload.sleeping() {
            return Err(KubeError::refused(
                Code::FailedPrecondition,
                "SLEEP_MODE",
                format!(
                    "vcluster {} is managed by vCluster Platform sleep mode (label {SLEEP_MODE}=true)",
                    t.release
                ),
            ));
        }
        Ok(())
    }

    /// Mechanics §2 step 2: one merge patch per workload (`loft.sh/paused`,
    /// `loft.sh/paused-replicas`, `loft.sh/paused-date`, replicas 0), the control plane
    /// first, then a deployed etcd (unless `restoring`: it is the restore's target).
    /// Already paused → nothing changes. Returns the remembered replicas.
    pub async fn pause(&self, t: &Target, restoring: bool) -> KubeResult<u32> {
        let cp = self.discover(t).await?.ok_or_else(|| Self::not_found(t))?;
        Self::refuse_sleep_mode(t, &cp)?;
        let r = self.pause_one(t, &cp.workload, restoring).await?;
        if !restoring && let Some(etcd) = &cp.etcd {
            self.pause_one(t, etcd, false).await?;
        }
        Ok(r)
    }

    fn resume_body(replicas: u32) -> Value {
        json!({
            "metadata": {"annotations": {PAUSED: null, RESTORING: null, PAUSED_REPLICAS: null, PAUSED_DATE: null}},
            "spec": {"replicas": replicas},
        })
    }

    /// Mechanics §3: for each annotated workload (deployed etcd first) one merge patch
    /// removing the annotations and setting the saved replicas (bad/missing → 1). Not
    /// annotated and running → nothing to do; at 0 without annotation (scaled down
    /// outside ovc) → refused. Returns the control plane's replicas.
    pub async fn resume(&self, t: &Target) -> KubeResult<u32> {
        let cp = self.discover(t).await?.ok_or_else(|| Self::not_found(t))?;
        Self::refuse_sleep_mode(t, &cp)?;
        if let Some(etcd) = cp.etcd.as_ref().filter(|e| e.paused()) {
            let r = etcd.paused_replicas().filter(|r| *r > 0).unwrap_or(1);
            self.patch_workload(&t.namespace, etcd, &Self::resume_body(r))
                .await?;
        }
        let w = &cp.workload;
        if w.paused() || w.annotations.contains_key(RESTORING) {
            let r = w.paused_replicas().filter(|r| *r > 0).unwrap_or(1);
            self.patch_workload(&t.namespace, w, &Self::resume_body(r))
                .await?;
            return Ok(r);
        }
        if w.replicas == 0 {
            return Err(KubeError::refused(
                Code::FailedPrecondition,
                "SCALED_DOWN",
                format!(
                    "{} {} is scaled to 0 without the {PAUSED} annotation (stopped outside ovc); \
                     scale it back up or pause it with ovc first",
                    match w.kind {
                        WorkloadKind::StatefulSet => "statefulset",
                        WorkloadKind::Deployment => "deployment",
                    },
                    w.name
                ),
            ));
        }
        Ok(w.replicas)
    }

    /// The trait's view of the control plane.
    pub async fn control_plane_status(&self, t: &Target) -> KubeResult<Option<ControlPlaneStatus>> {
        Ok(self.discover(t).await?.map(|cp| {
            let w = cp.workload;
            ControlPlaneStatus {
                replicas: w.replicas,
                pods: w.pods,
                ready: w.ready,
                paused: w.paused(),
                paused_replicas: if w.paused() {
                    w.paused_replicas()
                } else {
                    None
                },
            }
        }))
    }

    // ---- workloads (mechanics §2 step 3) ----

    /// Pods `-l vcluster.loft.sh/managed-by=NAME` in the namespace.
    pub async fn list_workload_pods(&self, t: &Target) -> KubeResult<Vec<String>> {
        let api: Api<Pod> = self.ns_api(&t.namespace);
        let lp = list_labels(&format!("{MANAGED_BY}={}", t.release));
        match self.call("LIST pods", api.list(&lp)).await {
            Ok(l) => Ok(l
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Deletes every workload pod (404 ok); returns how many this call deleted. The
    /// caller waits until [`list_workload_pods`](Self::list_workload_pods) is empty.
    pub async fn delete_workload_pods(&self, t: &Target) -> KubeResult<u32> {
        let api: Api<Pod> = self.ns_api(&t.namespace);
        let mut n = 0;
        for name in self.list_workload_pods(t).await? {
            if self.delete_ok(&api, "pods", &name).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    // ---- readiness and kubeconfig (mechanics §1 steps 4, 5) ----

    /// The kubeconfig of Secret `vc-NAME` (`config`), its server rewritten to
    /// [`server_for`](Self::server_for); `None` until the syncer wrote it.
    pub async fn read_kubeconfig(&self, t: &Target) -> KubeResult<Option<String>> {
        let api: Api<Secret> = self.ns_api(&t.namespace);
        let name = format!("vc-{}", t.release);
        let secret = match self
            .call(format!("GET secrets/{name}"), api.get_opt(&name))
            .await
        {
            Ok(s) => s,
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let Some(config) = secret
            .and_then(|s| s.data)
            .and_then(|d| d.get("config").cloned())
        else {
            return Ok(None);
        };
        let text = String::from_utf8(config.0).map_err(|_| {
            KubeError::refused(
                Code::FailedPrecondition,
                "BAD_KUBECONFIG",
                format!("secret {name}: config is not UTF-8"),
            )
        })?;
        match self.server_for(t).await? {
            Some(server) => rewrite_server(&text, &server).map(Some),
            None => Ok(None),
        }
    }

    /// `GET serviceaccounts/default` in `default` through the virtual API.
    pub async fn probe_virtual_api(&self, t: &Target) -> KubeResult<bool> {
        let Some(kubeconfig) = self.read_kubeconfig(t).await? else {
            return Ok(false);
        };
        let client = (self.virtual_api)(kubeconfig).await?;
        let api: Api<ServiceAccount> = Api::namespaced(client, "default");
        match self
            .call("GET (virtual) serviceaccounts/default", api.get("default"))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => {
                tracing::debug!(error = %e, release = %t.release, "virtual API not answering yet");
                Ok(false)
            }
        }
    }

    /// The three checks of mechanics §1 step 4.
    pub async fn readiness(&self, t: &Target) -> KubeResult<Readiness> {
        let mut r = Readiness {
            control_plane: self
                .control_plane_status(t)
                .await?
                .is_some_and(|c| c.is_ready()),
            ..Readiness::default()
        };
        if !r.control_plane {
            return Ok(r);
        }
        r.kubeconfig = self.read_kubeconfig(t).await?.is_some();
        if r.kubeconfig {
            r.virtual_api = self.probe_virtual_api(t).await?;
        }
        Ok(r)
    }

    // ---- snapshot request objects (mechanics §4) ----

    async fn refuse_unsnapshottable(&self, t: &Target) -> KubeResult<()> {
        let cp = self.discover(t).await?.ok_or_else(|| Self::not_found(t))?;
        if cp.etcd.is_some() {
            return Err(KubeError::refused(
                Code::FailedPrecondition,
                "SNAPSHOT_UNSUPPORTED",
                format!(
                    "vcluster {} uses a deployed etcd, which vcluster cannot snapshot",
                    t.release
                ),
            ));
        }
        if cp.workload.paused() || cp.workload.replicas == 0 {
            return Err(KubeError::refused(
                Code::FailedPrecondition,
                "CONTROL_PLANE_PAUSED",
                format!(
                    "vcluster {} is paused: a snapshot needs a running control plane",
                    t.release
                ),
            ));
        }
        Ok(())
    }

    async fn find_request(&self, t: &Target, url: &str) -> KubeResult<Option<ConfigMap>> {
        let api: Api<ConfigMap> = self.ns_api(&t.namespace);
        let selector = format!("{SNAPSHOT_REQUEST},{SNAPSHOT_VCLUSTER_NAME}={}", t.release);
        let list = self
            .call("LIST configmaps", api.list(&list_labels(&selector)))
            .await?;
        Ok(list
            .items
            .into_iter()
            .find(|cm| request_url(cm).as_deref() == Some(url)))
    }

    fn request_labels(t: &Target) -> BTreeMap<String, String> {
        [
            (SNAPSHOT_REQUEST.to_string(), String::new()),
            (SNAPSHOT_VCLUSTER_NAME.to_string(), t.release.clone()),
            (SNAPSHOT_VCLUSTER_NAMESPACE.to_string(), t.namespace.clone()),
        ]
        .into()
    }

    /// Asks the vcluster to write a snapshot to `url` (`s3://`, `oci://`, `container://`,
    /// `https://` Azure): Secret `NAME-snapshot-request-*` with `snapshotOptions` (the
    /// storage options and credentials, never logged), then the ConfigMap of the same
    /// name with `snapshotRequest`. A request for the same URL that exists is reused.
    /// Refuses a deployed etcd and a paused control plane. Returns the phase.
    pub async fn request_snapshot(
        &self,
        t: &Target,
        url: &str,
        options: &Value,
    ) -> KubeResult<SnapshotPhase> {
        if let Some(cm) = self.find_request(t, url).await? {
            return Ok(request_phase(&cm));
        }
        self.refuse_unsnapshottable(t).await?;
        let secrets: Api<Secret> = self.ns_api(&t.namespace);
        let secret = Secret {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-snapshot-request-", t.release)),
                labels: Some(Self::request_labels(t)),
                ..ObjectMeta::default()
            },
            data: Some(
                [(
                    "snapshotOptions".to_string(),
                    ByteString(serde_json::to_vec(options).unwrap_or_default()),
                )]
                .into(),
            ),
            ..Secret::default()
        };
        let created = self
            .call(
                "POST secrets",
                secrets.create(&PostParams::default(), &secret),
            )
            .await?;
        let name = created.metadata.name.unwrap_or_default();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let request = json!({
            "metadata": {"name": name, "creationTimestamp": now},
            "spec": {"url": url},
            "status": {},
        });
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(Self::request_labels(t)),
                ..ObjectMeta::default()
            },
            data: Some([("snapshotRequest".to_string(), request.to_string())].into()),
            ..ConfigMap::default()
        };
        let cms: Api<ConfigMap> = self.ns_api(&t.namespace);
        match self
            .call("POST configmaps", cms.create(&PostParams::default(), &cm))
            .await
        {
            Ok(_) => Ok(SnapshotPhase::Pending),
            Err(e) => {
                // No request without its ConfigMap: remove the Secret again.
                let _ = self.delete_ok(&secrets, "secrets", &name).await;
                Err(e)
            }
        }
    }

    /// `options` with `release` (name, namespace, chart and version, values as YAML), as
    /// vcluster's CLI fills it, so the archive carries the release (mechanics §4).
    async fn with_release(&self, t: &Target, mut options: Value) -> KubeResult<Value> {
        if let Some(rel) = self.helm_release(t).await? {
            use base64::Engine;
            let values = serde_saphyr::to_string(&Value::Object(rel.config.clone()))
                .map_err(|e| KubeError::Config(format!("release values do not encode: {e}")))?;
            options["release"] = json!({
                "releaseName": t.release,
                "releaseNamespace": t.namespace,
                "chartName": "vcluster",
                "chartVersion": rel.chart_version(),
                "values": base64::engine::general_purpose::STANDARD.encode(values),
            });
        }
        Ok(options)
    }

    /// The phase of the request for `url` (`None`: no such request).
    pub async fn snapshot_phase(&self, t: &Target, url: &str) -> KubeResult<Option<SnapshotPhase>> {
        Ok(self
            .find_request(t, url)
            .await?
            .map(|cm| request_phase(&cm)))
    }

    /// Removes the request for `url` (the undo of a snapshot): finalizers stripped when
    /// the vcluster is gone, 404 ok.
    pub async fn delete_snapshot_request(&self, t: &Target, url: &str) -> KubeResult<()> {
        let Some(cm) = self.find_request(t, url).await? else {
            return Ok(());
        };
        let name = cm.metadata.name.clone().unwrap_or_default();
        let cms: Api<ConfigMap> = self.ns_api(&t.namespace);
        if self.discover(t).await?.is_none()
            && cm
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty())
        {
            let body = json!({"metadata": {"finalizers": null}});
            self.call(
                format!("PATCH configmaps/{name}"),
                cms.patch(&name, &merge_patch(), &Patch::Merge(&body)),
            )
            .await?;
        }
        self.delete_ok(&cms, "configmaps", &name).await?;
        let secrets: Api<Secret> = self.ns_api(&t.namespace);
        self.delete_ok(&secrets, "secrets", &name).await?;
        Ok(())
    }

    // ---- restore (mechanics §5) ----

    /// Restore into a new vcluster, step 0: ResourceQuota `vcluster-restore`
    /// `{hard: {pods: "0"}}`, before the helm install, so the fresh control plane cannot
    /// start. Exists → fine.
    pub async fn block_new_control_plane(&self, t: &Target) -> KubeResult<()> {
        let api: Api<ResourceQuota> = self.ns_api(&t.namespace);
        let quota: ResourceQuota = serde_json::from_value(json!({
            "metadata": {"name": RESTORE_QUOTA},
            "spec": {"hard": {"pods": "0"}},
        }))
        .map_err(|e| KubeError::Config(e.to_string()))?;
        match self
            .call(
                "POST resourcequotas",
                api.create(&PostParams::default(), &quota),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_already_exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Restore from `url`, one idempotent pass at a time: pause with `loft.sh/restoring`,
    /// delete the synced pods, delete PVCs not ending `-0`, create Secret
    /// `vcluster-snapshot-options-ID` (annotated with `new_vcluster`), delete quota
    /// `vcluster-restore`, create Pod `vcluster-snapshot-ID` (`/vcluster restore`) and
    /// make it the Secret's owner; once the pod exited 0 delete both and resume. `ID` is
    /// derived from `url`, so a re-run finds its pod.
    pub async fn restore(
        &self,
        t: &Target,
        url: &str,
        options: &Value,
        new_vcluster: bool,
    ) -> KubeResult<RestoreProgress> {
        let id = short_hash(url);
        let pod_name = format!("vcluster-snapshot-{id}");
        let secret_name = format!("vcluster-snapshot-options-{id}");
        let pods: Api<Pod> = self.ns_api(&t.namespace);
        if let Some(pod) = self
            .call(format!("GET pods/{pod_name}"), pods.get_opt(&pod_name))
            .await?
        {
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            return match phase.as_str() {
                "Succeeded" => {
                    self.finish_restore(t, &pod_name, &secret_name).await?;
                    Ok(RestoreProgress::Done)
                }
                "Failed" => {
                    let exit = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .and_then(|cs| cs.iter().find(|c| c.name == "snapshot"))
                        .and_then(|c| c.state.as_ref())
                        .and_then(|s| s.terminated.as_ref())
                        .map(|t| {
                            format!(
                                " (exit code {}{})",
                                t.exit_code,
                                t.message
                                    .as_deref()
                                    .map(|m| format!(": {}", self.credentials.redact(m.trim())))
                                    .unwrap_or_default()
                            )
                        })
                        .unwrap_or_default();
                    self.finish_restore(t, &pod_name, &secret_name).await?;
                    Err(KubeError::refused(
                        Code::FailedPrecondition,
                        "RESTORE_FAILED",
                        format!(
                            "the restore pod {pod_name} failed{exit}; the vcluster was resumed with its previous data"
                        ),
                    ))
                }
                _ => Ok(RestoreProgress::Running),
            };
        }
        self.pause(t, true).await?;
        self.delete_workload_pods(t).await?;
        let pvcs: Api<PersistentVolumeClaim> = self.ns_api(&t.namespace);
        let lp = list_labels(&format!("app=vcluster,release={}", t.release));
        for pvc in self
            .call("LIST persistentvolumeclaims", pvcs.list(&lp))
            .await?
            .items
        {
            let name = pvc.metadata.name.unwrap_or_default();
            if !name.ends_with("-0") {
                self.delete_ok(&pvcs, "persistentvolumeclaims", &name)
                    .await?;
            }
        }
        let template = self.control_plane_template(t).await?;
        let secrets: Api<Secret> = self.ns_api(&t.namespace);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                labels: Some([("app".to_string(), "vcluster-snapshot".to_string())].into()),
                annotations: Some([(NEW_VCLUSTER.to_string(), new_vcluster.to_string())].into()),
                ..ObjectMeta::default()
            },
            data: Some(
                [(
                    "VCLUSTER_STORAGE_OPTIONS".to_string(),
                    // The pod reads the env var as base64 of the JSON options.
                    ByteString(storage_options_env(options).into_bytes()),
                )]
                .into(),
            ),
            ..Secret::default()
        };
        match self
            .call(
                "POST secrets",
                secrets.create(&PostParams::default(), &secret),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e),
        }
        // Only now may pods start in the namespace again (a new vcluster's hold): the
        // control plane is paused, so only the restore pod will.
        let quotas: Api<ResourceQuota> = self.ns_api(&t.namespace);
        self.delete_ok(&quotas, "resourcequotas", RESTORE_QUOTA)
            .await?;
        let pod = restore_pod(t, &pod_name, &secret_name, url, &template, new_vcluster)?;
        let created = match self
            .call("POST pods", pods.create(&PostParams::default(), &pod))
            .await
        {
            Ok(p) => p,
            Err(e) if e.is_already_exists() => return Ok(RestoreProgress::Running),
            Err(e) => return Err(e),
        };
        // The pod owns its options Secret, so the garbage collector removes the Secret
        // with the pod even if ovc never gets to (mechanics §5 step 4).
        if let Some(uid) = created.metadata.uid {
            let body = json!({"metadata": {"ownerReferences": [{
                "apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": uid,
            }]}});
            self.call(
                format!("PATCH secrets/{secret_name}"),
                secrets.patch(&secret_name, &merge_patch(), &Patch::Merge(&body)),
            )
            .await?;
        }
        Ok(RestoreProgress::Running)
    }

    /// Whether the restore from `url` goes into a new vcluster (`--new-vcluster`): what
    /// its options Secret says once it exists (the hold is lifted after it is written),
    /// else whether the hold of [`block_new_control_plane`](Self::block_new_control_plane)
    /// is in place.
    pub async fn restore_is_new(&self, t: &Target, url: &str) -> KubeResult<bool> {
        let secret_name = format!("vcluster-snapshot-options-{}", short_hash(url));
        let secrets: Api<Secret> = self.ns_api(&t.namespace);
        if let Some(secret) = self
            .call(
                format!("GET secrets/{secret_name}"),
                secrets.get_opt(&secret_name),
            )
            .await?
            && let Some(v) = annotations(&secret.metadata).get(NEW_VCLUSTER)
        {
            return Ok(v == "true");
        }
        let quotas: Api<ResourceQuota> = self.ns_api(&t.namespace);
        Ok(self
            .call(
                format!("GET resourcequotas/{RESTORE_QUOTA}"),
                quotas.get_opt(RESTORE_QUOTA),
            )
            .await?
            .is_some())
    }

    /// Lifts the hold of [`block_new_control_plane`](Self::block_new_control_plane)
    /// (absent: fine).
    pub async fn unblock_new_control_plane(&self, t: &Target) -> KubeResult<()> {
        let quotas: Api<ResourceQuota> = self.ns_api(&t.namespace);
        match self
            .delete_ok(&quotas, "resourcequotas", RESTORE_QUOTA)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn finish_restore(&self, t: &Target, pod: &str, secret: &str) -> KubeResult<()> {
        let pods: Api<Pod> = self.ns_api(&t.namespace);
        self.delete_ok(&pods, "pods", pod).await?;
        let secrets: Api<Secret> = self.ns_api(&t.namespace);
        self.delete_ok(&secrets, "secrets", secret).await?;
        self.resume(t).await?;
        Ok(())
    }

    async fn control_plane_template(&self, t: &Target) -> KubeResult<Value> {
        let sts: Api<StatefulSet> = self.ns_api(&t.namespace);
        let Some(s) = self
            .call(
                format!("GET statefulsets/{}", t.release),
                sts.get_opt(&t.release),
            )
            .await?
        else {
            return Err(KubeError::refused(
                Code::FailedPrecondition,
                "RESTORE_UNSUPPORTED",
                format!(
                    "vcluster {} has no StatefulSet {} (no persistent backing store): nothing to restore into",
                    t.release, t.release
                ),
            ));
        };
        let template = s.spec.map(|s| s.template).unwrap_or_default();
        serde_json::to_value(template).map_err(|e| KubeError::Config(e.to_string()))
    }
}

/// `spec.url` of a request ConfigMap.
fn request_url(cm: &ConfigMap) -> Option<String> {
    let raw = cm.data.as_ref()?.get("snapshotRequest")?;
    let v: Value = serde_json::from_str(raw).ok()?;
    v.pointer("/spec/url")?.as_str().map(str::to_owned)
}

/// `status.phase` of a request ConfigMap.
fn request_phase(cm: &ConfigMap) -> SnapshotPhase {
    let v: Value = cm
        .data
        .as_ref()
        .and_then(|d| d.get("snapshotRequest"))
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or(Value::Null);
    match v
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
    {
        "" => SnapshotPhase::Pending,
        "Completed" => SnapshotPhase::Completed,
        "Canceled" => SnapshotPhase::Canceled,
        "Failed" => SnapshotPhase::Failed(
            v.pointer("/status/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_owned(),
        ),
        other => SnapshotPhase::InProgress(other.to_owned()),
    }
}

/// `VCLUSTER_STORAGE_OPTIONS`: base64 of the JSON storage options.
pub fn storage_options_env(options: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(options).unwrap_or_default())
}

fn short_hash(s: &str) -> String {
    // FNV-1a, 40 bits: stable across processes, short enough for a pod name.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:010x}", h & 0xff_ffff_ffff)
}

/// The restore pod of mechanics §5 step 4, from the control plane's pod template: its
/// volumes, init containers, service account, scheduling and security context; the
/// `snapshot` container takes the `syncer` container's image, env and mounts and runs
/// `/vcluster restore`.
fn restore_pod(
    t: &Target,
    name: &str,
    secret: &str,
    url: &str,
    template: &Value,
    new_vcluster: bool,
) -> KubeResult<Pod> {
    let spec = template.get("spec").cloned().unwrap_or(Value::Null);
    let syncer = spec
        .get("containers")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("name") == Some(&json!("syncer")))
                .or(cs.first())
        })
        .cloned()
        .ok_or_else(|| {
            KubeError::refused(
                Code::FailedPrecondition,
                "RESTORE_UNSUPPORTED",
                format!("statefulset {} has no syncer container", t.release),
            )
        })?;
    let _ = url;
    let mut command = vec![json!("/vcluster"), json!("restore")];
    if new_vcluster {
        command.push(json!("--new-vcluster"));
    }
    let mut env = syncer.get("env").cloned().unwrap_or(json!([]));
    if let Some(list) = env.as_array_mut() {
        list.retain(|e| e.get("name") != Some(&json!("POD_NAME")));
        list.push(json!({"name": "POD_NAME", "value": format!("{}-0", t.release)}));
        list.push(json!({"name": "VCLUSTER_STORAGE_OPTIONS", "valueFrom": {"secretKeyRef": {"name": secret, "key": "VCLUSTER_STORAGE_OPTIONS"}}}));
    }
    let mut volumes = spec.get("volumes").cloned().unwrap_or(json!([]));
    if let Some(list) = volumes.as_array_mut() {
        list.retain(|v| v.get("name") != Some(&json!("data")));
        list.push(json!({"name": "data", "persistentVolumeClaim": {"claimName": format!("data-{}-0", t.release)}}));
    }
    let pod = json!({
        "metadata": {"name": name, "labels": {"app": "vcluster-snapshot", "release": t.release}},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": spec.get("serviceAccountName"),
            "initContainers": spec.get("initContainers"),
            "nodeSelector": spec.get("nodeSelector"),
            "affinity": spec.get("affinity"),
            "tolerations": spec.get("tolerations"),
            "securityContext": spec.get("securityContext"),
            "volumes": volumes,
            "containers": [{
                "name": "snapshot",
                "image": syncer.get("image"),
                "command": command,
                "env": env,
                "volumeMounts": syncer.get("volumeMounts"),
                "securityContext": syncer.get("securityContext"),
            }],
        },
    });
    let mut pod = strip_nulls(pod);
    if pod.pointer("/spec/initContainers").is_none() {
        pod["spec"]["initContainers"] = json!([]);
    }
    serde_json::from_value(pod).map_err(|e| KubeError::Config(format!("restore pod: {e}")))
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// Rewrites every cluster's `server` in `kubeconfig` to `server`.
pub fn rewrite_server(kubeconfig: &str, server: &str) -> KubeResult<String> {
    let mut k: Value = serde_saphyr::from_str(kubeconfig).map_err(|e| {
        KubeError::refused(
            Code::FailedPrecondition,
            "BAD_KUBECONFIG",
            format!("the vcluster's kubeconfig does not parse: {e}"),
        )
    })?;
    if let Some(clusters) = k.get_mut("clusters").and_then(Value::as_array_mut) {
        for c in clusters {
            if let Some(cluster) = c.get_mut("cluster").and_then(Value::as_object_mut) {
                cluster.insert("server".into(), Value::String(server.to_owned()));
            }
        }
    }
    serde_saphyr::to_string(&k)
        .map_err(|e| KubeError::Config(format!("kubeconfig does not encode: {e}")))
}

async fn default_virtual_api(kubeconfig: String) -> KubeResult<Client> {
    ensure_crypto_provider();
    let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig)
        .map_err(|e| KubeError::Config(format!("the vcluster's kubeconfig: {e}")))?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| KubeError::Config(format!("the vcluster's kubeconfig: {e}")))?;
    Client::try_from(config)
        .map_err(|e| KubeError::Config(format!("the vcluster's kubeconfig: {e}")))
}

/// The trait, adapted to the inherent methods above.
#[async_trait]
impl HostDriver for KubeHost {
    async fn ensure_namespace(
        &self,
        ctx: &CallCtx,
        t: &Target,
        owner: &Owner,
    ) -> DriverResult<NamespaceOutcome> {
        ctx.check()?;
        let created_by = ctx.operation_id.map(|op| op.to_string());
        let started = tokio::time::Instant::now();
        loop {
            match self
                .ensure_namespace_owned(t, &owner.labels(), created_by.as_deref())
                .await
            {
                // Terminating: wait until it is gone, then create it anew.
                Err(KubeError::NotYet { message, .. }) => {
                    self.wait_again(ctx, started, || message).await?;
                }
                other => return Ok(other?),
            }
        }
    }

    async fn delete_namespace(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool> {
        ctx.check()?;
        Ok(self.delete_namespace_if_ours(t).await?)
    }

    async fn namespace_exists(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool> {
        ctx.check()?;
        Ok(self.namespace_exists_now(t).await?)
    }

    async fn install_release(
        &self,
        ctx: &CallCtx,
        t: &Target,
        values: &ReleaseValues,
    ) -> DriverResult<u32> {
        ctx.check()?;
        Ok(self.upgrade_release(t, values).await?)
    }

    async fn release(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Option<ReleaseInfo>> {
        ctx.check()?;
        Ok(self.release_info(t).await?)
    }

    async fn uninstall_release(&self, ctx: &CallCtx, t: &Target) -> DriverResult<()> {
        ctx.check()?;
        Ok(self.uninstall(t).await?)
    }

    async fn control_plane(
        &self,
        ctx: &CallCtx,
        t: &Target,
    ) -> DriverResult<Option<ControlPlaneStatus>> {
        ctx.check()?;
        Ok(self.control_plane_status(t).await?)
    }

    async fn pause_control_plane(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32> {
        ctx.check()?;
        Ok(self.pause(t, false).await?)
    }

    async fn resume_control_plane(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32> {
        ctx.check()?;
        Ok(self.resume(t).await?)
    }

    async fn workload_pods(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Vec<String>> {
        ctx.check()?;
        Ok(self.list_workload_pods(t).await?)
    }

    async fn evict_workload_pods(&self, ctx: &CallCtx, t: &Target) -> DriverResult<u32> {
        ctx.check()?;
        Ok(self.delete_workload_pods(t).await?)
    }

    async fn reconcile_workloads(&self, ctx: &CallCtx, t: &Target) -> DriverResult<()> {
        ctx.check()?;
        // The syncer recreates owned pods by itself once it runs (mechanics §2); the
        // step only has to find it running.
        let cp = self
            .control_plane_status(t)
            .await?
            .ok_or_else(|| Self::not_found(t))?;
        if cp.paused || cp.replicas == 0 {
            return Err(KubeError::refused(
                Code::FailedPrecondition,
                "CONTROL_PLANE_PAUSED",
                format!(
                    "vcluster {} is not running: workloads cannot be reconciled",
                    t.release
                ),
            )
            .into());
        }
        if !cp.is_ready() {
            return Err(DriverError::transient(format!(
                "vcluster {} is not ready yet",
                t.release
            )));
        }
        Ok(())
    }

    async fn kubeconfig(&self, ctx: &CallCtx, t: &Target) -> DriverResult<Option<String>> {
        ctx.check()?;
        Ok(self.read_kubeconfig(t).await?)
    }

    async fn health_check(&self, ctx: &CallCtx, t: &Target) -> DriverResult<bool> {
        ctx.check()?;
        Ok(self.readiness(t).await?.is_ready())
    }

    /// Mechanics §4: a snapshot request for the sink's object (Secret + ConfigMap; an
    /// existing request for the same URL is reused), polled until `Completed`; the
    /// object the vcluster wrote is then handed to the sink, and its size returned.
    /// `Failed` → permanent with vcluster's message (credentials masked); `Canceled` →
    /// the request is removed and the error is transient, so the retry asks anew.
    async fn dump_backing_store(
        &self,
        ctx: &CallCtx,
        t: &Target,
        sink: &mut dyn BackingStoreSink,
    ) -> DriverResult<u64> {
        ctx.check()?;
        let storage = vcluster_storage(&sink.object(), &self.credentials)?;
        let location = sink.location().to_string();
        let options = self.with_release(t, storage.options.clone()).await?;
        let started = tokio::time::Instant::now();
        let mut phase = self.request_snapshot(t, &storage.url, &options).await?;
        loop {
            match phase {
                SnapshotPhase::Completed => break,
                SnapshotPhase::Failed(message) => {
                    return Err(KubeError::refused(
                        Code::FailedPrecondition,
                        "SNAPSHOT_FAILED",
                        format!(
                            "vcluster {} could not write its snapshot to {}: {}",
                            t.release,
                            location,
                            self.credentials.redact(&message)
                        ),
                    )
                    .into());
                }
                SnapshotPhase::Canceled => {
                    self.delete_snapshot_request(t, &storage.url).await?;
                    return Err(DriverError::transient(format!(
                        "the snapshot request of {} for {} was canceled (a newer request for                          the same location); asking again",
                        t.release, location
                    )));
                }
                SnapshotPhase::Pending | SnapshotPhase::InProgress(_) => {
                    let shown = match &phase {
                        SnapshotPhase::InProgress(p) => p.clone(),
                        _ => "not started".to_string(),
                    };
                    self.wait_again(ctx, started, || {
                        format!(
                            "the snapshot of {} to {} is still {shown}",
                            t.release, location
                        )
                    })
                    .await?;
                    phase = match self.snapshot_phase(t, &storage.url).await? {
                        Some(p) => p,
                        None => {
                            return Err(DriverError::transient(format!(
                                "the snapshot request of {} for {} disappeared; asking again",
                                t.release, location
                            )));
                        }
                    };
                }
            }
        }
        // vcluster wrote its own archive (tar.gz: an etcd snapshot or one entry per key);
        // ovc does not read that format, so it has no objects to list from it.
        sink.objects_unavailable(
            "vcluster wrote this snapshot itself as its own archive (tar.gz), which ovc does \
             not read; extract objects from it with vcluster's restore"
                .into(),
        );
        sink.record_backing_store(crate::BackingStoreInfo {
            kind: "vcluster".into(),
            revision: None,
            keys: None,
        });
        sink.adopt_written().await
    }

    /// Mechanics §5: the restore pod reads the source's object itself (the caller has
    /// verified it against its manifest), in passes of [`KubeHost::restore`] until it
    /// exited 0 and the control plane is resumed. Into a new vcluster (`--new-vcluster`)
    /// when [`HostDriver::hold_new_control_plane`] held it back. Returns the object's size.
    async fn load_backing_store(
        &self,
        ctx: &CallCtx,
        t: &Target,
        source: &mut dyn BackingStoreSource,
    ) -> DriverResult<u64> {
        ctx.check()?;
        let storage = vcluster_storage(&source.object(), &self.credentials)?;
        let (location, size) = (source.location().to_string(), source.size());
        let new_vcluster = self.restore_is_new(t, &storage.url).await?;
        let started = tokio::time::Instant::now();
        loop {
            match self
                .restore(t, &storage.url, &storage.options, new_vcluster)
                .await?
            {
                RestoreProgress::Done => return Ok(size),
                RestoreProgress::Running => {
                    self.wait_again(ctx, started, || {
                        format!(
                            "the restore pod of {} (from {}) is still running",
                            t.release, location
                        )
                    })
                    .await?;
                }
            }
        }
    }

    async fn hold_new_control_plane(
        &self,
        ctx: &CallCtx,
        t: &Target,
        hold: bool,
    ) -> DriverResult<()> {
        ctx.check()?;
        if hold {
            Ok(self.block_new_control_plane(t).await?)
        } else {
            Ok(self.unblock_new_control_plane(t).await?)
        }
    }
}
