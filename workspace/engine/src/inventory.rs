//! The periodic inventory of snapshot artifacts (issue: "a restore never starts from an
//! artifact that no longer exists"). Every long-lived worker process checks, every
//! `--inventory-every`, that each READY snapshot stored in *its* snapshot storage still
//! has its manifest (with the recorded sha256) and every file the manifest lists, and
//! marks the ones that do not as MISSING (`SnapshotArtifactMissing`); a MISSING one
//! whose artifact is complete again goes back to READY (`SnapshotArtifactFound`).
//!
//! Only keys are listed and manifests read, never the data. A storage that cannot be
//! reached marks nothing (an outage is not a loss). Snapshots whose `location` is in
//! another storage than this process's are left to the processes that have it. Several
//! processes may check at once: each change is appended with the snapshot stream's
//! expected version, so a change is written once and a lost race is skipped.

use ovc_snapshots::ArtifactStore;
use ovc_snapshots::inventory::missing_parts;
use ovc_store::{
    Commit, Error as StoreError, ExpectedVersion, NewEvent, PageRequest, SnapshotFilter, Store,
    StreamAppend,
};
use ovc_types::event::{Event, EventMetadata, StreamName};
use ovc_types::resource::Snapshot;
use ovc_types::state::SnapshotState;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Default interval between two checks of one process.
pub const INVENTORY_EVERY: Duration = Duration::from_secs(60 * 60);

/// Why a check stopped early.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The store failed.
    #[error("inventory: {0}")]
    Store(#[from] StoreError),
    /// The snapshot storage could not be listed or read.
    #[error("inventory: {0}")]
    Storage(#[from] ovc_snapshots::ArtifactError),
}

/// What one check did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventoryReport {
    /// Snapshots of this storage whose artifact was looked at.
    pub checked: u64,
    /// Marked MISSING by this check.
    pub marked_missing: u64,
    /// MISSING ones found complete again (READY).
    pub found_again: u64,
    /// Snapshots in another storage than this process's (not checked).
    pub elsewhere: u64,
}

/// The inventory of one process and its counters.
#[derive(Debug, Default)]
pub struct SnapshotInventory {
    checked_total: AtomicU64,
    missing_total: AtomicU64,
    found_total: AtomicU64,
    failures_total: AtomicU64,
    /// Unix seconds (store clock) of the last complete check; 0: none yet.
    last_run: AtomicI64,
}

impl SnapshotInventory {
    /// One check of every READY and MISSING snapshot now.
    pub async fn run_once(
        &self,
        store: &dyn Store,
        artifacts: &dyn ArtifactStore,
    ) -> Result<InventoryReport, InventoryError> {
        let result = self.check(store, artifacts).await;
        match &result {
            Ok(r) => {
                self.checked_total.fetch_add(r.checked, Ordering::Relaxed);
                self.missing_total
                    .fetch_add(r.marked_missing, Ordering::Relaxed);
                self.found_total.fetch_add(r.found_again, Ordering::Relaxed);
                self.last_run
                    .store(store.clock().now().timestamp(), Ordering::Relaxed);
            }
            Err(_) => {
                self.failures_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn check(
        &self,
        store: &dyn Store,
        artifacts: &dyn ArtifactStore,
    ) -> Result<InventoryReport, InventoryError> {
        let mut report = InventoryReport::default();
        for state in [SnapshotState::Ready, SnapshotState::Missing] {
            let filter = SnapshotFilter {
                state: Some(state),
                ..SnapshotFilter::default()
            };
            let mut page = PageRequest {
                after: None,
                limit: Some(500),
            };
            loop {
                let batch = store.list_snapshots(&filter, &page).await?;
                for snap in &batch.items {
                    check_one(store, artifacts, snap, &mut report).await?;
                }
                match batch.next {
                    Some(next) => page.after = Some(next),
                    None => break,
                }
            }
        }
        if report.marked_missing > 0 || report.found_again > 0 {
            tracing::warn!(
                checked = report.checked,
                missing = report.marked_missing,
                found_again = report.found_again,
                "snapshot inventory changed snapshot states"
            );
        }
        Ok(report)
    }

    /// Checks at start and then every `every` until `shutdown` turns true.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        artifacts: Arc<dyn ArtifactStore>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.run_once(store.as_ref(), artifacts.as_ref()).await {
                tracing::warn!(error = %e, "snapshot inventory check failed; retrying later");
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
        let counters = [
            (
                "ovc_snapshot_inventory_checked_total",
                "Snapshot artifacts this process's inventory looked at.",
                &self.checked_total,
            ),
            (
                "ovc_snapshot_inventory_missing_total",
                "Snapshots this process's inventory marked MISSING.",
                &self.missing_total,
            ),
            (
                "ovc_snapshot_inventory_found_total",
                "MISSING snapshots this process's inventory found complete again.",
                &self.found_total,
            ),
            (
                "ovc_snapshot_inventory_failures_total",
                "Inventory checks that stopped on a store or storage error.",
                &self.failures_total,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
    }
}

async fn check_one(
    store: &dyn Store,
    artifacts: &dyn ArtifactStore,
    snap: &Snapshot,
    report: &mut InventoryReport,
) -> Result<(), InventoryError> {
    let prefix = ovc_snapshots::artifact_prefix(
        snap.project.as_str(),
        snap.vcluster.as_str(),
        &snap.id.to_string(),
    );
    if snap.location.as_deref() != Some(artifacts.url(&prefix).as_str()) {
        report.elsewhere += 1;
        return Ok(());
    }
    report.checked += 1;
    let missing = missing_parts(artifacts, &prefix, snap.sha256.as_deref()).await?;
    let (event, counter) = match (snap.state, missing.is_empty()) {
        (SnapshotState::Ready, false) => {
            tracing::warn!(snapshot = %snap.id, missing = ?missing, "snapshot artifact is incomplete: MISSING");
            (
                Event::SnapshotArtifactMissing { missing },
                &mut report.marked_missing,
            )
        }
        (SnapshotState::Missing, true) => {
            tracing::info!(snapshot = %snap.id, "snapshot artifact is complete again: READY");
            (Event::SnapshotArtifactFound {}, &mut report.found_again)
        }
        _ => return Ok(()),
    };
    let commit = Commit {
        appends: vec![StreamAppend {
            stream: StreamName::snapshot(snap.id),
            expected: ExpectedVersion::Exact(snap.version),
            events: vec![NewEvent {
                event,
                metadata: EventMetadata {
                    actor: Some("inventory".into()),
                    ..EventMetadata::default()
                },
            }],
        }],
        ..Commit::default()
    };
    match store.commit(commit).await {
        Ok(_) => {
            *counter += 1;
            Ok(())
        }
        // A delete, a restore or another process's check changed it meanwhile: that
        // change wins; the next check looks again.
        Err(StoreError::WrongExpectedVersion { .. } | StoreError::Projection(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
