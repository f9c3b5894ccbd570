//! The API of API.md, one service layer ([`service`]) under two transports: REST/JSON
//! (axum; OpenAPI document at `/openapi.json`; live events over SSE resumable with
//! `Last-Event-ID`) and gRPC ([`grpc`], package `ovc.v1`, reflection on).
//! Every mutation goes through `ovc_engine::accept` (one commit: command event, operation,
//! run, idempotency key) and answers 202 with the Operation, or 200 with the first
//! operation when the `request_id` (body field, `Idempotency-Key` header or gRPC field)
//! repeats. Bearer tokens scope every request to one project ([`auth`]) and are rate
//! limited ([`limits`]); `/metrics` has request counts, operation and queue gauges and
//! step-duration histograms ([`metrics`]). Every request is a span ([`request_trace`])
//! whose context is stored with the command, so the workers continue its trace.

pub mod auth;
mod error;
mod extract;
pub mod feeds;
pub mod grpc;
pub mod limits;
pub mod loopback;
pub mod metrics;
mod openapi;
pub mod request_trace;
mod routes;
pub mod service;

pub use error::ApiError;
pub use routes::router;

use ovc_engine::Registry;
use ovc_store::Store;
use ovc_types::time::IdSource;
use std::sync::Arc;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The workflows (for planned steps).
    pub registry: Arc<Registry>,
    /// The id source for new operations.
    pub ids: Arc<dyn IdSource>,
    /// Whether requests need a bearer token.
    pub auth: auth::AuthMode,
    /// Request counters for `/metrics`.
    pub http: Arc<metrics::HttpMetrics>,
    /// Per-token rate limits.
    pub limits: Arc<limits::RateLimiter>,
    /// Step-duration histograms for `/metrics`.
    pub steps: Arc<metrics::StepDurations>,
    /// The host driver, for reads that go live to the host (the kubeconfig); `None`:
    /// those answer UNAVAILABLE.
    pub host: Option<Arc<dyn ovc_driver::HostDriver>>,
    /// The live-feed budget (SSE, `StreamEvents`, `WatchOperation`).
    pub feeds: Arc<feeds::LiveFeeds>,
    /// This process's idempotency-key purge, for `/metrics` (run by the binary).
    pub purger: Arc<ovc_store::housekeeping::IdempotencyPurger>,
}

impl AppState {
    /// The state of an API over `store` running `registry`'s workflows, with random
    /// operation ids and fresh metrics.
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>, auth: auth::AuthMode) -> Self {
        AppState {
            store,
            registry,
            ids: Arc::new(ovc_types::time::RandomIds),
            auth,
            http: Default::default(),
            limits: Default::default(),
            steps: Default::default(),
            host: None,
            feeds: Default::default(),
            purger: Default::default(),
        }
    }

    /// The same, reading live host state (the kubeconfig) through `host`.
    pub fn with_host(mut self, host: Arc<dyn ovc_driver::HostDriver>) -> Self {
        self.host = Some(host);
        self
    }

    /// The same, serving at most `max` live feeds at once (429 past it).
    pub fn with_max_live_feeds(mut self, max: usize) -> Self {
        self.feeds = Arc::new(feeds::LiveFeeds::new(max));
        self
    }

    /// The same, with a per-token rate limit of `rate` requests per second in bursts of
    /// up to `burst` (`rate` 0: unlimited).
    pub fn with_rate_limit(mut self, rate: f64, burst: u32) -> Self {
        self.limits = Arc::new(limits::RateLimiter::per_second(rate, burst));
        self
    }
}

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
