//! The one algorithm behind every write, shared by both backends.
//!
//! A backend supplies a transaction that can do the individual SQL steps ([`TxOps`]);
//! [`stage`] and [`group_committer`] decide their order, which is what makes the
//! guarantees hold:
//!
//! 1. the idempotency key first, so a repeated request answers `Duplicate` (and a
//!    concurrent twin waits on the key's row lock) before any other check;
//! 2. the lease fence, so a worker that lost its lease writes nothing;
//! 3. stream versions (optimistic concurrency, per-stream row lock);
//! 4. projections, folded with the same pure functions a rebuild uses;
//! 5. queue changes;
//! 6. last, global positions and the events themselves: the head row lock is held only
//!    from here to COMMIT, so positions are handed out in commit order and a tail never
//!    skips one.
//!
//! Group commit: every [`crate::Store::commit`] of a process goes to one committer
//! task, which makes all the commits waiting at that moment in one transaction: steps
//! 1–5 for each commit inside its own savepoint (a failed fence, version or name rolls
//! back only that commit's part), then step 6 once for all of them. One head-row lock
//! and one WAL flush then carry many workflows' steps.

use crate::error::{Error, Result};
use crate::model::{
    Commit, CommitOutcome, CommitReceipt, ExpectedVersion, IdempotencyClaim, Lease, NewRun,
    RunUpdate, StoreConfig,
};
use chrono::{DateTime, Duration, Utc};
use ovc_types::event::Event;
use ovc_types::resource::{Operation, Snapshot, VCluster};
use ovc_types::{OperationId, RunId, SnapshotId, VClusterId};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::future::Future;

/// One event ready to insert.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub position: u64,
    pub stream: String,
    pub version: u64,
    pub event_type: &'static str,
    pub data: serde_json::Value,
    pub metadata: serde_json::Value,
    pub event: Event,
}

/// The SQL steps of a write transaction; implemented by each backend.
pub(crate) trait TxOps: Send {
    /// Inserts the key, or returns the operation of an earlier identical request.
    /// A key older than `ttl` is replaced. Different hash → `RequestIdReused`.
    fn claim_idempotency(
        &mut self,
        claim: &IdempotencyClaim,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<OperationId>>> + Send;
    /// Fails with `LeaseLost` unless `lease` is the run's current leased epoch; locks the
    /// run row until commit.
    fn check_fence(&mut self, lease: Lease) -> impl Future<Output = Result<()>> + Send;
    /// Moves `stream` forward by `count` events after checking `expected`; returns the
    /// new version.
    fn bump_stream(
        &mut self,
        stream: &str,
        expected: ExpectedVersion,
        count: u64,
    ) -> impl Future<Output = Result<u64>> + Send;
    fn load_vcluster(
        &mut self,
        uid: VClusterId,
    ) -> impl Future<Output = Result<Option<VCluster>>> + Send;
    fn save_vcluster(&mut self, vc: &VCluster) -> impl Future<Output = Result<()>> + Send;
    fn load_operation(
        &mut self,
        id: OperationId,
    ) -> impl Future<Output = Result<Option<Operation>>> + Send;
    fn save_operation(&mut self, op: &Operation) -> impl Future<Output = Result<()>> + Send;
    fn load_snapshot(
        &mut self,
        id: SnapshotId,
    ) -> impl Future<Output = Result<Option<Snapshot>>> + Send;
    fn save_snapshot(&mut self, snap: &Snapshot) -> impl Future<Output = Result<()>> + Send;
    /// Queues `run`; its due time is the database's clock plus its delay.
    fn enqueue_run(&mut self, run: &NewRun) -> impl Future<Output = Result<()>> + Send;
    /// Applies `update` to the fenced run; every time it writes (due time, lease end,
    /// release) is the database's clock plus a duration, never the process's clock.
    fn update_run(
        &mut self,
        lease: Lease,
        update: RunUpdate,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The serialization point, run last: reserves positions for `rows` from the head
    /// row (whose lock is then held until COMMIT), stamps them into `rows`, inserts the
    /// events and tells other processes (PostgreSQL: NOTIFY), also that runs may be
    /// claimable when `runs_changed` (in the same round trip). Returns the last position.
    fn append_events(
        &mut self,
        rows: &mut [EventRow],
        recorded_at: DateTime<Utc>,
        runs_changed: bool,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Tells other processes, at commit, that runs may be claimable (PostgreSQL: NOTIFY).
    fn notify_runs(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// Runs `sql` (no parameters, no rows) in the transaction.
    fn execute_sql(&mut self, sql: &'static str) -> impl Future<Output = Result<()>> + Send;
    /// Marks where one commit of a group begins (`SAVEPOINT`).
    fn savepoint(&mut self) -> impl Future<Output = Result<()>> + Send {
        self.execute_sql("SAVEPOINT ovc_commit")
    }
    /// Keeps the commit since the last savepoint (`RELEASE SAVEPOINT`).
    fn release_savepoint(&mut self) -> impl Future<Output = Result<()>> + Send {
        self.execute_sql("RELEASE SAVEPOINT ovc_commit")
    }
    /// Undoes the commit since the last savepoint, and forgets the savepoint.
    fn rollback_to_savepoint(&mut self) -> impl Future<Output = Result<()>> + Send {
        self.execute_sql("ROLLBACK TO SAVEPOINT ovc_commit; RELEASE SAVEPOINT ovc_commit")
    }
    /// The `(run, epoch)` of each of `leases` (sorted by run) that is its run's current
    /// leased epoch, those runs locked until commit: the fences of a batch at once.
    fn held_leases(
        &mut self,
        leases: &[Lease],
    ) -> impl Future<Output = Result<HashSet<(RunId, i64)>>> + Send
    where
        Self: Sized,
    {
        crate::batch::held_leases_one_by_one(self, leases)
    }
    /// Moves each stream of `bumps` (sorted, distinct) forward by its count, creating it
    /// when new; returns each stream's new version.
    fn bump_streams(
        &mut self,
        bumps: &[(String, u64)],
    ) -> impl Future<Output = Result<Vec<(String, u64)>>> + Send
    where
        Self: Sized,
    {
        async move {
            let mut out = Vec::with_capacity(bumps.len());
            for (stream, count) in bumps {
                let v = self
                    .bump_stream(stream, ExpectedVersion::Any, *count)
                    .await?;
                out.push((stream.clone(), v));
            }
            Ok(out)
        }
    }
    /// Sets each stream of `versions` back to the version it had before this
    /// transaction bumped it (0: the stream did not exist); its row is locked by the bump.
    fn restore_stream_versions(
        &mut self,
        versions: &[(String, u64)],
    ) -> impl Future<Output = Result<()>> + Send;
    /// The first statement of a batch (`batch::stage_batch`): the fences of `leases`,
    /// the bumps of `bumps` (sorted, distinct; including those of commits whose fence
    /// turns out lost, which the batch takes back) and the projections of `want`.
    fn open_batch(
        &mut self,
        leases: &[Lease],
        bumps: &[(String, u64)],
        want: &crate::batch::Wanted,
    ) -> impl Future<Output = Result<crate::batch::Opened>> + Send
    where
        Self: Sized,
    {
        async move {
            let held = self.held_leases(leases).await?;
            let versions = if bumps.is_empty() {
                HashMap::new()
            } else {
                self.bump_streams(bumps).await?.into_iter().collect()
            };
            let loaded = crate::batch::Loaded {
                vclusters: self.load_vclusters(&want.vclusters).await?,
                operations: self.load_operations(&want.operations).await?,
                snapshots: self.load_snapshots(&want.snapshots).await?,
            };
            Ok(crate::batch::Opened {
                held,
                versions,
                loaded,
            })
        }
    }
    /// The last statement of a batch: what its folds and run updates write.
    fn write_batch(
        &mut self,
        w: crate::batch::Writes<'_>,
    ) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized,
    {
        async move {
            if !w.restore.is_empty() {
                self.restore_stream_versions(w.restore).await?;
            }
            self.save_vclusters(w.vclusters).await?;
            self.save_operations(w.operations).await?;
            self.save_snapshots(w.snapshots).await?;
            self.update_runs(w.runs).await
        }
    }
    /// The vclusters of `uids` that exist.
    fn load_vclusters(
        &mut self,
        uids: &[VClusterId],
    ) -> impl Future<Output = Result<HashMap<VClusterId, VCluster>>> + Send
    where
        Self: Sized,
    {
        async move {
            let mut out = HashMap::with_capacity(uids.len());
            for uid in uids {
                if let Some(vc) = self.load_vcluster(*uid).await? {
                    out.insert(*uid, vc);
                }
            }
            Ok(out)
        }
    }
    /// The operations of `ids` that exist, with their steps.
    fn load_operations(
        &mut self,
        ids: &[OperationId],
    ) -> impl Future<Output = Result<HashMap<OperationId, Operation>>> + Send
    where
        Self: Sized,
    {
        async move {
            let mut out = HashMap::with_capacity(ids.len());
            for id in ids {
                if let Some(op) = self.load_operation(*id).await? {
                    out.insert(*id, op);
                }
            }
            Ok(out)
        }
    }
    /// The snapshots of `ids` that exist.
    fn load_snapshots(
        &mut self,
        ids: &[SnapshotId],
    ) -> impl Future<Output = Result<HashMap<SnapshotId, Snapshot>>> + Send
    where
        Self: Sized,
    {
        async move {
            let mut out = HashMap::with_capacity(ids.len());
            for id in ids {
                if let Some(s) = self.load_snapshot(*id).await? {
                    out.insert(*id, s);
                }
            }
            Ok(out)
        }
    }
    /// Saves `vcs`, in order.
    fn save_vclusters(&mut self, vcs: &[VCluster]) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized,
    {
        async move {
            for vc in vcs {
                self.save_vcluster(vc).await?;
            }
            Ok(())
        }
    }
    /// Saves `ops` with their steps.
    fn save_operations(&mut self, ops: &[Operation]) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized,
    {
        async move {
            for op in ops {
                self.save_operation(op).await?;
            }
            Ok(())
        }
    }
    /// Saves `snaps`.
    fn save_snapshots(&mut self, snaps: &[Snapshot]) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized,
    {
        async move {
            for s in snaps {
                self.save_snapshot(s).await?;
            }
            Ok(())
        }
    }
    /// Applies each update to its run, whose lease `held_leases` confirmed and locked.
    fn update_runs(
        &mut self,
        updates: &[(Lease, RunUpdate)],
    ) -> impl Future<Output = Result<()>> + Send
    where
        Self: Sized,
    {
        async move {
            for (lease, update) in updates {
                self.update_run(*lease, *update).await?;
            }
            Ok(())
        }
    }
    /// Commits the transaction.
    fn commit(self) -> impl Future<Output = Result<()>> + Send;
    /// Rolls the transaction back.
    fn rollback(self) -> impl Future<Output = Result<()>> + Send;
}

/// A commit checked and encoded before any transaction starts.
pub(crate) struct Prepared {
    pub(crate) appends: Vec<(String, ExpectedVersion, Vec<EventRow>)>,
}

/// Checks a commit against the limits and encodes its events; nothing touches the
/// database, so bad input costs nothing and writes nothing.
pub(crate) fn prepare(commit: &Commit, cfg: &StoreConfig) -> Result<Prepared> {
    if commit.appends.is_empty() && commit.enqueue.is_empty() && commit.run_update.is_none() {
        return Err(Error::InvalidInput(
            "empty commit: nothing to append, enqueue or update".into(),
        ));
    }
    if commit.run_update.is_some() && commit.fence.is_none() {
        return Err(Error::InvalidInput(
            "run_update needs the lease it applies to (fence)".into(),
        ));
    }
    if let Some(claim) = &commit.idempotency {
        let id = &claim.request_id;
        if id.is_empty() {
            return Err(Error::InvalidInput("request_id must not be empty".into()));
        }
        if id.len() > cfg.max_request_id_len {
            return Err(Error::InvalidInput(format!(
                "request_id is {} bytes; at most {} allowed",
                id.len(),
                cfg.max_request_id_len
            )));
        }
        if id.chars().any(char::is_control) {
            return Err(Error::InvalidInput(
                "request_id must not contain control characters".into(),
            ));
        }
        if claim.request_hash.is_empty() {
            return Err(Error::InvalidInput("request_hash must not be empty".into()));
        }
    }
    let total: usize = commit.appends.iter().map(|a| a.events.len()).sum();
    if total > cfg.max_events_per_commit {
        return Err(Error::InvalidInput(format!(
            "{total} events in one commit; at most {} allowed",
            cfg.max_events_per_commit
        )));
    }
    let mut seen = HashSet::new();
    let mut appends = Vec::with_capacity(commit.appends.len());
    for append in &commit.appends {
        let stream = append.stream.as_str();
        if !seen.insert(stream) {
            return Err(Error::InvalidInput(format!(
                "stream {stream} appears twice in one commit; put its events in one append"
            )));
        }
        if append.events.is_empty() {
            return Err(Error::InvalidInput(format!(
                "append to {stream} has no events"
            )));
        }
        if append.expected == ExpectedVersion::Exact(0) {
            return Err(Error::InvalidInput(format!(
                "expected version 0 for {stream}: use NoStream for a new stream"
            )));
        }
        let mut rows = Vec::with_capacity(append.events.len());
        for (i, new) in append.events.iter().enumerate() {
            let (event_type, data) = new.event.encode();
            let metadata = serde_json::to_value(&new.metadata)
                .map_err(|e| Error::InvalidInput(format!("metadata: {e}")))?;
            let size = data.to_string().len() + metadata.to_string().len();
            if size > cfg.max_event_bytes {
                return Err(Error::InvalidInput(format!(
                    "event {i} ({event_type}) for {stream} is {size} bytes; at most {} allowed",
                    cfg.max_event_bytes
                )));
            }
            rows.push(EventRow {
                position: 0,
                stream: stream.to_string(),
                version: 0,
                event_type,
                data,
                metadata,
                event: new.event.clone(),
            });
        }
        appends.push((stream.to_string(), append.expected, rows));
    }
    Ok(Prepared { appends })
}

/// What staging one commit inside a (possibly shared) transaction produced.
pub(crate) enum Staged {
    /// Everything but the events' positions is written; the rows wait for the one
    /// `append_events` of the transaction.
    Written {
        rows: Vec<EventRow>,
        stream_versions: Vec<(ovc_types::StreamName, u64)>,
        runs_changed: bool,
    },
    /// The idempotency key answered: this commit's part must be rolled back.
    Duplicate(OperationId),
}

/// Runs steps 1–5 of a prepared commit inside `tx`: everything except the positions and
/// the events themselves, which the transaction appends once for all its commits.
pub(crate) async fn stage<T: TxOps>(
    tx: &mut T,
    commit: &Commit,
    prepared: Prepared,
    now: DateTime<Utc>,
    cfg: &StoreConfig,
) -> Result<Staged> {
    if let Some(claim) = &commit.idempotency
        && let Some(existing) = tx
            .claim_idempotency(claim, now, cfg.idempotency_ttl)
            .await?
    {
        return Ok(Staged::Duplicate(existing));
    }
    if let Some(lease) = commit.fence {
        tx.check_fence(lease).await?;
    }
    let mut rows = Vec::new();
    let mut stream_versions = Vec::with_capacity(prepared.appends.len());
    for (stream, expected, mut events) in prepared.appends {
        let count = events.len() as u64;
        let last = tx.bump_stream(&stream, expected, count).await?;
        let first = last + 1 - count;
        for (i, row) in events.iter_mut().enumerate() {
            row.version = first + i as u64;
        }
        stream_versions.push((
            ovc_types::StreamName::new(stream).map_err(|e| Error::InvalidInput(e.to_string()))?,
            last,
        ));
        rows.extend(events);
    }
    let mut projector = Projector::default();
    for row in &rows {
        projector
            .apply(tx, &row.stream, row.version, now, &row.event)
            .await?;
    }
    projector.flush(tx).await?;
    for run in &commit.enqueue {
        tx.enqueue_run(run).await?;
    }
    if let (Some(update), Some(lease)) = (commit.run_update, commit.fence) {
        tx.update_run(lease, update).await?;
    }
    Ok(Staged::Written {
        rows,
        stream_versions,
        runs_changed: runs_changed(commit),
    })
}

/// Events a group commit carries at most (a commit alone may carry
/// `max_events_per_commit`).
const GROUP_MAX_EVENTS: usize = 2000;
/// Commits a group commit carries at most. Each is a savepoint (a subtransaction);
/// PostgreSQL caches 64 subtransaction ids per transaction before snapshots get slow.
const GROUP_MAX_COMMITS: usize = 48;

/// Where a commit's outcome goes.
type Reply = tokio::sync::oneshot::Sender<Result<CommitOutcome>>;

/// A commit staged in a group: its reply, its event count, its streams' versions.
type StagedMember = (Reply, usize, Vec<(ovc_types::StreamName, u64)>);

fn replies_of(staged: Vec<StagedMember>) -> Vec<Reply> {
    staged.into_iter().map(|(r, _, _)| r).collect()
}

/// One commit waiting for a group commit.
pub(crate) struct Member {
    pub commit: Commit,
    pub prepared: Prepared,
    pub reply: Reply,
}

impl Member {
    fn events(&self) -> usize {
        self.prepared.appends.iter().map(|a| a.2.len()).sum()
    }
}

/// Opens the write transactions of a group committer.
pub(crate) trait TxSource: Send + Sync + 'static {
    type Tx: TxOps + 'static;
    fn begin(&self) -> impl Future<Output = Result<Self::Tx>> + Send;
    /// The time stamped on a transaction's events and projections.
    fn now(&self) -> DateTime<Utc>;
}

/// The group committer: takes every commit waiting when the previous transaction ended
/// (up to the limits above) and makes them in one transaction, each fenced by its own
/// lease and checked by its own versions; a commit that fails rolls back to its
/// savepoint, alone. Then one `append_events` (one head-row lock, gapless positions in
/// the order of the commits), one NOTIFY of each kind, one COMMIT (one WAL flush).
pub(crate) async fn group_committer<S: TxSource>(
    source: S,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Member>,
    cfg: StoreConfig,
    wake: std::sync::Arc<crate::wake::Wakeups>,
) {
    let mut carry: Option<Member> = None;
    loop {
        let first = match carry.take() {
            Some(m) => m,
            None => match queue.recv().await {
                Some(m) => m,
                None => return,
            },
        };
        let mut events = first.events();
        let mut batch = vec![first];
        while batch.len() < GROUP_MAX_COMMITS {
            match queue.try_recv() {
                Ok(m) => {
                    events += m.events();
                    if events > GROUP_MAX_EVENTS {
                        carry = Some(m);
                        break;
                    }
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let members = batch.len();
        let started = std::time::Instant::now();
        run_group(&source, batch, &cfg, &wake).await;
        tracing::debug!(
            members,
            elapsed_us = started.elapsed().as_micros() as u64,
            "group committed"
        );
    }
}

/// A store's two group committers: one for every commit but lease renewals, one for
/// renewals alone, so a slow group (a long WAL flush) cannot make the leases of the runs
/// it carries expire, and the renewals of many runs still share a transaction.
pub(crate) struct Committers {
    main: tokio::sync::mpsc::UnboundedSender<Member>,
    renewals: tokio::sync::mpsc::UnboundedSender<Member>,
}

impl std::fmt::Debug for Committers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committers").finish_non_exhaustive()
    }
}

impl Committers {
    /// Starts both committer tasks over `source`.
    pub(crate) fn spawn<S: TxSource + Clone>(
        source: S,
        cfg: &StoreConfig,
        wake: &std::sync::Arc<crate::wake::Wakeups>,
    ) -> Self {
        let (main, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(group_committer(
            source.clone(),
            queue,
            cfg.clone(),
            wake.clone(),
        ));
        let (renewals, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(group_committer(source, queue, cfg.clone(), wake.clone()));
        Self { main, renewals }
    }

    /// Makes `commit` (already `prepare`d) in the next group of its committer.
    pub(crate) async fn submit(&self, commit: Commit, prepared: Prepared) -> Result<CommitOutcome> {
        let queue = if is_renewal(&commit) {
            &self.renewals
        } else {
            &self.main
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        queue
            .send(Member {
                commit,
                prepared,
                reply,
            })
            .map_err(|_| Error::GroupCommitFailed("the store is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::GroupCommitFailed("the group committer stopped".into()))?
    }
}

/// A failure that sinks the whole group: the first commit hit gets `error`, the others
/// an `Unavailable`-like error naming it (none of them was written).
fn fail_all(members: Vec<Reply>, error: Error) {
    let message = error.to_string();
    let mut first = Some(error);
    for reply in members {
        let e = first
            .take()
            .unwrap_or_else(|| Error::GroupCommitFailed(message.clone()));
        let _ = reply.send(Err(e));
    }
}

/// Makes `batch` in one transaction of `source` and answers each commit.
pub(crate) async fn run_group<S: TxSource>(
    source: &S,
    batch: Vec<Member>,
    cfg: &StoreConfig,
    wake: &crate::wake::Wakeups,
) {
    let alone = batch.len() == 1;
    let mut tx = match source.begin().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(batch.into_iter().map(|m| m.reply).collect(), e),
    };
    let now = source.now();
    // (reply, rows, stream versions) of the commits staged so far.
    let mut staged: Vec<StagedMember> = Vec::with_capacity(batch.len());
    // Commits refused inside the group, answered once the group has ended: a refusal may
    // be caused by an earlier member's write (an event after the operation's end, say),
    // and the caller must be able to read that write when it gets the answer. If the
    // group fails after all, they get the group's (retryable) error instead.
    let mut refused: Vec<(Reply, Result<CommitOutcome>)> = Vec::new();
    let mut rows_all: Vec<EventRow> = Vec::new();
    let mut runs = false;
    let (fast, slow) = if alone {
        (Vec::new(), batch)
    } else {
        split_batchable(batch)
    };
    if !fast.is_empty() {
        let mut commits = Vec::with_capacity(fast.len());
        let mut prepared = Vec::with_capacity(fast.len());
        let mut replies = Vec::with_capacity(fast.len());
        for m in fast {
            commits.push(m.commit);
            prepared.push(m.prepared);
            replies.push(m.reply);
        }
        let inputs = commits.iter().zip(prepared).collect();
        match crate::batch::stage_batch(&mut tx, inputs, now).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    match answer {
                        Ok(b) => {
                            runs |= b.runs_changed;
                            let count = b.rows.len();
                            rows_all.extend(b.rows);
                            staged.push((reply, count, b.stream_versions));
                        }
                        Err(e) => refused.push((reply, Err(e))),
                    }
                }
            }
            Err(e) => {
                let _ = tx.rollback().await;
                replies.extend(slow.into_iter().map(|m| m.reply));
                return fail_all(replies, e);
            }
        }
    }
    let mut members = slow.into_iter();
    while let Some(Member {
        commit,
        prepared,
        reply,
    }) = members.next()
    {
        if !alone && let Err(e) = tx.savepoint().await {
            let mut replies = replies_of(staged);
            replies.extend(refused.into_iter().map(|(r, _)| r));
            replies.push(reply);
            replies.extend(members.map(|m| m.reply));
            let _ = tx.rollback().await;
            return fail_all(replies, e);
        }
        let outcome = stage(&mut tx, &commit, prepared, now, cfg).await;
        match outcome {
            Ok(Staged::Written {
                rows,
                stream_versions,
                runs_changed,
            }) => {
                if !alone && let Err(e) = tx.release_savepoint().await {
                    let mut replies = replies_of(staged);
                    replies.extend(refused.into_iter().map(|(r, _)| r));
                    replies.push(reply);
                    replies.extend(members.map(|m| m.reply));
                    let _ = tx.rollback().await;
                    return fail_all(replies, e);
                }
                runs |= runs_changed;
                let count = rows.len();
                rows_all.extend(rows);
                staged.push((reply, count, stream_versions));
            }
            Ok(Staged::Duplicate(operation_id)) if alone => {
                let _ = tx.rollback().await;
                let _ = reply.send(Ok(CommitOutcome::Duplicate { operation_id }));
                return;
            }
            Err(e) if alone => {
                let _ = tx.rollback().await;
                let _ = reply.send(Err(e));
                return;
            }
            other => {
                // Only this commit's part goes; the group goes on.
                if let Err(e) = tx.rollback_to_savepoint().await {
                    let mut replies = replies_of(staged);
                    replies.extend(refused.into_iter().map(|(r, _)| r));
                    replies.push(reply);
                    replies.extend(members.map(|m| m.reply));
                    let _ = tx.rollback().await;
                    return fail_all(replies, e);
                }
                refused.push((
                    reply,
                    match other {
                        Ok(Staged::Duplicate(operation_id)) => {
                            Ok(CommitOutcome::Duplicate { operation_id })
                        }
                        Err(e) => Err(e),
                        Ok(Staged::Written { .. }) => unreachable!("handled above"),
                    },
                ));
            }
        }
    }
    if staged.is_empty() {
        let _ = tx.rollback().await;
        for (reply, answer) in refused {
            let _ = reply.send(answer);
        }
        return;
    }
    let fail_group =
        |staged: Vec<StagedMember>, refused: Vec<(Reply, Result<CommitOutcome>)>, e| {
            let mut replies = replies_of(staged);
            replies.extend(refused.into_iter().map(|(r, _)| r));
            fail_all(replies, e);
        };
    if runs
        && rows_all.is_empty()
        && let Err(e) = tx.notify_runs().await
    {
        let _ = tx.rollback().await;
        return fail_group(staged, refused, e);
    }
    let mut last_position = 0;
    if !rows_all.is_empty() {
        match tx.append_events(&mut rows_all, now, runs).await {
            Ok(last) => last_position = last,
            Err(e) => {
                let _ = tx.rollback().await;
                return fail_group(staged, refused, e);
            }
        }
    }
    if let Err(e) = tx.commit().await {
        return fail_group(staged, refused, e);
    }
    for (reply, answer) in refused {
        let _ = reply.send(answer);
    }
    if last_position > 0 {
        wake.events_appended(last_position);
    }
    if runs {
        wake.runs_changed();
    }
    let mut next = (last_position + 1).saturating_sub(rows_all.len() as u64);
    for (reply, count, stream_versions) in staged {
        let (first_position, last) = if count == 0 {
            (0, 0)
        } else {
            let first = next;
            next += count as u64;
            (first, next - 1)
        };
        let _ = reply.send(Ok(CommitOutcome::Committed(CommitReceipt {
            first_position,
            last_position: last,
            stream_versions,
        })));
    }
}

/// Splits a group into the commits [`crate::batch::stage_batch`] makes together (at
/// least two, batchable, each on streams no other commit of the group touches and
/// fenced by a run no other of them names) and the rest, which are staged one by one,
/// after them, each in its savepoint.
fn split_batchable(batch: Vec<Member>) -> (Vec<Member>, Vec<Member>) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for m in &batch {
        for s in crate::batch::streams_of(&m.commit) {
            *count.entry(s).or_default() += 1;
        }
    }
    let mut fenced = HashSet::new();
    let fast_ok: Vec<bool> = batch
        .iter()
        .map(|m| {
            crate::batch::batchable(&m.commit)
                && crate::batch::streams_of(&m.commit).all(|s| count[s] == 1)
                && m.commit.fence.is_some_and(|l| fenced.insert(l.run_id))
        })
        .collect();
    if fast_ok.iter().filter(|ok| **ok).count() < 2 {
        return (Vec::new(), batch);
    }
    let (mut fast, mut slow) = (Vec::new(), Vec::new());
    for (m, ok) in batch.into_iter().zip(fast_ok) {
        if ok { fast.push(m) } else { slow.push(m) }
    }
    (fast, slow)
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// True for a lease renewal alone: it goes to the renewals' committer (see
/// [`Committers`]).
pub(crate) fn is_renewal(commit: &Commit) -> bool {
    commit.appends.is_empty()
        && commit.enqueue.is_empty()
        && commit.idempotency.is_none()
        && matches!(commit.run_update, Some(RunUpdate::Renew { .. }))
}

/// True when the commit may make a run claimable (a new run, or a run released).
pub(crate) fn runs_changed(commit: &Commit) -> bool {
    !commit.enqueue.is_empty()
        || matches!(
            commit.run_update,
            Some(RunUpdate::Complete | RunUpdate::Reschedule { .. })
        )
}

/// Folds events into the read models, loading each entity once and saving it once.
///
/// It also sets a succeeded operation's `result` to the resource as the operation left
/// it (API.md): the Snapshot for SNAPSHOT and DELETE_SNAPSHOT (once READY, or DELETED),
/// else the VCluster as its `VClusterSettled` of that operation (same commit) made it. Only event order decides
/// it, so a rebuild computes the same result as the live commit did.
#[derive(Default)]
pub(crate) struct Projector {
    vclusters: HashMap<VClusterId, Option<VCluster>>,
    operations: HashMap<OperationId, Option<Operation>>,
    snapshots: HashMap<SnapshotId, Option<Snapshot>>,
    /// Succeeded operations waiting for their vcluster's `VClusterSettled`.
    awaiting_settle: HashSet<OperationId>,
    /// Vclusters settled by an operation whose success is not folded yet.
    settled_first: HashMap<OperationId, VCluster>,
    /// Snapshots whose succeeded operation waits for their final event (the
    /// `SnapshotDeleted` a delete commits after its success, in the same commit).
    awaiting_snapshot: HashMap<SnapshotId, OperationId>,
    /// The entities folded into or given a result: the ones to save. An entity loaded
    /// only to be read (the vcluster an operation's result shows) is not saved again.
    changed: Changed,
    written: (u64, u64, u64),
}

/// The ids of the entities a [`Projector`] changed.
#[derive(Default)]
struct Changed {
    vclusters: HashSet<VClusterId>,
    operations: HashSet<OperationId>,
    snapshots: HashSet<SnapshotId>,
}

fn parse_id(stream: &str, prefix: &str) -> Result<uuid::Uuid> {
    stream
        .strip_prefix(prefix)
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "stream {stream} looks like {prefix}<uuid> but its id is not a UUID"
            ))
        })
}

impl Projector {
    /// Folds one event. Streams of categories other than vcluster/operation/snapshot
    /// have no projection.
    pub(crate) async fn apply<T: TxOps>(
        &mut self,
        tx: &mut T,
        stream: &str,
        version: u64,
        at: DateTime<Utc>,
        event: &Event,
    ) -> Result<()> {
        if stream.starts_with("vcluster-") {
            let uid = VClusterId(parse_id(stream, "vcluster-")?);
            let slot = match self.vclusters.entry(uid) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(tx.load_vcluster(uid).await?),
            };
            *slot = Some(VCluster::apply(
                slot.take(),
                uid,
                stream,
                version,
                at,
                event,
            )?);
            self.changed.vclusters.insert(uid);
            if let Event::VClusterSettled { operation_id, .. } = event
                && let Some(vc) = slot.clone()
            {
                if self.awaiting_settle.remove(operation_id) {
                    self.set_result(tx, *operation_id, to_json(&vc)).await?;
                } else {
                    self.settled_first.insert(*operation_id, vc);
                }
            }
        } else if stream.starts_with("operation-") {
            let id = OperationId(parse_id(stream, "operation-")?);
            let slot = match self.operations.entry(id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(tx.load_operation(id).await?),
            };
            *slot = Some(Operation::apply(
                slot.take(),
                id,
                stream,
                version,
                at,
                event,
            )?);
            self.changed.operations.insert(id);
            if let (Event::OperationSucceeded { .. }, Some(op)) = (event, slot.clone()) {
                self.resolve_result(tx, &op).await?;
            }
        } else if stream.starts_with("snapshot-") {
            let id = SnapshotId(parse_id(stream, "snapshot-")?);
            let slot = match self.snapshots.entry(id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(tx.load_snapshot(id).await?),
            };
            *slot = Some(Snapshot::apply(
                slot.take(),
                id,
                stream,
                version,
                at,
                event,
            )?);
            self.changed.snapshots.insert(id);
            if matches!(
                event,
                Event::SnapshotCompleted { .. } | Event::SnapshotDeleted {}
            ) && let Some(snap) = slot.clone()
                && let Some(op) = self.awaiting_snapshot.remove(&id)
            {
                self.set_result(tx, op, to_json(&snap)).await?;
            }
        } else {
            return Ok(());
        }
        Ok(())
    }

    /// Sets the result of `op`, which just succeeded, or notes what it waits for.
    async fn resolve_result<T: TxOps>(&mut self, tx: &mut T, op: &Operation) -> Result<()> {
        use ovc_types::command::DeleteSnapshotParams;
        use ovc_types::state::{OperationKind, SnapshotState};
        let snapshot = match op.kind {
            // The snapshot's id is its operation's id.
            OperationKind::SNAPSHOT => Some((SnapshotId(op.id.as_uuid()), SnapshotState::Ready)),
            OperationKind::DELETE_SNAPSHOT => op
                .command
                .params::<DeleteSnapshotParams>()
                .ok()
                .map(|p| (p.snapshot_id, SnapshotState::Deleted)),
            _ => None,
        };
        if let Some((sid, done)) = snapshot {
            self.settled_first.remove(&op.id);
            let snap = match self.snapshots.entry(sid) {
                Entry::Occupied(e) => e.into_mut().clone(),
                Entry::Vacant(e) => e.insert(tx.load_snapshot(sid).await?).clone(),
            };
            return match snap {
                Some(snap) if snap.state == done => {
                    self.set_result(tx, op.id, to_json(&snap)).await
                }
                _ => {
                    self.awaiting_snapshot.insert(sid, op.id);
                    self.set_result(tx, op.id, serde_json::Value::Null).await
                }
            };
        }
        if let Some(vc) = self.settled_first.remove(&op.id) {
            return self.set_result(tx, op.id, to_json(&vc)).await;
        }
        if op.kind.changes_vcluster_state() {
            // Until then the result is nothing rather than the workflow's own output.
            self.awaiting_settle.insert(op.id);
            return self.set_result(tx, op.id, serde_json::Value::Null).await;
        }
        let uid = op.vcluster_uid;
        let vc = match self.vclusters.entry(uid) {
            Entry::Occupied(e) => e.into_mut().clone(),
            Entry::Vacant(e) => e.insert(tx.load_vcluster(uid).await?).clone(),
        };
        self.set_result(
            tx,
            op.id,
            vc.as_ref().map_or(serde_json::Value::Null, to_json),
        )
        .await
    }

    async fn set_result<T: TxOps>(
        &mut self,
        tx: &mut T,
        id: OperationId,
        result: serde_json::Value,
    ) -> Result<()> {
        let slot = match self.operations.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(tx.load_operation(id).await?),
        };
        if let Some(op) = slot.as_mut() {
            op.result = result;
            self.changed.operations.insert(id);
        }
        Ok(())
    }

    /// Saves every entity changed and empties the cache.
    pub(crate) async fn flush<T: TxOps>(&mut self, tx: &mut T) -> Result<()> {
        let (mut vclusters, operations, snapshots) = self.take_changed();
        // Deleted incarnations first: a rebuild may replay a delete and the re-creation
        // of the same name in one batch, and the live-name index must never see both
        // live at once.
        vclusters.sort_by_key(|v| v.state != ovc_types::VClusterState::Deleted);
        for vc in vclusters {
            tx.save_vcluster(&vc).await?;
            self.written.0 += 1;
        }
        for op in operations {
            tx.save_operation(&op).await?;
            self.written.1 += 1;
        }
        for snap in snapshots {
            tx.save_snapshot(&snap).await?;
            self.written.2 += 1;
        }
        Ok(())
    }

    /// The entities changed since the last call, and an empty cache.
    pub(crate) fn take_changed(&mut self) -> (Vec<VCluster>, Vec<Operation>, Vec<Snapshot>) {
        let changed = std::mem::take(&mut self.changed);
        let vclusters = self
            .vclusters
            .drain()
            .filter(|(id, _)| changed.vclusters.contains(id))
            .filter_map(|(_, v)| v)
            .collect();
        let operations = self
            .operations
            .drain()
            .filter(|(id, _)| changed.operations.contains(id))
            .filter_map(|(_, v)| v)
            .collect();
        let snapshots = self
            .snapshots
            .drain()
            .filter(|(id, _)| changed.snapshots.contains(id))
            .filter_map(|(_, v)| v)
            .collect();
        (vclusters, operations, snapshots)
    }

    /// Puts `vc` (as loaded; `None`: it does not exist) in the cache, so folding into it
    /// reads nothing more.
    pub(crate) fn preload_vcluster(&mut self, uid: VClusterId, vc: Option<VCluster>) {
        self.vclusters.insert(uid, vc);
    }

    /// Puts `op` (as loaded, with its steps) in the cache.
    pub(crate) fn preload_operation(&mut self, id: OperationId, op: Option<Operation>) {
        self.operations.insert(id, op);
    }

    /// Puts `snap` (as loaded) in the cache.
    pub(crate) fn preload_snapshot(&mut self, id: SnapshotId, snap: Option<Snapshot>) {
        self.snapshots.insert(id, snap);
    }

    /// Entity saves so far: (vclusters, operations, snapshots).
    pub(crate) fn written(&self) -> (u64, u64, u64) {
        self.written
    }
}
