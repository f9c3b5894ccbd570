-- The event log, stream versions, idempotency keys, projections and the run queue.
-- See docs/architecture.md "The store" for why each table looks the way it does.

-- One row; every commit that appends events bumps it as its last write. The row lock
-- serializes the allocation of positions with the commit itself, so positions become
-- visible strictly in order and a tail reader (WHERE position > $last) never skips one.
CREATE TABLE event_log_head (
    id SMALLINT PRIMARY KEY CHECK (id = 1),
    last_position BIGINT NOT NULL
);
INSERT INTO event_log_head (id, last_position) VALUES (1, 0);

-- Current version per stream; the optimistic-concurrency check is an UPDATE ... WHERE.
CREATE TABLE streams (
    stream TEXT PRIMARY KEY,
    version BIGINT NOT NULL CHECK (version > 0)
);

CREATE TABLE events (
    position BIGINT PRIMARY KEY,
    stream TEXT NOT NULL,
    version BIGINT NOT NULL,
    type TEXT NOT NULL,
    data JSONB NOT NULL,
    metadata JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    UNIQUE (stream, version)
);

CREATE TABLE idempotency_keys (
    project TEXT NOT NULL,
    request_id TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    operation_id UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project, request_id)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

CREATE TABLE runs (
    seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id UUID PRIMARY KEY,
    operation_id UUID NOT NULL,
    vcluster_uid UUID NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'leased', 'done')),
    run_at TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until TIMESTAMPTZ,
    epoch BIGINT NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
-- The claim scans only unfinished runs.
CREATE INDEX runs_pending ON runs (run_at, seq) WHERE status <> 'done';
CREATE INDEX runs_vcluster_pending ON runs (vcluster_uid, seq) WHERE status <> 'done';
-- The database itself guarantees at most one leased run per vcluster.
CREATE UNIQUE INDEX runs_one_leased_per_vcluster ON runs (vcluster_uid) WHERE status = 'leased';

-- Projections: indexed columns for filtering plus the whole read model as JSON.
CREATE TABLE vclusters (
    uid UUID PRIMARY KEY,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    doc JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
-- A name is unique among live vclusters of a project; a deleted one frees it.
CREATE UNIQUE INDEX vclusters_live_name ON vclusters (project, name) WHERE state <> 'DELETED';

CREATE TABLE operations (
    id UUID PRIMARY KEY,
    project TEXT NOT NULL,
    vcluster_uid UUID NOT NULL,
    vcluster TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    request_id TEXT,
    retry_of UUID,
    version BIGINT NOT NULL,
    doc JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX operations_by_vcluster ON operations (project, vcluster, created_at);
CREATE INDEX operations_by_state ON operations (project, state, kind, created_at);

CREATE TABLE operation_steps (
    operation_id UUID NOT NULL,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ,
    error JSONB,
    PRIMARY KEY (operation_id, idx)
);

CREATE TABLE snapshots (
    id UUID PRIMARY KEY,
    project TEXT NOT NULL,
    vcluster TEXT NOT NULL,
    vcluster_uid UUID NOT NULL,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    doc JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX snapshots_by_vcluster ON snapshots (project, vcluster, created_at);
