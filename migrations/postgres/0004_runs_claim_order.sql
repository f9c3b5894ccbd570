-- The claim walks unfinished runs in its ORDER BY (priority DESC, run_at, seq); with this
-- index it stops at the first claimable rows instead of sorting every pending run.
CREATE INDEX runs_claim_order ON runs (priority DESC, run_at, seq) WHERE status <> 'done';
