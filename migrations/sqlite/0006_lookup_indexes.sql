-- Lookups that ran as full scans (found by `ovc bench api`: pg_stat_user_tables showed a
-- sequential scan of vclusters per accepted command):
-- * a vcluster by (project, name), deleted incarnations included, newest first — every
--   accept and every GET /v1/vclusters/{name}; the partial unique index on live names
--   cannot serve it;
-- * the runs of an operation.
CREATE INDEX vclusters_by_name ON vclusters (project, name, created_at DESC);
CREATE INDEX runs_by_operation ON runs (operation_id);
