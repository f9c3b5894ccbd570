-- See migrations/postgres/0004_runs_claim_order.sql.
CREATE INDEX runs_claim_order ON runs (priority DESC, run_at, seq) WHERE status <> 'done';
