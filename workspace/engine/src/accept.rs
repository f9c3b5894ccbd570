//! Accepting a command: the one path by which an operation enters the system, shared by
//! the REST and gRPC transports, the CLI and tests.
//!
//! In order: answer a repeated `request_id` with its first operation; resolve and check
//! the target against the state machine (`ovc_types::state::transition`); validate the
//! parameters (the workflow's own [`crate::model::AdmitFn`] for what only that operation
//! knows); then one commit appends the command event to `vcluster-<uid>` (expected
//! version = the version read, so a concurrent command loses with ABORTED rather than
//! both running), `OperationRequested` to `operation-<id>`, the run, and the idempotency
//! key. Nothing is written unless everything is valid.
//!
//! The command event is `CreateRequested` or `RestoreRequested` when the operation makes
//! the vcluster (they carry its name, spec and namespace), and the one generic
//! `OperationAccepted {operation_id, kind}` for every operation on an existing vcluster:
//! a new operation needs no event of its own. The per-kind `SuspendRequested` & co. that
//! earlier versions wrote are still folded.
//!
//! `DeleteSnapshot` is the one command outside the vcluster's state machine: it is
//! checked against its snapshot (READY or FAILED, not used by an unfinished restore),
//! appends `SnapshotDeleteRequested` to `snapshot-<id>` instead of a vcluster command, and
//! is recorded under the snapshot's project and vcluster name (see
//! [`accept_delete_snapshot`]). A restore's accept appends `SnapshotRestoreRequested` to
//! the same stream, both with the version they read, so of a racing delete and restore
//! one loses with ABORTED.

use crate::journal::{Journal, StepStatus};
use crate::registry::Registry;
use ovc_store::{
    Commit, CommitOutcome, ExpectedVersion, IdempotencyClaim, NewEvent, NewRun, OperationFilter,
    PageRequest, Store, StreamAppend,
};
use ovc_types::command::{
    Command, CreateParams, DeleteSnapshotParams, RestoreParams, RestoreTarget,
};
use ovc_types::error::{Code, Status};
use ovc_types::event::{Event, EventMetadata, NewVCluster, StreamName};
use ovc_types::resource::Snapshot;
use ovc_types::resource::host_namespace;
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{
    Call, OperationKind, OperationState, SnapshotState, VClusterState, transition,
};
use ovc_types::time::IdSource;
use ovc_types::{OperationId, ProjectName, RunId, SnapshotId, VClusterId, VClusterName};

/// A command as a caller submits it.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// The project.
    pub project: ProjectName,
    /// The vcluster it targets. Ignored for restore (the target's name is used) and for
    /// `DeleteSnapshot` (the snapshot's own vcluster name is used; any name will do).
    pub vcluster: VClusterName,
    /// What to do.
    pub command: Command,
    /// The client's idempotency key.
    pub request_id: Option<String>,
    /// Who asks (token name); recorded in event metadata.
    pub actor: Option<String>,
    /// W3C traceparent of the request.
    pub traceparent: Option<String>,
}

/// The accepted operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The operation.
    pub operation_id: OperationId,
    /// True when the request repeated an earlier one (nothing new was started).
    pub duplicate: bool,
}

fn store_status(e: ovc_store::Error) -> Status {
    match e {
        ovc_store::Error::WrongExpectedVersion { stream, .. } => Status::new(
            Code::Aborted,
            format!(
                "{} changed while the request was processed; retry",
                if stream.starts_with("snapshot-") {
                    "the snapshot"
                } else {
                    "the vcluster"
                }
            ),
        )
        .with_reason("CONCURRENT_MODIFICATION"),
        other => other.into(),
    }
}

/// The first operation of a repeated request (same key, same parameters), or
/// `REQUEST_ID_REUSED` when the key was used with other parameters.
async fn repeated(
    store: &dyn Store,
    project: &ProjectName,
    request_id: Option<&str>,
    hash: &str,
) -> Result<Option<Accepted>, Status> {
    let Some(request_id) = request_id else {
        return Ok(None);
    };
    let Some(found) = store
        .find_idempotency_key(project, request_id)
        .await
        .map_err(store_status)?
    else {
        return Ok(None);
    };
    if found.request_hash == hash {
        return Ok(Some(Accepted {
            operation_id: found.operation_id,
            duplicate: true,
        }));
    }
    Err(ovc_store::Error::RequestIdReused {
        project: project.to_string(),
        request_id: request_id.to_string(),
        operation_id: found.operation_id,
    }
    .into())
}

/// Commits a new operation; a concurrent twin of the same request answers with the
/// winner's operation.
async fn commit_operation(
    store: &dyn Store,
    commit: Commit,
    operation_id: OperationId,
) -> Result<Accepted, Status> {
    match store.commit(commit).await.map_err(store_status)? {
        CommitOutcome::Committed(_) => Ok(Accepted {
            operation_id,
            duplicate: false,
        }),
        CommitOutcome::Duplicate { operation_id } => Ok(Accepted {
            operation_id,
            duplicate: true,
        }),
    }
}

/// Accepts `req`: validates it, and appends command, operation, run and key atomically.
///
/// This is the one entry point for every command, `DeleteSnapshot` included
/// (`DELETE /v1/snapshots/{id}`): a snapshot of another project is NOT_FOUND, one that is
/// not READY or FAILED is FAILED_PRECONDITION (reasons `SNAPSHOT_NOT_READY`,
/// `SNAPSHOT_DELETING`, `SNAPSHOT_DELETED`), one an unfinished RESTORE uses is
/// FAILED_PRECONDITION (`SNAPSHOT_IN_USE`), a lost race with a restore is ABORTED.
///
/// A refusal is checked against the idempotency key once more: a twin of this request
/// may have committed between our first look and our state check (the twin's vcluster
/// now exists, or is busy with the twin's operation), and then the answer is the twin's
/// operation, not an error.
pub async fn accept(
    store: &dyn Store,
    registry: &Registry,
    ids: &dyn IdSource,
    req: CommandRequest,
) -> Result<Accepted, Status> {
    accept_as(store, registry, ids, req, None).await
}

/// [`accept`], giving a new operation the id `operation_id` when one is given: a
/// submission from SQL (`ovc_submit`) has told its caller the id already. Accepting it
/// twice cannot start two operations: the second append of `operation-<id>` is refused.
pub async fn accept_as(
    store: &dyn Store,
    registry: &Registry,
    ids: &dyn IdSource,
    req: CommandRequest,
    operation_id: Option<OperationId>,
) -> Result<Accepted, Status> {
    let project = req.project.clone();
    let request_id = req.request_id.clone();
    let target_name = target_of(store, &req).await?;
    let hash = command_hash(registry, &project, &target_name, &req.command)?;
    match accept_once(
        store,
        registry,
        ids,
        req,
        target_name,
        hash.clone(),
        operation_id,
    )
    .await
    {
        Err(refusal) if request_id.is_some() => {
            match repeated(store, &project, request_id.as_deref(), &hash).await? {
                Some(first) => Ok(first),
                None => Err(refusal),
            }
        }
        r => r,
    }
}

/// The workflow of `command`'s kind: INVALID_ARGUMENT `UNKNOWN_KIND` naming the known
/// kinds when this build has none.
fn workflow_of<'r>(
    registry: &'r Registry,
    command: &Command,
) -> Result<&'r crate::model::WorkflowDef, Status> {
    registry.get(command.kind()).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown operation kind {}; this build has {}",
            command.kind(),
            registry
                .kinds()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .with_reason("UNKNOWN_KIND")
    })
}

/// The idempotency hash of `command` on `vcluster`, from its typed parameters (which
/// are decoded and validated on the way: INVALID_ARGUMENT when they are not the kind's).
fn command_hash(
    registry: &Registry,
    project: &ProjectName,
    vcluster: &VClusterName,
    command: &Command,
) -> Result<String, Status> {
    workflow_of(registry, command)?
        .params
        .check(project, vcluster, command)
}

/// The vcluster name an operation is recorded (and its request hashed) under: a
/// restore's target, a snapshot deletion's snapshot's vcluster, else the request's.
async fn target_of(store: &dyn Store, req: &CommandRequest) -> Result<VClusterName, Status> {
    Ok(match req.command.kind() {
        OperationKind::RESTORE => match req.command.params::<RestoreParams>()?.target {
            RestoreTarget::NewName(n) | RestoreTarget::Existing(n) => n,
        },
        OperationKind::DELETE_SNAPSHOT => {
            let p = req.command.params::<DeleteSnapshotParams>()?;
            visible_snapshot(store, &req.project, p.snapshot_id)
                .await?
                .vcluster
        }
        _ => req.vcluster.clone(),
    })
}

async fn accept_once(
    store: &dyn Store,
    registry: &Registry,
    ids: &dyn IdSource,
    req: CommandRequest,
    target_name: VClusterName,
    hash: String,
    preset_id: Option<OperationId>,
) -> Result<Accepted, Status> {
    if let Some(first) = repeated(store, &req.project, req.request_id.as_deref(), &hash).await? {
        return Ok(first);
    }
    let call = match req.command.call() {
        Some(call) => call,
        None if req.command.kind() == OperationKind::DELETE_SNAPSHOT => {
            let p = req.command.params::<DeleteSnapshotParams>()?;
            return accept_delete_snapshot(
                store,
                registry,
                ids,
                &req,
                p.snapshot_id,
                hash,
                None,
                preset_id,
            )
            .await;
        }
        None => {
            return Err(Status::internal(format!(
                "{} has no vcluster call",
                req.command.kind()
            )));
        }
    };
    let current = store
        .get_vcluster(&req.project, &target_name)
        .await
        .map_err(store_status)?
        .filter(|v| v.state != VClusterState::Deleted);
    let busy = transition(current.as_ref().map(|v| v.state), call, registry).map_err(|e| {
        let mut s: Status = e.into();
        s.message = format!("vcluster {}/{}: {}", req.project, target_name, s.message);
        s
    })?;
    let def = workflow_of(registry, &req.command)?;
    let operation_id = preset_id.unwrap_or_else(|| OperationId(ids.new_uuid()));
    // A restore also appends to its snapshot's stream (see the module doc).
    let mut snapshot_use = None;
    let (uid, expected, command_event) = match (req.command.kind(), &current) {
        (OperationKind::CREATE, None) => {
            let CreateParams { spec } = req.command.params()?;
            spec.validate().map_err(Status::from)?;
            registry.check_host(&spec.host)?;
            let mut spec = spec.clone();
            if spec.vcluster_version.is_none() {
                spec.vcluster_version = Some(registry.default_vcluster_version().to_string());
            }
            let uid = VClusterId(ids.new_uuid());
            (
                uid,
                ExpectedVersion::NoStream,
                Event::CreateRequested {
                    operation_id,
                    name: target_name.clone(),
                    project: req.project.clone(),
                    spec,
                    host_namespace: host_namespace(&target_name, uid),
                },
            )
        }
        (OperationKind::RESTORE, None) => {
            let RestoreParams { snapshot_id, .. } = req.command.params()?;
            let snapshot_id = &snapshot_id;
            let (spec, version) = restorable_spec(store, &req.project, *snapshot_id).await?;
            // The new vcluster goes to the host of the snapshot's spec.
            registry.check_host(&spec.host)?;
            snapshot_use = Some((*snapshot_id, version));
            let uid = VClusterId(ids.new_uuid());
            (
                uid,
                ExpectedVersion::NoStream,
                Event::RestoreRequested {
                    operation_id,
                    snapshot_id: *snapshot_id,
                    new_vcluster: Some(NewVCluster {
                        name: target_name.clone(),
                        project: req.project.clone(),
                        spec,
                        host_namespace: host_namespace(&target_name, uid),
                    }),
                },
            )
        }
        (kind, Some(vc)) => {
            known_host_of(registry, vc)?;
            match kind {
                OperationKind::RESTORE => {
                    let RestoreParams { snapshot_id, .. } = req.command.params()?;
                    let (_, version) = restorable_spec(store, &req.project, snapshot_id).await?;
                    snapshot_use = Some((snapshot_id, version));
                }
                OperationKind::DELETE_SNAPSHOT => {
                    return Err(Status::internal(
                        "a snapshot deletion has no vcluster event",
                    ));
                }
                OperationKind::CREATE => {
                    return Err(Status::new(
                        Code::AlreadyExists,
                        format!("vcluster {}/{} already exists", req.project, target_name),
                    ));
                }
                _ => {}
            }
            if let Some(admit) = def.admit {
                admit(&req.command, vc)?;
            }
            let event = Event::OperationAccepted {
                operation_id,
                kind,
                state: Some(busy),
            };
            (vc.uid, ExpectedVersion::Exact(vc.version), event)
        }
        (_, None) => {
            return Err(Status::not_found(format!(
                "vcluster {}/{} not found",
                req.project, target_name
            )));
        }
    };
    let metadata = EventMetadata {
        request_id: req.request_id.clone(),
        traceparent: req.traceparent.clone(),
        actor: req.actor.clone(),
        correlation_id: Some(operation_id),
    };
    let mut commit = Commit {
        idempotency: req.request_id.as_ref().map(|r| IdempotencyClaim {
            project: req.project.clone(),
            request_id: r.clone(),
            request_hash: hash,
            operation_id,
        }),
        appends: vec![
            StreamAppend {
                stream: StreamName::vcluster(uid),
                expected,
                events: vec![NewEvent::with_metadata(command_event, metadata.clone())],
            },
            StreamAppend {
                stream: StreamName::operation(operation_id),
                expected: ExpectedVersion::NoStream,
                events: vec![NewEvent::with_metadata(
                    Event::OperationRequested {
                        vcluster_uid: uid,
                        vcluster: target_name.clone(),
                        project: req.project.clone(),
                        command: req.command.clone(),
                        request_id: req.request_id.clone(),
                        retry_of: None,
                        prior_state: current.as_ref().map(|v| v.state),
                        steps: def.planned_steps(&req.command),
                    },
                    metadata.clone(),
                )],
            },
        ],
        enqueue: vec![NewRun {
            id: RunId(ids.new_uuid()),
            operation_id,
            vcluster_uid: uid,
            delay: None,
            priority: 0,
        }],
        ..Commit::default()
    };
    if let Some((id, version)) = snapshot_use {
        commit
            .appends
            .push(snapshot_restore_append(id, version, operation_id, metadata));
    }
    commit_operation(store, commit, operation_id).await
}

/// `SnapshotRestoreRequested` on `snapshot-<id>`, expecting the version the READY check
/// read: a concurrent delete's accept then loses (or makes this one lose) with ABORTED.
fn snapshot_restore_append(
    id: SnapshotId,
    version: u64,
    operation_id: OperationId,
    metadata: EventMetadata,
) -> StreamAppend {
    StreamAppend {
        stream: StreamName::snapshot(id),
        expected: ExpectedVersion::Exact(version),
        events: vec![NewEvent::with_metadata(
            Event::SnapshotRestoreRequested { operation_id },
            metadata,
        )],
    }
}

/// The snapshot `id` if it belongs to `project` (another project's is NOT_FOUND, as an
/// unknown one).
async fn visible_snapshot(
    store: &dyn Store,
    project: &ProjectName,
    id: SnapshotId,
) -> Result<Snapshot, Status> {
    store
        .get_snapshot(id)
        .await
        .map_err(store_status)?
        .filter(|s| &s.project == project)
        .ok_or_else(|| {
            Status::not_found(format!("snapshot {id} not found")).with_reason("SNAPSHOT_NOT_FOUND")
        })
}

/// `Ok` when the host of existing vcluster `vc` is one this service knows; else
/// FAILED_PRECONDITION `UNKNOWN_HOST` (the request is fine, the service's host
/// configuration no longer has the vcluster's host), before anything is written.
fn known_host_of(registry: &Registry, vc: &ovc_types::resource::VCluster) -> Result<(), Status> {
    registry.check_host(&vc.spec.host).map_err(|unknown| {
        let mut s = unknown;
        s.code = Code::FailedPrecondition;
        s.message = format!(
            "vcluster {}/{} runs on host {:?}, which this service is not configured with ({})",
            vc.project, vc.name, vc.spec.host, s.message
        );
        s
    })
}

/// The spec stored with a READY snapshot of `project`, and the snapshot stream's version.
async fn restorable_spec(
    store: &dyn Store,
    project: &ProjectName,
    id: SnapshotId,
) -> Result<(VClusterSpec, u64), Status> {
    let snap = visible_snapshot(store, project, id).await?;
    if snap.state == SnapshotState::Missing {
        let why = snap.error.map(|e| e.message).unwrap_or_default();
        return Err(Status::failed_precondition(format!(
            "snapshot {id} is MISSING and cannot be restored ({why}); put the artifact back \
             (the next inventory check makes it READY again) or delete the snapshot"
        ))
        .with_reason("SNAPSHOT_MISSING"));
    }
    if snap.state != SnapshotState::Ready {
        return Err(Status::failed_precondition(format!(
            "snapshot {id} is {}; only READY snapshots can be restored",
            snap.state.as_str()
        ))
        .with_reason("SNAPSHOT_NOT_READY"));
    }
    let spec = serde_json::from_value(snap.metadata["spec"].clone()).map_err(|e| {
        Status::failed_precondition(format!("snapshot {id} has no usable spec: {e}"))
    })?;
    Ok((spec, snap.version))
}

/// The first unfinished RESTORE of `snap` (it reads the artifact, so the artifact must
/// stay). Restores are project-scoped, so only the snapshot's project is searched, by
/// the `(project, state, kind)` index.
async fn pending_restore(
    store: &dyn Store,
    snap: &Snapshot,
) -> Result<Option<OperationId>, Status> {
    for state in [
        OperationState::Pending,
        OperationState::Running,
        OperationState::Compensating,
    ] {
        let filter = OperationFilter {
            project: Some(snap.project.clone()),
            state: Some(state),
            kind: Some(OperationKind::RESTORE),
            ..OperationFilter::default()
        };
        let mut page = PageRequest {
            after: None,
            limit: Some(1000),
        };
        loop {
            let found = store
                .list_operations(&filter, &page)
                .await
                .map_err(store_status)?;
            if let Some(op) = found.items.iter().find(|op| {
                op.command
                    .params::<RestoreParams>()
                    .is_ok_and(|p| p.snapshot_id == snap.id)
            }) {
                return Ok(Some(op.id));
            }
            match found.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
    }
    Ok(None)
}

/// Accepts a `DeleteSnapshot` of `snapshot_id` (or, with `retry_of`, a retry of a failed
/// one). Refusals: NOT_FOUND (unknown, or another project's), FAILED_PRECONDITION when the
/// snapshot is CREATING (`SNAPSHOT_NOT_READY`), DELETING (`SNAPSHOT_DELETING`, naming the
/// deleting operation), DELETED (`SNAPSHOT_DELETED`), or used by an unfinished RESTORE
/// (`SNAPSHOT_IN_USE`, naming it); ABORTED when a restore or delete of it committed
/// meanwhile. The operation is recorded under the snapshot's project, vcluster name and
/// uid, and waits in that vcluster's run queue (whatever the vcluster's state, DELETED
/// included); the vcluster's stream is not touched.
#[allow(clippy::too_many_arguments)] // the one private entry of three public paths
async fn accept_delete_snapshot(
    store: &dyn Store,
    registry: &Registry,
    ids: &dyn IdSource,
    req: &CommandRequest,
    snapshot_id: SnapshotId,
    hash: String,
    retry_of: Option<OperationId>,
    preset_id: Option<OperationId>,
) -> Result<Accepted, Status> {
    let snap = visible_snapshot(store, &req.project, snapshot_id).await?;
    let by = |op: Option<OperationId>| op.map(|o| format!(" by operation {o}")).unwrap_or_default();
    match snap.state {
        SnapshotState::Ready | SnapshotState::Failed | SnapshotState::Missing => {}
        SnapshotState::Creating => {
            return Err(Status::failed_precondition(format!(
                "snapshot {snapshot_id} is still being written (CREATING{}); wait for it to end",
                by(Some(snap.operation_id))
            ))
            .with_reason("SNAPSHOT_NOT_READY"));
        }
        SnapshotState::Deleting => {
            let mut s = Status::failed_precondition(format!(
                "snapshot {snapshot_id} is already being deleted{}",
                by(snap.deleted_by)
            ))
            .with_reason("SNAPSHOT_DELETING");
            if let Some(op) = snap.deleted_by {
                s = s.with_metadata("operation_id", op.to_string());
            }
            return Err(s);
        }
        SnapshotState::Deleted => {
            return Err(Status::failed_precondition(format!(
                "snapshot {snapshot_id} is already deleted"
            ))
            .with_reason("SNAPSHOT_DELETED"));
        }
    }
    if let Some(user) = pending_restore(store, &snap).await? {
        return Err(Status::failed_precondition(format!(
            "snapshot {snapshot_id} is in use by operation {user} (RESTORE); wait for it to end or cancel it"
        ))
        .with_reason("SNAPSHOT_IN_USE")
        .with_metadata("operation_id", user.to_string()));
    }
    let def = registry
        .get(OperationKind::DELETE_SNAPSHOT)
        .ok_or_else(|| {
            Status::new(
                Code::Unavailable,
                "no workflow for DELETE_SNAPSHOT in this build",
            )
        })?;
    let operation_id = preset_id.unwrap_or_else(|| OperationId(ids.new_uuid()));
    let metadata = EventMetadata {
        request_id: req.request_id.clone(),
        traceparent: req.traceparent.clone(),
        actor: req.actor.clone(),
        correlation_id: Some(operation_id),
    };
    let commit = Commit {
        idempotency: req.request_id.as_ref().map(|r| IdempotencyClaim {
            project: req.project.clone(),
            request_id: r.clone(),
            request_hash: hash,
            operation_id,
        }),
        appends: vec![
            StreamAppend {
                stream: StreamName::snapshot(snapshot_id),
                expected: ExpectedVersion::Exact(snap.version),
                events: vec![NewEvent::with_metadata(
                    Event::SnapshotDeleteRequested { operation_id },
                    metadata.clone(),
                )],
            },
            StreamAppend {
                stream: StreamName::operation(operation_id),
                expected: ExpectedVersion::NoStream,
                events: vec![NewEvent::with_metadata(
                    Event::OperationRequested {
                        vcluster_uid: snap.vcluster_uid,
                        vcluster: snap.vcluster.clone(),
                        project: snap.project.clone(),
                        command: req.command.clone(),
                        request_id: req.request_id.clone(),
                        retry_of,
                        prior_state: None,
                        steps: def.planned_steps(&req.command),
                    },
                    metadata,
                )],
            },
        ],
        enqueue: vec![NewRun {
            id: RunId(ids.new_uuid()),
            operation_id,
            vcluster_uid: snap.vcluster_uid,
            delay: None,
            priority: 0,
        }],
        ..Commit::default()
    };
    commit_operation(store, commit, operation_id).await
}

/// Asks to cancel operation `id`: appends `CancelRequested`; the executor compensates at
/// its next step boundary.
pub async fn cancel(
    store: &dyn Store,
    id: OperationId,
    actor: Option<String>,
) -> Result<(), Status> {
    let op = store
        .get_operation(id)
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("operation {id} not found")))?;
    if op.done {
        return Err(already_ended(&op));
    }
    let committed = store
        .commit(Commit {
            appends: vec![StreamAppend {
                stream: StreamName::operation(id),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent::new(Event::CancelRequested { actor })],
            }],
            ..Commit::default()
        })
        .await;
    if let Err(e) = committed {
        // The operation may have ended between the read and the commit (its projection
        // then refuses an event after the terminal one): that is the client's race, not
        // a server fault, so answer as if the read had seen the end.
        if let Some(op) = store.get_operation(id).await.map_err(store_status)?
            && op.done
        {
            return Err(already_ended(&op));
        }
        return Err(store_status(e));
    }
    Ok(())
}

/// FAILED_PRECONDITION for a cancel of an operation that ended, naming its final state.
fn already_ended(op: &ovc_types::resource::Operation) -> Status {
    Status::failed_precondition(format!(
        "operation {} already ended ({}): there is nothing to cancel",
        op.id,
        op.state.as_str()
    ))
    .with_reason("OPERATION_DONE")
}

/// Retries a FAILED or STUCK operation as a new operation with `retry_of` (API.md
/// `POST /v1/operations/{id}/retry`). When the failed operation compensated nothing, the
/// new one inherits every step whose effect is still in place and resumes at the failed
/// step; otherwise it starts from the first step (every step is an ensure).
pub async fn retry(
    store: &dyn Store,
    registry: &Registry,
    ids: &dyn IdSource,
    id: OperationId,
    request_id: Option<String>,
    actor: Option<String>,
    traceparent: Option<String>,
) -> Result<Accepted, Status> {
    let first_try = retry_once(
        store,
        registry,
        ids,
        id,
        request_id.clone(),
        actor,
        traceparent,
    )
    .await;
    match (first_try, &request_id) {
        (Err(refusal), Some(rid)) => {
            // A twin of this retry may have won between our checks (see `accept`).
            let Some(old) = store.get_operation(id).await.map_err(store_status)? else {
                return Err(refusal);
            };
            let hash = format!(
                "{}:retry:{id}",
                command_hash(registry, &old.project, &old.vcluster, &old.command)?
            );
            match repeated(store, &old.project, Some(rid), &hash).await? {
                Some(first) => Ok(first),
                None => Err(refusal),
            }
        }
        (r, _) => r,
    }
}

async fn retry_once(
    store: &dyn Store,
    registry: &Registry,
    ids: &dyn IdSource,
    id: OperationId,
    request_id: Option<String>,
    actor: Option<String>,
    traceparent: Option<String>,
) -> Result<Accepted, Status> {
    let old = store
        .get_operation(id)
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("operation {id} not found")))?;
    // The hash names the retried operation, so a retry never collides with its original.
    let hash = format!(
        "{}:retry:{id}",
        command_hash(registry, &old.project, &old.vcluster, &old.command)?
    );
    if let Some(first) = repeated(store, &old.project, request_id.as_deref(), &hash).await? {
        return Ok(first);
    }
    if !matches!(old.state, OperationState::Failed | OperationState::Stuck) {
        return Err(Status::failed_precondition(format!(
            "operation {id} is {}; only FAILED or STUCK operations can be retried",
            old.state.as_str()
        ))
        .with_reason("NOT_RETRYABLE"));
    }
    if let Ok(DeleteSnapshotParams { snapshot_id }) = old.command.params() {
        let snapshot_id = &snapshot_id;
        // Checked against the snapshot, like the original; it starts from the first step.
        let req = CommandRequest {
            project: old.project.clone(),
            vcluster: old.vcluster.clone(),
            command: old.command.clone(),
            request_id,
            actor,
            traceparent,
        };
        return accept_delete_snapshot(
            store,
            registry,
            ids,
            &req,
            *snapshot_id,
            hash,
            Some(id),
            None,
        )
        .await;
    }
    // A retried restore reads its snapshot again: it must still be READY, and it is
    // marked used as at accept.
    let snapshot_use = match old.command.params::<RestoreParams>() {
        Ok(RestoreParams { snapshot_id, .. }) => {
            let (_, version) = restorable_spec(store, &old.project, snapshot_id).await?;
            Some((snapshot_id, version))
        }
        Err(_) => None,
    };
    let vc = store
        .get_vcluster_by_uid(old.vcluster_uid)
        .await
        .map_err(store_status)?
        .filter(|v| v.state != VClusterState::Deleted)
        .ok_or_else(|| {
            Status::not_found(format!(
                "vcluster {}/{} no longer exists",
                old.project, old.vcluster
            ))
        })?;
    let busy = transition(Some(vc.state), Call::Retry(old.kind), registry).map_err(Status::from)?;
    known_host_of(registry, &vc)?;
    let def = registry
        .get(old.kind)
        .ok_or_else(|| Status::new(Code::Unavailable, format!("no workflow for {}", old.kind)))?;
    let events = store
        .read_stream(&StreamName::operation(id), 0, u32::MAX)
        .await
        .map_err(store_status)?;
    let journal = Journal::fold(&events).map_err(|e| {
        Status::failed_precondition(format!("operation {id} cannot be retried: {e}"))
    })?;
    let compensated_any = journal
        .steps
        .values()
        .any(|r| r.status == StepStatus::Compensated);
    let operation_id = OperationId(ids.new_uuid());
    let metadata = EventMetadata {
        request_id: request_id.clone(),
        traceparent,
        actor,
        correlation_id: Some(operation_id),
    };
    let mut op_events = vec![Event::OperationRequested {
        vcluster_uid: old.vcluster_uid,
        vcluster: old.vcluster.clone(),
        project: old.project.clone(),
        command: old.command.clone(),
        request_id: request_id.clone(),
        retry_of: Some(id),
        prior_state: Some(vc.state),
        steps: def.planned_steps(&old.command),
    }];
    if !compensated_any {
        for step in &def.steps {
            let rec = journal.step(step.name);
            if matches!(rec.status, StepStatus::Succeeded | StepStatus::UndoFailed) {
                op_events.push(Event::StepInherited {
                    step: step.name.to_string(),
                    from_operation: id,
                    output: rec.output.clone(),
                });
            }
        }
    }
    let mut commit = Commit {
        idempotency: request_id.as_ref().map(|r| IdempotencyClaim {
            project: old.project.clone(),
            request_id: r.clone(),
            request_hash: hash,
            operation_id,
        }),
        appends: vec![
            StreamAppend {
                stream: StreamName::vcluster(old.vcluster_uid),
                expected: ExpectedVersion::Exact(vc.version),
                events: vec![NewEvent::with_metadata(
                    Event::RetryRequested {
                        operation_id,
                        retry_of: id,
                        kind: old.kind,
                        state: Some(busy),
                    },
                    metadata.clone(),
                )],
            },
            StreamAppend {
                stream: StreamName::operation(operation_id),
                expected: ExpectedVersion::NoStream,
                events: op_events
                    .into_iter()
                    .map(|e| NewEvent::with_metadata(e, metadata.clone()))
                    .collect(),
            },
        ],
        enqueue: vec![NewRun {
            id: RunId(ids.new_uuid()),
            operation_id,
            vcluster_uid: old.vcluster_uid,
            delay: None,
            priority: 0,
        }],
        ..Commit::default()
    };
    if let Some((sid, version)) = snapshot_use {
        commit.appends.push(snapshot_restore_append(
            sid,
            version,
            operation_id,
            metadata,
        ));
    }
    commit_operation(store, commit, operation_id).await
}
