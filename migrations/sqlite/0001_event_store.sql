-- The SQLite twin of migrations/postgres/0001_event_store.sql. Differences: UUIDs and
-- JSON are TEXT, timestamps are INTEGER microseconds since the Unix epoch (so they
-- compare and sort as numbers). SQLite has one writer at a time (BEGIN IMMEDIATE), so
-- positions are allocated in commit order by construction.

CREATE TABLE event_log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_position INTEGER NOT NULL
);
INSERT INTO event_log_head (id, last_position) VALUES (1, 0);

CREATE TABLE streams (
    stream TEXT PRIMARY KEY,
    version INTEGER NOT NULL CHECK (version > 0)
) WITHOUT ROWID;

CREATE TABLE events (
    position INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    metadata TEXT NOT NULL,
    recorded_at INTEGER NOT NULL,
    UNIQUE (stream, version)
);

CREATE TABLE idempotency_keys (
    project TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    operation_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (project, request_id)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    operation_id TEXT NOT NULL,
    vcluster_uid TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'leased', 'done')),
    run_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until INTEGER,
    epoch INTEGER NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX runs_pending ON runs (run_at, seq) WHERE status <> 'done';
CREATE INDEX runs_vcluster_pending ON runs (vcluster_uid, seq) WHERE status <> 'done';
CREATE UNIQUE INDEX runs_one_leased_per_vcluster ON runs (vcluster_uid) WHERE status = 'leased';

CREATE TABLE vclusters (
    uid TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX vclusters_live_name ON vclusters (project, name) WHERE state <> 'DELETED';

CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    vcluster_uid TEXT NOT NULL,
    vcluster TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request_id TEXT,
    retry_of TEXT,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX operations_by_vcluster ON operations (project, vcluster, created_at);
CREATE INDEX operations_by_state ON operations (project, state, kind, created_at);

CREATE TABLE operation_steps (
    operation_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    error TEXT,
    PRIMARY KEY (operation_id, idx)
) WITHOUT ROWID;

CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    vcluster TEXT NOT NULL,
    vcluster_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX snapshots_by_vcluster ON snapshots (project, vcluster, created_at);
