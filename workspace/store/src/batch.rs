//! The set-based part of a group commit: the workers' step commits of one group made
//! with a fixed number of statements, however many commits the group carries.
//!
//! A step commit (fenced, appending with `ExpectedVersion::Any`, no idempotency key, no
//! new run) staged alone costs about seven statements (savepoint, fence, stream bump,
//! projection load and save, run update, release). Staged together, a group of them
//! costs two on PostgreSQL: [`TxOps::open_batch`] checks every fence (locking the runs),
//! bumps every stream and loads the projections; [`TxOps::write_batch`] saves what the
//! folds made and updates the runs. (SQLite runs the trait's default methods: one
//! statement per entity, in-process.) Nothing stays written for a commit that fails: its
//! events are folded in memory before anything is saved, and a commit whose lease turns
//! out lost or whose fold is refused gets its stream bumps taken back (the rows are
//! locked by the bump) and its error, while the others go on, exactly as the savepoint
//! of the one-by-one path would have done.
//!
//! The commits batched here touch pairwise different streams (the caller makes sure),
//! so their folds are independent of one another and their order among themselves is
//! only the order of their positions.

use crate::commit::{EventRow, Prepared, Projector, TxOps};
use crate::error::{Error, Result};
use crate::model::{Commit, ExpectedVersion, Lease};
use chrono::{DateTime, Utc};
use ovc_types::resource::{Operation, Snapshot, VCluster};
use ovc_types::{OperationId, RunId, SnapshotId, StreamName, VClusterId};
use std::collections::{HashMap, HashSet};

/// True when `commit` can be staged by [`stage_batch`]: a worker's fenced commit (a
/// step's journal, a run's end, a lease renewal) whose appends all expect `Any` and
/// that neither claims a key nor enqueues a run.
pub(crate) fn batchable(commit: &Commit) -> bool {
    commit.fence.is_some()
        && commit.idempotency.is_none()
        && commit.enqueue.is_empty()
        && commit
            .appends
            .iter()
            .all(|a| a.expected == ExpectedVersion::Any)
}

/// The streams `commit` appends to.
pub(crate) fn streams_of(commit: &Commit) -> impl Iterator<Item = &str> {
    commit.appends.iter().map(|a| a.stream.as_str())
}

/// What one batched commit produced.
pub(crate) struct BatchStaged {
    pub rows: Vec<EventRow>,
    pub stream_versions: Vec<(StreamName, u64)>,
    pub runs_changed: bool,
}

/// The projections a batch reads, by id.
#[derive(Default)]
pub(crate) struct Loaded {
    pub vclusters: HashMap<VClusterId, VCluster>,
    pub operations: HashMap<OperationId, Operation>,
    pub snapshots: HashMap<SnapshotId, Snapshot>,
}

/// The entity a stream projects into, if any.
enum Entity {
    VCluster(VClusterId),
    Operation(OperationId),
    Snapshot(SnapshotId),
}

fn entity_of(stream: &str) -> Option<Entity> {
    let id = |prefix: &str| {
        stream
            .strip_prefix(prefix)
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
    };
    if let Some(u) = id("vcluster-") {
        Some(Entity::VCluster(VClusterId(u)))
    } else if let Some(u) = id("operation-") {
        Some(Entity::Operation(OperationId(u)))
    } else {
        id("snapshot-").map(|u| Entity::Snapshot(SnapshotId(u)))
    }
}

/// The projections a batch loads.
#[derive(Default)]
pub(crate) struct Wanted {
    pub vclusters: Vec<VClusterId>,
    pub operations: Vec<OperationId>,
    pub snapshots: Vec<SnapshotId>,
}

/// What the first statement of a batch answers ([`TxOps::open_batch`]).
pub(crate) struct Opened {
    /// The fences that held, as `(run, epoch)`; those runs are locked until COMMIT.
    pub held: HashSet<(RunId, i64)>,
    /// Each bumped stream's new version.
    pub versions: HashMap<String, u64>,
    pub loaded: Loaded,
}

/// What the last statement of a batch writes ([`TxOps::write_batch`]).
pub(crate) struct Writes<'a> {
    /// Streams bumped for a commit that was then refused, with their version before.
    pub restore: &'a [(String, u64)],
    /// In the order the live-name index must see them (deleted incarnations first).
    pub vclusters: &'a [VCluster],
    pub operations: &'a [Operation],
    pub snapshots: &'a [Snapshot],
    pub runs: &'a [(Lease, crate::model::RunUpdate)],
}

/// Stages `members` (all [`batchable`], pairwise on different streams) in `tx`:
/// everything but the events' positions, in two statements on PostgreSQL. Returns one
/// answer per member, in order; an `Err` from the function itself means a statement
/// failed and the transaction is lost.
pub(crate) async fn stage_batch<T: TxOps>(
    tx: &mut T,
    members: Vec<(&Commit, Prepared)>,
    now: DateTime<Utc>,
) -> Result<Vec<Result<BatchStaged>>> {
    let mut leases: Vec<Lease> = members.iter().filter_map(|(c, _)| c.fence).collect();
    leases.sort_by_key(|l| l.run_id.as_uuid());
    // Sorted: a fixed lock order between processes.
    let mut bumps: Vec<(String, u64)> = members
        .iter()
        .flat_map(|(_, p)| {
            p.appends
                .iter()
                .map(|(s, _, e)| (s.clone(), e.len() as u64))
        })
        .collect();
    bumps.sort();
    let mut want = Wanted::default();
    for (stream, _) in &bumps {
        match entity_of(stream) {
            Some(Entity::VCluster(id)) => want.vclusters.push(id),
            Some(Entity::Operation(id)) => want.operations.push(id),
            Some(Entity::Snapshot(id)) => want.snapshots.push(id),
            None => {}
        }
    }
    let Opened {
        held,
        versions,
        mut loaded,
    } = tx.open_batch(&leases, &bumps, &want).await?;
    // Fold each commit in memory, with its own entities.
    let mut answers: Vec<Result<BatchStaged>> = Vec::with_capacity(members.len());
    let mut saved_vclusters = Vec::new();
    let mut saved_operations = Vec::new();
    let mut saved_snapshots = Vec::new();
    let mut run_updates = Vec::new();
    let mut taken_back: Vec<(String, u64)> = Vec::new();
    for (commit, prepared) in members {
        let lease = commit.fence.expect("batchable commits are fenced");
        let mut projector = Projector::default();
        let mut rows = Vec::new();
        let mut stream_versions = Vec::with_capacity(prepared.appends.len());
        let mut streams_bumped = Vec::with_capacity(prepared.appends.len());
        for (stream, _, mut events) in prepared.appends {
            let count = events.len() as u64;
            let last = versions
                .get(&stream)
                .copied()
                .ok_or_else(|| Error::Corrupt {
                    table: "streams",
                    message: format!("stream {stream} was not bumped"),
                })?;
            let first = last + 1 - count;
            for (k, row) in events.iter_mut().enumerate() {
                row.version = first + k as u64;
            }
            match entity_of(&stream) {
                Some(Entity::VCluster(id)) => {
                    projector.preload_vcluster(id, loaded.vclusters.remove(&id))
                }
                Some(Entity::Operation(id)) => {
                    projector.preload_operation(id, loaded.operations.remove(&id))
                }
                Some(Entity::Snapshot(id)) => {
                    projector.preload_snapshot(id, loaded.snapshots.remove(&id))
                }
                None => {}
            }
            streams_bumped.push((stream.clone(), first - 1));
            stream_versions.push((
                StreamName::new(stream).map_err(|e| Error::InvalidInput(e.to_string()))?,
                last,
            ));
            rows.extend(events);
        }
        if !held.contains(&(lease.run_id, lease.epoch)) {
            taken_back.extend(streams_bumped);
            answers.push(Err(Error::LeaseLost {
                run_id: lease.run_id,
                epoch: lease.epoch,
            }));
            continue;
        }
        let mut folded = Ok(());
        for row in &rows {
            folded = projector
                .apply(tx, &row.stream, row.version, now, &row.event)
                .await;
            if folded.is_err() {
                break;
            }
        }
        match folded {
            Ok(()) => {
                let (v, o, s) = projector.take_changed();
                saved_vclusters.extend(v);
                saved_operations.extend(o);
                saved_snapshots.extend(s);
                if let Some(update) = commit.run_update {
                    run_updates.push((lease, update));
                }
                answers.push(Ok(BatchStaged {
                    rows,
                    stream_versions,
                    runs_changed: crate::commit::runs_changed(commit),
                }));
            }
            Err(e) => {
                taken_back.extend(streams_bumped);
                answers.push(Err(e));
            }
        }
    }
    // Deleted incarnations first (see `Projector::flush`).
    saved_vclusters.sort_by_key(|v| v.state != ovc_types::VClusterState::Deleted);
    tx.write_batch(Writes {
        restore: &taken_back,
        vclusters: &saved_vclusters,
        operations: &saved_operations,
        snapshots: &saved_snapshots,
        runs: &run_updates,
    })
    .await?;
    Ok(answers)
}

/// The `(run, epoch)` pairs of `leases` (default implementation: one fence check each).
pub(crate) async fn held_leases_one_by_one<T: TxOps>(
    tx: &mut T,
    leases: &[Lease],
) -> Result<HashSet<(RunId, i64)>> {
    let mut held = HashSet::with_capacity(leases.len());
    for lease in leases {
        match tx.check_fence(*lease).await {
            Ok(()) => {
                held.insert((lease.run_id, lease.epoch));
            }
            Err(Error::LeaseLost { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(held)
}
