//! `/metrics` in Prometheus text format: HTTP requests by method, route and status, gRPC
//! calls by method and code (counted by middlewares; label values from closed sets only); from the store: operations by kind and state, queue depth and age
//! (the oldest due run's wait), lease steals, the event log's head, expired idempotency
//! keys not yet purged and how long the oldest has waited; and step-duration histograms,
//! read from the event log.
//!
//! Steps run in worker processes, possibly on other machines, so the API does not time
//! them itself: [`follow_step_durations`] tails the log and
//! observes each attempt from its `StepStarted` to the `StepSucceeded` or `StepFailed` of
//! the same step in the same operation, using the commit times. It starts a little
//! before the head ([`STEP_METRICS_REPLAY`]) so that steps in flight are timed too. Every API replica thus
//! reports the steps of the whole deployment since it started.

use crate::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;

/// Request counters: REST by (method, route template, status code), gRPC by (method
/// path, gRPC code). Every label value comes from a closed set (see [`http_method`],
/// [`grpc_method`]), so no request can add a series of its own making.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    grpc: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl HttpMetrics {
    fn count(&self, method: &'static str, route: String, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((method, route, status)).or_default() += 1;
    }

    fn count_grpc(&self, method: &'static str, code: &'static str) {
        let mut m = self.grpc.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((method, code)).or_default() += 1;
    }
}

/// The label value of every value outside a closed set.
pub const OTHER: &str = "other";

/// The label of an HTTP method: one of the standard ones, else [`OTHER`].
pub fn http_method(method: &axum::http::Method) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
    KNOWN
        .into_iter()
        .find(|m| *m == method.as_str())
        .unwrap_or(OTHER)
}

/// The `/package.Service/Method` paths the gRPC server serves: those of `ovc.v1` (from
/// its file descriptor set) and gRPC reflection's.
fn grpc_methods() -> &'static std::collections::BTreeSet<String> {
    static METHODS: std::sync::OnceLock<std::collections::BTreeSet<String>> =
        std::sync::OnceLock::new();
    METHODS.get_or_init(|| {
        use prost::Message;
        let mut set = std::collections::BTreeSet::new();
        set.insert("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string());
        if let Ok(files) =
            prost_types::FileDescriptorSet::decode(crate::grpc::proto::FILE_DESCRIPTOR_SET)
        {
            for file in &files.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        set.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        set
    })
}

/// The label of a gRPC request path: a method the server serves, else [`OTHER`].
pub fn grpc_method(path: &str) -> &'static str {
    grpc_methods()
        .get(path)
        .map(String::as_str)
        .unwrap_or(OTHER)
}

/// The label of a `grpc-status` value: a gRPC code (0..=16), else [`OTHER`].
fn grpc_code(value: &str) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    CODES.into_iter().find(|c| *c == value).unwrap_or(OTHER)
}

/// The middleware that counts every gRPC call by method and gRPC status code. An error
/// answered before any message carries `grpc-status` in its headers; otherwise the call
/// is counted as `0` (OK) when its response starts (a stream's later failure is not seen).
pub async fn count_grpc_calls(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = grpc_method(req.uri().path());
    let res = next.run(req).await;
    let code = res
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map_or("0", grpc_code);
    state.http.count_grpc(method, code);
    res
}

/// Upper bounds (seconds) of the step-duration histogram buckets.
pub const STEP_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Step-attempt durations by (operation kind, step, outcome), from the event log.
#[derive(Debug, Default)]
pub struct StepDurations {
    inner: Mutex<StepState>,
}

#[derive(Debug, Default)]
struct StepState {
    /// Operation stream → its kind.
    kinds: HashMap<String, String>,
    /// (operation stream, step) → when the current attempt started.
    open: HashMap<(String, String), chrono::DateTime<chrono::Utc>>,
    /// (kind, step, outcome) → histogram.
    histograms: BTreeMap<(String, String, &'static str), Histogram>,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Count per bucket of [`STEP_BUCKETS`] (not cumulative), then the overflow.
    counts: [u64; STEP_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl StepDurations {
    /// Folds one event of the log in.
    pub fn observe(&self, e: &ovc_store::RecordedEvent) {
        if !e.stream.starts_with("operation-") {
            return;
        }
        let step = || {
            e.data
                .get("step")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        };
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match e.event_type.as_str() {
            "OperationRequested" => {
                let kind = e.data["command"]["kind"].as_str().unwrap_or("UNKNOWN");
                st.kinds.insert(e.stream.clone(), kind.to_string());
            }
            "StepStarted" => {
                if let Some(step) = step() {
                    st.open.insert((e.stream.clone(), step), e.recorded_at);
                }
            }
            "StepSucceeded" | "StepFailed" => {
                let Some(step) = step() else { return };
                let Some(started) = st.open.remove(&(e.stream.clone(), step.clone())) else {
                    return;
                };
                let kind = st
                    .kinds
                    .get(&e.stream)
                    .cloned()
                    .unwrap_or_else(|| "UNKNOWN".to_string());
                let outcome = if e.event_type == "StepSucceeded" {
                    "succeeded"
                } else {
                    "failed"
                };
                let secs = (e.recorded_at - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
                let h = st.histograms.entry((kind, step, outcome)).or_default();
                let i = STEP_BUCKETS
                    .iter()
                    .position(|b| secs <= *b)
                    .unwrap_or(STEP_BUCKETS.len());
                h.counts[i] += 1;
                h.sum += secs.max(0.0);
                h.count += 1;
            }
            "OperationSucceeded" | "OperationFailed" | "OperationCancelled" | "OperationStuck" => {
                st.kinds.remove(&e.stream);
                st.open.retain(|(stream, _), _| stream != &e.stream);
            }
            _ => {}
        }
    }

    fn render(&self, out: &mut String) {
        let st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP ovc_step_duration_seconds Step attempts, from StepStarted to StepSucceeded or StepFailed."
        );
        let _ = writeln!(out, "# TYPE ovc_step_duration_seconds histogram");
        for ((kind, step, outcome), h) in &st.histograms {
            let labels = format!("kind=\"{kind}\",step=\"{step}\",outcome=\"{outcome}\"");
            let mut cumulative = 0;
            for (i, le) in STEP_BUCKETS.iter().enumerate() {
                cumulative += h.counts[i];
                let _ = writeln!(
                    out,
                    "ovc_step_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "ovc_step_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "ovc_step_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(
                out,
                "ovc_step_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
    }
}

/// How many events before the head [`follow_step_durations`] starts from, so steps in
/// flight at start-up are timed too.
pub const STEP_METRICS_REPLAY: u64 = 10_000;

/// Tails the event log, from [`STEP_METRICS_REPLAY`] events before its head, into
/// `state.steps`, for as long as the process runs (started by [`crate::router`]).
pub async fn follow_step_durations(state: AppState) {
    use futures::StreamExt;
    let head = loop {
        match state.store.head_position().await {
            Ok(h) => break h,
            Err(e) => {
                tracing::warn!(error = %e, "step metrics: store unreachable; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let mut after = head.saturating_sub(STEP_METRICS_REPLAY);
    loop {
        let feed = state.tail(after, crate::service::Scope::Project(None), None);
        futures::pin_mut!(feed);
        // The feed ends only on a store error: resume after the last event observed.
        while let Some(Ok(e)) = feed.next().await {
            after = e.position;
            state.steps.observe(&e);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The middleware that counts every request, by method, route template (axum's
/// `MatchedPath`, e.g. `/v1/vclusters/{name}`; [`OTHER`] for no route) and status.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = http_method(req.method());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| OTHER.to_string(), |p| p.as_str().to_string());
    let res = next.run(req).await;
    state.http.count(method, route, res.status().as_u16());
    res
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = state.store.stats().await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP ovc_http_requests_total HTTP requests by method, route and status."
    );
    let _ = writeln!(out, "# TYPE ovc_http_requests_total counter");
    {
        let m = state
            .http
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for ((method, route, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "ovc_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP ovc_grpc_requests_total gRPC calls by method and gRPC status code."
    );
    let _ = writeln!(out, "# TYPE ovc_grpc_requests_total counter");
    {
        let m = state.http.grpc.lock().unwrap_or_else(|e| e.into_inner());
        for ((method, code), n) in m.iter() {
            let _ = writeln!(
                out,
                "ovc_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}"
            );
        }
    }
    let _ = writeln!(out, "# HELP ovc_operations Operations by kind and state.");
    let _ = writeln!(out, "# TYPE ovc_operations gauge");
    for (kind, st, n) in &stats.operations {
        let _ = writeln!(out, "ovc_operations{{kind=\"{kind}\",state=\"{st}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP ovc_snapshots Snapshots by state (MISSING: the inventory found the artifact gone)."
    );
    let _ = writeln!(out, "# TYPE ovc_snapshots gauge");
    for st in ovc_types::state::SnapshotState::ALL {
        let n = stats
            .snapshots
            .iter()
            .find(|(s, _)| s == st.as_str())
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "ovc_snapshots{{state=\"{}\"}} {n}", st.as_str());
    }
    let _ = writeln!(
        out,
        "# HELP ovc_runs Runs in the queue by status (queue depth)."
    );
    let _ = writeln!(out, "# TYPE ovc_runs gauge");
    let _ = writeln!(out, "ovc_runs{{status=\"queued\"}} {}", stats.runs_queued);
    let _ = writeln!(out, "ovc_runs{{status=\"leased\"}} {}", stats.runs_leased);
    let _ = writeln!(
        out,
        "# HELP ovc_runs_oldest_due_age_seconds How long the oldest due queued run has waited for a worker (0: none waits)."
    );
    let _ = writeln!(out, "# TYPE ovc_runs_oldest_due_age_seconds gauge");
    let _ = writeln!(
        out,
        "ovc_runs_oldest_due_age_seconds {:.3}",
        stats.oldest_due_run_age.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "# HELP ovc_lease_steals_total Runs taken over after their lease expired."
    );
    let _ = writeln!(out, "# TYPE ovc_lease_steals_total counter");
    let _ = writeln!(out, "ovc_lease_steals_total {}", stats.lease_steals);
    let _ = writeln!(
        out,
        "# HELP ovc_events_head_position Position of the last event."
    );
    let _ = writeln!(out, "# TYPE ovc_events_head_position gauge");
    let _ = writeln!(out, "ovc_events_head_position {}", stats.head_position);
    state.steps.render(&mut out);
    state.purger.render_prometheus(&mut out);
    let _ = writeln!(
        out,
        "# HELP ovc_idempotency_keys_expired Idempotency keys past their TTL still stored (any process's purge deletes them)."
    );
    let _ = writeln!(out, "# TYPE ovc_idempotency_keys_expired gauge");
    let _ = writeln!(
        out,
        "ovc_idempotency_keys_expired {}",
        stats.idempotency_keys_expired
    );
    let _ = writeln!(
        out,
        "# HELP ovc_idempotency_purge_lag_seconds How long the oldest expired idempotency key has waited to be purged (0: none)."
    );
    let _ = writeln!(out, "# TYPE ovc_idempotency_purge_lag_seconds gauge");
    let _ = writeln!(
        out,
        "ovc_idempotency_purge_lag_seconds {:.3}",
        stats.idempotency_purge_lag.as_secs_f64()
    );
    let _ = writeln!(out, "# HELP ovc_live_feeds Live event feeds open now.");
    let _ = writeln!(out, "# TYPE ovc_live_feeds gauge");
    let _ = writeln!(out, "ovc_live_feeds {}", state.feeds.open());
    Ok(([("content-type", "text/plain; version=0.0.4")], out).into_response())
}
