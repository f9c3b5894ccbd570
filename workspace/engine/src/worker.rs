//! The worker: apalis 1.0 is the runtime (worker builder, tower layers for tracing,
//! concurrency and panics, the monitor and its graceful shutdown) over **our** run queue,
//! which implements apalis's `Backend` ([`RunQueue`]). Each task is one claimed run; the
//! handler renews its lease while an [`Executor`] runs it, and every journal commit is
//! fenced by the lease's epoch.
//!
//! Time: the lease's end and every due time are the database's clock (the store computes
//! them from durations), so a worker whose clock is off neither steals healthy leases nor
//! loses its own. The worker keeps its own view of the lease on its **monotonic** clock
//! (a [`Fence`]: the instant the last successful renewal was sent plus the lease length,
//! never later than the database's end); the executor and the drivers check it before
//! every host call, so a worker frozen past its lease makes no further call.
//!
//! Why our queue and not apalis-postgres/apalis-sqlite (DESIGN.md §5): their ack is
//! asynchronous after the handler, step chaining is not transactional, recovery happens
//! only inside live workers after minutes, and they cannot serialize runs per vcluster.
//! Leases and fencing live in our table; apalis never acks or retries anything itself
//! (the backend is `Ephemeral`, the handler never fails), so it cannot contradict them.
//!
//! Shutdown: no new claims; running executors stop at their next step boundary and
//! release their runs; anything still running after the grace period is abandoned to
//! lease expiry (another worker takes it over). Wake-ups: the store's run watch
//! (LISTEN/NOTIFY on PostgreSQL, in-process on SQLite) plus a poll every `idle_poll` and
//! at the next due `run_at`, so durable timers fire and other processes' commits are
//! seen.

use crate::executor::{ExecError, Executor, RunEnd};
use apalis::layers::WorkerBuilderExt;
use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::error::BoxDynError;
use apalis_core::layers::Identity;
use apalis_core::monitor::Monitor;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::data::Data;
use apalis_core::task::task_id::{RandomId, TaskId};
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::context::WorkerContext;
use futures::FutureExt;
use futures::future::BoxFuture;
use ovc_driver::Fence;
use ovc_store::{Run, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Lease owner name; unique per process.
    pub owner: String,
    /// Runs executed at once.
    pub concurrency: usize,
    /// Lease length; renewed a third to a half of it after the last renewal.
    pub lease: Duration,
    /// Longest sleep between claim attempts when idle.
    pub idle_poll: Duration,
    /// How long shutdown waits for running executors.
    pub grace: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            owner: default_owner(),
            concurrency: 32,
            lease: Duration::from_secs(5),
            idle_poll: Duration::from_millis(500),
            grace: Duration::from_secs(20),
        }
    }
}

/// `<hostname>-<pid>-<random>`: unique per process.
pub fn default_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &rand[..6])
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Runs claimed.
    pub claimed: u64,
    /// Runs that reached a terminal state.
    pub completed: u64,
    /// Runs rescheduled (pending or durable retry).
    pub rescheduled: u64,
    /// Runs released at shutdown.
    pub released: u64,
    /// Runs whose lease was lost or whose store calls failed.
    pub failed: u64,
}

/// A run claimed by this worker, with the instant (monotonic) the claim was sent: the
/// database's lease cannot have started before it.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// The run, as the claim returned it.
    pub run: Run,
    /// When the claim request was sent.
    pub sent: Instant,
}

/// Executes `run` while renewing its lease (see [`next_renewal`]). The run's [`Fence`]
/// is held until the last successful renewal's send instant plus `lease`; a renewal
/// answering `LeaseLost` drops it at once, a failing one lets it run out. Either way the
/// execution stops (drivers and the executor refuse to go on under a fence not held).
async fn execute_leased(
    exec: Executor,
    claimed: ClaimedRun,
    stop: watch::Receiver<bool>,
    lease: Duration,
) -> Result<RunEnd, ExecError> {
    let ClaimedRun { run, sent } = claimed;
    let store = exec.store.clone();
    let lease_ref = run.lease();
    let fence = Fence::new(run.epoch, exec.owner.clone(), sent + lease);
    let chrono_lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(5));
    let renewing = fence.clone();
    let renew = async move {
        let mut since = sent;
        loop {
            tokio::time::sleep_until(next_renewal(since, lease).into()).await;
            if !renewing.is_held() {
                return;
            }
            let sent = Instant::now();
            match store.renew_lease(lease_ref, chrono_lease).await {
                Ok(()) => {
                    renewing.extend(sent + lease);
                    since = sent;
                }
                Err(ovc_store::Error::LeaseLost { .. }) => {
                    renewing.lose();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed; will retry");
                    tokio::time::sleep((lease / 6).max(Duration::from_millis(1))).await;
                }
            }
        }
    };
    tokio::select! {
        r = exec.execute(&run, fence.clone(), &stop) => r,
        () = renew => Err(ExecError::Fenced {
            run_id: run.id,
            epoch: run.epoch,
        }),
    }
}

/// When a run claimed or last renewed at `since` renews next: a third of the lease
/// later, rounded up to the process's renewal grid (a tick every sixth of the lease from
/// one process-wide origin). The runs of a process thus renew at the same instants and
/// their renewals share one transaction (the store's renewal committer) instead of one
/// each; a renewal still comes at most half a lease after the last one.
fn next_renewal(since: Instant, lease: Duration) -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let tick = (lease / 6).max(Duration::from_millis(1));
    let due = (since + lease / 3).saturating_duration_since(origin);
    let ticks = due.as_nanos().div_ceil(tick.as_nanos());
    origin + tick.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
}

/// A claim in flight: the claimed runs and when the claim was sent.
type ClaimFuture = BoxFuture<'static, ovc_store::Result<(Vec<Run>, Instant)>>;

/// Our run queue as an apalis backend. A poll with nothing claimed in hand claims as
/// many due runs as the worker has free slots, in one round trip, and hands them out one
/// per poll; since it never claims more than the free slots, no run sits leased but
/// unstarted for longer than the handlers take to start.
pub struct RunQueue {
    store: Arc<dyn Store>,
    owner: String,
    lease: chrono::Duration,
    idle_poll: Duration,
    claiming: Option<ClaimFuture>,
    waiting: Option<BoxFuture<'static, ()>>,
    /// Runs claimed and not yet handed out, with the claim's send instant.
    claimed: std::collections::VecDeque<(Run, Instant)>,
    /// Runs claimed and not yet finished by their handler.
    in_flight: Arc<AtomicUsize>,
    /// The worker's slots.
    concurrency: usize,
}

impl std::fmt::Debug for RunQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunQueue")
            .field("owner", &self.owner)
            .finish()
    }
}

impl RunQueue {
    /// A backend claiming runs of `store` as `owner`, for a worker of `concurrency`
    /// slots whose handlers decrement `in_flight` when they finish a run.
    pub fn new(
        store: Arc<dyn Store>,
        owner: String,
        lease: Duration,
        idle_poll: Duration,
        concurrency: usize,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            store,
            owner,
            lease: chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(5)),
            idle_poll,
            claiming: None,
            waiting: None,
            claimed: std::collections::VecDeque::new(),
            in_flight,
            concurrency: concurrency.max(1),
        }
    }

    /// Sleeps until something may be claimable: a run wake-up, the next due time, or the
    /// idle poll, whichever comes first.
    fn wait(&self) -> BoxFuture<'static, ()> {
        let store = self.store.clone();
        let idle = self.idle_poll;
        let mut wake = store.watch_runs();
        wake.borrow_and_update();
        async move {
            let mut sleep = idle;
            if let Ok(Some(until)) = store.next_run_due_in().await
                && until > Duration::ZERO
            {
                sleep = sleep.min(until);
            }
            tokio::select! {
                _ = wake.changed() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
        .boxed()
    }
}

impl Backend for RunQueue {
    type Task = Task<ClaimedRun>;
    type Error = ovc_store::Error;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            if let Some((run, sent)) = self.claimed.pop_front() {
                // The task id names the claim: run and fencing epoch.
                let id = TaskId::String(format!("{}@{}", run.id, run.epoch));
                let task = TaskBuilder::new(ClaimedRun { run, sent })
                    .task_id(id)
                    .build();
                return Poll::Ready(Some(Ok(task)));
            }
            if worker.is_shutting_down() {
                return Poll::Ready(None);
            }
            if let Some(waiting) = self.waiting.as_mut() {
                match waiting.poll_unpin(cx) {
                    Poll::Ready(()) => self.waiting = None,
                    Poll::Pending => return Poll::Pending,
                }
            }
            let free = self
                .concurrency
                .saturating_sub(self.in_flight.load(Ordering::Acquire))
                .max(1);
            let claiming = self.claiming.get_or_insert_with(|| {
                let store = self.store.clone();
                let owner = self.owner.clone();
                let lease = self.lease;
                async move {
                    let sent = Instant::now();
                    store
                        .claim_runs(&owner, lease, u32::try_from(free).unwrap_or(u32::MAX))
                        .await
                        .map(|r| (r, sent))
                }
                .boxed()
            });
            let claimed = match claiming.poll_unpin(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => return Poll::Pending,
            };
            self.claiming = None;
            match claimed {
                Ok((runs, sent)) if !runs.is_empty() => {
                    self.in_flight.fetch_add(runs.len(), Ordering::AcqRel);
                    self.claimed.extend(runs.into_iter().map(|r| (r, sent)));
                }
                Ok(_) => self.waiting = Some(self.wait()),
                Err(e) => {
                    tracing::warn!(error = %e, "claim failed; retrying in 1s");
                    self.waiting = Some(tokio::time::sleep(Duration::from_secs(1)).boxed());
                }
            }
        }
    }

    fn poll_close(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for RunQueue {
    type Args = ClaimedRun;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}

/// A worker: apalis runtime, our queue, our executor.
#[derive(Debug, Clone)]
pub struct Worker {
    exec: Executor,
    options: WorkerOptions,
}

#[derive(Debug, Default)]
struct Counters {
    claimed: AtomicU64,
    completed: AtomicU64,
    rescheduled: AtomicU64,
    released: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Clone)]
struct HandlerState {
    exec: Executor,
    lease: Duration,
    counters: Arc<Counters>,
    /// Runs claimed and not finished (shared with the [`RunQueue`]).
    in_flight: Arc<AtomicUsize>,
}

/// The apalis handler: one claimed run, executed under a renewed lease. It never fails
/// from apalis's point of view; outcomes live in the journal.
async fn handle(
    claimed: ClaimedRun,
    state: Data<HandlerState>,
    worker: WorkerContext,
) -> Result<(), BoxDynError> {
    state.counters.claimed.fetch_add(1, Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(async move {
        loop {
            if worker.is_shutting_down() {
                let _ = stop_tx.send(true);
                return;
            }
            if stop_tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let operation = claimed.run.operation_id;
    let res = execute_leased(state.exec.clone(), claimed, stop_rx, state.lease).await;
    state.in_flight.fetch_sub(1, Ordering::AcqRel);
    watcher.abort();
    let c = &state.counters;
    match res {
        Ok(RunEnd::Completed(_)) => c.completed.fetch_add(1, Ordering::Relaxed),
        Ok(RunEnd::Rescheduled(_)) => c.rescheduled.fetch_add(1, Ordering::Relaxed),
        Ok(RunEnd::Released) => c.released.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            tracing::warn!(%operation, error = %e, "run stopped");
            c.failed.fetch_add(1, Ordering::Relaxed)
        }
    };
    Ok(())
}

impl Worker {
    /// A worker executing with `exec`.
    pub fn new(mut exec: Executor, options: WorkerOptions) -> Self {
        exec.owner = options.owner.clone();
        Self { exec, options }
    }

    /// The store it works on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.exec.store
    }

    /// Runs until `shutdown` becomes true, then stops gracefully.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> WorkerReport {
        let counters = Arc::new(Counters::default());
        let in_flight = Arc::new(AtomicUsize::new(0));
        let state = HandlerState {
            exec: self.exec.clone(),
            lease: self.options.lease,
            counters: counters.clone(),
            in_flight: in_flight.clone(),
        };
        let opts = self.options.clone();
        let store = self.exec.store.clone();
        // Operations enqueued from SQL (`ovc_submit`) enter through this worker too (it
        // ends at once on stores without SQL enqueue).
        let acceptor = tokio::spawn(
            crate::submissions::SubmissionAcceptor {
                store: store.clone(),
                registry: self.exec.registry.clone(),
                ids: self.exec.ids.clone(),
            }
            .run(shutdown.clone()),
        );
        let monitor = Monitor::new()
            .register(move |_restarts| {
                WorkerBuilder::new(opts.owner.clone())
                    .backend(RunQueue::new(
                        store.clone(),
                        opts.owner.clone(),
                        opts.lease,
                        opts.idle_poll,
                        opts.concurrency.max(1),
                        in_flight.clone(),
                    ))
                    .enable_tracing()
                    .catch_panic()
                    .concurrency(opts.concurrency.max(1))
                    .data(state.clone())
                    .build(handle)
            })
            .shutdown_timeout(self.options.grace);
        let signal = async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
            Ok(())
        };
        if let Err(e) = monitor.run_with_signal(signal).await {
            tracing::error!(error = %e, "worker runtime stopped with an error");
        }
        // It sees the same shutdown signal and ends at its next look.
        let _ = acceptor.await;
        WorkerReport {
            claimed: counters.claimed.load(Ordering::Relaxed),
            completed: counters.completed.load(Ordering::Relaxed),
            rescheduled: counters.rescheduled.load(Ordering::Relaxed),
            released: counters.released.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
        }
    }
}
