-- See migrations/postgres/0003_run_leases.sql.
CREATE TABLE run_leases (
    run_id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    vcluster_uid TEXT NOT NULL,
    owner TEXT NOT NULL,
    claimed_at INTEGER NOT NULL,
    lease_until INTEGER NOT NULL,
    released_at INTEGER,
    PRIMARY KEY (run_id, epoch)
) WITHOUT ROWID;
CREATE INDEX run_leases_by_vcluster ON run_leases (vcluster_uid, claimed_at);
