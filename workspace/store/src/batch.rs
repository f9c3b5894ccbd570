//! The set-based part of a group commit: the workers' step commits of one group made
//! with a fixed number of statements, however many commits the group carries.
//!
//! A step commit (fenced, appending with `ExpectedVersion::Any`, no idempotency key, no
//! new run) staged alone costs about seven statements (savepoint, fence, stream bump,
//! projection load and save, run update, release). Staged together, a group of them
//! costs: one statement checking every fence (and locking the runs), one bumping every
//! stream, one loading each kind of projection, one saving each kind, one updating the
//! runs. Nothing is written for a commit that would fail: its lease is checked before
//! anything, and its events are folded in memory before any projection is saved; a
//! commit whose fold fails gets its stream bump taken back (the row is locked) and its
//! error, and the others go on, exactly as the savepoint of the one-by-one path would
//! have done.
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

/// Stages `members` (all [`batchable`], pairwise on different streams) in `tx`:
/// everything but the events' positions. Returns one answer per member, in order; an
/// `Err` from the function itself means a statement failed and the transaction is lost.
pub(crate) async fn stage_batch<T: TxOps>(
    tx: &mut T,
    members: Vec<(&Commit, Prepared)>,
    now: DateTime<Utc>,
) -> Result<Vec<Result<BatchStaged>>> {
    // 1. Fences, all at once; the runs held stay locked until COMMIT.
    let mut leases: Vec<Lease> = members.iter().filter_map(|(c, _)| c.fence).collect();
    leases.sort_by_key(|l| l.run_id.as_uuid());
    let held = tx.held_leases(&leases).await?;
    let mut answers: Vec<Option<Result<BatchStaged>>> = Vec::with_capacity(members.len());
    let mut live: Vec<(usize, &Commit, Prepared)> = Vec::with_capacity(members.len());
    for (i, (commit, prepared)) in members.into_iter().enumerate() {
        let lease = commit.fence.expect("batchable commits are fenced");
        if held.contains(&(lease.run_id, lease.epoch)) {
            answers.push(None);
            live.push((i, commit, prepared));
        } else {
            answers.push(Some(Err(Error::LeaseLost {
                run_id: lease.run_id,
                epoch: lease.epoch,
            })));
        }
    }
    // 2. Stream versions, all at once (sorted: a fixed lock order between processes).
    let mut bumps: Vec<(String, u64)> = live
        .iter()
        .flat_map(|(_, _, p)| {
            p.appends
                .iter()
                .map(|(s, _, e)| (s.clone(), e.len() as u64))
        })
        .collect();
    bumps.sort();
    let versions: HashMap<String, u64> = if bumps.is_empty() {
        HashMap::new()
    } else {
        tx.bump_streams(&bumps).await?.into_iter().collect()
    };
    // 3. The projections the streams fold into, one load per kind.
    let (mut vcs, mut ops, mut snaps) = (Vec::new(), Vec::new(), Vec::new());
    for (stream, _) in &bumps {
        match entity_of(stream) {
            Some(Entity::VCluster(id)) => vcs.push(id),
            Some(Entity::Operation(id)) => ops.push(id),
            Some(Entity::Snapshot(id)) => snaps.push(id),
            None => {}
        }
    }
    let mut loaded = Loaded {
        vclusters: tx.load_vclusters(&vcs).await?,
        operations: tx.load_operations(&ops).await?,
        snapshots: tx.load_snapshots(&snaps).await?,
    };
    // 4. Fold each commit in memory, with its own entities.
    let mut saved_vclusters = Vec::new();
    let mut saved_operations = Vec::new();
    let mut saved_snapshots = Vec::new();
    let mut run_updates = Vec::new();
    let mut taken_back: Vec<(String, u64)> = Vec::new();
    for (i, commit, prepared) in live {
        let mut projector = Projector::default();
        let mut rows = Vec::new();
        let mut stream_versions = Vec::with_capacity(prepared.appends.len());
        let mut streams_bumped = Vec::with_capacity(prepared.appends.len());
        for (stream, _, mut events) in prepared.appends {
            let count = events.len() as u64;
            let last = versions
                .get(&stream)
                .copied()
                .ok_or_else(|| Error::InvalidInput(format!("stream {stream} was not bumped")))?;
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
                if let (Some(update), Some(lease)) = (commit.run_update, commit.fence) {
                    run_updates.push((lease, update));
                }
                answers[i] = Some(Ok(BatchStaged {
                    rows,
                    stream_versions,
                    runs_changed: crate::commit::runs_changed(commit),
                }));
            }
            Err(e) => {
                taken_back.extend(streams_bumped);
                answers[i] = Some(Err(e));
            }
        }
    }
    // 5. Write what the folds made, one statement per kind.
    if !taken_back.is_empty() {
        tx.restore_stream_versions(&taken_back).await?;
    }
    // Deleted incarnations first (see `Projector::flush`).
    saved_vclusters.sort_by_key(|v| v.state != ovc_types::VClusterState::Deleted);
    if !saved_vclusters.is_empty() {
        tx.save_vclusters(&saved_vclusters).await?;
    }
    if !saved_operations.is_empty() {
        tx.save_operations(&saved_operations).await?;
    }
    if !saved_snapshots.is_empty() {
        tx.save_snapshots(&saved_snapshots).await?;
    }
    if !run_updates.is_empty() {
        tx.update_runs(&run_updates).await?;
    }
    Ok(answers
        .into_iter()
        .map(|a| a.expect("every member answered"))
        .collect())
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
