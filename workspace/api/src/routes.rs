//! The routes of API.md and their handlers.

use crate::auth::Principal;
use crate::{ApiError, AppState, MAX_BODY_BYTES};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ovc_engine::accept::{CommandRequest, accept, cancel, retry};
use ovc_store::{OperationFilter, PageRequest, SnapshotFilter, VClusterFilter};
use ovc_types::command::{Command, RestoreTarget};
use ovc_types::event::StreamName;
use ovc_types::resource::Operation;
use ovc_types::spec::{ControlPlanePatch, QuotaPatch, ScalePatch, VClusterSpec};
use ovc_types::state::{OperationKind, OperationState, VClusterState};
use ovc_types::{OperationId, ProjectName, SnapshotId, VClusterName};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The API's router over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::render))
        .route("/v1/vclusters", post(create).get(list_vclusters))
        .route("/v1/vclusters/{name}", get(get_vcluster).delete(delete))
        .route("/v1/vclusters/{name}/suspend", post(suspend))
        .route("/v1/vclusters/{name}/resume", post(resume))
        .route("/v1/vclusters/{name}/snapshots", post(snapshot))
        .route("/v1/vclusters/{name}/scale", post(scale))
        .route("/v1/snapshots", get(list_snapshots))
        .route("/v1/snapshots/{id}", get(get_snapshot))
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
            crate::metrics::count_requests,
        ))
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

fn project(p: Option<&str>) -> ApiResult<ProjectName> {
    match p {
        None | Some("") => Ok(ProjectName::default_project()),
        Some(p) => p
            .parse()
            .map_err(|e: ovc_types::name::NameError| ApiError(e.into())),
    }
}

fn vcluster_name(n: &str) -> ApiResult<VClusterName> {
    n.parse()
        .map_err(|e: ovc_types::name::NameError| ApiError(e.into()))
}

fn operation_id(s: &str) -> ApiResult<OperationId> {
    s.parse().map_err(|_| {
        ApiError::invalid(
            format!("{s:?} is not an operation id (a UUID)"),
            "INVALID_ID",
        )
    })
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

async fn respond(state: &AppState, req: CommandRequest) -> ApiResult<Response> {
    let accepted = accept(
        state.store.as_ref(),
        &state.registry,
        state.ids.as_ref(),
        req,
    )
    .await?;
    operation_response(state, accepted.operation_id, accepted.duplicate).await
}

async fn operation_response(
    state: &AppState,
    id: OperationId,
    duplicate: bool,
) -> ApiResult<Response> {
    let op = state
        .store
        .get_operation(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("operation {id} not found")))?;
    let code = if duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, axum::Json(op)).into_response())
}

async fn readyz(State(state): State<AppState>) -> ApiResult<&'static str> {
    state.store.head_position().await?;
    Ok("ready")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    spec: VClusterSpec,
    #[serde(default)]
    request_id: Option<String>,
}

async fn create(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Response> {
    who.may_mutate()?;
    let b: CreateBody = body(&bytes)?;
    if b.name.is_empty() {
        return Err(ApiError::invalid("name is required", "INVALID_NAME"));
    }
    let req = CommandRequest {
        project: who.project(b.project.as_deref())?,
        vcluster: vcluster_name(&b.name)?,
        command: Command::Create { spec: b.spec },
        request_id: request_id(&headers, b.request_id)?,
        actor: who.name.clone(),
        traceparent: traceparent(&headers),
    };
    respond(&state, req).await
}

fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectQuery {
    project: Option<String>,
    request_id: Option<String>,
}

async fn command_on(
    state: &AppState,
    who: &Principal,
    headers: &HeaderMap,
    q: &ProjectQuery,
    name: &str,
    command: Command,
    body_request_id: Option<String>,
) -> ApiResult<Response> {
    who.may_mutate()?;
    let rid = request_id(headers, body_request_id.or(q.request_id.clone()))?;
    let req = CommandRequest {
        project: who.project(q.project.as_deref())?,
        vcluster: vcluster_name(name)?,
        command,
        request_id: rid,
        actor: who.name.clone(),
        traceparent: traceparent(headers),
    };
    respond(state, req).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendBody {
    #[serde(default)]
    snapshot: bool,
    #[serde(default)]
    evict_workloads: bool,
    #[serde(default)]
    request_id: Option<String>,
}

async fn suspend(
    State(state): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Response> {
    let b: SuspendBody = body(&bytes)?;
    let command = Command::Suspend {
        snapshot: b.snapshot,
        evict_workloads: b.evict_workloads,
    };
    command_on(&state, &who, &headers, &q, &name, command, b.request_id).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResumeBody {
    #[serde(default)]
    reconcile_workloads: bool,
    #[serde(default)]
    request_id: Option<String>,
}

async fn resume(
    State(state): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Response> {
    let b: ResumeBody = body(&bytes)?;
    let command = Command::Resume {
        reconcile_workloads: b.reconcile_workloads,
    };
    command_on(&state, &who, &headers, &q, &name, command, b.request_id).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
}

async fn snapshot(
    State(state): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Response> {
    let b: SnapshotBody = body(&bytes)?;
    if b.description.as_ref().is_some_and(|d| d.len() > 1024) {
        return Err(ApiError::invalid(
            "description is longer than 1024 bytes",
            "INVALID_DESCRIPTION",
        ));
    }
    let command = Command::Snapshot {
        description: b.description,
    };
    command_on(&state, &who, &headers, &q, &name, command, b.request_id).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleBody {
    #[serde(default)]
    control_plane: Option<ControlPlanePatch>,
    #[serde(default)]
    quota: Option<QuotaPatch>,
    #[serde(default)]
    request_id: Option<String>,
}

async fn scale(
    State(state): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Response> {
    let b: ScaleBody = body(&bytes)?;
    let command = Command::Scale {
        patch: ScalePatch {
            control_plane: b.control_plane,
            quota: b.quota,
        },
    };
    command_on(&state, &who, &headers, &q, &name, command, b.request_id).await
}

async fn delete(
    State(state): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    command_on(&state, &who, &headers, &q, &name, Command::Delete {}, None).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreBody {
    #[serde(default)]
    target: Option<RestoreTarget>,
    #[serde(default)]
    request_id: Option<String>,
}

async fn restore(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Query(q): Query<ProjectQuery>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Response> {
    let b: RestoreBody = body(&bytes)?;
    let snapshot_id: SnapshotId = id
        .parse()
        .map_err(|_| ApiError::invalid(format!("{id:?} is not a snapshot id"), "INVALID_ID"))?;
    let target = b.target.ok_or_else(|| {
        ApiError::invalid(
            "target is required: {\"new_name\": NAME} or {\"existing\": NAME}",
            "INVALID_TARGET",
        )
    })?;
    let name = match &target {
        RestoreTarget::NewName(n) | RestoreTarget::Existing(n) => n.to_string(),
    };
    let command = Command::Restore {
        snapshot_id,
        target,
    };
    command_on(&state, &who, &headers, &q, &name, command, b.request_id).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    project: Option<String>,
}

async fn get_vcluster(
    State(state): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Query(q): Query<GetQuery>,
) -> ApiResult<Response> {
    let p = who.project(q.project.as_deref())?;
    let n = vcluster_name(&name)?;
    let vc = state
        .store
        .get_vcluster(&p, &n)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("vcluster {p}/{n} not found")))?;
    Ok(axum::Json(vc).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    project: Option<String>,
    state: Option<String>,
    kind: Option<String>,
    vcluster: Option<String>,
    page_size: Option<u32>,
    page_token: Option<String>,
    /// RFC 3339 time: only operations created at or after it.
    since: Option<String>,
}

/// The project filter of a list: the token's project, or (auth off) the one asked for,
/// or every project.
fn list_project(who: &Principal, q: &ListQuery) -> ApiResult<Option<ProjectName>> {
    match who.project {
        Some(_) => who.project(q.project.as_deref()).map(Some),
        None => q.project.as_deref().map(|p| project(Some(p))).transpose(),
    }
}

/// Parses an optional enum query value (`state=`, `kind=`) with its wire-name parser.
fn wire<T>(
    value: Option<&str>,
    parse: fn(&str) -> Option<T>,
    what: &str,
    reason: &str,
) -> ApiResult<Option<T>> {
    value
        .map(|v| parse(v).ok_or_else(|| ApiError::invalid(format!("unknown {what} {v:?}"), reason)))
        .transpose()
}

/// A page of `items` under `key`, with the next page's token.
fn page_response<T: serde::Serialize>(key: &str, page: ovc_store::Page<T>) -> Response {
    axum::Json(serde_json::json!({ key: page.items, "next_page_token": page.next })).into_response()
}

fn page(q: &ListQuery) -> ApiResult<PageRequest> {
    if q.page_size.is_some_and(|s| s == 0 || s > 1000) {
        return Err(ApiError::invalid(
            "page_size must be between 1 and 1000",
            "INVALID_PAGE_SIZE",
        ));
    }
    Ok(PageRequest {
        after: q.page_token.clone().filter(|t| !t.is_empty()),
        limit: q.page_size,
    })
}

async fn list_vclusters(
    State(state): State<AppState>,
    who: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let filter = VClusterFilter {
        project: list_project(&who, &q)?,
        state: wire(
            q.state.as_deref(),
            VClusterState::parse,
            "state",
            "INVALID_STATE",
        )?,
        include_deleted: q.state.as_deref() == Some("DELETED"),
    };
    let p = state.store.list_vclusters(&filter, &page(&q)?).await?;
    Ok(page_response("vclusters", p))
}

async fn list_operations(
    State(state): State<AppState>,
    who: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let filter = OperationFilter {
        project: list_project(&who, &q)?,
        vcluster: q.vcluster.clone(),
        state: wire(
            q.state.as_deref(),
            OperationState::parse,
            "state",
            "INVALID_STATE",
        )?,
        kind: wire(
            q.kind.as_deref(),
            OperationKind::parse,
            "kind",
            "INVALID_KIND",
        )?,
        since: q
            .since
            .as_deref()
            .map(|t| {
                chrono::DateTime::parse_from_rfc3339(t)
                    .map(|d| d.with_timezone(&chrono::Utc))
                    .map_err(|e| {
                        ApiError::invalid(
                            format!("since {t:?} is not an RFC 3339 time: {e}"),
                            "INVALID_SINCE",
                        )
                    })
            })
            .transpose()?,
    };
    let p = state.store.list_operations(&filter, &page(&q)?).await?;
    Ok(page_response("operations", p))
}

async fn list_snapshots(
    State(state): State<AppState>,
    who: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    let filter = SnapshotFilter {
        project: list_project(&who, &q)?,
        vcluster: q.vcluster.clone(),
    };
    let p = state.store.list_snapshots(&filter, &page(&q)?).await?;
    Ok(page_response("snapshots", p))
}

async fn get_snapshot(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let sid: SnapshotId = id
        .parse()
        .map_err(|_| ApiError::invalid(format!("{id:?} is not a snapshot id"), "INVALID_ID"))?;
    let s = state
        .store
        .get_snapshot(sid)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("snapshot {sid} not found")))?;
    who.sees(&s.project, &format!("snapshot {sid}"))?;
    Ok(axum::Json(s).into_response())
}

async fn find_operation(state: &AppState, who: &Principal, id: &str) -> ApiResult<Operation> {
    let id = operation_id(id)?;
    let op = state
        .store
        .get_operation(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("operation {id} not found")))?;
    who.sees(&op.project, &format!("operation {id}"))?;
    Ok(op)
}

async fn get_operation(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(axum::Json(find_operation(&state, &who, &id).await?).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    timeout: Option<String>,
}

/// `30s`, `500ms`, `2m` or plain seconds.
fn parse_timeout(s: &str) -> ApiResult<Duration> {
    let bad = || {
        ApiError::invalid(
            format!("timeout {s:?}: use e.g. 30s, 500ms or 2m (at most 60s)"),
            "INVALID_TIMEOUT",
        )
    };
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d > Duration::from_secs(60) {
        return Err(bad());
    }
    Ok(d)
}

async fn wait_operation(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let timeout = parse_timeout(q.timeout.as_deref().unwrap_or("30s"))?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wake = state.store.watch_events();
    loop {
        wake.borrow_and_update();
        let op = find_operation(&state, &who, &id).await?;
        if op.done || tokio::time::Instant::now() >= deadline {
            return Ok(axum::Json(op).into_response());
        }
        tokio::select! {
            _ = wake.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn cancel_operation(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let oid = find_operation(&state, &who, &id).await?.id;
    who.may_mutate()?;
    cancel(state.store.as_ref(), oid, who.name.clone()).await?;
    operation_response(&state, oid, false).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    #[serde(default)]
    request_id: Option<String>,
}

async fn retry_operation(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: Bytes,
) -> ApiResult<Response> {
    let b: RetryBody = body(&bytes)?;
    let oid = find_operation(&state, &who, &id).await?.id;
    who.may_mutate()?;
    let rid = request_id(&headers, b.request_id)?;
    let accepted = retry(
        state.store.as_ref(),
        &state.registry,
        state.ids.as_ref(),
        oid,
        rid,
        who.name.clone(),
    )
    .await?;
    operation_response(&state, accepted.operation_id, accepted.duplicate).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

fn limit(l: Option<u32>) -> ApiResult<u32> {
    match l {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(
            "limit must be between 1 and 1000",
            "INVALID_LIMIT",
        )),
    }
}

/// Which events a live feed carries.
enum Scope {
    /// One stream.
    Stream(String),
    /// Every stream of this project (`None`: every stream).
    Project(Option<ProjectName>),
}

/// Decides, per stream and with a cache, whether a caller of `project` may see it.
struct ProjectFilter {
    project: Option<ProjectName>,
    seen: std::collections::HashMap<String, bool>,
}

impl ProjectFilter {
    fn new(project: Option<ProjectName>) -> Self {
        Self {
            project,
            seen: Default::default(),
        }
    }

    async fn allows(&mut self, store: &dyn ovc_store::Store, stream: &str) -> ApiResult<bool> {
        let Some(own) = &self.project else {
            return Ok(true);
        };
        if let Some(v) = self.seen.get(stream) {
            return Ok(*v);
        }
        let v = Principal::stream_project(store, stream).await?.as_ref() == Some(own);
        self.seen.insert(stream.to_string(), v);
        Ok(v)
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Where a live stream starts: after `Last-Event-ID` (a reconnect) or `?after=`.
fn resume_after(headers: &HeaderMap, after: Option<u64>) -> ApiResult<u64> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::invalid("Last-Event-ID must be an event position", "INVALID_CURSOR")
            }),
        None => Ok(after.unwrap_or(0)),
    }
}

/// A live SSE feed of the events after `after` (only those of `stream`, if given): `id`
/// is the position, `event` the type, `data` the Event JSON. It reads the log in
/// position order, which never skips (see the store), so a client that reconnects with
/// `Last-Event-ID` sees every event exactly once.
fn live(state: AppState, after: u64, scope: Scope) -> Response {
    use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
    struct Cursor {
        state: AppState,
        after: u64,
        scope: Scope,
        filter: ProjectFilter,
        buffered: std::collections::VecDeque<ovc_store::RecordedEvent>,
        wake: tokio::sync::watch::Receiver<u64>,
    }
    let wake = state.store.watch_events();
    let filter = ProjectFilter::new(match &scope {
        Scope::Project(p) => p.clone(),
        Scope::Stream(_) => None,
    });
    let cursor = Cursor {
        state,
        after,
        scope,
        filter,
        buffered: Default::default(),
        wake,
    };
    let feed = futures::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.buffered.pop_front() {
                let data = serde_json::to_string(&e).unwrap_or_default();
                let frame = SseEvent::default()
                    .id(e.position.to_string())
                    .event(e.event_type.clone())
                    .data(data);
                return Some((Ok::<_, std::convert::Infallible>(frame), c));
            }
            c.wake.borrow_and_update();
            match c.state.store.read_all(c.after, 500).await {
                Ok(batch) if !batch.is_empty() => {
                    if let Some(last) = batch.last() {
                        c.after = last.position;
                    }
                    for e in batch {
                        let keep = match &c.scope {
                            Scope::Stream(s) => &e.stream == s,
                            Scope::Project(_) => c
                                .filter
                                .allows(c.state.store.as_ref(), &e.stream)
                                .await
                                .unwrap_or(false),
                        };
                        if keep {
                            c.buffered.push_back(e);
                        }
                    }
                }
                Ok(_) => {
                    tokio::select! {
                        _ = c.wake.changed() => {}
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "event feed: store read failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Sse::new(feed)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn events(
    State(state): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    if wants_sse(&headers) {
        let after = resume_after(&headers, q.after)?;
        return Ok(live(state, after, Scope::Project(who.project.clone())));
    }
    let after = q.after.unwrap_or(0);
    let events = state.store.read_all(after, limit(q.limit)?).await?;
    // The cursor moves past hidden events too, so paging never stalls.
    let next = events.last().map_or(after, |e| e.position);
    let mut visible = ProjectFilter::new(who.project.clone());
    let mut shown = Vec::with_capacity(events.len());
    for e in events {
        if visible.allows(state.store.as_ref(), &e.stream).await? {
            shown.push(e);
        }
    }
    let events = shown;
    Ok(axum::Json(serde_json::json!({"events": events, "next_after": next})).into_response())
}

async fn operation_events(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let op = find_operation(&state, &who, &id).await?;
    let stream = StreamName::operation(op.id);
    if wants_sse(&headers) {
        let after = resume_after(&headers, q.after)?;
        return Ok(live(
            state,
            after,
            Scope::Stream(stream.as_str().to_string()),
        ));
    }
    let all = state.store.read_stream(&stream, 0, u32::MAX).await?;
    let after = q.after.unwrap_or(0);
    let events: Vec<_> = all
        .into_iter()
        .filter(|e| e.position > after)
        .take(limit(q.limit)? as usize)
        .collect();
    let next = events.last().map_or(after, |e| e.position);
    Ok(axum::Json(serde_json::json!({"events": events, "next_after": next})).into_response())
}
