//! In-process wake-ups: tailers and idle workers wait on these instead of polling hard.
//! SQLite bumps them after each local commit; PostgreSQL also bumps them from LISTEN.

use tokio::sync::watch;

/// Counters that change when events were appended, runs became claimable, or (on
/// PostgreSQL) `ovc_submit` recorded a submission.
#[derive(Debug)]
pub(crate) struct Wakeups {
    events: watch::Sender<u64>,
    runs: watch::Sender<u64>,
    submissions: watch::Sender<u64>,
}

impl Wakeups {
    pub(crate) fn new() -> Self {
        Self {
            events: watch::Sender::new(0),
            runs: watch::Sender::new(0),
            submissions: watch::Sender::new(0),
        }
    }

    /// Events up to `position` are committed.
    pub(crate) fn events_appended(&self, position: u64) {
        self.events.send_if_modified(|cur| {
            if position > *cur {
                *cur = position;
                true
            } else {
                false
            }
        });
    }

    /// Some run may be claimable now.
    pub(crate) fn runs_changed(&self) {
        self.runs.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A submission may be waiting to be accepted.
    pub(crate) fn submissions_changed(&self) {
        self.submissions.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn watch_submissions(&self) -> watch::Receiver<u64> {
        self.submissions.subscribe()
    }

    pub(crate) fn watch_events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    pub(crate) fn watch_runs(&self) -> watch::Receiver<u64> {
        self.runs.subscribe()
    }
}
