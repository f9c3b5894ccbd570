//! The REST API of API.md, first slice: vclusters, snapshots, operations (get, list,
//! wait, cancel, retry) and the events feed (JSON pages, or live SSE resumable with
//! `Last-Event-ID`), plus `/healthz` and `/readyz`.
//! Every mutation goes through `ovc_engine::accept` (one commit: command event, operation,
//! run, idempotency key) and answers 202 with the Operation, or 200 with the first
//! operation when the `request_id` (body field or `Idempotency-Key` header) repeats.
//!
//! The same calls are served over gRPC ([`grpc`], package `ovc.v1`) from the same
//! service layer ([`service`]).
//!
//! Bearer tokens scope every request to one project ([`auth`]). Not in this slice yet
//! (issue "The API"): the OpenAPI document, rate limits, step-duration metrics,
//! the kubeconfig route.

pub mod auth;
mod error;
pub mod grpc;
pub mod metrics;
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
        }
    }
}

/// The largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
