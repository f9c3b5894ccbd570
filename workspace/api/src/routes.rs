//! The REST transport: API.md's routes, decoding JSON bodies, query strings and headers
//! into the calls of [`crate::service`] and encoding the answers as JSON or SSE.

use crate::auth::Principal;
use crate::extract::{ApiBody, ApiPath, ApiQuery};
use crate::openapi::{EventList, OperationList, SnapshotList, VClusterList};
use crate::service::{
    EventPage, ListRequest, Scope, Submit, Submitted, parse_timeout, restore_target_name,
    snapshot_id,
};
use crate::{ApiError, AppState, MAX_BODY_BYTES};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ovc_types::command::{Command, CreateParams, DeleteParams, RestoreParams, RestoreTarget};
use ovc_types::resource::{Operation, Snapshot, VCluster};
use ovc_types::spec::VClusterSpec;
#[allow(unused_imports)] // named only in the OpenAPI annotations
use ovc_types::{OperationId, SnapshotId, VClusterName};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The API's router over `state`.
pub fn router(state: AppState) -> Router {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(crate::metrics::follow_step_durations(state.clone()));
    }
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::render))
        .route("/openapi.json", get(crate::openapi::serve))
        .route("/v1/vclusters", post(create).get(list_vclusters))
        .route("/v1/vclusters/{name}", get(get_vcluster).delete(delete))
        .route("/v1/vclusters/{name}/{route}", post(start_operation))
        .route("/v1/vclusters/{name}/kubeconfig", get(kubeconfig))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{id}",
            get(get_snapshot).delete(delete_snapshot),
        )
        .route("/v1/snapshots/{id}/restore", post(restore))
        .route("/v1/operations", get(list_operations))
        .route("/v1/operations/{id}", get(get_operation))
        .route("/v1/operations/{id}/wait", get(wait_operation))
        .route("/v1/operations/{id}/cancel", post(cancel_operation))
        .route("/v1/operations/{id}/retry", post(retry_operation))
        .route("/v1/operations/{id}/events", get(operation_events))
        .route("/v1/events", get(events))
        .fallback(|| async {
            ApiError::not_found("no such route; see API.md for the routes of /v1")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::loopback::guard_rest,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::count_requests,
        ))
        .layer(axum::middleware::from_fn(crate::request_trace::trace_rest))
        .with_state(state)
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON body; an empty body is the type's default. Unknown fields and malformed JSON
/// are INVALID_ARGUMENT with serde's message, which names the field.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("request body: {e}"), "INVALID_BODY"))
}

/// The request id from the body and/or the `Idempotency-Key` header.
fn request_id(headers: &HeaderMap, in_body: Option<String>) -> ApiResult<Option<String>> {
    let header = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::invalid("Idempotency-Key is not ASCII", "INVALID_REQUEST_ID")
                })?
                .to_string(),
        ),
        None => None,
    };
    match (header, in_body) {
        (Some(h), Some(b)) if h != b => Err(ApiError::invalid(
            "the Idempotency-Key header and the body's request_id differ",
            "INVALID_REQUEST_ID",
        )),
        (h, b) => Ok(h.or(b)),
    }
}

/// The request span's traceparent (put there by [`crate::request_trace`]).
fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// 202 with the new operation, or 200 with the first one for a repeated request.
fn submitted(s: Submitted) -> Response {
    let code = if s.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    (code, axum::Json(s.operation)).into_response()
}

#[utoipa::path(get, path = "/readyz", tag = "health", summary = "Readiness: the store is reachable", responses((status = 200, description = "ready", content_type = "text/plain", body = String)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> ApiResult<&'static str> {
    state.ready().await?;
    Ok("ready")
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    spec: VClusterSpec,
    #[serde(default)]
    request_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/vclusters", tag = "vclusters", summary = "Create a vcluster",
    request_body(content = CreateBody, description = "JSON; an empty body means all defaults"),
    params(("Idempotency-Key" = Option<String>, Header, description = "The request id (instead of the body's request_id)")),
    responses(
        (status = 202, description = "Accepted: the new operation", body = Operation),
        (status = 200, description = "A repeated request_id: the first operation; nothing new started", body = Operation),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    ApiBody(bytes): ApiBody,
) -> ApiResult<Response> {
    who.may_mutate()?;
    let b: CreateBody = body(&bytes)?;
    let s = Submit {
        project: b.project,
        vcluster: b.name,
        command: Command::new(CreateParams { spec: b.spec }),
        request_id: request_id(&headers, b.request_id)?,
        traceparent: traceparent(&headers),
    };
    Ok(submitted(state.submit(&who, s).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProjectQuery {
    project: Option<String>,
    request_id: Option<String>,
}

async fn command_on(
    state: &AppState,
    who: &Principal,
    headers: &HeaderMap,
    q: ProjectQuery,
    name: String,
    command: Command,
    body_request_id: Option<String>,
) -> ApiResult<Response> {
    let s = Submit {
        project: q.project,
        vcluster: name,
        command,
        request_id: request_id(headers, body_request_id.or(q.request_id))?,
        traceparent: traceparent(headers),
    };
    Ok(submitted(state.submit(who, s).await?))
}

/// The body of an operation's route: the JSON object of its parameters with an optional
/// `request_id`; an empty body is `{}` (the defaults).
fn operation_body(bytes: &Bytes) -> ApiResult<(serde_json::Value, Option<String>)> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((serde_json::json!({}), None));
    }
    let mut body: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid(format!("request body: {e}"), "INVALID_BODY"))?;
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::invalid(
            "request body: expected a JSON object",
            "INVALID_BODY",
        ));
    };
    let request_id = match fields.remove("request_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(r)) => Some(r),
        Some(_) => {
            return Err(ApiError::invalid(
                "request body: request_id must be a string",
                "INVALID_BODY",
            ));
        }
    };
    Ok((body, request_id))
}

/// `POST /v1/vclusters/{name}/{route}`: starts the registered operation whose route is
/// `route` (suspend, resume, snapshots, scale, upgrade, and any operation added since)
/// with the body decoded as its parameters; an unknown route is NOT_FOUND. Documented in
/// the OpenAPI document one path per operation, from the registry.
pub(crate) async fn start_operation(
    State(state): State<AppState>,
    who: Principal,
    ApiPath((name, route)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    headers: HeaderMap,
    ApiBody(bytes): ApiBody,
) -> ApiResult<Response> {
    let Some((_, api)) = state.registry.by_route(&route) else {
        return Err(ApiError::not_found(format!(
            "no operation {route:?} on vclusters; this server has {}",
            state
                .registry
                .operations()
                .map(|(_, a)| a.route)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let (body, body_request_id) = operation_body(&bytes)?;
    let command = api.command_of_body(body)?;
    command_on(&state, &who, &headers, q, name, command, body_request_id).await
}

#[utoipa::path(delete, path = "/v1/vclusters/{name}", tag = "vclusters", summary = "Delete a vcluster",
    params(("name" = VClusterName, Path, description = "The vcluster's name", example = "team-a"), ProjectQuery, ("Idempotency-Key" = Option<String>, Header, description = "The request id (instead of the body's request_id)")),
    responses(
        (status = 202, description = "Accepted: the new operation", body = Operation),
        (status = 200, description = "A repeated request_id: the first operation", body = Operation),
    ))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let command = Command::new(DeleteParams {});
    command_on(&state, &who, &headers, q, name, command, None).await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RestoreBody {
    #[serde(default)]
    target: Option<RestoreTarget>,
    #[serde(default)]
    request_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/snapshots/{id}/restore", tag = "snapshots", summary = "Restore a snapshot as a new vcluster or over an existing one",
    request_body(content = RestoreBody, description = "JSON; an empty body means all defaults"),
    params(("id" = SnapshotId, Path, description = "The snapshot's id"), ProjectQuery, ("Idempotency-Key" = Option<String>, Header, description = "The request id (instead of the body's request_id)")),
    responses(
        (status = 202, description = "Accepted: the new operation", body = Operation),
        (status = 200, description = "A repeated request_id: the first operation; nothing new started", body = Operation),
    ))]
pub(crate) async fn restore(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ProjectQuery>,
    headers: HeaderMap,
    ApiBody(bytes): ApiBody,
) -> ApiResult<Response> {
    let b: RestoreBody = body(&bytes)?;
    let snapshot_id = snapshot_id(&id)?;
    let target = b.target.ok_or_else(|| {
        ApiError::invalid(
            "target is required: {\"new_name\": NAME} or {\"existing\": NAME}",
            "INVALID_TARGET",
        )
    })?;
    let name = restore_target_name(&target);
    let command = Command::new(RestoreParams {
        snapshot_id,
        target,
    });
    command_on(&state, &who, &headers, q, name, command, b.request_id).await
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct GetQuery {
    project: Option<String>,
}

#[utoipa::path(get, path = "/v1/vclusters/{name}", tag = "vclusters", summary = "Get a vcluster", params(("name" = VClusterName, Path, description = "The vcluster's name", example = "team-a"), GetQuery), responses((status = 200, description = "The vcluster", body = VCluster)))]
pub(crate) async fn get_vcluster(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<GetQuery>,
) -> ApiResult<Response> {
    let vc = state
        .get_vcluster(&who, q.project.as_deref(), &name)
        .await?;
    Ok(axum::Json(vc).into_response())
}

/// `GET /v1/vclusters/{name}/kubeconfig`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct KubeconfigBody {
    /// The kubeconfig (YAML), read live from the host.
    kubeconfig: String,
}

#[utoipa::path(get, path = "/v1/vclusters/{name}/kubeconfig", tag = "vclusters", summary = "The vcluster's kubeconfig, read live from the host (never stored in events)", params(("name" = VClusterName, Path, description = "The vcluster's name", example = "team-a"), GetQuery), responses((status = 200, description = "The kubeconfig", body = KubeconfigBody)))]
pub(crate) async fn kubeconfig(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<GetQuery>,
) -> ApiResult<Response> {
    let kubeconfig = state.kubeconfig(&who, q.project.as_deref(), &name).await?;
    Ok(axum::Json(KubeconfigBody { kubeconfig }).into_response())
}

/// `GET /v1/vclusters`: its filters only; any other parameter is INVALID_ARGUMENT naming it.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct VClusterListQuery {
    project: Option<String>,
    /// Only this state (DELETED lists deleted ones).
    state: Option<String>,
    /// `key=value`: only vclusters with this label.
    label: Option<String>,
    page_size: Option<u32>,
    page_token: Option<String>,
}

/// `GET /v1/operations`: its filters only.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct OperationListQuery {
    project: Option<String>,
    state: Option<String>,
    kind: Option<String>,
    vcluster: Option<String>,
    /// RFC 3339 time: only operations created at or after it.
    since: Option<String>,
    page_size: Option<u32>,
    page_token: Option<String>,
}

/// `GET /v1/snapshots`: its filters only.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotListQuery {
    project: Option<String>,
    vcluster: Option<String>,
    /// Only snapshots in this state (CREATING, READY, DELETING, DELETED, FAILED).
    state: Option<String>,
    page_size: Option<u32>,
    page_token: Option<String>,
}

fn list_request(page_size: Option<u32>, base: ListRequest) -> ApiResult<ListRequest> {
    if page_size == Some(0) {
        return Err(ApiError::invalid(
            "page_size must be between 1 and 1000",
            "INVALID_PAGE_SIZE",
        ));
    }
    Ok(ListRequest { page_size, ..base })
}

impl VClusterListQuery {
    fn into_request(self) -> ApiResult<ListRequest> {
        list_request(
            self.page_size,
            ListRequest {
                project: self.project,
                state: self.state,
                label: self.label,
                page_token: self.page_token,
                ..ListRequest::default()
            },
        )
    }
}

impl OperationListQuery {
    fn into_request(self) -> ApiResult<ListRequest> {
        list_request(
            self.page_size,
            ListRequest {
                project: self.project,
                state: self.state,
                kind: self.kind,
                vcluster: self.vcluster,
                since: self.since,
                page_token: self.page_token,
                ..ListRequest::default()
            },
        )
    }
}

impl SnapshotListQuery {
    fn into_request(self) -> ApiResult<ListRequest> {
        list_request(
            self.page_size,
            ListRequest {
                project: self.project,
                state: self.state,
                vcluster: self.vcluster,
                page_token: self.page_token,
                ..ListRequest::default()
            },
        )
    }
}

#[utoipa::path(get, path = "/v1/vclusters", tag = "vclusters", summary = "List vclusters", params(VClusterListQuery), responses((status = 200, description = "A page of vclusters", body = VClusterList)))]
pub(crate) async fn list_vclusters(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<VClusterListQuery>,
) -> ApiResult<Response> {
    let p = state.list_vclusters(&who, &q.into_request()?).await?;
    Ok(axum::Json(VClusterList {
        vclusters: p.items,
        next_page_token: p.next,
    })
    .into_response())
}

#[utoipa::path(get, path = "/v1/operations", tag = "operations", summary = "List operations, newest first", params(OperationListQuery), responses((status = 200, description = "A page of operations", body = OperationList)))]
pub(crate) async fn list_operations(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<OperationListQuery>,
) -> ApiResult<Response> {
    let p = state.list_operations(&who, &q.into_request()?).await?;
    Ok(axum::Json(OperationList {
        operations: p.items,
        next_page_token: p.next,
    })
    .into_response())
}

#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots", summary = "List snapshots, oldest first", params(SnapshotListQuery), responses((status = 200, description = "A page of snapshots", body = SnapshotList)))]
pub(crate) async fn list_snapshots(
    State(state): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<SnapshotListQuery>,
) -> ApiResult<Response> {
    let p = state.list_snapshots(&who, &q.into_request()?).await?;
    Ok(axum::Json(SnapshotList {
        snapshots: p.items,
        next_page_token: p.next,
    })
    .into_response())
}

#[utoipa::path(get, path = "/v1/snapshots/{id}", tag = "snapshots", summary = "Get a snapshot", params(("id" = SnapshotId, Path, description = "The snapshot's id")), responses((status = 200, description = "The snapshot", body = Snapshot)))]
pub(crate) async fn get_snapshot(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(state.get_snapshot(&who, &id).await?).into_response())
}

#[utoipa::path(get, path = "/v1/operations/{id}", tag = "operations", summary = "Get an operation", params(("id" = OperationId, Path, description = "The operation's id")), responses((status = 200, description = "The operation", body = Operation)))]
pub(crate) async fn get_operation(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(state.get_operation(&who, &id).await?).into_response())
}

/// `?request_id=` of a DELETE.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestIdQuery {
    request_id: Option<String>,
}

#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "snapshots", summary = "Delete a snapshot's artifact (an operation of kind DELETE_SNAPSHOT; the vcluster is not touched)",
    params(("id" = SnapshotId, Path, description = "The snapshot's id"), RequestIdQuery, ("Idempotency-Key" = Option<String>, Header, description = "The request id")),
    responses(
        (status = 202, description = "Accepted: the new operation", body = Operation),
        (status = 200, description = "A repeated request_id: the first operation", body = Operation),
    ))]
pub(crate) async fn delete_snapshot(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<RequestIdQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let rid = request_id(&headers, q.request_id)?;
    Ok(submitted(
        state
            .delete_snapshot(&who, &id, rid, traceparent(&headers))
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct WaitQuery {
    timeout: Option<String>,
}

#[utoipa::path(get, path = "/v1/operations/{id}/wait", tag = "operations", summary = "Block until the operation is done or the time-out passes", params(("id" = OperationId, Path, description = "The operation's id"), WaitQuery), responses((status = 200, description = "The operation (done, or as it is at the time-out)", body = Operation)))]
pub(crate) async fn wait_operation(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Response> {
    let timeout = parse_timeout(q.timeout.as_deref().unwrap_or("30s"))?;
    Ok(axum::Json(state.wait_operation(&who, &id, timeout).await?).into_response())
}

#[utoipa::path(post, path = "/v1/operations/{id}/cancel", tag = "operations", summary = "Request cancellation (what was done is compensated)", params(("id" = OperationId, Path, description = "The operation's id")), responses((status = 202, description = "Cancellation requested", body = Operation)))]
pub(crate) async fn cancel_operation(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let op = state.cancel_operation(&who, &id).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(op)).into_response())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryBody {
    #[serde(default)]
    request_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/operations/{id}/retry", tag = "operations", summary = "Re-run a FAILED operation as a new one with retry_of",
    request_body(content = RetryBody, description = "JSON; an empty body means all defaults"),
    params(("id" = OperationId, Path, description = "The operation's id"), ("Idempotency-Key" = Option<String>, Header, description = "The request id (instead of the body's request_id)")),
    responses(
        (status = 202, description = "Accepted: the new operation", body = Operation),
        (status = 200, description = "A repeated request_id: the first operation; nothing new started", body = Operation),
    ))]
pub(crate) async fn retry_operation(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiBody(bytes): ApiBody,
) -> ApiResult<Response> {
    let b: RetryBody = body(&bytes)?;
    let rid = request_id(&headers, b.request_id)?;
    Ok(submitted(
        state
            .retry_operation(&who, &id, rid, traceparent(&headers))
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Where a live stream starts: after `Last-Event-ID` (a reconnect) or `?after=`.
fn resume_after(headers: &HeaderMap, after: Option<u64>) -> ApiResult<u64> {
    let after = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::invalid("Last-Event-ID must be an event position", "INVALID_CURSOR")
            })?,
        None => after.unwrap_or(0),
    };
    crate::feeds::event_cursor(after)
}

/// A live SSE feed (see [`AppState::follow`]): `id` is the position, `event` the type,
/// `data` the Event JSON. A store error ends it with a comment saying why (the client
/// reconnects with `Last-Event-ID`).
fn live(state: &AppState, after: u64, scope: Scope) -> ApiResult<Response> {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    use futures::StreamExt;
    let feed = state.follow(after, scope)?.map(|e| {
        Ok::<_, std::convert::Infallible>(match e {
            Ok(e) => SseEvent::default()
                .id(e.position.to_string())
                .event(e.event_type.clone())
                .data(serde_json::to_string(&e).unwrap_or_default()),
            Err(e) => SseEvent::default().comment(format!(
                "feed ended: {}: {}; reconnect with Last-Event-ID",
                e.0.code.as_str(),
                e.0.message.replace(['\r', '\n'], " ")
            )),
        })
    });
    Ok(Sse::new(feed)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn event_page(p: EventPage) -> Response {
    axum::Json(serde_json::json!({"events": p.events, "next_after": p.next_after})).into_response()
}

#[utoipa::path(get, path = "/v1/events", tag = "events", summary = "Read the event log by position; with Accept: text/event-stream, follow it live (SSE, id = position, resumable with Last-Event-ID)", params(EventsQuery), responses((status = 200, description = "A page of events", body = EventList)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    if wants_sse(&headers) {
        let after = resume_after(&headers, q.after)?;
        return live(&state, after, state.all_events_scope(&who));
    }
    let p = state
        .read_events(&who, q.after.unwrap_or(0), q.limit)
        .await?;
    Ok(event_page(p))
}

#[utoipa::path(get, path = "/v1/operations/{id}/events", tag = "events", summary = "The events of one operation (JSON page, or live SSE as /v1/events)", params(("id" = OperationId, Path, description = "The operation's id"), EventsQuery), responses((status = 200, description = "A page of events", body = EventList)))]
pub(crate) async fn operation_events(
    State(state): State<AppState>,
    who: Principal,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    if wants_sse(&headers) {
        let scope = state.operation_scope(&who, &id).await?;
        let after = resume_after(&headers, q.after)?;
        return live(&state, after, scope);
    }
    let p = state
        .read_operation_events(&who, &id, q.after.unwrap_or(0), q.limit)
        .await?;
    Ok(event_page(p))
}
