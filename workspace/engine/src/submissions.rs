//! Accepting the operations that services enqueue from SQL (`ovc_submit`, PostgreSQL;
//! see `ovc_store::submissions` for the database side).
//!
//! Every worker process runs one [`SubmissionAcceptor`]: it claims committed
//! submissions, turns each into the command the API would have built, and accepts it
//! through [`accept_as`] with the id `ovc_submit` already returned, so the rules are the
//! API's own. A refusal is recorded on the submission with the API's code, reason and
//! message; an unreachable store leaves it pending for the next claim. A worker that
//! dies between accepting and recording is harmless: the next claim finds the operation
//! already there (or, for a repeated request id, its first operation again).

use crate::accept::{CommandRequest, accept_as};
use crate::registry::Registry;
use ovc_store::{Store, Submission, SubmissionOutcome};
use ovc_types::command::Command;
use ovc_types::error::{Code, Status};
use ovc_types::state::OperationKind;
use ovc_types::time::IdSource;
use ovc_types::{ProjectName, VClusterName};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long a claimed submission is held by the worker accepting it.
const HOLD: Duration = Duration::from_secs(30);
/// Submissions claimed at a time.
const BATCH: u32 = 32;
/// The longest wait between two looks when no NOTIFY arrives.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The acceptor of one worker process.
pub struct SubmissionAcceptor {
    /// The store the submissions and operations are in.
    pub store: Arc<dyn Store>,
    /// The workflows this build runs.
    pub registry: Arc<Registry>,
    /// Ids for the vclusters and runs the operations create.
    pub ids: Arc<dyn IdSource>,
}

impl SubmissionAcceptor {
    /// Accepts submissions until `shutdown` turns true. Wakes on the store's
    /// submission notifications (`ovc_submit` sends one) and at least every second.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let Some(mut wake) = self.store.watch_submissions() else {
            return;
        };
        // `ovc_submit` answers from this worker's registry (a new operation is
        // submittable as soon as a worker that has it starts).
        let tables = ovc_store::RuleTables::of(self.registry.as_ref(), self.registry.kinds());
        if let Err(e) = self.store.sync_call_rules(&tables).await {
            tracing::warn!(error = %e, "writing the SQL call rules failed");
        }
        while !*shutdown.borrow() {
            let claimed = match self
                .store
                .claim_submissions(chrono::Duration::from_std(HOLD).unwrap_or_default(), BATCH)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "claiming SQL submissions failed; retrying");
                    Vec::new()
                }
            };
            let full = claimed.len() == BATCH as usize;
            for submission in claimed {
                let id = submission.operation_id;
                let Some(outcome) = self.decide(submission).await else {
                    continue;
                };
                if let SubmissionOutcome::Rejected(status) = &outcome {
                    tracing::info!(operation_id = %id, code = %status.code, message = %status.message,
                        "SQL submission rejected");
                }
                if let Err(e) = self.store.settle_submission(id, &outcome).await {
                    tracing::warn!(operation_id = %id, error = %e,
                        "recording a SQL submission's outcome failed; it is decided again");
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                Ok(()) = wake.changed() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
        }
    }

    /// The outcome of `submission`, or `None` to leave it for a later claim (the store
    /// could not answer).
    pub async fn decide(&self, submission: Submission) -> Option<SubmissionOutcome> {
        let id = submission.operation_id;
        let req = match command_request(&submission) {
            Ok(r) => r,
            Err(status) => return Some(SubmissionOutcome::Rejected(status)),
        };
        let refusal = match accept_as(
            self.store.as_ref(),
            &self.registry,
            self.ids.as_ref(),
            req,
            Some(id),
        )
        .await
        {
            Ok(accepted) => {
                return Some(SubmissionOutcome::Accepted {
                    answered_by: accepted.operation_id,
                });
            }
            Err(status) if matches!(status.code, Code::Unavailable | Code::Internal) => {
                tracing::warn!(operation_id = %id, error = %status.message,
                    "accepting a SQL submission failed; retrying later");
                return None;
            }
            Err(status) => status,
        };
        // Refused because an earlier claim, whose worker stopped before recording the
        // outcome, already accepted it (its operation holds the vcluster now).
        match self.store.get_operation(id).await {
            Ok(Some(_)) => Some(SubmissionOutcome::Accepted { answered_by: id }),
            Ok(None) => Some(SubmissionOutcome::Rejected(refusal)),
            Err(e) => {
                tracing::warn!(operation_id = %id, error = %e, "reading a submission's operation failed");
                None
            }
        }
    }
}

/// The request the API would have built from `s`: the names parsed, the parameters read
/// as the command of `s.kind` (unknown fields refused, as over REST).
pub fn command_request(s: &Submission) -> Result<CommandRequest, Status> {
    let project: ProjectName = s
        .project
        .parse()
        .map_err(|e| Status::invalid_argument(format!("project {:?}: {e}", s.project)))?;
    let vcluster: VClusterName = s
        .vcluster
        .parse()
        .map_err(|e| Status::invalid_argument(format!("vcluster {:?}: {e}", s.vcluster)))?;
    let kind = OperationKind::from_trusted(&s.kind)
        .ok_or_else(|| Status::invalid_argument(format!("unknown kind {:?}", s.kind)))?;
    let command = Command::from_parts(kind, s.params.clone()).map_err(Status::from)?;
    Ok(CommandRequest {
        project,
        vcluster,
        command,
        request_id: s.request_id.clone(),
        actor: Some(format!("sql:{}", s.actor)),
        traceparent: s.traceparent.clone(),
    })
}
