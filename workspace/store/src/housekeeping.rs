//! Housekeeping that every long-lived process (`ovc serve`, `ovc worker`, `ovc dev`)
//! runs: the periodic purge of idempotency keys whose operation ended more than the
//! TTL ago ([`Store::purge_idempotency_keys`]), with counters for `/metrics`. Several
//! processes may purge at once: each key is deleted once, and a purge is one statement.

use crate::{Result, Store};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// How often a process purges expired idempotency keys.
pub const PURGE_EVERY: Duration = Duration::from_secs(10 * 60);

/// The idempotency-key purge of one process and its counters.
#[derive(Debug, Default)]
pub struct IdempotencyPurger {
    purged_total: AtomicU64,
    failures_total: AtomicU64,
    /// Unix seconds (store clock) of the last successful run; 0: none yet.
    last_run: AtomicI64,
}

impl IdempotencyPurger {
    /// Keys deleted by this process so far.
    pub fn purged_total(&self) -> u64 {
        self.purged_total.load(Ordering::Relaxed)
    }

    /// Purges that failed (the store was unreachable, ...).
    pub fn failures_total(&self) -> u64 {
        self.failures_total.load(Ordering::Relaxed)
    }

    /// When the last purge succeeded (Unix seconds, the store's clock), if ever.
    pub fn last_run_unix(&self) -> Option<i64> {
        Some(self.last_run.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// One purge now; counts what it deleted.
    pub async fn run_once(&self, store: &dyn Store) -> Result<u64> {
        match store.purge_idempotency_keys().await {
            Ok(n) => {
                self.purged_total.fetch_add(n, Ordering::Relaxed);
                self.last_run
                    .store(store.clock().now().timestamp(), Ordering::Relaxed);
                if n > 0 {
                    tracing::info!(purged = n, "expired idempotency keys purged");
                }
                Ok(n)
            }
            Err(e) => {
                self.failures_total.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Purges at start and then every `every` until `shutdown` turns true.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.run_once(store.as_ref()).await {
                tracing::warn!(error = %e, "idempotency key purge failed; retrying later");
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                r = shutdown.wait_for(|stop| *stop) => {
                    let _ = r;
                    return;
                }
            }
        }
    }

    /// The counters in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP ovc_idempotency_keys_purged_total Idempotency keys this process deleted \
             (24 h after their operation ended)."
        );
        let _ = writeln!(out, "# TYPE ovc_idempotency_keys_purged_total counter");
        let _ = writeln!(
            out,
            "ovc_idempotency_keys_purged_total {}",
            self.purged_total()
        );
        let _ = writeln!(
            out,
            "# HELP ovc_idempotency_purge_failures_total Idempotency key purges that failed."
        );
        let _ = writeln!(out, "# TYPE ovc_idempotency_purge_failures_total counter");
        let _ = writeln!(
            out,
            "ovc_idempotency_purge_failures_total {}",
            self.failures_total()
        );
        let _ = writeln!(
            out,
            "# HELP ovc_idempotency_purge_last_run_timestamp_seconds When the last purge \
             succeeded (0: not yet)."
        );
        let _ = writeln!(
            out,
            "# TYPE ovc_idempotency_purge_last_run_timestamp_seconds gauge"
        );
        let _ = writeln!(
            out,
            "ovc_idempotency_purge_last_run_timestamp_seconds {}",
            self.last_run_unix().unwrap_or(0)
        );
    }
}
