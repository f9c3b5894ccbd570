//! `ovc-client`: the typed Rust client of the ovc API (`/work/shared/API.md`), for other
//! services, the `ovc` CLI, `ovc bench api` and the black-box tests.
//!
//! - **Typed**: answers are the read models of [`ovc_types::resource`] ([`VCluster`],
//!   [`Operation`], [`Snapshot`]) and [`EventRecord`]s; requests take
//!   [`ovc_types::spec::VClusterSpec`] and [`ovc_types::spec::ScalePatch`]. Names and ids
//!   are passed as text and validated by the server, so a bad one is the API's
//!   INVALID_ARGUMENT with the API's message, as for any other client.
//! - **Request ids**: every mutation carries a `request_id` (AIP-155), a fresh UUID unless
//!   the caller gives one ([`ClientBuilder::generate_request_ids`] turns this off), sent as
//!   the `Idempotency-Key` header. A repeat answers the first operation and
//!   [`Accepted::duplicate`] says so.
//! - **Retries**: UNAVAILABLE (also an unreachable server or a dropped connection) and
//!   ABORTED are retried with exponential backoff and jitter ([`RetryPolicy`], via
//!   `backon`); since a mutation's retries carry the same request id, a retried mutation
//!   starts at most one operation. Every other error is returned at once.
//! - **wait and watch**: [`Client::wait`] blocks (server-side, in slices of at most 60 s)
//!   until an operation is done; [`Client::watch`] follows its events live until it ends;
//!   [`Client::follow_events`] follows the whole log. Feeds resume by position after a
//!   dropped connection, so no event is missed or repeated.
//! - **Errors**: one type, [`Error`], carrying the API's [`Status`] (code, message,
//!   reason) when the server answered with one.
//! - **Auth and TLS**: a bearer token ([`ClientBuilder::token`]; `OVC_TOKEN` in
//!   [`Client::from_env`]); `https://` with rustls (ring), trusting the public roots or
//!   only a private CA ([`ClientBuilder::ca_cert`]).
//!
//! **Why REST and not gRPC.** The service speaks both, from one implementation, but the
//! gRPC messages are a projection of the read models: `ovc.v1.Operation` has no
//! `command`, `vcluster_uid`, `prior_state`, `cancel_requested` or `version`, and
//! `ovc.v1.Snapshot` no `vcluster_uid`, `version` or `deleted_by`. A client typed on
//! [`ovc_types::resource`] over gRPC would have to invent those fields; over REST they
//! are exactly what the server serialized, from the same types. REST also serves what
//! gRPC does not (the readiness probe; a repeated request's 200 is the same as gRPC's
//! `ovc-duplicate`), and its live feeds (SSE) resume with `Last-Event-ID` just as
//! `StreamEvents` resumes with `after`. So every call goes over REST (HTTP/1.1,
//! keep-alive); services that want gRPC use the generated clients of
//! `ovc_api::grpc::proto`.
//!
//! # Example: another service enqueues an operation and follows it
//!
//! ```no_run
//! use ovc_client::{Client, SuspendVCluster};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), ovc_client::Error> {
//! // OVC_SERVER, OVC_TOKEN and OVC_CA_CERT, as the `ovc` CLI reads them.
//! let client = Client::from_env()?;
//! // Enqueue: the answer is the accepted operation (PENDING), not its end. A retry of
//! // this call (the client's own, on UNAVAILABLE) reuses its request id.
//! let accepted = client
//!     .suspend_vcluster("team-a", &SuspendVCluster { snapshot: true, ..Default::default() })
//!     .await?;
//! let id = accepted.operation.id;
//! // Follow it: each event as it is committed (steps, retries, compensation) ...
//! let mut feed = client.watch(id);
//! while let Some(event) = feed.next().await {
//!     let event = event?;
//!     println!("{} {}", event.event_type, event.data["step"]);
//! }
//! // ... or just block until it is done.
//! let done = client.wait(id, Some(Duration::from_secs(600))).await?;
//! match done.error {
//!     None => println!("suspended: {:?}", done.state),
//!     Some(e) => eprintln!("suspend {:?}: {} {:?}", done.state, e.message, e.reason()),
//! }
//! # Ok(())
//! # }
//! ```

mod error;
mod feed;
mod http;
pub mod tls;

pub use error::Error;
pub use feed::{EventFeed, TERMINAL_EVENTS};
pub use ovc_types::error::{Code, Status};
pub use ovc_types::resource::{Operation, Snapshot, VCluster};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use http::{Answer, Http, encode, query};
use hyper::Method;
use ovc_types::spec::{ScalePatch, VClusterSpec};
use serde::{Deserialize, Serialize};
use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How calls are retried on UNAVAILABLE and ABORTED: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub max_retries: usize,
    /// The first delay.
    pub min_delay: Duration,
    /// The largest delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 4 retries, from 100 ms up to 2 s.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 4,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries: every error is returned at once (benchmarks, tests of errors).
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

/// One row of the event log (API.md `Event`), as the REST API and its live feeds send it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Global position: strictly increasing, gapless.
    pub position: u64,
    /// E.g. `operation-<id>`.
    pub stream: String,
    /// Version within the stream.
    pub version: u64,
    /// E.g. `StepSucceeded`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload.
    pub data: serde_json::Value,
    /// `request_id`, `traceparent`, `actor`.
    pub metadata: serde_json::Value,
    /// When it was committed.
    pub recorded_at: DateTime<Utc>,
}

impl EventRecord {
    /// The typed event.
    pub fn decode(&self) -> Result<ovc_types::event::Event, ovc_types::event::DecodeError> {
        ovc_types::event::Event::decode(&self.event_type, &self.data)
    }
}

/// An accepted mutation: its operation, and whether the request repeated an earlier one
/// (same `request_id` and parameters: the first operation, nothing new started).
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The operation (PENDING when new).
    pub operation: Operation,
    /// True when the server answered a repeated request (HTTP 200 instead of 202).
    pub duplicate: bool,
}

/// A page of vclusters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VClusterPage {
    /// The page.
    pub vclusters: Vec<VCluster>,
    /// Pass as `page_token` for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// A page of operations, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationPage {
    /// The page.
    pub operations: Vec<Operation>,
    /// Pass as `page_token` for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// A page of snapshots, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotPage {
    /// The page.
    pub snapshots: Vec<Snapshot>,
    /// Pass as `page_token` for the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// A page of events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    /// The page, by position.
    pub events: Vec<EventRecord>,
    /// Pass as `after` to read on (equal to the `after` asked for when there was nothing).
    pub next_after: u64,
}

/// `CreateVCluster`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateVCluster {
    /// Its name.
    pub name: String,
    /// The spec (`VClusterSpec::default()` is API.md's defaults).
    pub spec: VClusterSpec,
    /// The request id (default: a fresh one).
    pub request_id: Option<String>,
}

/// `SuspendVCluster`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SuspendVCluster {
    /// Take a snapshot first.
    pub snapshot: bool,
    /// Evict workload pods before scaling the control plane down.
    pub evict_workloads: bool,
    /// The request id (default: a fresh one).
    #[serde(skip)]
    pub request_id: Option<String>,
}

/// `ResumeVCluster`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResumeVCluster {
    /// Ask for a workload reconcile once the control plane is ready.
    pub reconcile_workloads: bool,
    /// The request id (default: a fresh one).
    #[serde(skip)]
    pub request_id: Option<String>,
}

/// `SnapshotVCluster`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SnapshotVCluster {
    /// Free text kept with the snapshot (at most 1 KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The request id (default: a fresh one).
    #[serde(skip)]
    pub request_id: Option<String>,
}

/// `ScaleVCluster`: only the fields of the patch that are set change.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ScaleVCluster {
    /// The changes.
    #[serde(flatten)]
    pub patch: ScalePatch,
    /// The request id (default: a fresh one).
    #[serde(skip)]
    pub request_id: Option<String>,
}

/// `UpgradeVCluster`: a newer chart and/or Kubernetes version, one minor version at a
/// time; a version left out stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpgradeVCluster {
    /// The new chart version (`MAJOR.MINOR.PATCH`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcluster_version: Option<String>,
    /// The new Kubernetes version (`1.MINOR`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// The request id (default: a fresh one).
    #[serde(skip)]
    pub request_id: Option<String>,
}

/// Where `RestoreSnapshot` goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreTarget {
    /// Into a new vcluster with this name.
    NewName(String),
    /// Over this existing vcluster.
    Existing(String),
}

/// `RestoreSnapshot`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoreSnapshot {
    /// Where to.
    pub target: RestoreTarget,
    /// The request id (default: a fresh one).
    #[serde(skip)]
    pub request_id: Option<String>,
}

/// Filters and paging of [`Client::list_vclusters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListVClusters {
    /// Only this state (`DELETED` lists deleted ones).
    pub state: Option<String>,
    /// `key=value`: only vclusters with this label.
    pub label: Option<String>,
    /// 1..=1000 (default 100).
    pub page_size: Option<u32>,
    /// From a previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// Filters and paging of [`Client::list_operations`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOperations {
    /// Only this vcluster's.
    pub vcluster: Option<String>,
    /// Only this state.
    pub state: Option<String>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only those created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// 1..=1000 (default 100).
    pub page_size: Option<u32>,
    /// From a previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// Filters and paging of [`Client::list_snapshots`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListSnapshots {
    /// Only this vcluster's.
    pub vcluster: Option<String>,
    /// Only this state.
    pub state: Option<String>,
    /// 1..=1000 (default 100).
    pub page_size: Option<u32>,
    /// From a previous page's `next_page_token`.
    pub page_token: Option<String>,
}

/// How to build a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    server: String,
    token: Option<String>,
    project: Option<String>,
    ca_cert: Option<PathBuf>,
    tls: Option<Arc<rustls::ClientConfig>>,
    retry: RetryPolicy,
    request_ids: bool,
}

impl ClientBuilder {
    /// The bearer token (see `ovc token create`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The project of the calls that name one (vclusters, lists); default: the token's,
    /// or `default` when the server runs without auth.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }

    /// Trust only the CA certificates of this PEM file for `https://` (instead of the
    /// public web roots). An `http://` server with a CA is an error at
    /// [`ClientBuilder::build`]: the setting could not be honoured.
    pub fn ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }

    /// Use these TLS settings for `https://` (instead of [`ClientBuilder::ca_cert`]).
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// How to retry UNAVAILABLE and ABORTED ([`RetryPolicy::default`] unless told).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Whether a mutation without a request id gets a fresh one (default: yes). Without,
    /// such a mutation is not idempotent, and it is not retried.
    pub fn generate_request_ids(mut self, yes: bool) -> Self {
        self.request_ids = yes;
        self
    }

    /// The client. Nothing is sent yet.
    pub fn build(self) -> Result<Client, Error> {
        let https = self.server.starts_with("https://");
        if let Some(ca) = &self.ca_cert
            && !https
        {
            return Err(Error::Config(format!(
                "a CA certificate ({}) applies to https:// servers only, and {} is not one",
                ca.display(),
                self.server
            )));
        }
        let tls = match (self.tls, &self.ca_cert) {
            (Some(t), _) => Some(t),
            (None, Some(ca)) => Some(Arc::new(tls::client_config(Some(ca))?)),
            (None, None) => None,
        };
        Ok(Client {
            http: Arc::new(Http::new(&self.server, self.token, tls)?),
            project: self.project,
            retry: self.retry,
            request_ids: self.request_ids,
        })
    }
}

/// A client of one ovc server. Cheap to clone (clones share the connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    http: Arc<Http>,
    project: Option<String>,
    retry: RetryPolicy,
    request_ids: bool,
}

/// The longest server-side wait of one request (API.md: at most 60 s).
const MAX_SERVER_WAIT: Duration = Duration::from_secs(60);

impl Client {
    /// A builder for the server at `server` (`http://host:port` or `https://...`).
    pub fn builder(server: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            server: server.into(),
            token: None,
            project: None,
            ca_cert: None,
            tls: None,
            retry: RetryPolicy::default(),
            request_ids: true,
        }
    }

    /// A client of `server` with the defaults (no token, retries, request ids).
    pub fn new(server: impl Into<String>) -> Result<Client, Error> {
        Client::builder(server).build()
    }

    /// A client from the environment the `ovc` CLI reads: `OVC_SERVER` (default
    /// `http://127.0.0.1:8080`), `OVC_TOKEN`, `OVC_CA_CERT`.
    pub fn from_env() -> Result<Client, Error> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut b = Client::builder(
            var("OVC_SERVER").unwrap_or_else(|| "http://127.0.0.1:8080".to_string()),
        );
        if let Some(t) = var("OVC_TOKEN") {
            b = b.token(t);
        }
        if let Some(ca) = var("OVC_CA_CERT") {
            b = b.ca_cert(ca);
        }
        b.build()
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.http.base
    }

    /// `?project=...` when the client has a project.
    fn project_query(&self) -> String {
        query(&[("project", self.project.clone())])
    }

    /// The request id of a mutation: the caller's, else a fresh one (unless turned off).
    fn request_id(&self, given: &Option<String>) -> Option<String> {
        given
            .clone()
            .or_else(|| self.request_ids.then(|| uuid::Uuid::new_v4().to_string()))
    }

    /// Sends a request, retrying per the policy when `retry` holds, and returns the
    /// answer (any status) of the last attempt.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
        retry: bool,
    ) -> Result<Answer, Error> {
        let once = || async {
            let answer = self.http.send(method.clone(), path, headers, body).await?;
            let s = answer.status;
            // 503 and 409-ABORTED are retryable answers; others are returned as they are.
            if s == 503 || s == 409 {
                let e = self.http.error(&answer);
                if e.is_retryable() {
                    return Err(e);
                }
            }
            Ok(answer)
        };
        if !retry {
            return once().await;
        }
        once.retry(self.retry.backoff())
            .sleep(tokio::time::sleep)
            .when(Error::is_retryable)
            .await
    }

    /// A read (always retried per the policy), decoded.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let answer = self.send(Method::GET, path, &[], None, true).await?;
        self.http.decode(&answer)
    }

    /// A mutation answering an operation, with `request_id` (retried only with one).
    async fn mutate(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        request_id: Option<String>,
    ) -> Result<Accepted, Error> {
        let mut headers = Vec::new();
        if let Some(id) = &request_id {
            headers.push(("idempotency-key", id.clone()));
        }
        let answer = self
            .send(
                method,
                path,
                &headers,
                body.as_deref(),
                request_id.is_some(),
            )
            .await?;
        let operation = self.http.decode(&answer)?;
        Ok(Accepted {
            operation,
            duplicate: answer.status == 200,
        })
    }

    fn json(body: &impl Serialize) -> Option<Vec<u8>> {
        // Our own request types always serialize.
        Some(serde_json::to_vec(body).unwrap_or_default())
    }

    // ---- vclusters ----

    /// Creates a vcluster (operation CREATE; its result is the vcluster).
    pub async fn create_vcluster(&self, req: &CreateVCluster) -> Result<Accepted, Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            name: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            project: Option<&'a str>,
            spec: &'a VClusterSpec,
        }
        let body = Body {
            name: &req.name,
            project: self.project.as_deref(),
            spec: &req.spec,
        };
        let rid = self.request_id(&req.request_id);
        self.mutate(Method::POST, "/v1/vclusters", Self::json(&body), rid)
            .await
    }

    /// One vcluster (the live one, else the last deleted one of that name).
    pub async fn get_vcluster(&self, name: &str) -> Result<VCluster, Error> {
        let path = format!("/v1/vclusters/{}{}", encode(name), self.project_query());
        self.get(&path).await
    }

    /// A page of vclusters.
    pub async fn list_vclusters(&self, req: &ListVClusters) -> Result<VClusterPage, Error> {
        let q = query(&[
            ("project", self.project.clone()),
            ("state", req.state.clone()),
            ("label", req.label.clone()),
            ("page_size", req.page_size.map(|n| n.to_string())),
            ("page_token", req.page_token.clone()),
        ]);
        self.get(&format!("/v1/vclusters{q}")).await
    }

    async fn on_vcluster(
        &self,
        name: &str,
        verb: &str,
        body: Option<Vec<u8>>,
        request_id: &Option<String>,
    ) -> Result<Accepted, Error> {
        let path = format!(
            "/v1/vclusters/{}/{verb}{}",
            encode(name),
            self.project_query()
        );
        let rid = self.request_id(request_id);
        self.mutate(Method::POST, &path, body, rid).await
    }

    /// Starts the operation the server serves at `POST /v1/vclusters/{name}/{route}`
    /// (its route: `suspend`, `resume`, `snapshots`, `scale`, `upgrade`, or that of any
    /// operation the server registered since, which this client needs no new method
    /// for), with `params` as its body (its parameters, without `request_id`). The
    /// typed methods below are shorthands for it. A route the server does not have is
    /// `Error::Api` with NOT_FOUND.
    pub async fn start_operation(
        &self,
        name: &str,
        route: &str,
        params: &impl Serialize,
        request_id: Option<&str>,
    ) -> Result<Accepted, Error> {
        let body = serde_json::to_vec(params)
            .map_err(|e| Error::Config(format!("the parameters do not serialize: {e}")))?;
        self.on_vcluster(
            name,
            &encode(route),
            Some(body),
            &request_id.map(str::to_string),
        )
        .await
    }

    /// Suspends a RUNNING vcluster.
    pub async fn suspend_vcluster(
        &self,
        name: &str,
        req: &SuspendVCluster,
    ) -> Result<Accepted, Error> {
        self.on_vcluster(name, "suspend", Self::json(req), &req.request_id)
            .await
    }

    /// Resumes a SUSPENDED vcluster.
    pub async fn resume_vcluster(
        &self,
        name: &str,
        req: &ResumeVCluster,
    ) -> Result<Accepted, Error> {
        self.on_vcluster(name, "resume", Self::json(req), &req.request_id)
            .await
    }

    /// Snapshots a RUNNING vcluster (the operation's result is the snapshot).
    pub async fn snapshot_vcluster(
        &self,
        name: &str,
        req: &SnapshotVCluster,
    ) -> Result<Accepted, Error> {
        self.on_vcluster(name, "snapshots", Self::json(req), &req.request_id)
            .await
    }

    /// Changes the control plane and/or quota.
    pub async fn scale_vcluster(&self, name: &str, req: &ScaleVCluster) -> Result<Accepted, Error> {
        self.on_vcluster(name, "scale", Self::json(req), &req.request_id)
            .await
    }

    /// Upgrades a RUNNING vcluster (snapshotting first); a skipped minor version is
    /// FAILED_PRECONDITION `UPGRADE_SKIPS_MINOR`.
    pub async fn upgrade_vcluster(
        &self,
        name: &str,
        req: &UpgradeVCluster,
    ) -> Result<Accepted, Error> {
        self.on_vcluster(name, "upgrade", Self::json(req), &req.request_id)
            .await
    }

    /// Deletes a vcluster.
    pub async fn delete_vcluster(
        &self,
        name: &str,
        request_id: Option<&str>,
    ) -> Result<Accepted, Error> {
        let path = format!("/v1/vclusters/{}{}", encode(name), self.project_query());
        let rid = self.request_id(&request_id.map(str::to_string));
        self.mutate(Method::DELETE, &path, None, rid).await
    }

    /// The vcluster's kubeconfig, read live from the host (audited; operator role).
    pub async fn kubeconfig(&self, name: &str) -> Result<String, Error> {
        #[derive(Deserialize)]
        struct Body {
            kubeconfig: String,
        }
        let path = format!(
            "/v1/vclusters/{}/kubeconfig{}",
            encode(name),
            self.project_query()
        );
        Ok(self.get::<Body>(&path).await?.kubeconfig)
    }

    // ---- snapshots ----

    /// One snapshot.
    pub async fn get_snapshot(&self, id: impl Display) -> Result<Snapshot, Error> {
        self.get(&format!("/v1/snapshots/{}", encode(&id.to_string())))
            .await
    }

    /// A page of snapshots.
    pub async fn list_snapshots(&self, req: &ListSnapshots) -> Result<SnapshotPage, Error> {
        let q = query(&[
            ("project", self.project.clone()),
            ("vcluster", req.vcluster.clone()),
            ("state", req.state.clone()),
            ("page_size", req.page_size.map(|n| n.to_string())),
            ("page_token", req.page_token.clone()),
        ]);
        self.get(&format!("/v1/snapshots{q}")).await
    }

    /// Restores a snapshot as a new vcluster or over an existing one.
    pub async fn restore_snapshot(
        &self,
        id: impl Display,
        req: &RestoreSnapshot,
    ) -> Result<Accepted, Error> {
        let path = format!(
            "/v1/snapshots/{}/restore{}",
            encode(&id.to_string()),
            self.project_query()
        );
        let rid = self.request_id(&req.request_id);
        self.mutate(Method::POST, &path, Self::json(req), rid).await
    }

    /// Deletes a snapshot's artifact (operation DELETE_SNAPSHOT).
    pub async fn delete_snapshot(
        &self,
        id: impl Display,
        request_id: Option<&str>,
    ) -> Result<Accepted, Error> {
        let path = format!("/v1/snapshots/{}", encode(&id.to_string()));
        let rid = self.request_id(&request_id.map(str::to_string));
        self.mutate(Method::DELETE, &path, None, rid).await
    }

    // ---- operations ----

    /// One operation.
    pub async fn get_operation(&self, id: impl Display) -> Result<Operation, Error> {
        self.get(&format!("/v1/operations/{}", encode(&id.to_string())))
            .await
    }

    /// A page of operations, newest first.
    pub async fn list_operations(&self, req: &ListOperations) -> Result<OperationPage, Error> {
        let q = query(&[
            ("project", self.project.clone()),
            ("vcluster", req.vcluster.clone()),
            ("state", req.state.clone()),
            ("kind", req.kind.clone()),
            (
                "since",
                req.since
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
            ),
            ("page_size", req.page_size.map(|n| n.to_string())),
            ("page_token", req.page_token.clone()),
        ]);
        self.get(&format!("/v1/operations{q}")).await
    }

    /// One server-side wait: the operation once done, or as it is after `timeout` (at most
    /// 60 s; rounded down to milliseconds).
    pub async fn wait_operation(
        &self,
        id: impl Display,
        timeout: Duration,
    ) -> Result<Operation, Error> {
        let ms = timeout.min(MAX_SERVER_WAIT).as_millis();
        self.get(&format!(
            "/v1/operations/{}/wait?timeout={ms}ms",
            encode(&id.to_string())
        ))
        .await
    }

    /// Blocks until the operation is done and returns it; with `timeout`, gives up after
    /// it with [`Error::WaitTimedOut`] (holding the operation as last seen).
    pub async fn wait(
        &self,
        id: impl Display,
        timeout: Option<Duration>,
    ) -> Result<Operation, Error> {
        self.wait_with(id, timeout, MAX_SERVER_WAIT, |_| {}).await
    }

    /// [`Client::wait`], calling `seen` with the operation after each server-side wait of
    /// at most `every` (to show progress: steps as they change).
    pub async fn wait_with(
        &self,
        id: impl Display,
        timeout: Option<Duration>,
        every: Duration,
        mut seen: impl FnMut(&Operation),
    ) -> Result<Operation, Error> {
        let id = id.to_string();
        let start = Instant::now();
        loop {
            let slice = match timeout {
                Some(t) => t.saturating_sub(start.elapsed()).min(every),
                None => every,
            };
            let op = self.wait_operation(&id, slice).await?;
            seen(&op);
            if op.done {
                return Ok(op);
            }
            if let Some(t) = timeout
                && start.elapsed() >= t
            {
                return Err(Error::WaitTimedOut {
                    operation: Box::new(op),
                    waited: start.elapsed(),
                });
            }
        }
    }

    /// Requests cancellation (what was done is compensated); the operation as it is then.
    pub async fn cancel_operation(&self, id: impl Display) -> Result<Operation, Error> {
        let path = format!("/v1/operations/{}/cancel", encode(&id.to_string()));
        // Asking twice is harmless, so it is retried like a read.
        let answer = self.send(Method::POST, &path, &[], None, true).await?;
        self.http.decode(&answer)
    }

    /// Re-runs a FAILED (or STUCK) operation as a new operation with `retry_of`.
    pub async fn retry_operation(
        &self,
        id: impl Display,
        request_id: Option<&str>,
    ) -> Result<Accepted, Error> {
        let path = format!("/v1/operations/{}/retry", encode(&id.to_string()));
        let rid = self.request_id(&request_id.map(str::to_string));
        self.mutate(Method::POST, &path, None, rid).await
    }

    /// Follows the operation's events live from its first one, ending after the event
    /// that ends it (at once, after replaying them, if it already ended).
    pub fn watch(&self, id: impl Display) -> EventFeed {
        let path = format!("/v1/operations/{}/events", encode(&id.to_string()));
        EventFeed::new(self.http.clone(), path, 0, self.retry, true)
    }

    // ---- events ----

    /// A page of at most `limit` (1..=1000, default 100) events after position `after`.
    pub async fn list_events(&self, after: u64, limit: Option<u32>) -> Result<EventPage, Error> {
        let q = query(&[
            ("after", Some(after.to_string())),
            ("limit", limit.map(|n| n.to_string())),
        ]);
        self.get(&format!("/v1/events{q}")).await
    }

    /// A page of one operation's events after position `after`.
    pub async fn list_operation_events(
        &self,
        id: impl Display,
        after: u64,
        limit: Option<u32>,
    ) -> Result<EventPage, Error> {
        let q = query(&[
            ("after", Some(after.to_string())),
            ("limit", limit.map(|n| n.to_string())),
        ]);
        self.get(&format!(
            "/v1/operations/{}/events{q}",
            encode(&id.to_string())
        ))
        .await
    }

    /// Follows the whole event log (the caller's project's) live from after position
    /// `after`; never ends by itself.
    pub fn follow_events(&self, after: u64) -> EventFeed {
        EventFeed::new(
            self.http.clone(),
            "/v1/events".to_string(),
            after,
            self.retry,
            false,
        )
    }

    // ---- health ----

    /// `Ok` when the server is ready (its store reachable): `GET /readyz`.
    pub async fn ready(&self) -> Result<(), Error> {
        let answer = self.send(Method::GET, "/readyz", &[], None, false).await?;
        if (200..300).contains(&answer.status) {
            Ok(())
        } else {
            Err(self.http.error(&answer))
        }
    }
}
