//! Enqueue from SQL (PostgreSQL): the Rust side of `ovc_submit` (migration
//! `0011_sql_submit.sql`).
//!
//! A service sharing the database calls `ovc_submit(...)` inside its own transaction; the
//! function records a *submission* there and returns the id its operation will have. The
//! workers then accept each committed submission through the one Rust `accept` the API
//! uses (`ovc_engine::submissions`), so validation, idempotency and the state machine
//! have one implementation.
//!
//! For the refusals a caller should see at once (an invalid transition, a missing or
//! existing vcluster, a busy one, a reused request id), the function answers itself from
//! tables rewritten from this build: the SQLSTATE of every API code on every `ovc
//! migrate`, and, from the registry ([`RuleTables::of`], written by
//! `Store::sync_call_rules` from `ovc migrate` and at every worker's start), the state
//! machine of [`ovc_types::state::transition`] evaluated for every registered kind's
//! calls and every state, and each registered kind's in-progress state. The rules are
//! data derived from the workflows' declarations, never a hand-written second copy: a
//! new operation is submittable from SQL with no edit here.

use crate::Result;
use ovc_types::OperationId;
use ovc_types::error::{Code, Status};
use ovc_types::state::{Call, CallRules, OperationKind, VClusterState, transition};
use sqlx::{PgPool, Row};

/// A committed `ovc_submit` call waiting to be accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// The id the operation gets.
    pub operation_id: OperationId,
    /// As given (not yet validated).
    pub project: String,
    /// The target vcluster as given (a restore's target name).
    pub vcluster: String,
    /// The operation kind, upper case (known to exist).
    pub kind: String,
    /// The command's parameters: the API's command JSON without `kind`.
    pub params: serde_json::Value,
    /// The caller's idempotency key.
    pub request_id: Option<String>,
    /// The caller's W3C traceparent.
    pub traceparent: Option<String>,
    /// The database role that submitted.
    pub actor: String,
}

/// How a submission ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmissionOutcome {
    /// Accepted: this operation answers it (the submission's own id, or the first
    /// operation of a repeated request id).
    Accepted {
        /// The answering operation.
        answered_by: OperationId,
    },
    /// Refused with the API's error.
    Rejected(Status),
}

/// The name of a state-machine call in `ovc_call_rules.call` (`None`: a retry, which
/// SQL does not submit): the kind's name for its one call; a kind with two (RESTORE:
/// into a new vcluster or over one) names them `<KIND>_NEW` and `<KIND>_OVERWRITE`, as
/// `ovc_submit` (migration 0011) picks them from the target.
pub fn call_name(call: Call, rules: &dyn CallRules) -> Option<String> {
    let rule = rules.rule(call.kind())?;
    let both = rule.new_verb.is_some() && !rule.starts_from.is_empty();
    let kind = call.kind().as_str();
    match call {
        Call::Retry(_) => None,
        Call::New(_) if both => Some(format!("{kind}_NEW")),
        Call::On(_) if both => Some(format!("{kind}_OVERWRITE")),
        _ => Some(kind.to_string()),
    }
}

/// The SQLSTATE `ovc_submit` raises for `code`: `OV` and the three-digit gRPC code.
pub fn sqlstate(code: Code) -> String {
    format!("OV{:03}", code.grpc_code())
}

/// One row of `ovc_call_rules`: the API's answer to `call` from `from_state` (`None`:
/// no live vcluster of that name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRule {
    /// [`call_name`].
    pub call: String,
    /// The vcluster state, or `""` when absent.
    pub from_state: &'static str,
    /// The refusal, or `None` when allowed.
    pub refusal: Option<(Code, Option<String>, String)>,
}

/// The rows of `ovc_call_rules` and `ovc_operation_kinds` for one registry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleTables {
    /// Each SQL-submittable call of each kind from every state and from "absent", as
    /// [`transition`] answers it.
    pub calls: Vec<CallRule>,
    /// Each kind and its in-progress state (`None`: outside the vcluster's states).
    pub kinds: Vec<(OperationKind, Option<VClusterState>)>,
}

impl RuleTables {
    /// The tables of `kinds` (the registry's) under `rules` (the registry).
    pub fn of(rules: &dyn CallRules, kinds: impl IntoIterator<Item = OperationKind>) -> Self {
        let states: Vec<Option<VClusterState>> = std::iter::once(None)
            .chain(VClusterState::ALL.into_iter().map(Some))
            .collect();
        let mut tables = RuleTables::default();
        for kind in kinds {
            let Some(rule) = rules.rule(kind) else {
                continue;
            };
            tables.kinds.push((kind, rule.in_progress));
            if rule.in_progress.is_none() {
                continue;
            }
            let mut calls = Vec::new();
            if rule.new_verb.is_some() {
                calls.push(Call::New(kind));
            }
            if !rule.starts_from.is_empty() || rule.new_verb.is_none() {
                calls.push(Call::On(kind));
            }
            for call in calls {
                let Some(name) = call_name(call, rules) else {
                    continue;
                };
                for state in &states {
                    let refusal = transition(*state, call, rules).err().map(|e| {
                        let status: Status = e.into();
                        (
                            status.code,
                            status.reason().map(str::to_string),
                            status.message.clone(),
                        )
                    });
                    tables.calls.push(CallRule {
                        call: name.clone(),
                        from_state: state.map_or("", VClusterState::as_str),
                        refusal,
                    });
                }
            }
        }
        tables
    }
}

/// Rewrites the call rules and kinds from `tables` (the registry's), in one transaction
/// (serialized with any concurrent `ovc migrate` or worker start).
pub(crate) async fn sync_call_rules(pool: &PgPool, tables: &RuleTables) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7236501)")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql("DELETE FROM ovc_call_rules; DELETE FROM ovc_operation_kinds")
        .execute(&mut *tx)
        .await?;
    // One statement per table (arrays, UNNEST): this runs on every start.
    let rules = &tables.calls;
    let refusal = |r: &CallRule| r.refusal.clone();
    sqlx::query(
        "INSERT INTO ovc_call_rules (call, from_state, code, reason, message)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])",
    )
    .bind(rules.iter().map(|r| r.call.as_str()).collect::<Vec<_>>())
    .bind(rules.iter().map(|r| r.from_state).collect::<Vec<_>>())
    .bind(
        rules
            .iter()
            .map(|r| refusal(r).map(|(c, _, _)| c.as_str()))
            .collect::<Vec<_>>(),
    )
    .bind(
        rules
            .iter()
            .map(|r| refusal(r).and_then(|(_, reason, _)| reason))
            .collect::<Vec<_>>(),
    )
    .bind(
        rules
            .iter()
            .map(|r| refusal(r).map(|(_, _, m)| m))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO ovc_operation_kinds (kind, in_progress_state)
         SELECT * FROM UNNEST($1::text[], $2::text[])",
    )
    .bind(
        tables
            .kinds
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        tables
            .kinds
            .iter()
            .map(|(_, s)| s.map(VClusterState::as_str))
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Rewrites the error codes from this build, and records `submissions_channel` (what
/// `ovc_submit` notifies), in one transaction (serialized with any concurrent
/// `ovc migrate`).
pub(crate) async fn sync_rules(pool: &PgPool, submissions_channel: &str) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7236501)")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql("DELETE FROM ovc_error_codes")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO ovc_error_codes (code, sqlstate)
         SELECT * FROM UNNEST($1::text[], $2::text[])",
    )
    .bind(Code::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>())
    .bind(Code::ALL.iter().map(|c| sqlstate(*c)).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO ovc_settings (key, value) VALUES ('submissions_channel', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    )
    .bind(submissions_channel)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Claims up to `max` pending submissions (oldest first) whose claim is free or expired,
/// holding each for `hold` by the database's clock.
pub(crate) async fn claim(
    pool: &PgPool,
    hold: chrono::Duration,
    max: u32,
) -> Result<Vec<Submission>> {
    let mut rows = sqlx::query(
        "UPDATE ovc_submissions s SET claimed_until = clock_timestamp() + $1
         WHERE s.operation_id IN (
             SELECT p.operation_id FROM ovc_submissions p
             WHERE p.state = 'pending'
               AND (p.claimed_until IS NULL OR p.claimed_until < clock_timestamp())
             ORDER BY p.submitted_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING s.operation_id, s.project, s.vcluster, s.kind, s.params, s.request_id,
                   s.traceparent, s.actor, s.submitted_at",
    )
    .bind(hold)
    .bind(i64::from(max))
    .fetch_all(pool)
    .await?;
    // RETURNING does not keep the subquery's order; accept in submission order.
    rows.sort_by_key(|r| {
        r.try_get::<chrono::DateTime<chrono::Utc>, _>("submitted_at")
            .ok()
    });
    rows.iter()
        .map(|r| {
            Ok(Submission {
                operation_id: OperationId(r.try_get("operation_id")?),
                project: r.try_get("project")?,
                vcluster: r.try_get("vcluster")?,
                kind: r.try_get("kind")?,
                params: r.try_get("params")?,
                request_id: r.try_get("request_id")?,
                traceparent: r.try_get("traceparent")?,
                actor: r.try_get("actor")?,
            })
        })
        .collect()
}

/// Records how the pending submission `id` ended (a settled one is left as it is).
pub(crate) async fn settle(
    pool: &PgPool,
    id: OperationId,
    outcome: &SubmissionOutcome,
) -> Result<()> {
    let (state, answered_by, code, reason, message) = match outcome {
        SubmissionOutcome::Accepted { answered_by } => {
            ("accepted", Some(answered_by.as_uuid()), None, None, None)
        }
        SubmissionOutcome::Rejected(status) => (
            "rejected",
            None,
            Some(status.code.as_str()),
            status.reason().map(str::to_string),
            Some(status.message.clone()),
        ),
    };
    sqlx::query(
        "UPDATE ovc_submissions SET state = $2, answered_by = $3, code = $4, reason = $5,
             message = $6, settled_at = clock_timestamp(), claimed_until = NULL
         WHERE operation_id = $1 AND state = 'pending'",
    )
    .bind(id.as_uuid())
    .bind(state)
    .bind(answered_by)
    .bind(code)
    .bind(reason)
    .bind(message)
    .execute(pool)
    .await?;
    Ok(())
}
