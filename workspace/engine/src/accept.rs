//! Accepting a command: the one path by which an operation enters the system, shared by
//! the REST and gRPC transports, the CLI and tests.
//!
//! In order: answer a repeated `request_id` with its first operation; resolve and check
//! the target against the state machine (`ovc_types::state::transition`); validate the
//! parameters; then one commit appends the command event to `vcluster-<uid>` (expected
//! version = the version read, so a concurrent command loses with ABORTED rather than
//! both running), `OperationRequested` to `operation-<id>`, the run, and the idempotency
//! key. Nothing is written unless everything is valid.

use crate::journal::{Journal, StepStatus};
use crate::registry::Registry;
use ovc_store::{
    Commit, CommitOutcome, ExpectedVersion, IdempotencyClaim, NewEvent, NewRun, Store, StreamAppend,
};
use ovc_types::command::{Command, RestoreTarget, request_hash};
use ovc_types::error::{Code, Status};
use ovc_types::event::{Event, EventMetadata, NewVCluster, StreamName};
use ovc_types::resource::host_namespace;
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{Call, OperationState, SnapshotState, VClusterState, transition};
use ovc_types::time::IdSource;
use ovc_types::{OperationId, ProjectName, RunId, SnapshotId, VClusterId, VClusterName};

/// A command as a caller submits it.
#[derive(Debug, Clone)]
pub struct CommandRequest {
    /// The project.
    pub project: ProjectName,
    /// The vcluster it targets (for restore: the snapshot's vcluster is irrelevant; this
    /// is ignored and the target's name is used).
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
        ovc_store::Error::WrongExpectedVersion { .. } => Status::new(
            Code::Aborted,
            "the vcluster changed while the request was processed; retry",
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
    let project = req.project.clone();
    let request_id = req.request_id.clone();
    let target_name = match &req.command {
        Command::Restore {
            target: RestoreTarget::NewName(n) | RestoreTarget::Existing(n),
            ..
        } => n.clone(),
        _ => req.vcluster.clone(),
    };
    let hash = request_hash(&project, &target_name, &req.command);
    match accept_once(store, registry, ids, req).await {
        Err(refusal) if request_id.is_some() => {
            match repeated(store, &project, request_id.as_deref(), &hash).await? {
                Some(first) => Ok(first),
                None => Err(refusal),
            }
        }
        r => r,
    }
}

async fn accept_once(
    store: &dyn Store,
    registry: &Registry,
    ids: &dyn IdSource,
    req: CommandRequest,
) -> Result<Accepted, Status> {
    let target_name = match &req.command {
        Command::Restore {
            target: RestoreTarget::NewName(n) | RestoreTarget::Existing(n),
            ..
        } => n.clone(),
        _ => req.vcluster.clone(),
    };
    let hash = request_hash(&req.project, &target_name, &req.command);
    if let Some(first) = repeated(store, &req.project, req.request_id.as_deref(), &hash).await? {
        return Ok(first);
    }
    let current = store
        .get_vcluster(&req.project, &target_name)
        .await
        .map_err(store_status)?
        .filter(|v| v.state != VClusterState::Deleted);
    transition(current.as_ref().map(|v| v.state), req.command.call()).map_err(|e| {
        let mut s: Status = e.into();
        s.message = format!("vcluster {}/{}: {}", req.project, target_name, s.message);
        s
    })?;
    let def = registry.get(req.command.kind()).ok_or_else(|| {
        Status::new(
            Code::Unavailable,
            format!("no workflow for {} in this build", req.command.kind()),
        )
    })?;
    let operation_id = OperationId(ids.new_uuid());
    let (uid, expected, command_event) = match (&req.command, &current) {
        (Command::Create { spec }, None) => {
            spec.validate().map_err(Status::from)?;
            (
                VClusterId(ids.new_uuid()),
                ExpectedVersion::NoStream,
                Event::CreateRequested {
                    operation_id,
                    name: target_name.clone(),
                    project: req.project.clone(),
                    spec: spec.clone(),
                    host_namespace: host_namespace(&req.project, &target_name),
                },
            )
        }
        (
            Command::Restore {
                snapshot_id,
                target: RestoreTarget::NewName(_),
            },
            None,
        ) => {
            let spec = restorable_spec(store, &req.project, *snapshot_id).await?;
            (
                VClusterId(ids.new_uuid()),
                ExpectedVersion::NoStream,
                Event::RestoreRequested {
                    operation_id,
                    snapshot_id: *snapshot_id,
                    new_vcluster: Some(NewVCluster {
                        name: target_name.clone(),
                        project: req.project.clone(),
                        spec,
                        host_namespace: host_namespace(&req.project, &target_name),
                    }),
                },
            )
        }
        (command, Some(vc)) => {
            let event = match command {
                Command::Suspend { .. } => Event::SuspendRequested { operation_id },
                Command::Resume { .. } => Event::ResumeRequested { operation_id },
                Command::Snapshot { .. } => Event::SnapshotRequested {
                    operation_id,
                    snapshot_id: SnapshotId(operation_id.as_uuid()),
                },
                Command::Restore { snapshot_id, .. } => {
                    restorable_spec(store, &req.project, *snapshot_id).await?;
                    Event::RestoreRequested {
                        operation_id,
                        snapshot_id: *snapshot_id,
                        new_vcluster: None,
                    }
                }
                Command::Scale { patch } => {
                    patch.apply_to(&vc.spec).map_err(Status::from)?;
                    Event::ScaleRequested { operation_id }
                }
                Command::Delete {} => Event::DeleteRequested { operation_id },
                Command::Create { .. } => {
                    return Err(Status::new(
                        Code::AlreadyExists,
                        format!("vcluster {}/{} already exists", req.project, target_name),
                    ));
                }
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
    let commit = Commit {
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
                    metadata,
                )],
            },
        ],
        enqueue: vec![NewRun {
            id: RunId(ids.new_uuid()),
            operation_id,
            vcluster_uid: uid,
            run_at: None,
            priority: 0,
        }],
        ..Commit::default()
    };
    commit_operation(store, commit, operation_id).await
}

/// The spec stored with a READY snapshot of `project`.
async fn restorable_spec(
    store: &dyn Store,
    project: &ProjectName,
    id: SnapshotId,
) -> Result<VClusterSpec, Status> {
    let snap = store
        .get_snapshot(id)
        .await
        .map_err(store_status)?
        .filter(|s| &s.project == project)
        .ok_or_else(|| Status::not_found(format!("snapshot {id} not found")))?;
    if snap.state != SnapshotState::Ready {
        return Err(Status::failed_precondition(format!(
            "snapshot {id} is {}; only READY snapshots can be restored",
            snap.state.as_str()
        )));
    }
    serde_json::from_value(snap.metadata["spec"].clone())
        .map_err(|e| Status::failed_precondition(format!("snapshot {id} has no usable spec: {e}")))
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
        return Err(Status::failed_precondition(format!(
            "operation {id} already ended ({})",
            op.state.as_str()
        )));
    }
    store
        .commit(Commit {
            appends: vec![StreamAppend {
                stream: StreamName::operation(id),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent::new(Event::CancelRequested { actor })],
            }],
            ..Commit::default()
        })
        .await
        .map_err(store_status)?;
    Ok(())
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
) -> Result<Accepted, Status> {
    let first_try = retry_once(store, registry, ids, id, request_id.clone(), actor).await;
    match (first_try, &request_id) {
        (Err(refusal), Some(rid)) => {
            // A twin of this retry may have won between our checks (see `accept`).
            let Some(old) = store.get_operation(id).await.map_err(store_status)? else {
                return Err(refusal);
            };
            let hash = format!(
                "{}:retry:{id}",
                request_hash(&old.project, &old.vcluster, &old.command)
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
) -> Result<Accepted, Status> {
    let old = store
        .get_operation(id)
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("operation {id} not found")))?;
    // The hash names the retried operation, so a retry never collides with its original.
    let hash = format!(
        "{}:retry:{id}",
        request_hash(&old.project, &old.vcluster, &old.command)
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
    transition(Some(vc.state), Call::Retry(old.kind)).map_err(Status::from)?;
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
        traceparent: None,
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
    let commit = Commit {
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
            run_at: None,
            priority: 0,
        }],
        ..Commit::default()
    };
    commit_operation(store, commit, operation_id).await
}
