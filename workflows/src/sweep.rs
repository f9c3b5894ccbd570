//! The failure sweeps, run from a workflow's definition. Each workflow file ends with a
//! `mod sweeps` that supplies only a [`Fixture`] (how to bring the store and the
//! simulated host to its starting point, and the command) and calls [`sweeps!`]; the
//! steps come from [`WorkflowDef::planned_steps`], the fault rules from
//! [`WorkflowDef::name`], the state a failure must end in from the operation's recorded
//! prior state, and the state a success must end in from the workflow's settlement. So
//! no step list is typed twice, and a new step is swept the moment it is declared.
//!
//! Per fixture, on a real SQLite file and the simulated host:
//! - [`permanent`]: a permanent failure at each planned step in turn ends FAILED and
//!   compensated, with the vcluster in its prior state and the host as it was — or, once
//!   a step declared [`StepDef::irreversible`] has succeeded, STUCK with the vcluster
//!   FAILED;
//! - [`transient`]: two transient failures at each step (below its attempt limit) end
//!   SUCCEEDED, that step having taken three attempts;
//! - [`repeated`]: every step run twice (a crash after the effect, before the journal)
//!   ends in the same state, with the same host state and effect counts, as a normal run.
//!
//! The fixture's setup runs on a faultless worker; the worker is then restarted with the
//! sweep's faults (or `repeat_steps`), so only the operation under test is disturbed.

pub(crate) use crate::harness::Harness;
use crate::harness::HarnessOptions;
use crate::snapshot::SnapshotParams;
use ovc_driver::sim::{FaultKind, FaultRule, SimConfig, SimRelease};
use ovc_driver::{CallCtx, HostDriver, Target};
use ovc_engine::journal::Journal;
use ovc_engine::services::Services;
use ovc_engine::{StepCtx, StepDef, WorkflowDef};
use ovc_store::Backend;
use ovc_types::SnapshotId;
use ovc_types::command::{Command, CreateParams};
use ovc_types::event::StreamName;
use ovc_types::resource::{Operation, VCluster};
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{OperationState, StepState, VClusterState};
use ovc_types::time::{RandomIds, SystemClock};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Transient failures injected per step by [`transient`]: below every attempt limit.
const TRANSIENT_FAILURES: u32 = 2;

/// Where a workflow's sweeps start from.
pub(crate) trait Fixture {
    /// The vcluster whose state the operation changes.
    fn target(&self) -> &'static str {
        "vc"
    }

    /// Brings the store and the simulated host to the starting point (on a faultless
    /// worker, e.g. with [`succeed`]) and returns the command to sweep.
    async fn setup(&self, h: &Harness) -> Command;

    /// This workflow's own checks after a permanent failure at step `failed` was
    /// compensated (the generic ones have passed).
    async fn after_compensation(&self, h: &Harness, op: &Operation, failed: &str) {
        let _ = (h, op, failed);
    }
}

/// Runs `command` on `vc` and asserts that it succeeded (fixture setups).
pub(crate) async fn succeed(h: &Harness, vc: &str, command: Command) -> Operation {
    let kind = command.kind();
    let op = h.run(vc, command).await;
    assert_eq!(
        op.state,
        OperationState::Succeeded,
        "setup {kind:?} on {vc}: {op:#?}"
    );
    op
}

/// Creates `vc` with the default spec (fixture setups).
pub(crate) async fn create(h: &Harness, vc: &str) {
    succeed(
        h,
        vc,
        Command::new(CreateParams {
            spec: VClusterSpec::default(),
        }),
    )
    .await;
}

/// Snapshots `vc`; the snapshot's id (fixture setups).
pub(crate) async fn snapshot(h: &Harness, vc: &str) -> SnapshotId {
    let op = succeed(h, vc, Command::new(SnapshotParams { description: None })).await;
    SnapshotId(op.id.as_uuid())
}

/// After a compensated failure at step `failed`: the snapshot that `op`'s step
/// `snapshot_step` took (its id is the operation's) was DELETED by its undo, or was never
/// taken because the failure came at or before that step.
pub(crate) async fn assert_own_snapshot_undone(
    h: &Harness,
    op: &Operation,
    failed: &str,
    snapshot_step: &str,
) {
    let snap = h
        .store
        .get_snapshot(SnapshotId(op.id.as_uuid()))
        .await
        .expect("get snapshot");
    let position = |step: &str| op.steps.iter().position(|s| s.name == step);
    match snap {
        Some(s) => assert_eq!(
            s.state,
            ovc_types::SnapshotState::Deleted,
            "failed at {failed}"
        ),
        None => assert!(
            position(failed) <= position(snapshot_step),
            "no snapshot, though the failure at {failed} came after {snapshot_step}"
        ),
    }
}

/// The state of step `step` of `op` (panics when the operation has no such step).
pub(crate) fn step_state(op: &Operation, step: &str) -> StepState {
    op.steps
        .iter()
        .find(|s| s.name == step)
        .map(|s| s.state)
        .unwrap_or_else(|| panic!("no step {step} in {op:#?}"))
}

/// A fresh harness brought to the fixture's starting point (its worker faultless); the
/// command and its planned steps (never empty).
async fn prepare(def: &WorkflowDef, fixture: &impl Fixture) -> (Harness, Command, Vec<String>) {
    let h = Harness::start(Backend::Sqlite, HarnessOptions::default()).await;
    let command = fixture.setup(&h).await;
    assert_eq!(
        command.kind(),
        def.kind,
        "{}: the fixture's command is not this workflow's",
        def.name
    );
    let planned = def.planned_steps(&command);
    assert!(
        !planned.is_empty(),
        "{}: no step is planned for {command:?}: nothing to sweep",
        def.name
    );
    (h, command, planned)
}

fn step_def<'a>(def: &'a WorkflowDef, step: &str) -> &'a StepDef {
    def.step(step)
        .unwrap_or_else(|| panic!("{}: planned step {step} is not defined", def.name))
}

/// Asserts that the operation journaled exactly the planned steps, in order.
fn assert_ran_the_plan(op: &Operation, planned: &[String], ctx: &str) {
    let ran: Vec<&str> = op
        .steps
        .iter()
        .filter(|s| s.state != StepState::Skipped)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        ran, planned,
        "{ctx}: the operation's steps are not the plan"
    );
}

/// The state the vcluster ends in when the operation succeeded, as the definition's
/// settlement says; a settlement that leaves the state alone (DELETE_SNAPSHOT) keeps the
/// state of `before`, the vcluster as it was before the operation.
async fn settled_state(
    def: &WorkflowDef,
    h: &Harness,
    target: &str,
    before: Option<&VCluster>,
    op: &Operation,
) -> VClusterState {
    let events = h
        .store
        .read_stream(&StreamName::operation(op.id), 0, u32::MAX)
        .await
        .expect("read the operation stream");
    let journal = Journal::fold(&events).expect("fold the journal");
    // The vcluster as the executor saw it when it settled: no spec changes while an
    // operation runs, so the projection from before it (a new vcluster's from after).
    let vcluster = match before {
        Some(v) => Some(v.clone()),
        None => h.vcluster(target).await,
    };
    let host_target = Target {
        host: vcluster
            .as_ref()
            .map(|v| v.spec.host.clone())
            .unwrap_or_else(|| ovc_driver::router::DEFAULT_HOST.to_string()),
        namespace: vcluster
            .as_ref()
            .map(|v| v.host_namespace.clone())
            .unwrap_or_default(),
        release: op.vcluster.to_string(),
    };
    let ctx = StepCtx {
        operation_id: op.id,
        command: op.command.clone(),
        vcluster_uid: op.vcluster_uid,
        vcluster_name: op.vcluster.clone(),
        project: op.project.clone(),
        vcluster,
        prior_state: op.prior_state,
        outputs: journal.outputs(),
        target: host_target,
        call: CallCtx::for_step(op.id, def.name, "settle", 0),
        driver: h.sim.clone() as Arc<dyn HostDriver>,
        services: Arc::new(Services {
            artifacts: h.artifacts.clone(),
        }),
        store: h.store.clone(),
        clock: Arc::new(SystemClock),
        ids: Arc::new(RandomIds),
    };
    let settlement = (def.settle)(&ctx)
        .unwrap_or_else(|e| panic!("{}: the settlement of {op:#?} failed: {e}", def.name));
    settlement
        .state
        .or(before.map(|v| v.state))
        .unwrap_or_else(|| panic!("{}: settles to no state and had none before", def.name))
}

/// The state a compensated operation must leave the vcluster in: the operation's
/// recorded prior state; none recorded means the operation either brought the vcluster
/// into being (then DELETED) or leaves its state alone (then as `before`).
fn prior_state(op: &Operation, before: Option<&VCluster>, ctx: &str) -> VClusterState {
    let observed = before.map(|v| v.state);
    if let Some(recorded) = op.prior_state {
        assert_eq!(
            Some(recorded),
            observed,
            "{ctx}: the recorded prior state is not the state before"
        );
        return recorded;
    }
    observed.unwrap_or(VClusterState::Deleted)
}

/// What a permanent sweep checked.
#[derive(Debug, Default)]
pub(crate) struct PermanentReport {
    /// Steps whose failure was compensated to the prior state.
    pub compensated: Vec<String>,
    /// Steps whose failure left the operation STUCK (after an irreversible step).
    pub stuck: Vec<String>,
}

/// A permanent failure at each planned step in turn: compensated to the prior state with
/// the host put back, or STUCK with the vcluster FAILED once an irreversible step has
/// succeeded. Every planned step is failed exactly once.
pub(crate) async fn permanent(def: &WorkflowDef, fixture: &impl Fixture) -> PermanentReport {
    let mut report = PermanentReport::default();
    let mut plan: Option<Vec<String>> = None;
    let mut i = 0;
    while plan.as_ref().is_none_or(|p| i < p.len()) {
        let (mut h, command, planned) = prepare(def, fixture).await;
        let plan = plan.get_or_insert_with(|| planned.clone());
        assert_eq!(
            &planned, plan,
            "{}: the fixture plans differently each time",
            def.name
        );
        let step = plan[i].clone();
        let rule = FaultRule::new(def.name, step.as_str(), FaultKind::Permanent, None);
        h.restart_worker(HarnessOptions::with_faults(vec![rule]))
            .await;
        let target = fixture.target();
        let before = h.vcluster(target).await;
        let host_before = host_view(&h, target).await;
        let op = h.run(target, command).await;
        let ctx = format!("{}: a permanent failure at {step}", def.name);
        assert_ran_the_plan(&op, plan, &ctx);
        let failed = op.steps.iter().find(|s| s.name == step).expect("the step");
        assert_eq!(failed.state, StepState::Failed, "{ctx}: {op:#?}");
        assert_eq!(failed.attempts, 1, "{ctx}: a permanent failure was retried");
        let vc = h.vcluster(target).await.expect("the vcluster's row");
        // Compensation walks back from the failed step; the first irreversible step it
        // meets cannot be undone.
        let irreversible = plan[..i]
            .iter()
            .rposition(|s| step_def(def, s).irreversible);
        if let Some(k) = irreversible {
            assert_eq!(op.state, OperationState::Stuck, "{ctx}: {op:#?}");
            assert_eq!(vc.state, VClusterState::Failed, "{ctx}");
            assert_eq!(
                step_state(&op, &plan[k]),
                StepState::Failed,
                "{ctx}: its undo"
            );
            for undone in &plan[k + 1..i] {
                assert_eq!(
                    step_state(&op, undone),
                    StepState::Compensated,
                    "{ctx}: {undone}"
                );
            }
            report.stuck.push(step.clone());
        } else {
            assert_eq!(op.state, OperationState::Failed, "{ctx}: {op:#?}");
            assert!(op.error.is_some(), "{ctx}: no error recorded");
            for earlier in &plan[..i] {
                assert_eq!(
                    step_state(&op, earlier),
                    StepState::Compensated,
                    "{ctx}: {earlier}"
                );
            }
            let prior = prior_state(&op, before.as_ref(), &ctx);
            assert_eq!(vc.state, prior, "{ctx}: not back in the prior state");
            assert_eq!(vc.active_operation, None, "{ctx}");
            let host_after = host_view(&h, target).await;
            assert_eq!(host_after, host_before, "{ctx}: the host was not put back");
            fixture.after_compensation(&h, &op, &step).await;
            report.compensated.push(step.clone());
        }
        h.stop().await;
        i += 1;
    }
    let plan = plan.expect("the first case planned");
    let checked = report.compensated.len() + report.stuck.len();
    assert_eq!(
        checked,
        plan.len(),
        "{}: not every step was failed once",
        def.name
    );
    eprintln!(
        "sweep {}/permanent: failed each of {checked} steps once: {} compensated, {} stuck",
        def.name,
        report.compensated.len(),
        report.stuck.len()
    );
    report
}

/// [`TRANSIENT_FAILURES`] transient failures at each planned step in turn: the operation
/// ends SUCCEEDED in the state its settlement names, that step after one more attempt.
pub(crate) async fn transient(def: &WorkflowDef, fixture: &impl Fixture) {
    let mut plan: Option<Vec<String>> = None;
    let mut i = 0;
    while plan.as_ref().is_none_or(|p| i < p.len()) {
        let (mut h, command, planned) = prepare(def, fixture).await;
        let plan = plan.get_or_insert_with(|| planned.clone());
        assert_eq!(
            &planned, plan,
            "{}: the fixture plans differently each time",
            def.name
        );
        let step = plan[i].clone();
        let limit = step_def(def, &step).max_attempts;
        assert!(
            TRANSIENT_FAILURES < limit,
            "{}: step {step} allows {limit} attempts, too few for the transient sweep",
            def.name
        );
        let rule = FaultRule::new(
            def.name,
            step.as_str(),
            FaultKind::Transient,
            Some(TRANSIENT_FAILURES),
        );
        h.restart_worker(HarnessOptions::with_faults(vec![rule]))
            .await;
        let target = fixture.target();
        let before = h.vcluster(target).await;
        let op = h.run(target, command).await;
        let ctx = format!(
            "{}: {TRANSIENT_FAILURES} transient failures at {step}",
            def.name
        );
        assert_eq!(op.state, OperationState::Succeeded, "{ctx}: {op:#?}");
        assert_ran_the_plan(&op, plan, &ctx);
        let s = op.steps.iter().find(|s| s.name == step).expect("the step");
        assert_eq!(s.attempts, TRANSIENT_FAILURES + 1, "{ctx}: attempts");
        let expected = settled_state(def, &h, target, before.as_ref(), &op).await;
        let vc = h.vcluster(target).await.map(|v| v.state);
        assert_eq!(vc, Some(expected), "{ctx}");
        h.stop().await;
        i += 1;
    }
    eprintln!(
        "sweep {}/transient: failed each of {} steps {TRANSIENT_FAILURES} times: all succeeded",
        def.name,
        plan.map_or(0, |p| p.len())
    );
}

/// The operation run normally and with every step run twice (`repeat_steps`: the effect
/// happens, the journal does not hear of it, the step runs again): both succeed in the
/// settled state with the same host state and the same effect counts, and the repeated
/// run did call the host again for every step that calls it.
pub(crate) async fn repeated(def: &WorkflowDef, fixture: &impl Fixture) {
    let target = fixture.target();
    let mut runs = Vec::new();
    for repeat_steps in [false, true] {
        let (mut h, command, planned) = prepare(def, fixture).await;
        h.restart_worker(HarnessOptions {
            sim: SimConfig {
                record_calls: true,
                ..SimConfig::default()
            },
            repeat_steps,
            ..HarnessOptions::default()
        })
        .await;
        let before = h.vcluster(target).await;
        let op = h.run(target, command).await;
        let ctx = format!("{} (repeat_steps: {repeat_steps})", def.name);
        assert_eq!(op.state, OperationState::Succeeded, "{ctx}: {op:#?}");
        assert_ran_the_plan(&op, &planned, &ctx);
        let expected = settled_state(def, &h, target, before.as_ref(), &op).await;
        assert_eq!(
            h.vcluster(target).await.map(|v| v.state),
            Some(expected),
            "{ctx}"
        );
        let calls = calls_per_step(&h, &op).await;
        runs.push((
            host_view(&h, target).await,
            effects(&h).await,
            calls,
            planned,
        ));
        h.stop().await;
    }
    let (twice_view, twice_effects, twice_calls, planned) = runs.pop().expect("twice");
    let (normal_view, normal_effects, normal_calls, _) = runs.pop().expect("normal");
    assert_eq!(twice_view, normal_view, "{}: host state differs", def.name);
    assert_eq!(
        twice_effects, normal_effects,
        "{}: running each step twice applied an effect twice",
        def.name
    );
    let calling: Vec<&String> = planned
        .iter()
        .filter(|s| normal_calls.contains_key(*s))
        .collect();
    for step in &calling {
        assert!(
            twice_calls.get(*step) > normal_calls.get(*step),
            "{}: step {step} was not run again ({:?} host calls, {:?} normally)",
            def.name,
            twice_calls.get(*step),
            normal_calls.get(*step)
        );
    }
    eprintln!(
        "sweep {}/repeated: ran each of {} steps twice ({} call the host): same end state",
        def.name,
        planned.len(),
        calling.len()
    );
}

/// The steps planned for the fixture's command (for [`assert_covers`]).
pub(crate) async fn planned(def: &WorkflowDef, fixture: &impl Fixture) -> Vec<String> {
    let (h, _, planned) = prepare(def, fixture).await;
    h.stop().await;
    planned
}

/// Asserts that the fixtures of a workflow plan, between them, every step it defines
/// (else a step behind a `skip_if` would never be swept).
pub(crate) fn assert_covers(def: &WorkflowDef, planned: &BTreeSet<String>) {
    let missing: Vec<&str> = def
        .steps
        .iter()
        .map(|s| s.name)
        .filter(|s| !planned.contains(*s))
        .collect();
    assert!(
        missing.is_empty(),
        "{}: no fixture plans {missing:?}; add a fixture whose command runs them",
        def.name
    );
}

/// Host calls of operation `op` by step (undos under `undo:<step>`).
async fn calls_per_step(h: &Harness, op: &Operation) -> BTreeMap<String, u64> {
    let mut by_step = BTreeMap::new();
    for call in h.sim.calls().await.expect("sim calls") {
        if call.operation_id == Some(op.id) {
            *by_step.entry(call.step).or_default() += 1;
        }
    }
    by_step
}

/// Where `vc` lives on the host, as its projection records it (`None`: never created).
async fn target_of(h: &Harness, vc: &str) -> Option<Target> {
    h.vcluster(vc).await.map(|v| Target {
        host: v.spec.host.clone(),
        namespace: v.host_namespace,
        release: vc.to_string(),
    })
}

/// What of a release must be back after compensation (timestamps and the Helm revision
/// move on; everything a user could observe must not).
fn observable(r: Option<SimRelease>) -> Option<serde_json::Value> {
    r.map(|r| {
        serde_json::json!({
            "values": r.values,
            "replicas": r.replicas,
            "paused": r.paused,
            "paused_replicas": r.paused_replicas,
            "workload_pods": r.workload_pods,
            "backing_store": without_uid(&String::from_utf8_lossy(&r.backing_store)),
        })
    })
}

/// Whether `vc`'s namespace exists, and its release as far as it is observable.
async fn host_view(h: &Harness, vc: &str) -> (bool, Option<serde_json::Value>) {
    let Some(t) = target_of(h, vc).await else {
        return (false, None);
    };
    let state = h.sim.state().await.expect("sim state");
    let ns = state.namespaces.iter().any(|n| n.name == t.namespace);
    (
        ns,
        observable(h.sim.release_state(&t).await.expect("release")),
    )
}

/// The effect counters, with the uid part of namespace names (`ovc-<name>-<uid hex>`)
/// blanked: two harnesses give the same vcluster different uids.
async fn effects(h: &Harness) -> BTreeMap<String, u64> {
    h.sim
        .effects()
        .await
        .expect("effects")
        .into_iter()
        .map(|(k, n)| (without_uid(&k), n))
        .collect()
}

/// `s` with every `-<32 lowercase hex>` (the uid in a host namespace) replaced by `-<uid>`.
fn without_uid(s: &str) -> String {
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('-') {
        let (head, tail) = rest.split_at(i + 1);
        out.push_str(head);
        let run = tail.chars().take_while(|c| is_hex(*c)).count();
        if run == 32 {
            out.push_str("<uid>");
            rest = &tail[32..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Declares the sweeps of a workflow file: for each `module: fixture`, a module with the
/// three sweep tests over `definition`, and one test that the fixtures together plan
/// every step of it.
///
/// ```ignore
/// crate::sweep::sweeps!(super::definition(); running: Running);
/// ```
macro_rules! sweeps {
    ($def:expr; $($module:ident: $fixture:expr),+ $(,)?) => {
        $(
            mod $module {
                #[allow(unused_imports)]
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn a_permanent_failure_at_each_step_compensates() {
                    $crate::sweep::permanent(&$def, &$fixture).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn transient_failures_at_each_step_end_succeeded() {
                    $crate::sweep::transient(&$def, &$fixture).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn every_step_run_twice_ends_in_the_same_state() {
                    $crate::sweep::repeated(&$def, &$fixture).await;
                }
            }
        )+

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_fixtures_plan_every_step() {
            let mut planned = std::collections::BTreeSet::new();
            $( planned.extend($crate::sweep::planned(&$def, &$fixture).await); )+
            $crate::sweep::assert_covers(&$def, &planned);
        }
    };
}
pub(crate) use sweeps;
