//! The service layer: API.md's calls implemented once, over the engine's
//! accept/cancel/retry and the store's projections, and shared by both transports.
//! REST ([`crate::routes`]) and gRPC ([`crate::grpc`]) only decode their wire shapes into
//! these calls and encode the answers; names, ids, enum values, page sizes and time-outs
//! are validated here, so both transports refuse bad input with the same status and
//! message.

use crate::auth::Principal;
pub use crate::feeds::Scope;
use crate::feeds::{ProjectFilter, event_cursor};
use crate::{ApiError, AppState};
use futures::Stream;
use ovc_engine::accept::{CommandRequest, accept, cancel, retry};
use ovc_store::{
    Commit, ExpectedVersion, NewEvent, OperationFilter, Page, PageRequest, RecordedEvent,
    SnapshotFilter, StreamAppend, VClusterFilter,
};
use ovc_types::command::{Command, DeleteSnapshotParams, RestoreTarget};
use ovc_types::event::{Event, EventMetadata, StreamName};
use ovc_types::resource::{Operation, Snapshot, VCluster};
use ovc_types::state::{OperationState, SnapshotState, VClusterState};
use ovc_types::{OperationId, ProjectName, SnapshotId, VClusterName};
use std::time::Duration;

type ApiResult<T> = Result<T, ApiError>;

/// The largest page any list or event read returns.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The longest a `wait` call blocks.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A mutation as either transport submits it: the target, the command and the
/// idempotency key, all still unvalidated.
#[derive(Debug, Clone)]
pub struct Submit {
    /// The project asked for (`None` or empty: the token's, or `default`).
    pub project: Option<String>,
    /// The vcluster's name (for restore: the target's name).
    pub vcluster: String,
    /// What to do.
    pub command: Command,
    /// The client's idempotency key.
    pub request_id: Option<String>,
    /// W3C traceparent of the request, kept in the events' metadata.
    pub traceparent: Option<String>,
}

/// An accepted mutation: the operation, and whether the request repeated an earlier one
/// (REST answers 200 instead of 202).
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The operation (the first one, for a repeat).
    pub operation: Operation,
    /// True when nothing new was started.
    pub duplicate: bool,
}

/// The filters of the three list calls, still unvalidated.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only this project (with a token: must be the token's).
    pub project: Option<String>,
    /// Only this state (wire name).
    pub state: Option<String>,
    /// Only this kind (operations; wire name).
    pub kind: Option<String>,
    /// Only this vcluster name (operations, snapshots).
    pub vcluster: Option<String>,
    /// Page size, 1..=1000 (default 100).
    pub page_size: Option<u32>,
    /// The previous page's `next_page_token`.
    pub page_token: Option<String>,
    /// RFC 3339 time: only operations created at or after it.
    pub since: Option<String>,
    /// `key=value`: only vclusters with this label.
    pub label: Option<String>,
}

/// A page of events and the cursor of the next read.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// The events the caller may see, in position order.
    pub events: Vec<RecordedEvent>,
    /// Pass as `after` to read on (moves past hidden events too, so paging never stalls).
    pub next_after: u64,
}

/// Parses a project name; empty or absent is `default`.
pub fn project(p: Option<&str>) -> ApiResult<ProjectName> {
    match p {
        None | Some("") => Ok(ProjectName::default_project()),
        Some(p) => p
            .parse()
            .map_err(|e: ovc_types::name::NameError| ApiError(e.into())),
    }
}

/// Parses a vcluster name.
pub fn vcluster_name(n: &str) -> ApiResult<VClusterName> {
    if n.is_empty() {
        return Err(ApiError::invalid("name is required", "INVALID_NAME"));
    }
    n.parse()
        .map_err(|e: ovc_types::name::NameError| ApiError(e.into()))
}

/// Parses an operation id (a UUID).
pub fn operation_id(s: &str) -> ApiResult<OperationId> {
    s.parse().map_err(|_| {
        ApiError::invalid(
            format!("{s:?} is not an operation id (a UUID)"),
            "INVALID_ID",
        )
    })
}

/// Parses a snapshot id (a UUID).
pub fn snapshot_id(s: &str) -> ApiResult<SnapshotId> {
    s.parse()
        .map_err(|_| ApiError::invalid(format!("{s:?} is not a snapshot id"), "INVALID_ID"))
}

/// Parses a time-out: `30s`, `500ms`, `2m` or plain seconds, at most [`MAX_WAIT`].
pub fn parse_timeout(s: &str) -> ApiResult<Duration> {
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
    if d > MAX_WAIT {
        return Err(bad());
    }
    Ok(d)
}

/// The event-read limit: 1..=1000, default 100.
pub fn event_limit(l: Option<u32>) -> ApiResult<u32> {
    match l {
        None => Ok(100),
        Some(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(
            "limit must be between 1 and 1000",
            "INVALID_LIMIT",
        )),
    }
}

/// The vcluster a restore lands on.
pub fn restore_target_name(target: &RestoreTarget) -> String {
    match target {
        RestoreTarget::NewName(n) | RestoreTarget::Existing(n) => n.to_string(),
    }
}

/// Parses an optional enum value (`state=`, `kind=`) with its wire-name parser.
fn wire<T>(
    value: Option<&str>,
    parse: fn(&str) -> Option<T>,
    what: &str,
    reason: &str,
) -> ApiResult<Option<T>> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| parse(v).ok_or_else(|| ApiError::invalid(format!("unknown {what} {v:?}"), reason)))
        .transpose()
}

fn page(q: &ListRequest) -> ApiResult<PageRequest> {
    if q.page_size.is_some_and(|s| s > MAX_PAGE_SIZE) {
        return Err(ApiError::invalid(
            "page_size must be between 1 and 1000",
            "INVALID_PAGE_SIZE",
        ));
    }
    Ok(PageRequest {
        after: q.page_token.clone().filter(|t| !t.is_empty()),
        // 0 is "the default", as gRPC's absent integer is 0.
        limit: q.page_size.filter(|s| *s > 0),
    })
}

/// The project filter of a list: the token's project, or (auth off) the one asked for,
/// or every project.
/// A filter a list does not support is refused, never ignored (a client would read an
/// unfiltered list as the filtered one).
fn unsupported_filters(list: &str, given: &[(&str, bool)]) -> ApiResult<()> {
    match given.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(ApiError::invalid(
            format!("{name} is not a filter of the {list} list"),
            "UNSUPPORTED_FILTER",
        )),
        None => Ok(()),
    }
}

fn list_project(who: &Principal, q: &ListRequest) -> ApiResult<Option<ProjectName>> {
    match who.project {
        Some(_) => who.project(q.project.as_deref()).map(Some),
        None => q
            .project
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| project(Some(p)))
            .transpose(),
    }
}

impl AppState {
    /// Accepts a mutation: one commit of command event, operation, run and idempotency
    /// key (see `ovc_engine::accept`).
    pub async fn submit(&self, who: &Principal, s: Submit) -> ApiResult<Submitted> {
        who.may_mutate()?;
        let project = who.project(s.project.as_deref())?;
        who.may_run(s.command.kind())?;
        let req = CommandRequest {
            project,
            vcluster: vcluster_name(&s.vcluster)?,
            command: s.command,
            request_id: s.request_id.filter(|r| !r.is_empty()),
            actor: who.name.clone(),
            traceparent: s.traceparent,
        };
        let (project, vcluster, kind) = (
            req.project.to_string(),
            req.vcluster.to_string(),
            req.command.kind(),
        );
        let accepted = accept(self.store.as_ref(), &self.registry, self.ids.as_ref(), req).await?;
        crate::request_trace::record_operation(
            &project,
            &vcluster,
            kind.as_str(),
            &accepted.operation_id.to_string(),
        );
        Ok(Submitted {
            operation: self.load_operation(accepted.operation_id).await?,
            duplicate: accepted.duplicate,
        })
    }

    async fn load_operation(&self, id: OperationId) -> ApiResult<Operation> {
        self.store
            .get_operation(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("operation {id} not found")))
    }

    /// One vcluster.
    pub async fn get_vcluster(
        &self,
        who: &Principal,
        project: Option<&str>,
        name: &str,
    ) -> ApiResult<VCluster> {
        let p = who.project(project)?;
        let n = vcluster_name(name)?;
        self.store
            .get_vcluster(&p, &n)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("vcluster {p}/{n} not found")))
    }

    /// The vcluster's kubeconfig, read live from the host (never stored in events). It
    /// needs the operator role, and each read is recorded as a `KubeconfigRead` event on
    /// `audit-<project>` (who, which vcluster; never the content) before it is answered:
    /// a read that cannot be recorded is refused.
    pub async fn kubeconfig(
        &self,
        who: &Principal,
        project: Option<&str>,
        name: &str,
    ) -> ApiResult<String> {
        who.project(project)?;
        who.may_read_kubeconfig()?;
        let vc = self.get_vcluster(who, project, name).await?;
        if vc.state == VClusterState::Deleted {
            return Err(ApiError::not_found(format!(
                "vcluster {}/{} not found",
                vc.project, vc.name
            )));
        }
        let host = self.host.as_ref().ok_or_else(|| {
            ApiError::unavailable(
                "this API server has no host driver configured",
                "NO_HOST_DRIVER",
            )
        })?;
        let ctx = ovc_driver::CallCtx::read("kubeconfig");
        let target = ovc_driver::Target {
            host: vc.spec.host.clone(),
            namespace: vc.host_namespace.clone(),
            release: vc.name.to_string(),
        };
        match host.kubeconfig(&ctx, &target).await {
            Ok(Some(k)) => {
                self.audit_kubeconfig_read(who, &vc).await?;
                Ok(k)
            }
            Ok(None) => Err(ApiError(
                ovc_types::error::Status::failed_precondition(format!(
                    "vcluster {}/{} has no kubeconfig yet (it is {}): its control plane has \
                     not been ready",
                    vc.project,
                    vc.name,
                    vc.state.as_str()
                ))
                .with_reason("NO_KUBECONFIG"),
            )),
            Err(e) => Err(ApiError(e.into())),
        }
    }

    /// Appends `KubeconfigRead` to the vcluster's project's audit stream.
    async fn audit_kubeconfig_read(&self, who: &Principal, vc: &VCluster) -> ApiResult<()> {
        let event = Event::KubeconfigRead {
            vcluster_uid: vc.uid,
            vcluster: vc.name.clone(),
            project: vc.project.clone(),
            token_id: who.token_id,
            role: who.audit_role().to_string(),
        };
        let metadata = EventMetadata {
            actor: Some(who.name.clone().unwrap_or_else(|| "anonymous".into())),
            ..EventMetadata::default()
        };
        self.store
            .commit(Commit {
                appends: vec![StreamAppend {
                    stream: StreamName::audit(&vc.project),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent::with_metadata(event, metadata)],
                }],
                ..Commit::default()
            })
            .await?;
        Ok(())
    }

    /// A page of vclusters.
    pub async fn list_vclusters(
        &self,
        who: &Principal,
        q: &ListRequest,
    ) -> ApiResult<Page<VCluster>> {
        unsupported_filters(
            "vclusters",
            &[
                ("kind", q.kind.is_some()),
                ("vcluster", q.vcluster.is_some()),
                ("since", q.since.is_some()),
            ],
        )?;
        let filter = VClusterFilter {
            project: list_project(who, q)?,
            state: wire(
                q.state.as_deref(),
                VClusterState::parse,
                "state",
                "INVALID_STATE",
            )?,
            include_deleted: q.state.as_deref() == Some("DELETED"),
            label: q
                .label
                .as_deref()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    l.split_once('=')
                        .filter(|(k, _)| !k.is_empty())
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                format!("label {l:?}: use key=value, e.g. env=dev"),
                                "INVALID_LABEL",
                            )
                        })
                })
                .transpose()?,
        };
        Ok(self.store.list_vclusters(&filter, &page(q)?).await?)
    }

    /// A page of operations.
    pub async fn list_operations(
        &self,
        who: &Principal,
        q: &ListRequest,
    ) -> ApiResult<Page<Operation>> {
        unsupported_filters("operations", &[("label", q.label.is_some())])?;
        let filter = OperationFilter {
            project: list_project(who, q)?,
            vcluster: q.vcluster.clone().filter(|v| !v.is_empty()),
            state: wire(
                q.state.as_deref(),
                OperationState::parse,
                "state",
                "INVALID_STATE",
            )?,
            kind: q
                .kind
                .as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| {
                    self.registry.kind(v).ok_or_else(|| {
                        ApiError::invalid(format!("unknown kind {v:?}"), "INVALID_KIND")
                    })
                })
                .transpose()?,
            since: q
                .since
                .as_deref()
                .filter(|t| !t.is_empty())
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
        Ok(self.store.list_operations(&filter, &page(q)?).await?)
    }

    /// A page of snapshots.
    pub async fn list_snapshots(
        &self,
        who: &Principal,
        q: &ListRequest,
    ) -> ApiResult<Page<Snapshot>> {
        unsupported_filters(
            "snapshots",
            &[
                ("kind", q.kind.is_some()),
                ("since", q.since.is_some()),
                ("label", q.label.is_some()),
            ],
        )?;
        let filter = SnapshotFilter {
            project: list_project(who, q)?,
            vcluster: q.vcluster.clone().filter(|v| !v.is_empty()),
            state: wire(
                q.state.as_deref(),
                SnapshotState::parse,
                "state",
                "INVALID_STATE",
            )?,
        };
        Ok(self.store.list_snapshots(&filter, &page(q)?).await?)
    }

    /// One snapshot.
    pub async fn get_snapshot(&self, who: &Principal, id: &str) -> ApiResult<Snapshot> {
        let sid = snapshot_id(id)?;
        let s = self
            .store
            .get_snapshot(sid)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("snapshot {sid} not found")))?;
        who.sees(&s.project, &format!("snapshot {sid}"))?;
        Ok(s)
    }

    /// Deletes a snapshot's artifact, as an operation (`DELETE_SNAPSHOT`) queued behind
    /// the snapshot's vcluster; the vcluster itself is not touched.
    pub async fn delete_snapshot(
        &self,
        who: &Principal,
        id: &str,
        request_id: Option<String>,
        traceparent: Option<String>,
    ) -> ApiResult<Submitted> {
        let snapshot = self.get_snapshot(who, id).await?;
        self.submit(
            who,
            Submit {
                project: Some(snapshot.project.to_string()),
                vcluster: snapshot.vcluster.to_string(),
                command: Command::new(DeleteSnapshotParams {
                    snapshot_id: snapshot.id,
                }),
                request_id,
                traceparent,
            },
        )
        .await
    }

    /// One operation (NOT_FOUND across projects).
    pub async fn get_operation(&self, who: &Principal, id: &str) -> ApiResult<Operation> {
        let id = operation_id(id)?;
        let op = self
            .store
            .get_operation(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("operation {id} not found")))?;
        who.sees(&op.project, &format!("operation {id}"))?;
        Ok(op)
    }

    /// The operation once it is done, or as it is when `timeout` passes.
    pub async fn wait_operation(
        &self,
        who: &Principal,
        id: &str,
        timeout: Duration,
    ) -> ApiResult<Operation> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut wake = self.store.watch_events();
        loop {
            wake.borrow_and_update();
            let op = self.get_operation(who, id).await?;
            if op.done || tokio::time::Instant::now() >= deadline {
                return Ok(op);
            }
            tokio::select! {
                _ = wake.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// The operation now and after each change, ending with the first done version.
    pub async fn watch_operation(
        &self,
        who: &Principal,
        id: &str,
    ) -> ApiResult<impl Stream<Item = ApiResult<Operation>> + Send + 'static> {
        let first = self.get_operation(who, id).await?;
        let permit = self.feeds.acquire()?;
        let state = self.clone();
        let who = who.clone();
        let wake = self.store.watch_events();
        struct Watch {
            state: AppState,
            who: Principal,
            id: String,
            last: Option<Operation>,
            first: Option<Operation>,
            wake: tokio::sync::watch::Receiver<u64>,
            _permit: tokio::sync::OwnedSemaphorePermit,
        }
        let w = Watch {
            state,
            who,
            id: id.to_string(),
            last: None,
            first: Some(first),
            wake,
            _permit: permit,
        };
        Ok(futures::stream::unfold(w, |mut w| async move {
            if let Some(op) = w.first.take() {
                w.last = Some(op.clone());
                return Some((Ok(op), w));
            }
            if w.last.as_ref().is_some_and(|o| o.done) {
                return None;
            }
            loop {
                w.wake.borrow_and_update();
                match w.state.get_operation(&w.who, &w.id).await {
                    Ok(op) if Some(&op) != w.last.as_ref() => {
                        w.last = Some(op.clone());
                        return Some((Ok(op), w));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Reported once; the next poll ends the stream.
                        w.last = w.last.take().map(|mut o| {
                            o.done = true;
                            o
                        });
                        return Some((Err(e), w));
                    }
                }
                tokio::select! {
                    _ = w.wake.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }))
    }

    /// Requests cancellation of an operation (compensates what it did).
    pub async fn cancel_operation(&self, who: &Principal, id: &str) -> ApiResult<Operation> {
        let oid = self.get_operation(who, id).await?.id;
        who.may_mutate()?;
        cancel(self.store.as_ref(), oid, who.name.clone()).await?;
        self.load_operation(oid).await
    }

    /// Re-runs a FAILED operation as a new one with `retry_of`.
    pub async fn retry_operation(
        &self,
        who: &Principal,
        id: &str,
        request_id: Option<String>,
        traceparent: Option<String>,
    ) -> ApiResult<Submitted> {
        let failed = self.get_operation(who, id).await?;
        let oid = failed.id;
        // A retried delete is a delete.
        who.may_run(failed.kind)?;
        let accepted = retry(
            self.store.as_ref(),
            &self.registry,
            self.ids.as_ref(),
            oid,
            request_id.filter(|r| !r.is_empty()),
            who.name.clone(),
            traceparent,
        )
        .await?;
        Ok(Submitted {
            operation: self.load_operation(accepted.operation_id).await?,
            duplicate: accepted.duplicate,
        })
    }

    /// A page of the event log after `after`, filtered to what `who` may see.
    pub async fn read_events(
        &self,
        who: &Principal,
        after: u64,
        limit: Option<u32>,
    ) -> ApiResult<EventPage> {
        let after = event_cursor(after)?;
        let events = self.store.read_all(after, event_limit(limit)?).await?;
        let next_after = events.last().map_or(after, |e| e.position);
        let mut visible = ProjectFilter::new(who.project.clone());
        let mut shown = Vec::with_capacity(events.len());
        for e in events {
            if visible.allows(self.store.as_ref(), &e.stream).await? {
                shown.push(e);
            }
        }
        Ok(EventPage {
            events: shown,
            next_after,
        })
    }

    /// A page of one operation's events after position `after`.
    pub async fn read_operation_events(
        &self,
        who: &Principal,
        id: &str,
        after: u64,
        limit: Option<u32>,
    ) -> ApiResult<EventPage> {
        let after = event_cursor(after)?;
        let op = self.get_operation(who, id).await?;
        let limit = event_limit(limit)?;
        let all = self
            .store
            .read_stream(&StreamName::operation(op.id), 0, u32::MAX)
            .await?;
        let events: Vec<_> = all
            .into_iter()
            .filter(|e| e.position > after)
            .take(limit as usize)
            .collect();
        let next_after = events.last().map_or(after, |e| e.position);
        Ok(EventPage { events, next_after })
    }

    /// The scope of a live feed of every event `who` may see.
    pub fn all_events_scope(&self, who: &Principal) -> Scope {
        Scope::Project(who.project.clone())
    }

    /// The scope of a live feed of one operation's events.
    pub async fn operation_scope(&self, who: &Principal, id: &str) -> ApiResult<Scope> {
        let op = self.get_operation(who, id).await?;
        Ok(Scope::Stream(StreamName::operation(op.id)))
    }

    /// Readiness: the store answers (the migrations query reaches it) and its schema is
    /// current (all migrations of this build applied); UNAVAILABLE otherwise.
    pub async fn ready(&self) -> ApiResult<()> {
        let pending =
            self.store.pending_migrations().await.map_err(|e| {
                ApiError::unavailable(format!("store unreachable: {e}"), "NOT_READY")
            })?;
        if !pending.is_empty() {
            return Err(ApiError::unavailable(
                format!("the database lacks migrations {pending:?}: run `ovc migrate`"),
                "NOT_READY",
            ));
        }
        Ok(())
    }
}
