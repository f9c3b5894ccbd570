//! `/metrics` in Prometheus text format: HTTP requests by method and status (counted by
//! a middleware), and from the store: operations by kind and state, queue depth, lease
//! steals, the event log's head. Step-duration histograms are not here yet.

use crate::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Request counters, by (method, status code).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
}

impl HttpMetrics {
    fn count(&self, method: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((method.to_string(), status)).or_default() += 1;
    }
}

/// The middleware that counts every request.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().as_str().to_string();
    let res = next.run(req).await;
    state.http.count(&method, res.status().as_u16());
    res
}

/// `GET /metrics`.
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = state.store.stats().await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP ovc_http_requests_total HTTP requests by method and status."
    );
    let _ = writeln!(out, "# TYPE ovc_http_requests_total counter");
    {
        let m = state
            .http
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for ((method, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "ovc_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}"
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
        "# HELP ovc_runs Runs in the queue by status (queue depth)."
    );
    let _ = writeln!(out, "# TYPE ovc_runs gauge");
    let _ = writeln!(out, "ovc_runs{{status=\"queued\"}} {}", stats.runs_queued);
    let _ = writeln!(out, "ovc_runs{{status=\"leased\"}} {}", stats.runs_leased);
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
    Ok(([("content-type", "text/plain; version=0.0.4")], out).into_response())
}
