//! Every workflow, on the simulated host and a real SQLite file:
//! - a permanent failure injected at each step in turn ends compensated, with the
//!   vcluster (and the host) back in the prior stable state;
//! - transient failures (fewer than the attempt limit) at each step end succeeded;
//! - every step run twice (a crash after the effect, before the journal) ends in the same
//!   state with the same effects as a normal run.
//!
//! DELETE_SNAPSHOT is one of the cases: its "target" is the snapshot's vcluster, whose
//! state it must leave as it was (RUNNING) whatever happens.

use ovc_driver::Target;
use ovc_driver::sim::{FaultRule, SimConfig, SimRelease};
use ovc_store::Backend;
use ovc_tests::{Harness, HarnessOptions};
use ovc_types::command::{Command, RestoreTarget};
use ovc_types::resource::Operation;
use ovc_types::spec::{ControlPlanePatch, ScalePatch, VClusterSpec};
use ovc_types::state::{OperationState, StepState, VClusterState};
use ovc_types::{SnapshotId, SnapshotState};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Create,
    Suspend,
    Resume,
    Snapshot,
    RestoreOver,
    RestoreNew,
    Scale,
    Delete,
    DeleteSnapshot,
}

const ALL: [Case; 9] = [
    Case::Create,
    Case::Suspend,
    Case::Resume,
    Case::Snapshot,
    Case::RestoreOver,
    Case::RestoreNew,
    Case::Scale,
    Case::Delete,
    Case::DeleteSnapshot,
];

impl Case {
    fn workflow(self) -> &'static str {
        match self {
            Case::Create => "create",
            Case::Suspend => "suspend",
            Case::Resume => "resume",
            Case::Snapshot => "snapshot",
            Case::RestoreOver | Case::RestoreNew => "restore",
            Case::Scale => "scale",
            Case::Delete => "delete",
            Case::DeleteSnapshot => "delete_snapshot",
        }
    }

    /// The vcluster whose state the operation changes.
    fn target(self) -> &'static str {
        match self {
            Case::RestoreNew => "copy",
            _ => "vc",
        }
    }

    /// The steps that run (skipped ones excluded) for the command used here.
    fn steps(self) -> &'static [&'static str] {
        match self {
            Case::Create => &[
                "create_namespace",
                "install_release",
                "wait_ready",
                "read_kubeconfig",
            ],
            Case::Suspend => &[
                "snapshot",
                "evict_workloads",
                "wait_workloads_gone",
                "scale_to_zero",
                "wait_pods_gone",
            ],
            Case::Resume => &[
                "scale_up",
                "wait_ready",
                "health_check",
                "reconcile_workloads",
            ],
            Case::Snapshot => &["upload_snapshot", "verify_snapshot"],
            Case::RestoreOver => &[
                "verify_snapshot",
                "safety_copy",
                "pause_control_plane",
                "load_backing_store",
                "resume_control_plane",
                "wait_ready",
            ],
            Case::RestoreNew => &[
                "verify_snapshot",
                "create_namespace",
                "hold_control_plane",
                "install_release",
                "pause_control_plane",
                "load_backing_store",
                "resume_control_plane",
                "wait_ready",
            ],
            Case::Scale => &["upgrade_release", "wait_ready"],
            Case::Delete => &["uninstall_release", "delete_namespace"],
            Case::DeleteSnapshot => &["delete_artifacts"],
        }
    }

    fn success_state(self) -> VClusterState {
        match self {
            Case::Suspend => VClusterState::Suspended,
            Case::Delete => VClusterState::Deleted,
            _ => VClusterState::Running,
        }
    }

    fn prior_state(self) -> VClusterState {
        match self {
            Case::Create | Case::RestoreNew => VClusterState::Deleted,
            Case::Resume => VClusterState::Suspended,
            _ => VClusterState::Running,
        }
    }

    /// Brings the host to the case's starting point; returns the command to test.
    async fn setup(self, h: &Harness) -> Command {
        if self != Case::Create {
            let op = h
                .run(
                    "vc",
                    Command::Create {
                        spec: VClusterSpec::default(),
                    },
                )
                .await;
            assert_eq!(op.state, OperationState::Succeeded, "setup create: {op:#?}");
        }
        let mut snapshot = None;
        if matches!(
            self,
            Case::RestoreOver | Case::RestoreNew | Case::DeleteSnapshot
        ) {
            let op = h.run("vc", Command::Snapshot { description: None }).await;
            assert_eq!(
                op.state,
                OperationState::Succeeded,
                "setup snapshot: {op:#?}"
            );
            snapshot = Some(SnapshotId(op.id.as_uuid()));
        }
        if self == Case::Resume {
            let op = h
                .run(
                    "vc",
                    Command::Suspend {
                        snapshot: false,
                        evict_workloads: false,
                    },
                )
                .await;
            assert_eq!(
                op.state,
                OperationState::Succeeded,
                "setup suspend: {op:#?}"
            );
        }
        match self {
            Case::Create => Command::Create {
                spec: VClusterSpec::default(),
            },
            Case::Suspend => Command::Suspend {
                snapshot: true,
                evict_workloads: true,
            },
            Case::Resume => Command::Resume {
                reconcile_workloads: true,
            },
            Case::Snapshot => Command::Snapshot {
                description: Some("test".into()),
            },
            Case::RestoreOver => Command::Restore {
                snapshot_id: snapshot.expect("snapshot"),
                target: RestoreTarget::Existing("vc".parse().expect("name")),
            },
            Case::RestoreNew => Command::Restore {
                snapshot_id: snapshot.expect("snapshot"),
                target: RestoreTarget::NewName("copy".parse().expect("name")),
            },
            Case::Scale => Command::Scale {
                patch: ScalePatch {
                    control_plane: Some(ControlPlanePatch {
                        replicas: Some(3),
                        ..ControlPlanePatch::default()
                    }),
                    quota: None,
                },
            },
            Case::Delete => Command::Delete {},
            Case::DeleteSnapshot => Command::DeleteSnapshot {
                snapshot_id: snapshot.expect("snapshot"),
            },
        }
    }
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

async fn harness(rules: &str, repeat_steps: bool) -> Harness {
    let faults = if rules.is_empty() {
        Vec::new()
    } else {
        FaultRule::parse_list(rules).expect("rules")
    };
    Harness::start(
        Backend::Sqlite,
        HarnessOptions {
            sim: SimConfig {
                faults,
                ..SimConfig::default()
            },
            repeat_steps,
            ..HarnessOptions::default()
        },
    )
    .await
}

fn step_state(op: &Operation, step: &str) -> StepState {
    op.steps
        .iter()
        .find(|s| s.name == step)
        .map(|s| s.state)
        .unwrap_or_else(|| panic!("no step {step} in {op:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_at_each_step_compensates_to_the_prior_state() {
    let mut checked = 0;
    for case in ALL {
        for (i, step) in case.steps().iter().enumerate() {
            let h = harness(&format!("{}/{step}:permanent", case.workflow()), false).await;
            let command = case.setup(&h).await;
            let before = host_view(&h, case.target()).await;
            let op = h.run(case.target(), command).await;
            let ctx = format!("{case:?} failing at {step}");
            let vc = h.vcluster(case.target()).await;
            // Delete cannot be undone once the release is gone: the operation is stuck and
            // the vcluster FAILED, with the story in the steps.
            if case == Case::Delete && i > 0 {
                assert_eq!(op.state, OperationState::Stuck, "{ctx}: {op:#?}");
                assert_eq!(vc.map(|v| v.state), Some(VClusterState::Failed), "{ctx}");
                assert_eq!(
                    step_state(&op, "uninstall_release"),
                    StepState::Failed,
                    "{ctx}"
                );
                checked += 1;
                continue;
            }
            assert_eq!(op.state, OperationState::Failed, "{ctx}: {op:#?}");
            assert!(op.error.is_some(), "{ctx}: no error recorded");
            assert_eq!(step_state(&op, step), StepState::Failed, "{ctx}");
            for earlier in &case.steps()[..i] {
                assert_eq!(
                    step_state(&op, earlier),
                    StepState::Compensated,
                    "{ctx}: {earlier}"
                );
            }
            let vc = vc.expect("vcluster row");
            assert_eq!(vc.state, case.prior_state(), "{ctx}");
            assert_eq!(vc.active_operation, None, "{ctx}");
            let after = host_view(&h, case.target()).await;
            assert_eq!(after, before, "{ctx}: the host was not put back");
            if case == Case::DeleteSnapshot {
                // The delete never touched the artifact: the snapshot is READY again.
                let id = match &op.command {
                    Command::DeleteSnapshot { snapshot_id } => *snapshot_id,
                    other => panic!("{other:?}"),
                };
                let snap = h.store.get_snapshot(id).await.expect("get").expect("row");
                assert_eq!(snap.state, SnapshotState::Ready, "{ctx}");
            }
            if case == Case::Suspend && i > 0 {
                // The snapshot taken by the first step was undone too.
                let snap = h
                    .store
                    .get_snapshot(SnapshotId(op.id.as_uuid()))
                    .await
                    .expect("get snapshot")
                    .expect("snapshot row");
                assert_eq!(snap.state, SnapshotState::Deleted, "{ctx}");
            }
            h.stop().await;
            checked += 1;
        }
    }
    assert_eq!(checked, 34);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_below_the_limit_end_succeeded() {
    for case in ALL {
        for step in case.steps() {
            let h = harness(&format!("{}/{step}:transient:2", case.workflow()), false).await;
            let command = case.setup(&h).await;
            let op = h.run(case.target(), command).await;
            let ctx = format!("{case:?} with 2 transient failures at {step}");
            assert_eq!(op.state, OperationState::Succeeded, "{ctx}: {op:#?}");
            let s = op.steps.iter().find(|s| s.name == *step).expect("step");
            assert_eq!(s.attempts, 3, "{ctx}: attempts");
            assert_eq!(
                h.vcluster(case.target()).await.map(|v| v.state),
                Some(case.success_state()),
                "{ctx}"
            );
            h.stop().await;
        }
    }
}

/// Effects on the host, with the operation-specific parts (ids) removed.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_run_twice_ends_in_the_same_state() {
    for case in ALL {
        let normal = harness("", false).await;
        let command = case.setup(&normal).await;
        let op = normal.run(case.target(), command).await;
        assert_eq!(
            op.state,
            OperationState::Succeeded,
            "{case:?} normal: {op:#?}"
        );
        let normal_view = host_view(&normal, case.target()).await;
        let normal_effects = effects(&normal).await;
        normal.stop().await;

        let twice = harness("", true).await;
        let command = case.setup(&twice).await;
        let op = twice.run(case.target(), command).await;
        assert_eq!(
            op.state,
            OperationState::Succeeded,
            "{case:?} twice: {op:#?}"
        );
        assert_eq!(
            twice.vcluster(case.target()).await.map(|v| v.state),
            Some(case.success_state()),
            "{case:?}"
        );
        let mut twice_view = host_view(&twice, case.target()).await;
        let mut normal_view = normal_view;
        if matches!(case, Case::RestoreOver | Case::RestoreNew | Case::Snapshot) {
            // Backing stores hold the snapshot's creation details, equal in kind only.
            for v in [&mut twice_view.1, &mut normal_view.1]
                .into_iter()
                .flatten()
            {
                v["backing_store"] = serde_json::Value::Null;
            }
        }
        assert_eq!(twice_view, normal_view, "{case:?}: host state differs");
        assert_eq!(
            effects(&twice).await,
            normal_effects,
            "{case:?}: running each step twice applied an effect twice"
        );
        twice.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_lifecycle_on_postgres() {
    let h = Harness::start(Backend::Postgres, HarnessOptions::default()).await;
    let steps = [
        Command::Create {
            spec: VClusterSpec::default(),
        },
        Command::Suspend {
            snapshot: true,
            evict_workloads: true,
        },
        Command::Resume {
            reconcile_workloads: true,
        },
        Command::Snapshot { description: None },
    ];
    let mut last = None;
    for c in steps {
        let op = h.run("vc", c).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
        last = Some(op);
    }
    let snap = SnapshotId(last.expect("op").id.as_uuid());
    let op = h
        .run(
            "vc",
            Command::Scale {
                patch: ScalePatch {
                    control_plane: Some(ControlPlanePatch {
                        replicas: Some(3),
                        ..ControlPlanePatch::default()
                    }),
                    quota: None,
                },
            },
        )
        .await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    assert_eq!(
        h.vcluster("vc")
            .await
            .expect("vc")
            .spec
            .control_plane
            .replicas,
        3
    );
    for target in [
        RestoreTarget::NewName("copy".parse().expect("n")),
        RestoreTarget::Existing("vc".parse().expect("n")),
    ] {
        let vc = match &target {
            RestoreTarget::NewName(n) | RestoreTarget::Existing(n) => n.to_string(),
        };
        let op = h
            .run(
                &vc,
                Command::Restore {
                    snapshot_id: snap,
                    target,
                },
            )
            .await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    }
    for vc in ["copy", "vc"] {
        let op = h.run(vc, Command::Delete {}).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
        assert_eq!(
            h.vcluster(vc).await.map(|v| v.state),
            Some(VClusterState::Deleted)
        );
    }
    // Snapshots outlive their vcluster; deleting one of a DELETED vcluster works.
    let op = h
        .run("vc", Command::DeleteSnapshot { snapshot_id: snap })
        .await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    let deleted = h.store.get_snapshot(snap).await.expect("get").expect("row");
    assert_eq!(deleted.state, SnapshotState::Deleted);
    let state = h.sim.state().await.expect("state");
    assert!(state.namespaces.is_empty(), "{state:#?}");
    assert!(state.releases.is_empty(), "{state:#?}");
    // The projections equal a rebuild from the events.
    let live = h.store.dump_projections().await.expect("dump");
    h.store.rebuild_projections().await.expect("rebuild");
    assert_eq!(h.store.dump_projections().await.expect("dump"), live);
    h.stop().await;
}
