-- Every claim of a run (including steals after lease expiry), and when it ended: the
-- audit trail behind "no two runs of one vcluster ever held leases at the same time",
-- and the source of lease-steal figures. Written in the claim's and the release's
-- transactions.
CREATE TABLE run_leases (
    run_id UUID NOT NULL,
    epoch BIGINT NOT NULL,
    vcluster_uid UUID NOT NULL,
    owner TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    released_at TIMESTAMPTZ,
    PRIMARY KEY (run_id, epoch)
);
CREATE INDEX run_leases_by_vcluster ON run_leases (vcluster_uid, claimed_at);
