-- Enqueue from SQL (docs/architecture.md "Enqueue from SQL"), for services that share
-- this database: `ovc_submit(kind, project, vcluster, params, request_id, traceparent)`
-- records a submission in the *caller's* transaction and returns the id its operation
-- will have. A rolled-back caller leaves nothing; a committed submission is accepted by
-- the workers through the same Rust `accept` as the API (validation, idempotency, the
-- state machine, the command event, the operation and its run), exactly once.
--
-- So that SQL callers get the API's answer at once for the common refusals, the function
-- checks the request id and the vcluster's state machine itself, from tables that
-- `ovc migrate` rewrites from the running build (ovc_store::submissions): the rules are
-- data derived from the Rust table, never a second hand-written copy. What only Rust can
-- check (parameter validation, hosts, snapshots) ends a submission `rejected`, with the
-- API's code, reason and message, visible in `ovc_submissions`.

-- Written by `ovc migrate`: the API's answer to each (call, vcluster state); '' is
-- "no live vcluster of that name". `code` NULL: allowed.
CREATE TABLE ovc_call_rules (
    call TEXT NOT NULL,
    from_state TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    message TEXT,
    PRIMARY KEY (call, from_state)
);

-- Written by `ovc migrate`: the SQLSTATE raised for each API code ('OV' + the gRPC
-- code number, e.g. OV009 for FAILED_PRECONDITION).
CREATE TABLE ovc_error_codes (
    code TEXT PRIMARY KEY,
    sqlstate TEXT NOT NULL
);

-- Written by `ovc migrate`: every operation kind, and the vcluster state its operation
-- holds while it runs (NULL: none, DELETE_SNAPSHOT).
CREATE TABLE ovc_operation_kinds (
    kind TEXT PRIMARY KEY,
    in_progress_state TEXT
);

-- Written by `ovc migrate`: `submissions_channel`, the NOTIFY channel that wakes the
-- workers' acceptors.
CREATE TABLE ovc_settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE ovc_submissions (
    -- The id the operation gets when accepted.
    operation_id UUID PRIMARY KEY,
    project TEXT NOT NULL,
    -- The vcluster the operation targets (a restore's target name).
    vcluster TEXT NOT NULL,
    kind TEXT NOT NULL,
    params JSONB NOT NULL,
    request_id TEXT,
    traceparent TEXT,
    -- The database role that submitted (recorded as the command's actor `sql:<role>`).
    actor TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'accepted', 'rejected')),
    -- A worker accepting it holds it until then.
    claimed_until TIMESTAMPTZ,
    -- The operation that answers it: `operation_id`, or the first operation of a repeated
    -- request id.
    answered_by UUID,
    -- Why it was rejected: the API's code, reason and message.
    code TEXT,
    reason TEXT,
    message TEXT,
    submitted_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    settled_at TIMESTAMPTZ
);
CREATE UNIQUE INDEX ovc_submissions_request ON ovc_submissions (project, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX ovc_submissions_pending ON ovc_submissions (submitted_at) WHERE state = 'pending';
CREATE INDEX ovc_submissions_pending_vcluster ON ovc_submissions (project, vcluster)
    WHERE state = 'pending';
CREATE INDEX ovc_submissions_settled ON ovc_submissions (settled_at) WHERE state <> 'pending';

-- Raises the API's error: SQLSTATE from ovc_error_codes, MESSAGE 'CODE: message',
-- DETAIL the reason (e.g. INVALID_TRANSITION), HINT the code.
CREATE FUNCTION ovc_raise(p_code TEXT, p_reason TEXT, p_message TEXT) RETURNS VOID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    v_sqlstate TEXT;
BEGIN
    SELECT e.sqlstate INTO v_sqlstate FROM ovc_error_codes e WHERE e.code = p_code;
    RAISE EXCEPTION USING
        ERRCODE = coalesce(v_sqlstate, 'P0001'),
        MESSAGE = p_code || ': ' || p_message,
        DETAIL = coalesce(p_reason, ''),
        HINT = p_code;
END
$$;

CREATE FUNCTION ovc_submit(
    kind TEXT,
    project TEXT,
    vcluster TEXT,
    params JSONB DEFAULT '{}'::jsonb,
    request_id TEXT DEFAULT NULL,
    traceparent TEXT DEFAULT NULL
) RETURNS UUID
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
#variable_conflict use_column
DECLARE
    v_kind TEXT := upper(ovc_submit.kind);
    v_params JSONB := coalesce(ovc_submit.params, '{}'::jsonb);
    v_target TEXT := ovc_submit.vcluster;
    v_call TEXT;
    v_state TEXT;
    v_busy TEXT;
    v_rule ovc_call_rules%ROWTYPE;
    v_prior ovc_submissions%ROWTYPE;
    v_first UUID;
    v_first_kind TEXT;
    v_first_vcluster TEXT;
    v_id UUID := gen_random_uuid();
BEGIN
    IF ovc_submit.project IS NULL OR ovc_submit.vcluster IS NULL THEN
        PERFORM ovc_raise('INVALID_ARGUMENT', NULL, 'project and vcluster are required');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM ovc_operation_kinds k WHERE k.kind = v_kind) THEN
        PERFORM ovc_raise('INVALID_ARGUMENT', NULL, format(
            'unknown operation kind %L; one of %s', ovc_submit.kind,
            (SELECT string_agg(k.kind, ', ' ORDER BY k.kind) FROM ovc_operation_kinds k)));
    END IF;
    IF jsonb_typeof(v_params) <> 'object' THEN
        PERFORM ovc_raise('INVALID_ARGUMENT', NULL, 'params must be a JSON object');
    END IF;
    IF v_params ? 'kind' AND v_params->>'kind' IS DISTINCT FROM v_kind THEN
        PERFORM ovc_raise('INVALID_ARGUMENT', NULL, format(
            'params.kind %L contradicts kind %L', v_params->>'kind', v_kind));
    END IF;

    -- The state-machine call, and the vcluster it targets.
    IF v_kind = 'RESTORE' THEN
        IF v_params->'target' ? 'new_name' THEN
            v_call := 'RESTORE_NEW';
            v_target := v_params->'target'->>'new_name';
        ELSIF v_params->'target' ? 'existing' THEN
            v_call := 'RESTORE_OVERWRITE';
            v_target := v_params->'target'->>'existing';
        ELSE
            PERFORM ovc_raise('INVALID_ARGUMENT', NULL,
                'RESTORE needs params.target {"new_name": ...} or {"existing": ...}');
        END IF;
    ELSIF v_kind <> 'DELETE_SNAPSHOT' THEN
        v_call := v_kind;
    END IF;

    -- A repeated request id answers with its first operation.
    IF ovc_submit.request_id IS NOT NULL THEN
        <<repeat>>
        LOOP
            SELECT * INTO v_prior FROM ovc_submissions s
            WHERE s.project = ovc_submit.project AND s.request_id = ovc_submit.request_id;
            IF FOUND AND v_prior.state = 'rejected' THEN
                -- A refused request left no operation: it is decided afresh, as the API does.
                DELETE FROM ovc_submissions s WHERE s.operation_id = v_prior.operation_id;
            ELSIF FOUND THEN
                IF v_prior.kind = v_kind AND v_prior.vcluster = v_target
                   AND v_prior.params = v_params THEN
                    RETURN coalesce(v_prior.answered_by, v_prior.operation_id);
                END IF;
                PERFORM ovc_raise('INVALID_ARGUMENT', 'REQUEST_ID_REUSED', format(
                    'request_id %L was used for another request (operation %s)',
                    ovc_submit.request_id, coalesce(v_prior.answered_by, v_prior.operation_id)));
            END IF;
            EXIT repeat;
        END LOOP;
        -- First used through the API: the same kind on the same vcluster is a repeat.
        SELECT k.operation_id, o.kind, o.vcluster INTO v_first, v_first_kind, v_first_vcluster
        FROM idempotency_keys k LEFT JOIN operations o ON o.id = k.operation_id
        WHERE k.project = ovc_submit.project AND k.request_id = ovc_submit.request_id;
        IF FOUND THEN
            IF v_first_kind = v_kind AND v_first_vcluster = v_target THEN
                RETURN v_first;
            END IF;
            PERFORM ovc_raise('INVALID_ARGUMENT', 'REQUEST_ID_REUSED', format(
                'request_id %L was used for another request (operation %s)',
                ovc_submit.request_id, v_first));
        END IF;
    END IF;

    -- The state machine, as the API would answer now.
    IF v_call IS NOT NULL THEN
        SELECT v.state INTO v_state FROM vclusters v
        WHERE v.project = ovc_submit.project AND v.name = v_target AND v.state <> 'DELETED';
        v_state := coalesce(v_state, '');
        -- A submission not yet accepted holds the vcluster as its operation will.
        SELECT k.in_progress_state INTO v_busy
        FROM ovc_submissions s JOIN ovc_operation_kinds k ON k.kind = s.kind
        WHERE s.state = 'pending' AND s.project = ovc_submit.project AND s.vcluster = v_target
          AND k.in_progress_state IS NOT NULL
        ORDER BY s.submitted_at LIMIT 1;
        IF FOUND THEN
            v_state := v_busy;
        END IF;
        SELECT * INTO v_rule FROM ovc_call_rules r
        WHERE r.call = v_call AND r.from_state = v_state;
        IF NOT FOUND THEN
            PERFORM ovc_raise('UNAVAILABLE', NULL, format(
                'ovc_call_rules has no rule for %s from %L: run `ovc migrate` with this ovc version',
                v_call, v_state));
        END IF;
        IF v_rule.code IS NOT NULL THEN
            PERFORM ovc_raise(v_rule.code, v_rule.reason, format(
                'vcluster %s/%s: %s', ovc_submit.project, v_target, v_rule.message));
        END IF;
    END IF;

    BEGIN
        INSERT INTO ovc_submissions
            (operation_id, project, vcluster, kind, params, request_id, traceparent, actor)
        VALUES
            (v_id, ovc_submit.project, v_target, v_kind, v_params, ovc_submit.request_id,
             ovc_submit.traceparent, session_user);
    EXCEPTION WHEN unique_violation THEN
        -- A concurrent twin with the same request id committed first.
        SELECT * INTO v_prior FROM ovc_submissions s
        WHERE s.project = ovc_submit.project AND s.request_id = ovc_submit.request_id;
        IF v_prior.kind = v_kind AND v_prior.vcluster = v_target AND v_prior.params = v_params
        THEN
            RETURN coalesce(v_prior.answered_by, v_prior.operation_id);
        END IF;
        PERFORM ovc_raise('INVALID_ARGUMENT', 'REQUEST_ID_REUSED', format(
            'request_id %L was used for another request (operation %s)',
            ovc_submit.request_id, coalesce(v_prior.answered_by, v_prior.operation_id)));
    END;
    PERFORM pg_notify(st.value, '') FROM ovc_settings st WHERE st.key = 'submissions_channel';
    RETURN v_id;
END
$$;
