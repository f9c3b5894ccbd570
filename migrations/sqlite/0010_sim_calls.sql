-- The simulated host's call log (ovc-driver `sim`, OVC_SIM_RECORD_CALLS=1): one row per
-- host call that got past the latency and the lease check, with the lease it was made
-- under, so tests can prove that a worker which lost its lease made no further call.
-- The SQLite twin of migrations/postgres/0010_sim_calls.sql.
CREATE TABLE sim_calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT NOT NULL,
    namespace TEXT NOT NULL,
    operation_id TEXT,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    epoch INTEGER,
    owner TEXT,
    -- Microseconds since the epoch, by the database's clock.
    called_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
);
CREATE INDEX sim_calls_by_operation ON sim_calls (operation_id, seq);
