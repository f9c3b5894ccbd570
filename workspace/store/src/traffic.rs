//! This process's database traffic, counted in the store: write transactions and the
//! statements (round trips, BEGIN and COMMIT included) sent inside them and outside.
//! `ovc bench workflows` divides them by the workflows run to report the engine's cost
//! per workflow on both backends, also where `pg_stat_statements` cannot be enabled.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, shared by a store and its transactions.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    write_transactions: AtomicU64,
    write_statements: AtomicU64,
    read_statements: AtomicU64,
    commits: AtomicU64,
}

impl Traffic {
    /// A write transaction began (its BEGIN is one statement).
    pub(crate) fn write_transaction(&self) {
        self.write_transactions.fetch_add(1, Ordering::Relaxed);
        self.write_statement();
    }

    /// One statement inside a write transaction (COMMIT, ROLLBACK and savepoints too).
    pub(crate) fn write_statement(&self) {
        self.write_statements.fetch_add(1, Ordering::Relaxed);
    }

    /// One statement outside any write transaction.
    pub(crate) fn read_statement(&self) {
        self.read_statements.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` [`crate::Commit`]s were made (several may share one write transaction).
    pub(crate) fn commits(&self, n: u64) {
        self.commits.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TrafficCounts {
        TrafficCounts {
            write_transactions: self.write_transactions.load(Ordering::Relaxed),
            write_statements: self.write_statements.load(Ordering::Relaxed),
            read_statements: self.read_statements.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
        }
    }
}

/// A reading of [`Traffic`]: totals since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficCounts {
    /// Write transactions begun (commits, claims, housekeeping).
    pub write_transactions: u64,
    /// Statements sent inside write transactions, BEGIN and COMMIT included.
    pub write_statements: u64,
    /// Statements sent outside write transactions (reads).
    pub read_statements: u64,
    /// Commits made through [`crate::Store::commit`].
    pub commits: u64,
}

impl std::ops::Add for TrafficCounts {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        Self {
            write_transactions: self.write_transactions + o.write_transactions,
            write_statements: self.write_statements + o.write_statements,
            read_statements: self.read_statements + o.read_statements,
            commits: self.commits + o.commits,
        }
    }
}

impl std::ops::Sub for TrafficCounts {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            write_transactions: self.write_transactions.saturating_sub(o.write_transactions),
            write_statements: self.write_statements.saturating_sub(o.write_statements),
            read_statements: self.read_statements.saturating_sub(o.read_statements),
            commits: self.commits.saturating_sub(o.commits),
        }
    }
}
