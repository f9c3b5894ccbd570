-- The simulated host's call log (ovc-driver `sim`, OVC_SIM_RECORD_CALLS=1): one row per
-- host call that got past the latency and the lease check, with the lease it was made
-- under, so tests can prove that a worker which lost its lease made no further call.
CREATE TABLE sim_calls (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    method TEXT NOT NULL,
    namespace TEXT NOT NULL,
    operation_id UUID,
    workflow TEXT NOT NULL,
    step TEXT NOT NULL,
    epoch BIGINT,
    owner TEXT,
    called_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sim_calls_by_operation ON sim_calls (operation_id, seq);
