//! The worker: claims due runs from the store's queue, runs an [`Executor`] for each
//! (up to `concurrency` at once), renews their leases while they run, and shuts down
//! gracefully — no new claims, running executors stop between steps and release their
//! runs, anything still running after the grace period is abandoned to lease expiry.
//!
//! Wake-ups: the store's run watch (LISTEN/NOTIFY on PostgreSQL, in-process on SQLite)
//! plus a poll every `idle_poll` and at the next due `run_at`, so durable timers fire
//! and other processes' commits are seen.

use crate::executor::{ExecError, Executor, RunEnd};
use chrono::Utc;
use ovc_store::{Run, Store};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Lease owner name; unique per process.
    pub owner: String,
    /// Runs executed at once.
    pub concurrency: usize,
    /// Lease length; renewed every third of it.
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

/// A worker.
#[derive(Debug, Clone)]
pub struct Worker {
    exec: Executor,
    options: WorkerOptions,
}

async fn execute_leased(
    exec: Executor,
    run: Run,
    stop: watch::Receiver<bool>,
    lease: Duration,
) -> Result<RunEnd, ExecError> {
    let store = exec.store.clone();
    let lease_ref = run.lease();
    let chrono_lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(5));
    let renew = async move {
        loop {
            tokio::time::sleep(lease / 3).await;
            match store.renew_lease(lease_ref, chrono_lease).await {
                Ok(_) => {}
                Err(ovc_store::Error::LeaseLost { .. }) => return,
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; will retry"),
            }
        }
    };
    tokio::select! {
        r = exec.execute(&run, &stop) => r,
        () = renew => Err(ExecError::Store(ovc_store::Error::LeaseLost {
            run_id: run.id,
            epoch: run.epoch,
        })),
    }
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
        let store = self.exec.store.clone();
        let opts = self.options.clone();
        let chrono_lease =
            chrono::Duration::from_std(opts.lease).unwrap_or(chrono::Duration::seconds(5));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut runs_wake = store.watch_runs();
        let mut tasks: JoinSet<Result<RunEnd, ExecError>> = JoinSet::new();
        let mut report = WorkerReport::default();
        let record =
            |report: &mut WorkerReport, res: Result<Result<RunEnd, ExecError>, _>| match res {
                Ok(Ok(RunEnd::Completed(_))) => report.completed += 1,
                Ok(Ok(RunEnd::Rescheduled(_))) => report.rescheduled += 1,
                Ok(Ok(RunEnd::Released)) => report.released += 1,
                Ok(Err(e)) => {
                    report.failed += 1;
                    tracing::warn!(error = %e, "run stopped");
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::error!(error = %e, "executor task panicked or was aborted");
                }
            };
        loop {
            if *shutdown.borrow() {
                break;
            }
            runs_wake.borrow_and_update();
            let free = opts.concurrency.saturating_sub(tasks.len());
            let mut claimed_all = false;
            if free > 0 {
                match store
                    .claim_runs(&opts.owner, chrono_lease, free as u32)
                    .await
                {
                    Ok(runs) => {
                        claimed_all = runs.len() == free;
                        for run in runs {
                            report.claimed += 1;
                            tasks.spawn(execute_leased(
                                self.exec.clone(),
                                run,
                                stop_rx.clone(),
                                opts.lease,
                            ));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claim failed; retrying"),
                }
            }
            while let Some(res) = tasks.try_join_next() {
                record(&mut report, res);
            }
            if claimed_all {
                continue;
            }
            let mut sleep = opts.idle_poll;
            if let Ok(Some(due)) = store.next_run_due().await {
                let until = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                if until > Duration::ZERO {
                    sleep = sleep.min(until);
                }
            }
            tokio::select! {
                _ = runs_wake.changed() => {}
                () = tokio::time::sleep(sleep) => {}
                Some(res) = tasks.join_next(), if !tasks.is_empty() => record(&mut report, res),
                _ = shutdown.changed() => {}
            }
        }
        let _ = stop_tx.send(true);
        let drain = async {
            while let Some(res) = tasks.join_next().await {
                record(&mut report, res);
            }
        };
        if tokio::time::timeout(opts.grace, drain).await.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "grace period over; abandoning running steps to lease expiry"
            );
            tasks.abort_all();
        }
        report
    }
}
