//! A fake Kubernetes API server and a stand-in `helm`, so the kube driver's calls can be
//! checked without a cluster (CI has none).
//!
//! [`FakeCluster`] is an in-memory API server behind a tower service handed to
//! `kube::Client::new` (kube-rs's mock-service pattern): it records every request
//! (verb, path, query, content type, body) and answers as the API server does for the
//! calls the driver makes (get, list with label selectors, create with `generateName`,
//! merge patch, delete with finalizers and Terminating namespaces, Status errors with
//! `Retry-After`). [`FakeCluster::settle`] plays the controllers: the Helm chart (from the
//! stand-in helm's release files), the StatefulSet controller, the syncer (Secret
//! `vc-NAME`, the virtual API, workload pods), vcluster's snapshot controller and the
//! restore pod. What it does not model is listed in the kube driver's notes in
//! docs/architecture.md.

use super::{HelmConfig, KubeHost, KubeHostConfig, VirtualApiFactory};
use crate::conformance::ObjectShelf;
use crate::kube::values;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One request the fake API server received.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, `PATCH`, `DELETE`, `PUT`.
    pub method: String,
    /// The path, e.g. `/apis/apps/v1/namespaces/ns/statefulsets/demo`.
    pub path: String,
    /// Decoded query parameters (`labelSelector`, ...).
    pub query: BTreeMap<String, String>,
    /// `Content-Type` of the body.
    pub content_type: Option<String>,
    /// The body as JSON.
    pub body: Option<Value>,
    /// Sent through a virtual cluster's API (the readiness probe).
    pub virtual_api: bool,
}

impl RecordedRequest {
    /// `"VERB path"` plus `?labelSelector=...` when there is one.
    pub fn line(&self) -> String {
        match self.query.get("labelSelector") {
            Some(s) => format!("{} {}?labelSelector={s}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }

    /// True for GET/LIST.
    pub fn is_read(&self) -> bool {
        self.method == "GET"
    }
}

struct Fault {
    method: String,
    path_contains: String,
    code: u16,
    reason: String,
    retry_after: Option<u32>,
}

#[derive(Default)]
struct State {
    /// `(collection, name)` → object; a collection is the path without the name.
    objects: BTreeMap<(String, String), Value>,
    requests: Vec<RecordedRequest>,
    resource_version: u64,
    generated: u64,
    faults: Vec<Fault>,
    /// Servers whose virtual API answers.
    virtual_ready: BTreeSet<String>,
    /// Helm revisions already rendered, per `ns/name`.
    rendered: BTreeMap<String, u32>,
    /// Workload pods the syncer keeps per `ns/name`.
    workloads: BTreeMap<String, u32>,
    /// Restore pods to fail.
    fail_restores: bool,
    /// Snapshot requests to fail, with this message.
    fail_snapshots: Option<String>,
    /// The content of each running vcluster (`ns/name`): what its snapshot holds and its
    /// restore replaces.
    virtual_data: BTreeMap<String, Value>,
}

/// The fake API server and controllers.
#[derive(Clone)]
pub struct FakeCluster {
    state: Arc<Mutex<State>>,
    helm_dir: PathBuf,
    /// The object storage vcluster pods write snapshots to and read them from.
    shelf: ObjectShelf,
}

impl std::fmt::Debug for FakeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeCluster")
            .field("helm_dir", &self.helm_dir)
            .finish_non_exhaustive()
    }
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "namespaces" => ("v1", "Namespace"),
        "pods" => ("v1", "Pod"),
        "secrets" => ("v1", "Secret"),
        "configmaps" => ("v1", "ConfigMap"),
        "persistentvolumeclaims" => ("v1", "PersistentVolumeClaim"),
        "resourcequotas" => ("v1", "ResourceQuota"),
        "serviceaccounts" => ("v1", "ServiceAccount"),
        "services" => ("v1", "Service"),
        "statefulsets" => ("apps/v1", "StatefulSet"),
        "deployments" => ("apps/v1", "Deployment"),
        _ => ("v1", "Unknown"),
    }
}

fn status(code: u16, reason: &str, message: &str, retry_after: Option<u32>) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    if let Some(r) = retry_after {
        s["details"] = json!({"retryAfterSeconds": r});
    }
    s
}

/// An HTTP response of the fake server.
type FakeResponse = http::Response<Full<Bytes>>;
/// What the fake server's service returns.
type FakeFuture =
    futures::future::BoxFuture<'static, Result<FakeResponse, std::convert::Infallible>>;

/// The answer of the fake server.
type Answer = (u16, Value, Option<u32>);

/// RFC 7386 JSON merge patch.
pub fn apply_merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().expect("object");
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                apply_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

/// True when `labels` match a selector of `k=v`, `k==v`, `k!=v` and `k` terms.
pub fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k).and_then(Value::as_str) != Some(v)
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(k).and_then(Value::as_str) == Some(v)
        } else {
            labels.get(term).is_some()
        }
    })
}

fn decode_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits an API path into (collection, name, resource).
fn split_path(path: &str) -> Option<(String, Option<String>, String)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let prefix = match *segs.first()? {
        "api" => 2,
        "apis" => 3,
        _ => return None,
    };
    let rest = segs.get(prefix..)?;
    let base = segs[..prefix].join("/");
    match rest {
        [res] => Some((format!("/{base}/{res}"), None, (*res).to_owned())),
        ["namespaces", name] => Some((
            format!("/{base}/namespaces"),
            Some((*name).to_owned()),
            "namespaces".into(),
        )),
        ["namespaces", ns, res] => Some((
            format!("/{base}/namespaces/{ns}/{res}"),
            None,
            (*res).to_owned(),
        )),
        ["namespaces", ns, res, name] => Some((
            format!("/{base}/namespaces/{ns}/{res}"),
            Some((*name).to_owned()),
            (*res).to_owned(),
        )),
        _ => None,
    }
}

fn coll(ns: &str, api: &str, res: &str) -> String {
    if api == "v1" {
        format!("/api/v1/namespaces/{ns}/{res}")
    } else {
        format!("/apis/{api}/namespaces/{ns}/{res}")
    }
}

impl State {
    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn put(&mut self, collection: &str, name: &str, mut obj: Value, resource: &str) {
        let (api_version, kind) = kind_of(resource);
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        obj["metadata"]["name"] = json!(name);
        if let Some(ns) = collection
            .split("/namespaces/")
            .nth(1)
            .and_then(|r| r.split('/').next())
        {
            obj["metadata"]["namespace"] = json!(ns);
        }
        if obj["metadata"].get("uid").is_none() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", self.resource_version + 1));
            obj["metadata"]["creationTimestamp"] = json!("2026-01-02T03:04:05Z");
        }
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        self.objects
            .insert((collection.to_owned(), name.to_owned()), obj);
    }

    fn get(&self, collection: &str, name: &str) -> Option<&Value> {
        self.objects.get(&(collection.to_owned(), name.to_owned()))
    }

    fn remove_namespace_contents(&mut self, ns: &str) {
        let needle = format!("/namespaces/{ns}/");
        self.objects.retain(|(c, _), _| !c.contains(&needle));
    }

    fn namespace_live(&self, ns: &str) -> bool {
        self.get("/api/v1/namespaces", ns)
            .is_some_and(|n| n["metadata"].get("deletionTimestamp").is_none())
    }

    fn handle(&mut self, req: &RecordedRequest) -> Answer {
        if let Some(i) = self
            .faults
            .iter()
            .position(|f| f.method == req.method && req.path.contains(&f.path_contains))
        {
            let f = self.faults.remove(i);
            return (
                f.code,
                status(f.code, &f.reason, "injected by the test", f.retry_after),
                f.retry_after,
            );
        }
        if req.virtual_api {
            return self.handle_virtual(req);
        }
        if req.path == "/version" {
            return (
                200,
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}),
                None,
            );
        }
        let Some((collection, name, resource)) = split_path(&req.path) else {
            return (
                404,
                status(404, "NotFound", &format!("no route {}", req.path), None),
                None,
            );
        };
        let not_found = |n: &str| {
            (
                404,
                status(
                    404,
                    "NotFound",
                    &format!("{resource} \"{n}\" not found"),
                    None,
                ),
                None,
            )
        };
        match (req.method.as_str(), name) {
            ("GET", Some(n)) => match self.get(&collection, &n) {
                Some(o) => (200, o.clone(), None),
                None => not_found(&n),
            },
            ("GET", None) => {
                let sel = req.query.get("labelSelector").cloned().unwrap_or_default();
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|((c, _), o)| {
                        *c == collection
                            && selector_matches(
                                &sel,
                                o["metadata"].get("labels").unwrap_or(&Value::Null),
                            )
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                let (api_version, kind) = kind_of(&resource);
                let rv = self.resource_version.to_string();
                (
                    200,
                    json!({"apiVersion": api_version, "kind": format!("{kind}List"), "metadata": {"resourceVersion": rv}, "items": items}),
                    None,
                )
            }
            ("POST", None) => {
                let mut obj = req.body.clone().unwrap_or(json!({}));
                if let Some(ns) = collection
                    .split("/namespaces/")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    && !self.namespace_live(ns)
                {
                    return (
                        404,
                        status(
                            404,
                            "NotFound",
                            &format!("namespaces \"{ns}\" not found"),
                            None,
                        ),
                        None,
                    );
                }
                let name = match obj["metadata"].get("name").and_then(Value::as_str) {
                    Some(n) => n.to_owned(),
                    None => match obj["metadata"].get("generateName").and_then(Value::as_str) {
                        Some(g) => {
                            self.generated += 1;
                            format!("{g}{:05}", self.generated)
                        }
                        None => {
                            return (
                                422,
                                status(422, "Invalid", "name or generateName is required", None),
                                None,
                            );
                        }
                    },
                };
                if self.get(&collection, &name).is_some() {
                    return (
                        409,
                        status(
                            409,
                            "AlreadyExists",
                            &format!("{resource} \"{name}\" already exists"),
                            None,
                        ),
                        None,
                    );
                }
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("generateName");
                }
                if resource == "secrets"
                    && let Some(sd) = obj
                        .get("stringData")
                        .cloned()
                        .and_then(|v| v.as_object().cloned())
                {
                    use base64::Engine;
                    for (k, v) in sd {
                        let enc = base64::engine::general_purpose::STANDARD
                            .encode(v.as_str().unwrap_or(""));
                        obj["data"][k] = json!(enc);
                    }
                    obj.as_object_mut().map(|o| o.remove("stringData"));
                }
                if resource == "namespaces" {
                    obj["status"] = json!({"phase": "Active"});
                }
                self.put(&collection, &name, obj, &resource);
                (
                    201,
                    self.get(&collection, &name).cloned().unwrap_or_default(),
                    None,
                )
            }
            ("PATCH", Some(n)) => {
                if req.content_type.as_deref() != Some("application/merge-patch+json") {
                    return (
                        415,
                        status(
                            415,
                            "UnsupportedMediaType",
                            "the fake server only takes merge patches",
                            None,
                        ),
                        None,
                    );
                }
                let Some(mut obj) = self.get(&collection, &n).cloned() else {
                    return not_found(&n);
                };
                apply_merge_patch(&mut obj, req.body.as_ref().unwrap_or(&Value::Null));
                let finalizers_left = obj["metadata"]
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if obj["metadata"].get("deletionTimestamp").is_some()
                    && !finalizers_left
                    && resource != "namespaces"
                {
                    self.objects.remove(&(collection.clone(), n.clone()));
                    return (200, obj, None);
                }
                self.put(&collection, &n, obj, &resource);
                (
                    200,
                    self.get(&collection, &n).cloned().unwrap_or_default(),
                    None,
                )
            }
            ("DELETE", Some(n)) => {
                let Some(mut obj) = self.get(&collection, &n).cloned() else {
                    return not_found(&n);
                };
                let has_finalizers = obj["metadata"]
                    .get("finalizers")
                    .and_then(Value::as_array)
                    .is_some_and(|f| !f.is_empty());
                if resource == "namespaces" || has_finalizers {
                    obj["metadata"]["deletionTimestamp"] = json!("2026-01-02T03:04:05Z");
                    if resource == "namespaces" {
                        obj["status"] = json!({"phase": "Terminating"});
                    }
                    self.put(&collection, &n, obj.clone(), &resource);
                    return (200, obj, None);
                }
                self.objects.remove(&(collection, n));
                (200, obj, None)
            }
            _ => (
                405,
                status(
                    405,
                    "MethodNotAllowed",
                    "not supported by the fake server",
                    None,
                ),
                None,
            ),
        }
    }

    fn handle_virtual(&mut self, req: &RecordedRequest) -> Answer {
        let server = req.query.get("__server").cloned().unwrap_or_default();
        if req.method == "GET" && req.path == "/api/v1/namespaces/default/serviceaccounts/default" {
            if self.virtual_ready.contains(&server) {
                return (
                    200,
                    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "default"}}),
                    None,
                );
            }
            return (
                503,
                status(503, "ServiceUnavailable", "virtual API not up", None),
                None,
            );
        }
        (
            404,
            status(404, "NotFound", "not served by the fake virtual API", None),
            None,
        )
    }
}

impl FakeCluster {
    /// A fresh, empty cluster; the stand-in helm keeps its releases under `helm_dir`.
    pub fn new(helm_dir: &Path) -> Self {
        FakeCluster {
            state: Arc::new(Mutex::new(State::default())),
            helm_dir: helm_dir.to_owned(),
            shelf: ObjectShelf::default(),
        }
    }

    fn service(
        &self,
        virtual_server: Option<String>,
    ) -> impl tower::Service<
        http::Request<kube::client::Body>,
        Response = FakeResponse,
        Error = std::convert::Infallible,
        Future = FakeFuture,
    > + Clone
    + use<> {
        let state = self.state.clone();
        tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let state = state.clone();
            let virtual_server = virtual_server.clone();
            let fut: futures::future::BoxFuture<'static, _> = Box::pin(async move {
                let (parts, body) = req.into_parts();
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut query = decode_query(parts.uri.query().unwrap_or(""));
                if let Some(s) = &virtual_server {
                    query.insert("__server".into(), s.clone());
                }
                let rec = RecordedRequest {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query,
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    body: (!bytes.is_empty())
                        .then(|| serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
                    virtual_api: virtual_server.is_some(),
                };
                let (code, body, retry_after) = {
                    let mut st = state.lock().expect("fake state");
                    let answer = st.handle(&rec);
                    let mut rec = rec;
                    rec.query.remove("__server");
                    st.requests.push(rec);
                    answer
                };
                let mut resp = http::Response::builder()
                    .status(code)
                    .header(http::header::CONTENT_TYPE, "application/json");
                if let Some(r) = retry_after {
                    resp = resp.header(http::header::RETRY_AFTER, r.to_string());
                }
                Ok(resp
                    .body(Full::new(Bytes::from(body.to_string())))
                    .expect("response"))
            });
            fut
        })
    }

    /// A kube client on the fake host API.
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.service(None), "default")
    }

    /// The factory the driver uses for virtual API clients: parses the kubeconfig and
    /// routes requests for its server to the fake virtual API.
    pub fn virtual_api(&self) -> VirtualApiFactory {
        let me = self.clone();
        Arc::new(move |kubeconfig: String| {
            let me = me.clone();
            Box::pin(async move {
                let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig).map_err(|e| {
                    super::KubeError::Config(format!("the vcluster's kubeconfig: {e}"))
                })?;
                let server = kc
                    .clusters
                    .first()
                    .and_then(|c| c.cluster.as_ref())
                    .and_then(|c| c.server.clone())
                    .unwrap_or_default();
                Ok(kube::Client::new(me.service(Some(server)), "default"))
            })
        })
    }

    /// A kube driver on this cluster, with the stand-in helm of [`install_stand_in_helm`].
    pub fn driver(&self, helm_binary: &Path) -> KubeHost {
        let config = KubeHostConfig {
            helm: HelmConfig {
                binary: helm_binary.to_owned(),
                ..HelmConfig::default()
            },
            poll_interval: std::time::Duration::from_millis(10),
            max_wait: std::time::Duration::from_secs(5),
            ..KubeHostConfig::default()
        };
        KubeHost::new(self.client(), config)
            .with_virtual_api(self.virtual_api())
            .with_storage_credentials(super::StorageCredentials::default())
    }

    /// The object storage the fake vcluster pods write snapshots to (named by
    /// vcluster's URL without its query: `s3://bucket/key`, an Azure blob URL).
    pub fn shelf(&self) -> ObjectShelf {
        self.shelf.clone()
    }

    /// The content of vcluster `release` in `namespace` (`None` before it first ran).
    pub fn virtual_data(&self, namespace: &str, release: &str) -> Option<Value> {
        self.state
            .lock()
            .expect("fake state")
            .virtual_data
            .get(&format!("{namespace}/{release}"))
            .cloned()
    }

    /// Makes the snapshot controller fail every new request with `message`.
    pub fn fail_snapshots(&self, message: &str) {
        self.state.lock().expect("fake state").fail_snapshots = Some(message.to_string());
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.lock().expect("fake state").requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state.lock().expect("fake state").requests.clear();
    }

    /// The requests that change something (not GET).
    pub fn writes(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| !r.is_read())
            .collect()
    }

    /// The object at `collection`/`name`.
    pub fn object(&self, collection: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .expect("fake state")
            .get(collection, name)
            .cloned()
    }

    /// Names in `collection`.
    pub fn names(&self, collection: &str) -> Vec<String> {
        let st = self.state.lock().expect("fake state");
        st.objects
            .keys()
            .filter(|(c, _)| c == collection)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Stores `obj` (its `metadata.name`) in `collection`, as another client would.
    pub fn insert(&self, collection: &str, obj: Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let resource = collection.rsplit('/').next().unwrap_or_default().to_owned();
        self.state
            .lock()
            .expect("fake state")
            .put(collection, &name, obj, &resource);
    }

    /// Merge-patches a stored object, as another client would.
    pub fn patch(&self, collection: &str, name: &str, patch: &Value) {
        let mut st = self.state.lock().expect("fake state");
        let resource = collection.rsplit('/').next().unwrap_or_default().to_owned();
        if let Some(mut obj) = st.get(collection, name).cloned() {
            apply_merge_patch(&mut obj, patch);
            st.put(collection, name, obj, &resource);
        }
    }

    /// The next request with `method` whose path contains `path_contains` answers `code`.
    pub fn fail_next(
        &self,
        method: &str,
        path_contains: &str,
        code: u16,
        reason: &str,
        retry_after: Option<u32>,
    ) {
        self.state.lock().expect("fake state").faults.push(Fault {
            method: method.into(),
            path_contains: path_contains.into(),
            code,
            reason: reason.into(),
            retry_after,
        });
    }

    /// The syncer keeps `n` workload pods of `release` in `namespace` while it runs.
    pub fn set_workloads(&self, namespace: &str, release: &str, n: u32) {
        self.state
            .lock()
            .expect("fake state")
            .workloads
            .insert(format!("{namespace}/{release}"), n);
    }

    /// Restore pods exit 1 from now on.
    pub fn fail_restores(&self) {
        self.state.lock().expect("fake state").fail_restores = true;
    }

    /// Plays the controllers once (repeat-safe): renders new helm revisions, runs the
    /// StatefulSet controller, the syncer, the snapshot controller and restore pods, and
    /// finishes deletions. Call twice to let effects of effects land.
    pub fn settle(&self) {
        let releases = read_helm_releases(&self.helm_dir);
        let mut st = self.state.lock().expect("fake state");
        // Namespaces: Terminating → gone, with their contents.
        let terminating: Vec<String> = st
            .objects
            .iter()
            .filter(|((c, _), o)| {
                c == "/api/v1/namespaces" && o["metadata"].get("deletionTimestamp").is_some()
            })
            .map(|((_, n), _)| n.clone())
            .collect();
        for ns in terminating {
            st.remove_namespace_contents(&ns);
            st.objects.remove(&("/api/v1/namespaces".into(), ns));
        }
        // The chart: a new revision renders the StatefulSet (replicas reset to the
        // chart's value: Helm's 3-way merge) and vc-config-NAME.
        let mut live = BTreeSet::new();
        for (ns, name, rel) in &releases {
            let key = format!("{ns}/{name}");
            live.insert(key.clone());
            let revision = rel["version"].as_u64().unwrap_or(0) as u32;
            if st.rendered.get(&key) == Some(&revision) || !st.namespace_live(ns) {
                continue;
            }
            st.rendered.insert(key, revision);
            let config = rel["config"].clone();
            let replicas = values::ha_replicas(&config);
            let sts_coll = coll(ns, "apps/v1", "statefulsets");
            let mut sts = st.get(&sts_coll, name).cloned().unwrap_or_else(|| {
                json!({"metadata": {"labels": {"app": "vcluster", "release": name}}, "status": {"replicas": 0, "readyReplicas": 0}})
            });
            sts["spec"] = json!({
                "replicas": replicas,
                "serviceName": format!("{name}-headless"),
                "selector": {"matchLabels": {"app": "vcluster", "release": name}},
                "template": {
                    "metadata": {"labels": {"app": "vcluster", "release": name}},
                    "spec": {
                        "serviceAccountName": format!("vc-{name}"),
                        "containers": [{"name": "syncer", "image": "ghcr.io/loft-sh/vcluster-pro:0.29.1",
                                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    },
                },
            });
            st.put(&sts_coll, name, sts, "statefulsets");
            let cfg = json!({"metadata": {"name": format!("vc-config-{name}"), "labels": {"app": "vcluster"}},
                             "data": {"config.yaml": b64(&serde_saphyr::to_string(&config).unwrap_or_default())}});
            st.put(
                &coll(ns, "v1", "secrets"),
                &format!("vc-config-{name}"),
                cfg,
                "secrets",
            );
            if values::deploys_etcd(config.as_object().unwrap_or(&Default::default())) {
                let etcd = json!({"metadata": {"labels": {"app": "vcluster-etcd", "release": name}},
                                  "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "vcluster-etcd"}}, "template": {}},
                                  "status": {"replicas": 0}});
                st.put(&sts_coll, &format!("{name}-etcd"), etcd, "statefulsets");
            }
        }
        // Uninstalled releases: the chart's objects go (PVCs are Retain: they stay).
        let gone: Vec<String> = st
            .rendered
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            st.rendered.remove(&key);
            st.virtual_data.remove(&key);
            let (ns, name) = key.split_once('/').expect("ns/name");
            let (ns, name) = (ns.to_owned(), name.to_owned());
            for (c, n) in [
                (coll(&ns, "apps/v1", "statefulsets"), name.clone()),
                (coll(&ns, "apps/v1", "statefulsets"), format!("{name}-etcd")),
                (coll(&ns, "v1", "secrets"), format!("vc-config-{name}")),
                (coll(&ns, "v1", "secrets"), format!("vc-{name}")),
            ] {
                st.objects.remove(&(c, n));
            }
            let pods = coll(&ns, "v1", "pods");
            st.objects.retain(|(c, _), o| {
                !(c == &pods && o["metadata"]["labels"]["release"] == json!(name))
            });
            st.virtual_ready.remove(&format!("https://{name}.{ns}:443"));
        }
        // StatefulSet controller + syncer.
        let sets: Vec<((String, String), Value)> = st
            .objects
            .iter()
            .filter(|((c, _), _)| c.ends_with("/statefulsets"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((c, name), mut sts) in sets {
            let ns = c
                .split("/namespaces/")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .unwrap_or_default()
                .to_owned();
            let want = sts["spec"]["replicas"].as_u64().unwrap_or(1);
            let release = sts["metadata"]["labels"]["release"]
                .as_str()
                .unwrap_or(&name)
                .to_owned();
            let app = sts["metadata"]["labels"]["app"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            sts["status"] =
                json!({"replicas": want, "readyReplicas": want, "currentReplicas": want});
            st.put(&c, &name, sts, "statefulsets");
            let pods = coll(&ns, "v1", "pods");
            for i in 0..3u64 {
                let pod = format!("{name}-{i}");
                if i < want {
                    if st.get(&pods, &pod).is_none() {
                        let p = json!({"metadata": {"labels": {"app": app, "release": release}},
                                       "status": {"phase": "Running", "containerStatuses": [{"name": "syncer", "ready": true, "restartCount": 0, "image": "x", "imageID": "x"}]}});
                        st.put(&pods, &pod, p, "pods");
                    }
                    let pvc = format!("data-{name}-{i}");
                    let pvcs = coll(&ns, "v1", "persistentvolumeclaims");
                    if st.get(&pvcs, &pvc).is_none() {
                        st.put(
                            &pvcs,
                            &pvc,
                            json!({"metadata": {"labels": {"app": app, "release": release}}}),
                            "persistentvolumeclaims",
                        );
                    }
                } else {
                    st.objects.remove(&(pods.clone(), pod));
                }
            }
            if app != "vcluster" {
                continue;
            }
            let server = format!("https://{release}.{ns}:443");
            let wl_key = format!("{ns}/{release}");
            if want > 0 {
                let kubeconfig = format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: my-vcluster\n  cluster:\n    server: https://localhost:8443\n    certificate-authority-data: Q0E=\ncontexts:\n- name: my-vcluster\n  context:\n    cluster: my-vcluster\n    user: my-vcluster\ncurrent-context: my-vcluster\nusers:\n- name: my-vcluster\n  user:\n    token: secret-token-of-{release}\n"
                );
                let secret = json!({"metadata": {"labels": {"app": "vcluster", "vcluster-name": release}},
                                    "data": {"config": b64(&kubeconfig), "token": b64("secret-token")}});
                if st
                    .get(&coll(&ns, "v1", "secrets"), &format!("vc-{release}"))
                    .is_none()
                {
                    st.put(
                        &coll(&ns, "v1", "secrets"),
                        &format!("vc-{release}"),
                        secret,
                        "secrets",
                    );
                }
                st.virtual_ready.insert(server);
                st.virtual_data.entry(wl_key.clone()).or_insert_with(|| {
                    json!({
                        "namespaces/default": {"metadata": {"name": "default"}},
                        "configmaps/default/origin": {"data": {"created-in": wl_key.clone()}},
                    })
                });
                let n = st.workloads.get(&wl_key).copied().unwrap_or(0);
                for i in 0..n {
                    let pod = format!("web-{i}-x-default-x-{release}");
                    if st.get(&pods, &pod).is_none() {
                        let p = json!({"metadata": {"labels": {crate::kube::MANAGED_BY: release, "vcluster.loft.sh/namespace": "default"}},
                                       "status": {"phase": "Running"}});
                        st.put(&pods, &pod, p, "pods");
                    }
                }
            } else {
                st.virtual_ready.remove(&server);
            }
        }
        // vcluster's snapshot controller: completes requests of running vclusters.
        let cms: Vec<((String, String), Value)> = st
            .objects
            .iter()
            .filter(|((c, _), o)| {
                c.ends_with("/configmaps")
                    && o["metadata"]["labels"]
                        .get(crate::kube::SNAPSHOT_REQUEST)
                        .is_some()
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((c, name), mut cm) in cms {
            let raw = cm["data"]["snapshotRequest"]
                .as_str()
                .unwrap_or("{}")
                .to_owned();
            let mut req: Value = serde_json::from_str(&raw).unwrap_or(json!({}));
            if req["status"].get("phase").is_some() {
                continue;
            }
            let secrets = c.replace("/configmaps", "/secrets");
            let ns = c
                .split("/namespaces/")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .unwrap_or_default()
                .to_owned();
            let release = cm["metadata"]["labels"][crate::kube::SNAPSHOT_VCLUSTER_NAME]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // The controller reads the options Secret, writes the archive, deletes the
            // Secret.
            let options = st
                .get(&secrets, &name)
                .and_then(|sec| sec["data"]["snapshotOptions"].as_str().map(unb64))
                .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok());
            let data = st.virtual_data.get(&format!("{ns}/{release}")).cloned();
            req["status"] = match (
                &st.fail_snapshots,
                options.as_ref().and_then(storage_key),
                data,
            ) {
                (Some(message), _, _) => {
                    json!({"phase": "Failed", "error": {"message": message}})
                }
                (None, Some(key), Some(data)) => {
                    self.shelf
                        .put(&key, serde_json::to_vec(&data).unwrap_or_default());
                    json!({"phase": "Completed"})
                }
                (None, None, _) => {
                    json!({"phase": "Failed", "error": {"message": "no usable snapshot options"}})
                }
                (None, Some(_), None) => {
                    json!({"phase": "Failed", "error": {"message": "the vcluster never ran"}})
                }
            };
            cm["data"]["snapshotRequest"] = json!(req.to_string());
            cm["metadata"]["finalizers"] = json!(["vcluster.loft.sh/snapshot-controller"]);
            st.put(&c, &name, cm, "configmaps");
            st.objects.remove(&(secrets, name));
        }
        // Restore pods run to completion.
        let fail = st.fail_restores;
        let restore_pods: Vec<((String, String), Value)> = st
            .objects
            .iter()
            .filter(|((c, _), o)| {
                c.ends_with("/pods") && o["metadata"]["labels"]["app"] == json!("vcluster-snapshot")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for ((c, name), mut pod) in restore_pods {
            if pod["status"].get("phase").is_some() {
                continue;
            }
            let ns = c
                .split("/namespaces/")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .unwrap_or_default()
                .to_owned();
            let release = pod["metadata"]["labels"]["release"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // `/vcluster restore`: the options come from the env var's Secret (base64 of
            // the JSON, stored base64 again as Secret data).
            let secret = pod["spec"]["containers"][0]["env"]
                .as_array()
                .and_then(|env| {
                    env.iter()
                        .find(|e| e["name"] == json!("VCLUSTER_STORAGE_OPTIONS"))
                })
                .and_then(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
                .map(str::to_owned)
                .unwrap_or_default();
            let options = st
                .get(&c.replace("/pods", "/secrets"), &secret)
                .and_then(|sec| sec["data"]["VCLUSTER_STORAGE_OPTIONS"].as_str().map(unb64))
                .map(|env| unb64(&String::from_utf8_lossy(&env)))
                .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok());
            let archive = options
                .as_ref()
                .and_then(storage_key)
                .and_then(|key| self.shelf.get(&key))
                .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok());
            let outcome = match archive {
                Some(data) if !fail => {
                    st.virtual_data.insert(format!("{ns}/{release}"), data);
                    Ok(())
                }
                Some(_) => Err("restore failed (injected)"),
                None => Err("snapshot not found at the given location"),
            };
            pod["status"] = match outcome {
                Ok(()) => json!({"phase": "Succeeded", "containerStatuses": [
                    {"name": "snapshot", "ready": false, "restartCount": 0, "image": "x", "imageID": "x",
                     "state": {"terminated": {"exitCode": 0}}}]}),
                Err(message) => json!({"phase": "Failed", "containerStatuses": [
                    {"name": "snapshot", "ready": false, "restartCount": 0, "image": "x", "imageID": "x",
                     "state": {"terminated": {"exitCode": 1, "message": message}}}]}),
            };
            st.put(&c, &name, pod, "pods");
        }
    }
}

/// The shelf's name of the object vcluster's storage `options` point at: `s3://B/K` or
/// the Azure blob URL.
fn storage_key(options: &Value) -> Option<String> {
    match options["type"].as_str()? {
        "s3" => Some(format!(
            "s3://{}/{}",
            options["s3"]["bucket"].as_str()?,
            options["s3"]["key"].as_str()?
        )),
        "azure" => options["azure"]["blob-url"].as_str().map(str::to_owned),
        _ => None,
    }
}

fn unb64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `(namespace, name, helm status JSON)` of every release the stand-in helm holds.
fn read_helm_releases(dir: &Path) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    let Ok(nss) = std::fs::read_dir(dir.join("releases")) else {
        return out;
    };
    for ns in nss.flatten() {
        let Ok(files) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            out.push((
                ns.file_name().to_string_lossy().into_owned(),
                p.file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                v,
            ));
        }
    }
    out
}

/// The stand-in `helm` script: records each call's arguments (one line, tab-separated,
/// in `DIR/calls.log`) and answers `version --short`, `status NAME -n NS -o json`,
/// `upgrade --install NAME CHART ... -n NS -f FILE --version V`, `uninstall` and
/// `rollback` as helm does, keeping releases as helm-status JSON in
/// `DIR/releases/NS/NAME.json`. `DIR/version` overrides the version it reports.
pub const STAND_IN_HELM: &str = r#"#!/bin/sh
DIR="$(dirname "$0")"
( first=1; for a in "$@"; do if [ $first = 1 ]; then printf '%s' "$a"; first=0; else printf '\t%s' "$a"; fi; done; printf '\n' ) >> "$DIR/calls.log"
cmd="$1"; shift
ns=default; name=""; file=""; version=""; chart=""; pos=0
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--namespace) ns="$2"; shift 2;;
    -f|--values) file="$2"; shift 2;;
    --version) version="$2"; shift 2;;
    --repo|-o|--output|--kubeconfig|--kube-context) shift 2;;
    --install|--short) shift;;
    *) if [ $pos = 0 ]; then name="$1"; else chart="$1"; fi; pos=$((pos+1)); shift;;
  esac
done
rel="$DIR/releases/$ns/$name.json"
case "$cmd" in
  version) if [ -f "$DIR/version" ]; then cat "$DIR/version"; else echo "v3.16.2+g13654a5"; fi;;
  status)
    if [ -f "$rel" ]; then cat "$rel"; else echo "Error: release: not found" >&2; exit 1; fi;;
  upgrade)
    mkdir -p "$DIR/releases/$ns"
    rev=0; [ -f "$rel.rev" ] && rev=$(cat "$rel.rev")
    rev=$((rev+1)); echo "$rev" > "$rel.rev"
    config=$(cat "$file")
    printf '{"name":"%s","namespace":"%s","version":%s,"info":{"status":"deployed"},"chart":{"metadata":{"name":"vcluster","version":"%s"}},"config":%s}\n' "$name" "$ns" "$rev" "$version" "$config" > "$rel"
    echo "Release \"$name\" has been upgraded. Happy Helming!";;
  uninstall)
    if [ -f "$rel" ]; then rm -f "$rel" "$rel.rev"; echo "release \"$name\" uninstalled"; else echo "Error: uninstall: Release not loaded: $name: release: not found" >&2; exit 1; fi;;
  rollback)
    if [ -f "$rel" ]; then sed -i 's/"status":"pending-[a-z]*"/"status":"deployed"/' "$rel"; echo "Rollback was a success! Happy Helming!"; else echo "Error: release: not found" >&2; exit 1; fi;;
  *) echo "Error: unknown command \"$cmd\" for \"helm\"" >&2; exit 1;;
esac
"#;

/// Writes [`STAND_IN_HELM`] as `DIR/helm` (executable) and returns its path.
pub fn install_stand_in_helm(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("helm");
    std::fs::write(&path, STAND_IN_HELM)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(path)
}

/// The stand-in helm's calls, each as its argument list.
pub fn helm_calls(dir: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

/// Sets the stored status of a stand-in helm release (e.g. `pending-upgrade`), as an
/// interrupted helm would leave it.
pub fn set_helm_status(
    dir: &Path,
    namespace: &str,
    name: &str,
    status: &str,
) -> std::io::Result<()> {
    let rel = dir
        .join("releases")
        .join(namespace)
        .join(format!("{name}.json"));
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(&rel)?).map_err(std::io::Error::other)?;
    v["info"]["status"] = json!(status);
    std::fs::write(&rel, v.to_string())
}
