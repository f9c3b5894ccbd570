//! The executor: runs one claimed run of an operation until it ends, waits durably, or
//! loses its lease.
//!
//! Each move is decided by [`plan`] from the journal and then performed; its events are
//! journaled with the next fenced commit (a step's `StepSucceeded` travels with the next
//! step's `StepStarted`, and the last one with the operation's outcome, the vcluster's
//! settlement and the run's completion), so a five-step workflow costs six commits.
//! Every commit names the run's lease: a worker that lost its lease writes nothing.
//!
//! Self-fencing: the run's [`Fence`] (the lease as the worker reckons it on its monotonic
//! clock) travels in every step's [`CallCtx`]. The executor checks it before every move
//! and after every step, and drivers check it before every host call, so a worker whose
//! lease is lost or has passed stops before its next host call instead of waiting for a
//! commit to fail.

use crate::journal::{Journal, JournalError};
use crate::model::{StepCtx, StepError, StepOutput, WorkflowDef};
use crate::plan::{Next, plan};
use crate::registry::Registry;
use crate::services::Services;
use backon::{BackoffBuilder, ExponentialBuilder};
use ovc_driver::{CallCtx, DriverResult, Fence, HostDriver, Target};
use ovc_store::{Commit, ExpectedVersion, Lease, NewEvent, Run, RunUpdate, Store, StreamAppend};
use ovc_types::error::{Code, Status};
use ovc_types::event::{Event, EventMetadata, StreamName};
use ovc_types::state::{OperationState, VClusterState};
use ovc_types::time::{Clock, IdSource};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// Called by the executor before every step attempt and undo attempt, before the step
/// touches anything: the simulated host injects its faults here, so a step can be faulted
/// even if it never calls the host. Real drivers have no hook; this is not part of
/// [`HostDriver`].
#[async_trait::async_trait]
pub trait StepHook: Send + Sync + std::fmt::Debug {
    /// Fails the attempt with the returned error, or lets it run.
    async fn before_step(&self, call: &CallCtx) -> DriverResult<()>;
}

#[async_trait::async_trait]
impl StepHook for ovc_driver::sim::SimHost {
    async fn before_step(&self, call: &CallCtx) -> DriverResult<()> {
        self.inject_faults(call).await
    }
}

/// Runs a step future, turning a panic into a permanent failure: a step that panics
/// would otherwise kill its run on every worker that claims it, forever.
async fn guarded(
    fut: impl std::future::Future<Output = crate::model::StepResult>,
) -> crate::model::StepResult {
    use futures::FutureExt;
    match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(StepError::Permanent(
                Status::internal(format!("the step panicked: {msg}")).with_reason("STEP_PANICKED"),
            ))
        }
    }
}

/// Records how a step (undo, revert) attempt ended on its span, and logs it (at debug,
/// inside the span, so JSON logs carry the trace).
fn record_attempt(span: &tracing::Span, result: &crate::model::StepResult) {
    let (outcome, error) = match result {
        Ok(StepOutput::Done { .. }) => ("done", None),
        Ok(StepOutput::Pending { .. }) => ("pending", None),
        Err(e @ StepError::Transient { .. }) => ("failed, transient", Some(e.status().message)),
        Err(StepError::Permanent(status)) => ("failed", Some(status.message.clone())),
    };
    span.record("outcome", outcome);
    if let Some(error) = &error {
        span.record("otel.status_code", "ERROR");
        span.record("otel.status_description", error.as_str());
    }
    span.in_scope(|| tracing::debug!(outcome, error = error.as_deref(), "step attempt ended"));
}

/// How transient failures are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries inside one claim, with exponential backoff and jitter, before the run is
    /// rescheduled durably.
    pub in_process_retries: usize,
    /// First in-process backoff.
    pub min_backoff: Duration,
    /// Largest in-process backoff.
    pub max_backoff: Duration,
    /// First durable backoff.
    pub min_durable_backoff: Duration,
    /// Largest durable backoff (`run_at` moves by up to this).
    pub max_durable_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            in_process_retries: 2,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(2),
            min_durable_backoff: Duration::from_millis(500),
            max_durable_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    fn in_process_delay(&self, retry: usize) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .with_max_times(retry + 1)
            .build()
            .nth(retry)
            .unwrap_or(self.max_backoff)
    }

    fn durable_delay(&self, attempt: u32) -> Duration {
        ExponentialBuilder::default()
            .with_min_delay(self.min_durable_backoff)
            .with_max_delay(self.max_durable_backoff)
            .with_jitter()
            .with_max_times(attempt as usize + 1)
            .build()
            .nth(attempt as usize)
            .unwrap_or(self.max_durable_backoff)
    }
}

/// How a run's execution ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEnd {
    /// The operation reached a terminal state; the run is done.
    Completed(OperationState),
    /// The run waits (pending step or durable retry) this long, by the database's clock.
    Rescheduled(Duration),
    /// Shutdown was requested; the lease was released for another worker.
    Released,
}

/// Why an execution stopped without finishing its move.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The store failed (including `LeaseLost`: another worker owns the run now).
    #[error(transparent)]
    Store(#[from] ovc_store::Error),
    /// The operation's stream is unusable and cannot even be marked stuck.
    #[error("operation {0}: {1}")]
    Unrecoverable(String, String),
    /// The run's lease was lost or has passed (by this worker's own reckoning): the
    /// execution stopped before its next host call and wrote nothing more.
    #[error("run {run_id} stopped: lease epoch {epoch} is no longer held")]
    Fenced {
        /// The run.
        run_id: ovc_types::RunId,
        /// The epoch of the lost claim.
        epoch: i64,
    },
}

/// Runs operations' workflows.
#[derive(Debug, Clone)]
pub struct Executor {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The workflows.
    pub registry: Arc<Registry>,
    /// The host.
    pub driver: Arc<dyn HostDriver>,
    /// Runs before every step and undo attempt (the simulated host's fault injection);
    /// `None` for real hosts.
    pub step_hook: Option<Arc<dyn StepHook>>,
    /// Other services.
    pub services: Arc<Services>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The id source.
    pub ids: Arc<dyn IdSource>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// This worker's name (the lease owner; `actor` in event metadata).
    pub owner: String,
    /// Test knob: run every step's action twice before journaling it, as a crash after
    /// the effect and before the journal would (omicron's "repeat every node").
    pub repeat_steps: bool,
    /// Caps every step's (and undo's) time limit; `None` keeps the definitions' limits.
    pub max_step_timeout: Option<Duration>,
    /// How long a step may keep waiting (returning `Pending`: readiness, pods gone, the
    /// kubeconfig), measured from its first `StepStarted` in the journal, so the limit
    /// survives crashes and worker changes. Past it the step fails permanently
    /// (`DEADLINE_EXCEEDED`, reason `WAIT_TIMEOUT`) and the operation compensates. Undos
    /// and reverts keep waiting: giving up there would leave the host half-undone.
    /// [`crate::model::DEFAULT_READY_TIMEOUT`] by default (`ovc worker --ready-timeout`).
    pub ready_timeout: Duration,
}

/// The longest a waiting step goes unchecked, however long it has waited.
pub const MAX_CHECK_IN: Duration = Duration::from_secs(10);

/// When a step that answered `Pending { check_in }` after waiting `waited` is looked at
/// again: its own `check_in` at first, then an eighth of the time waited so far, at most
/// [`MAX_CHECK_IN`] (never less than `check_in`). A control plane that takes a minute
/// is then checked about 20 times instead of 300, and its readiness is seen at most an
/// eighth of its wait late; ten thousand parked waits cost a few hundred check-ins a
/// second instead of saturating the worker with fifty thousand.
pub fn check_in_after(check_in: Duration, waited: Duration) -> Duration {
    check_in.max((waited / 8).min(MAX_CHECK_IN))
}

/// Events waiting for the next commit.
#[derive(Default)]
struct Pending {
    op: Vec<Event>,
    extra: Vec<(StreamName, Event)>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.op.is_empty() && self.extra.is_empty()
    }
}

struct Run1<'a> {
    exec: &'a Executor,
    run: &'a Run,
    fence: Fence,
    def: &'a WorkflowDef,
    journal: Journal,
    pending: Pending,
    stream: StreamName,
    vcluster: Option<ovc_types::resource::VCluster>,
}

impl Executor {
    fn cap(&self, timeout: Duration) -> Duration {
        self.max_step_timeout.map_or(timeout, |m| m.min(timeout))
    }

    /// Executes `run` under `fence` (the worker's view of its lease; [`Fence::unfenced`]
    /// when nothing renews it) until it ends, is rescheduled, the fence is no longer held,
    /// or `stop` turns true between steps.
    ///
    /// The execution is one `operation` span, a child of the request that asked for the
    /// operation (the `traceparent` of its first event's metadata), so every claim of the
    /// run — after a reschedule, a crash or a lease steal, on any worker — continues the
    /// request's trace; each step attempt is a `step` span under it.
    pub async fn execute(
        &self,
        run: &Run,
        fence: Fence,
        stop: &watch::Receiver<bool>,
    ) -> Result<RunEnd, ExecError> {
        let stream = StreamName::operation(run.operation_id);
        let events = self.store.read_stream(&stream, 0, u32::MAX).await?;
        let span = self.operation_span(run, &events);
        let end = self
            .execute_events(run, fence, stop, stream, &events)
            .instrument(span.clone())
            .await;
        let (outcome, error) = match &end {
            Ok(RunEnd::Completed(state)) => (format!("completed {}", state.as_str()), None),
            Ok(RunEnd::Rescheduled(after)) => (format!("rescheduled after {after:?}"), None),
            Ok(RunEnd::Released) => ("released".to_string(), None),
            Err(e) => ("stopped".to_string(), Some(e.to_string())),
        };
        span.record("outcome", outcome.as_str());
        if let Some(error) = error {
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error.as_str());
        }
        end
    }

    /// The `operation` span of one execution of `run`, continuing the trace of the
    /// request recorded in the first event's metadata.
    fn operation_span(&self, run: &Run, events: &[ovc_store::RecordedEvent]) -> tracing::Span {
        let first = events.first();
        let traceparent = first
            .and_then(|e| e.metadata.get("traceparent"))
            .and_then(|t| t.as_str());
        let requested = first.and_then(|e| e.decode().ok()).and_then(|e| match e {
            Event::OperationRequested {
                vcluster,
                project,
                command,
                ..
            } => Some((project, vcluster, command.kind())),
            _ => None,
        });
        let (project, vcluster, kind) = match &requested {
            Some((p, v, k)) => (p.as_str(), v.as_str(), k.as_str()),
            None => ("", "", "UNKNOWN"),
        };
        let span = tracing::info_span!(
            "operation",
            otel.name = %format_args!("operation {kind}"),
            operation_id = %run.operation_id,
            operation_kind = kind,
            project,
            vcluster,
            run_id = %run.id,
            epoch = run.epoch,
            run_attempts = run.attempts,
            worker = %self.owner,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        crate::trace_context::continue_trace(&span, traceparent);
        span
    }

    async fn execute_events(
        &self,
        run: &Run,
        fence: Fence,
        stop: &watch::Receiver<bool>,
        stream: StreamName,
        events: &[ovc_store::RecordedEvent],
    ) -> Result<RunEnd, ExecError> {
        let journal = match Journal::fold(events) {
            Ok(j) => j,
            Err(e) => return self.unusable_journal(run, &stream, events, e).await,
        };
        let Some(requested) = journal.requested.clone() else {
            // An empty stream: nothing was ever requested for this run. Finish it so it
            // does not block the vcluster's queue; the log says why.
            tracing::error!(operation = %run.operation_id, "run for an operation with no events");
            self.commit_raw(run.lease(), Pending::default(), Some(RunUpdate::Complete))
                .await?;
            return Ok(RunEnd::Completed(OperationState::Stuck));
        };
        let Some(def) = self.registry.get(requested.command.kind()) else {
            let mut r = Run1 {
                exec: self,
                run,
                fence,
                def: &WorkflowDef {
                    kind: requested.command.kind(),
                    name: "unknown",
                    params: crate::operation::ParamsDef::untyped(),
                    rule: ovc_types::state::CallRule::outside("run"),
                    api: None,
                    steps: vec![],
                    settle: |_| Err(StepError::permanent(Code::Internal, "no workflow")),
                    revert: None,
                    admit: None,
                },
                journal,
                pending: Pending::default(),
                stream,
                vcluster: None,
            };
            let error = Status::internal(format!(
                "no workflow is registered for {}",
                requested.command.kind()
            ));
            return r.stuck(error).await;
        };
        let vcluster = self
            .store
            .get_vcluster_by_uid(requested.vcluster_uid)
            .await?;
        let mut r = Run1 {
            exec: self,
            run,
            fence,
            def,
            journal,
            pending: Pending::default(),
            stream,
            vcluster,
        };
        r.drive(stop).await
    }

    async fn unusable_journal(
        &self,
        run: &Run,
        stream: &StreamName,
        events: &[ovc_store::RecordedEvent],
        error: JournalError,
    ) -> Result<RunEnd, ExecError> {
        tracing::error!(operation = %run.operation_id, %error, "operation journal is unusable");
        let uid = events
            .first()
            .and_then(|e| e.decode().ok())
            .and_then(|e| match e {
                // Only operations that own the vcluster's state may fail it.
                Event::OperationRequested {
                    vcluster_uid,
                    command,
                    ..
                } if command.kind().changes_vcluster_state() => Some(vcluster_uid),
                _ => None,
            });
        let status = Status::internal(error.to_string()).with_reason("CORRUPT_JOURNAL");
        let mut pending = Pending::default();
        pending.op.push(Event::OperationStuck {
            error: status.clone(),
        });
        if let Some(uid) = uid {
            pending.extra.push((
                StreamName::vcluster(uid),
                Event::VClusterFailed {
                    operation_id: run.operation_id,
                    error: status,
                },
            ));
        }
        let _ = stream;
        match self
            .commit_raw_to(run, pending, Some(RunUpdate::Complete))
            .await
        {
            Ok(()) => Ok(RunEnd::Completed(OperationState::Stuck)),
            Err(ovc_store::Error::Projection(p)) => {
                // The projections refuse even the stuck marker; finish the run so the
                // vcluster's queue moves, and leave the story in the log.
                self.commit_raw(run.lease(), Pending::default(), Some(RunUpdate::Complete))
                    .await?;
                Err(ExecError::Unrecoverable(
                    run.operation_id.to_string(),
                    p.to_string(),
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn commit_raw_to(
        &self,
        run: &Run,
        pending: Pending,
        update: Option<RunUpdate>,
    ) -> Result<(), ovc_store::Error> {
        let stream = StreamName::operation(run.operation_id);
        self.store
            .commit(self.build_commit(run.lease(), &stream, pending, update, run))
            .await
            .map(|_| ())
    }

    async fn commit_raw(
        &self,
        lease: Lease,
        pending: Pending,
        update: Option<RunUpdate>,
    ) -> Result<(), ovc_store::Error> {
        let commit = Commit {
            fence: Some(lease),
            run_update: update,
            appends: Vec::new(),
            ..Commit::default()
        };
        if pending.is_empty() && update.is_none() {
            return Ok(());
        }
        self.store.commit(commit).await.map(|_| ())
    }

    fn build_commit(
        &self,
        lease: Lease,
        stream: &StreamName,
        pending: Pending,
        update: Option<RunUpdate>,
        run: &Run,
    ) -> Commit {
        let meta = EventMetadata {
            actor: Some(format!("worker:{}", self.owner)),
            correlation_id: Some(run.operation_id),
            ..EventMetadata::default()
        };
        let mut appends: Vec<StreamAppend> = Vec::new();
        if !pending.op.is_empty() {
            appends.push(StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::Any,
                events: pending
                    .op
                    .into_iter()
                    .map(|e| NewEvent::with_metadata(e, meta.clone()))
                    .collect(),
            });
        }
        for (s, e) in pending.extra {
            let event = NewEvent::with_metadata(e, meta.clone());
            match appends.iter_mut().find(|a| a.stream == s) {
                Some(a) => a.events.push(event),
                None => appends.push(StreamAppend {
                    stream: s,
                    expected: ExpectedVersion::Any,
                    events: vec![event],
                }),
            }
        }
        Commit {
            appends,
            fence: Some(lease),
            run_update: update,
            ..Commit::default()
        }
    }
}

impl Run1<'_> {
    fn push(&mut self, event: Event) {
        // Fold into the local journal at once so planning sees it; if the commit later
        // fails, this execution stops and the next claim re-reads the stored journal.
        let next_version = self.journal.version + 1;
        let now = self.now();
        if let Err(e) = self
            .journal
            .apply_at(self.stream.as_str(), next_version, Some(now), &event)
        {
            tracing::error!(error = %e, "engine produced an illegal event; this is a bug");
        }
        self.pending.op.push(event);
    }

    async fn flush(&mut self, update: Option<RunUpdate>) -> Result<(), ExecError> {
        if self.pending.is_empty() && update.is_none() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let commit =
            self.exec
                .build_commit(self.run.lease(), &self.stream, pending, update, self.run);
        self.exec.store.commit(commit).await?;
        Ok(())
    }

    /// Stops the execution when the lease is no longer held (lost, or passed without a
    /// renewal): nothing more is committed or called.
    fn check_fence(&self) -> Result<(), ExecError> {
        if self.fence.is_held() {
            Ok(())
        } else {
            tracing::warn!(
                operation = %self.run.operation_id,
                epoch = self.run.epoch,
                "lease no longer held; stopping the run before its next host call"
            );
            Err(ExecError::Fenced {
                run_id: self.run.id,
                epoch: self.run.epoch,
            })
        }
    }

    /// The context of one attempt of `step` (`attempt` 0 outside a step), ending at
    /// `limit` from now.
    fn ctx(&self, step: &str, attempt: u32, limit: Duration) -> StepCtx {
        let req = self
            .journal
            .requested
            .as_ref()
            .expect("execute() checked that the operation was requested");
        // The host named by the spec, kept for life (a scale cannot change it).
        let host = self
            .vcluster
            .as_ref()
            .map(|v| v.spec.host.clone())
            .unwrap_or_else(|| ovc_driver::router::DEFAULT_HOST.to_string());
        // One span per attempt, a child of the execution's `operation` span; drivers
        // record theirs under it.
        let span = tracing::info_span!(
            "step",
            otel.name = %format_args!("step {step}"),
            operation_id = %self.run.operation_id,
            operation_kind = req.command.kind().as_str(),
            project = req.project.as_str(),
            vcluster = req.vcluster.as_str(),
            workflow = self.def.name,
            step,
            attempt,
            host = host.as_str(),
            epoch = self.run.epoch,
            outcome = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        StepCtx {
            operation_id: self.run.operation_id,
            command: req.command.clone(),
            vcluster_uid: req.vcluster_uid,
            vcluster_name: req.vcluster.clone(),
            project: req.project.clone(),
            vcluster: self.vcluster.clone(),
            prior_state: req.prior_state,
            outputs: self.journal.outputs(),
            target: Target {
                host,
                // The namespace recorded when the vcluster was created, never recomputed
                // (vclusters of the legacy scheme keep theirs). Without a projection there
                // is no namespace to guess: the driver refuses an empty one.
                namespace: self
                    .vcluster
                    .as_ref()
                    .map(|v| v.host_namespace.clone())
                    .unwrap_or_default(),
                release: req.vcluster.to_string(),
            },
            call: CallCtx::for_step(self.run.operation_id, self.def.name, step, attempt)
                .with_fence(self.fence.clone())
                .with_deadline(Instant::now() + limit)
                .with_span(span),
            driver: self.exec.driver.clone() as Arc<dyn HostDriver>,
            services: self.exec.services.clone(),
            store: self.exec.store.clone(),
            clock: self.exec.clock.clone(),
            ids: self.exec.ids.clone() as Arc<dyn IdSource>,
        }
    }

    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.exec.clock.now()
    }

    /// How long `step` has been waiting: since its first start as journaled.
    fn waited(&self, step: &str) -> Duration {
        self.journal
            .step(step)
            .first_started_at
            .and_then(|started| (self.now() - started).to_std().ok())
            .unwrap_or_default()
    }

    /// The error of a wait that has lasted past [`Executor::ready_timeout`], counted from
    /// the step's first start as journaled; `None` while there is time left.
    fn wait_expired(&self, step: &str) -> Option<Status> {
        let started = self.journal.step(step).first_started_at?;
        let limit = self.exec.ready_timeout;
        let waited = (self.now() - started).to_std().unwrap_or_default();
        if waited < limit {
            return None;
        }
        Some(
            Status::new(
                Code::DeadlineExceeded,
                format!(
                    "step {step} was still waiting after {}s (the wait limit is {}s, counted \
                     from its first start at {}; see --ready-timeout)",
                    waited.as_secs(),
                    limit.as_secs_f64(),
                    started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            )
            .with_reason("WAIT_TIMEOUT"),
        )
    }

    /// Releases the run as a durable timer `after` from now by the database's clock.
    async fn reschedule(&mut self, after: Duration) -> Result<RunEnd, ExecError> {
        self.check_fence()?;
        let delay =
            chrono::Duration::from_std(after).unwrap_or_else(|_| chrono::Duration::seconds(60));
        self.flush(Some(RunUpdate::Reschedule { after: delay }))
            .await?;
        Ok(RunEnd::Rescheduled(after))
    }

    async fn drive(&mut self, stop: &watch::Receiver<bool>) -> Result<RunEnd, ExecError> {
        let mut in_process_retries = 0usize;
        loop {
            self.check_fence()?;
            if *stop.borrow() {
                self.flush(Some(RunUpdate::Reschedule {
                    after: chrono::Duration::zero(),
                }))
                .await?;
                return Ok(RunEnd::Released);
            }
            match plan(&self.journal, self.def) {
                Next::Ended => {
                    self.flush(Some(RunUpdate::Complete)).await?;
                    return Ok(RunEnd::Completed(
                        self.journal.terminal.unwrap_or(OperationState::Stuck),
                    ));
                }
                Next::Skip { step } => self.push(Event::StepSkipped { step: step.into() }),
                Next::Compensate { error } => {
                    self.push(Event::CompensationStarted { error });
                }
                Next::Run {
                    step,
                    attempt,
                    started,
                } => {
                    if !started {
                        self.push(Event::StepStarted {
                            step: step.into(),
                            attempt,
                        });
                        self.flush(None).await?;
                    }
                    let Some(mut def) = self.def.step(step).cloned() else {
                        return self
                            .stuck(Status::internal(format!("no step {step}")))
                            .await;
                    };
                    def.timeout = self.exec.cap(def.timeout);
                    let ctx = self.ctx(step, attempt, def.timeout);
                    let hook = self.exec.step_hook.clone();
                    let run = guarded(async {
                        if let Some(hook) = &hook {
                            hook.before_step(&ctx.call).await?;
                        }
                        (def.run)(&ctx).await
                    });
                    if self.exec.repeat_steps
                        && let Ok(Ok(StepOutput::Done { .. })) =
                            tokio::time::timeout(def.timeout, (def.run)(&ctx)).await
                    {
                        tracing::debug!(step, "repeat_steps: running the step again");
                    }
                    let span = ctx.call.span.clone();
                    let result = match tokio::time::timeout(def.timeout, run)
                        .instrument(span.clone())
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(StepError::transient(format!(
                            "step {step} timed out after {:?}",
                            def.timeout
                        ))),
                    };
                    record_attempt(&span, &result);
                    // A step that ran past the lease journals nothing: the next claim
                    // decides from the stored journal.
                    self.check_fence()?;
                    match result {
                        Ok(StepOutput::Done { output, events }) => {
                            in_process_retries = 0;
                            self.push(Event::StepSucceeded {
                                step: step.into(),
                                output,
                            });
                            self.pending.extra.extend(events);
                        }
                        Ok(StepOutput::Pending { check_in }) => {
                            let Some(error) = self.wait_expired(step) else {
                                let waited = self.waited(step);
                                return self.reschedule(check_in_after(check_in, waited)).await;
                            };
                            self.push(Event::StepFailed {
                                step: step.into(),
                                attempt,
                                error: error.clone(),
                                will_retry: false,
                            });
                            self.push(Event::CompensationStarted { error });
                        }
                        Err(StepError::Permanent(status)) => {
                            self.push(Event::StepFailed {
                                step: step.into(),
                                attempt,
                                error: status.clone(),
                                will_retry: false,
                            });
                            self.push(Event::CompensationStarted { error: status });
                        }
                        Err(e @ StepError::Transient { .. }) => {
                            let status = e.status();
                            let will_retry = attempt < def.max_attempts;
                            self.push(Event::StepFailed {
                                step: step.into(),
                                attempt,
                                error: status.clone(),
                                will_retry,
                            });
                            if !will_retry {
                                self.push(Event::CompensationStarted { error: status });
                                continue;
                            }
                            let hint = match &e {
                                StepError::Transient { retry_after, .. } => *retry_after,
                                StepError::Permanent(_) => None,
                            };
                            if in_process_retries < self.exec.retry.in_process_retries {
                                self.flush(None).await?;
                                let delay = hint.unwrap_or_else(|| {
                                    self.exec.retry.in_process_delay(in_process_retries)
                                });
                                in_process_retries += 1;
                                tokio::time::sleep(delay).await;
                            } else {
                                let delay =
                                    hint.unwrap_or_else(|| self.exec.retry.durable_delay(attempt));
                                return self.reschedule(delay).await;
                            }
                        }
                    }
                }
                Next::Undo { step } => {
                    let Some(mut def) = self.def.step(step).cloned() else {
                        return self
                            .stuck(Status::internal(format!("no step {step}")))
                            .await;
                    };
                    def.timeout = self.exec.cap(def.timeout);
                    let Some(undo) = def.undo else {
                        self.push(Event::StepCompensated { step: step.into() });
                        continue;
                    };
                    self.flush(None).await?;
                    let ctx = self.ctx(&format!("undo:{step}"), 1, def.timeout);
                    let hook = self.exec.step_hook.clone();
                    let run_undo = guarded(async {
                        if let Some(hook) = &hook {
                            hook.before_step(&ctx.call).await?;
                        }
                        undo(&ctx).await
                    });
                    let span = ctx.call.span.clone();
                    let result = match tokio::time::timeout(def.timeout, run_undo)
                        .instrument(span.clone())
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(StepError::transient(format!(
                            "undo of {step} timed out after {:?}",
                            def.timeout
                        ))),
                    };
                    record_attempt(&span, &result);
                    self.check_fence()?;
                    match result {
                        Ok(StepOutput::Done { events, .. }) => {
                            in_process_retries = 0;
                            self.push(Event::StepCompensated { step: step.into() });
                            self.pending.extra.extend(events);
                        }
                        Ok(StepOutput::Pending { check_in }) => {
                            return self.reschedule(check_in).await;
                        }
                        Err(StepError::Permanent(status)) => {
                            self.push(Event::UndoFailed {
                                step: step.into(),
                                error: status,
                            });
                        }
                        Err(StepError::Transient {
                            message,
                            retry_after,
                        }) => {
                            // Undo retries transient errors without limit (DESIGN.md §6).
                            tracing::warn!(operation = %self.run.operation_id, step, %message, "undo failed transiently; retrying");
                            if in_process_retries < self.exec.retry.in_process_retries {
                                let delay = retry_after.unwrap_or_else(|| {
                                    self.exec.retry.in_process_delay(in_process_retries)
                                });
                                in_process_retries += 1;
                                tokio::time::sleep(delay).await;
                            } else {
                                let delay = retry_after.unwrap_or_else(|| {
                                    self.exec.retry.durable_delay(self.run.attempts as u32)
                                });
                                return self.reschedule(delay).await;
                            }
                        }
                    }
                }
                Next::Succeed => {
                    let ctx = self.ctx("settle", 0, crate::model::DEFAULT_STEP_TIMEOUT);
                    let settled = ctx.call.span.in_scope(|| (self.def.settle)(&ctx));
                    match settled {
                        Ok(s) => {
                            self.push(Event::OperationSucceeded { result: s.result });
                            if let Some(state) = s.state {
                                self.settle_vcluster(Event::VClusterSettled {
                                    operation_id: self.run.operation_id,
                                    state,
                                    spec: s.spec,
                                });
                            }
                            self.flush(Some(RunUpdate::Complete)).await?;
                            return Ok(RunEnd::Completed(OperationState::Succeeded));
                        }
                        Err(e) => self.push(Event::CompensationStarted { error: e.status() }),
                    }
                }
                Next::Fail { error, cancelled } => {
                    if let Some(revert) = self.def.revert {
                        self.flush(None).await?;
                        let limit = self.exec.cap(crate::model::DEFAULT_STEP_TIMEOUT);
                        let ctx = self.ctx("revert", 0, limit);
                        let span = ctx.call.span.clone();
                        let result = match tokio::time::timeout(limit, guarded(revert(&ctx)))
                            .instrument(span.clone())
                            .await
                        {
                            Ok(r) => r,
                            Err(_) => Err(StepError::transient(format!(
                                "revert timed out after {limit:?}"
                            ))),
                        };
                        record_attempt(&span, &result);
                        self.check_fence()?;
                        match result {
                            Ok(StepOutput::Done { events, .. }) => {
                                self.pending.extra.extend(events);
                            }
                            Ok(StepOutput::Pending { check_in }) => {
                                return self.reschedule(check_in).await;
                            }
                            Err(StepError::Permanent(status)) => return self.stuck(status).await,
                            Err(StepError::Transient {
                                message,
                                retry_after,
                            }) => {
                                // Like an undo: retried without limit.
                                tracing::warn!(operation = %self.run.operation_id, %message, "revert failed transiently; retrying");
                                if in_process_retries < self.exec.retry.in_process_retries {
                                    let delay = retry_after.unwrap_or_else(|| {
                                        self.exec.retry.in_process_delay(in_process_retries)
                                    });
                                    in_process_retries += 1;
                                    tokio::time::sleep(delay).await;
                                    continue;
                                }
                                let delay = retry_after.unwrap_or_else(|| {
                                    self.exec.retry.durable_delay(self.run.attempts as u32)
                                });
                                return self.reschedule(delay).await;
                            }
                        }
                    }
                    let prior = self
                        .journal
                        .requested
                        .as_ref()
                        .and_then(|r| r.prior_state)
                        .unwrap_or(VClusterState::Deleted);
                    let (event, state) = if cancelled {
                        (
                            Event::OperationCancelled { error },
                            OperationState::Cancelled,
                        )
                    } else {
                        (Event::OperationFailed { error }, OperationState::Failed)
                    };
                    self.push(event);
                    self.settle_vcluster(Event::VClusterReverted {
                        operation_id: self.run.operation_id,
                        state: prior,
                    });
                    self.flush(Some(RunUpdate::Complete)).await?;
                    return Ok(RunEnd::Completed(state));
                }
                Next::Stuck { error } => return self.stuck(error).await,
            }
        }
    }

    /// Queues a vcluster outcome (settled, reverted, failed) for the next commit, only
    /// for operations whose kind owns the vcluster's state: a DELETE_SNAPSHOT leaves the
    /// vcluster (possibly DELETED, possibly busy with its own operation) alone.
    fn settle_vcluster(&mut self, event: Event) {
        if let Some(req) = &self.journal.requested
            && req.command.kind().changes_vcluster_state()
        {
            self.pending
                .extra
                .push((StreamName::vcluster(req.vcluster_uid), event));
        }
    }

    async fn stuck(&mut self, error: Status) -> Result<RunEnd, ExecError> {
        self.push(Event::OperationStuck {
            error: error.clone(),
        });
        self.settle_vcluster(Event::VClusterFailed {
            operation_id: self.run.operation_id,
            error,
        });
        self.flush(Some(RunUpdate::Complete)).await?;
        Ok(RunEnd::Completed(OperationState::Stuck))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_waits_are_checked_less_often_but_at_least_every_ten_seconds() {
        let ms = Duration::from_millis;
        let hint = ms(200);
        // Short waits: the step's own check-in.
        assert_eq!(check_in_after(hint, Duration::ZERO), hint);
        assert_eq!(check_in_after(hint, ms(1600)), hint);
        // Then an eighth of the time waited.
        assert_eq!(
            check_in_after(hint, Duration::from_secs(8)),
            Duration::from_secs(1)
        );
        assert_eq!(check_in_after(hint, Duration::from_secs(60)), ms(7500));
        // Never more than MAX_CHECK_IN, never less than the step asked for.
        assert_eq!(
            check_in_after(hint, Duration::from_secs(3600)),
            MAX_CHECK_IN
        );
        let slow = Duration::from_secs(30);
        assert_eq!(check_in_after(slow, Duration::from_secs(3600)), slow);
    }

    #[tokio::test]
    async fn a_panicking_step_is_a_permanent_failure() {
        let r = guarded(async { panic!("boom") }).await;
        match r {
            Err(StepError::Permanent(s)) => {
                assert_eq!(s.reason(), Some("STEP_PANICKED"));
                assert!(s.message.contains("boom"), "{}", s.message);
            }
            other => panic!("expected a permanent failure, got {other:?}"),
        }
        assert_eq!(
            guarded(async { Ok(StepOutput::done()) }).await,
            Ok(StepOutput::done())
        );
    }

    #[test]
    fn backoffs_grow_and_stay_capped() {
        let p = RetryPolicy::default();
        for retry in 0..10 {
            assert!(p.in_process_delay(retry) <= p.max_backoff * 2);
        }
        for attempt in 0..20 {
            assert!(p.durable_delay(attempt) <= p.max_durable_backoff * 2);
        }
    }
}
