//! Host identity and tenancy: every vcluster gets its own host namespace (name + uid),
//! labelled with its owner; a namespace that is someone else's is refused and left alone;
//! an undo deletes only what its own operation created. On SQLite and PostgreSQL.

use ovc_driver::sim::SimNamespace;
use ovc_driver::{LABEL_PROJECT, LABEL_UID, LABEL_VCLUSTER, Target};
use ovc_store::Backend;
use ovc_tests::{Harness, HarnessOptions, name};
use ovc_types::command::{Command, RestoreTarget};
use ovc_types::command::{CreateParams, RestoreParams};
use ovc_types::resource::{VCluster, host_namespace};
use ovc_types::spec::VClusterSpec;
use ovc_types::state::{OperationState, StepState, VClusterState};
use ovc_types::time::{RandomIds, SequentialIds};
use ovc_types::{ProjectName, SnapshotId, VClusterId};
use ovc_workflows::snapshot::SnapshotParams;
use std::collections::BTreeMap;

fn project(s: &str) -> ProjectName {
    s.parse().expect("project")
}

fn create() -> Command {
    Command::new(CreateParams {
        spec: VClusterSpec::default(),
    })
}

async fn run_in(
    h: &Harness,
    p: &str,
    vc: &str,
    command: Command,
) -> ovc_types::resource::Operation {
    let accepted = h
        .submit_as(&project(p), vc, command, None, &RandomIds)
        .await
        .unwrap_or_else(|e| panic!("submit {p}/{vc}: {e}"));
    h.wait(accepted.operation_id).await
}

async fn vcluster(h: &Harness, p: &str, vc: &str) -> VCluster {
    h.store
        .get_vcluster(&project(p), &name(vc))
        .await
        .expect("get vcluster")
        .unwrap_or_else(|| panic!("vcluster {p}/{vc} exists"))
}

async fn namespace(h: &Harness, ns: &str) -> Option<SimNamespace> {
    h.sim
        .state()
        .await
        .expect("sim state")
        .namespaces
        .into_iter()
        .find(|n| n.name == ns)
}

/// The vcluster is RUNNING in its own namespace (name + uid), labelled as its, with its
/// release in it.
async fn assert_running_in_own_namespace(h: &Harness, p: &str, vc: &str) -> String {
    let v = vcluster(h, p, vc).await;
    assert_eq!(v.state, VClusterState::Running, "{v:#?}");
    assert_eq!(v.host_namespace, host_namespace(&v.name, v.uid));
    let ns = namespace(h, &v.host_namespace)
        .await
        .unwrap_or_else(|| panic!("namespace of {p}/{vc} exists"));
    assert_eq!(ns.labels.get(LABEL_PROJECT).map(String::as_str), Some(p));
    assert_eq!(ns.labels.get(LABEL_VCLUSTER).map(String::as_str), Some(vc));
    assert_eq!(ns.labels.get(LABEL_UID), Some(&v.uid.to_string()));
    let release = h
        .sim
        .release_state(&Target {
            host: v.spec.host.clone(),
            namespace: v.host_namespace.clone(),
            release: vc.to_string(),
        })
        .await
        .expect("release state");
    assert!(release.is_some(), "the release of {p}/{vc} is installed");
    v.host_namespace
}

async fn colliding_names_get_two_namespaces(backend: Backend) {
    let h = Harness::start(backend, HarnessOptions::default()).await;
    // `ovc-a-b-c` for both under the old `ovc-<project>-<name>` scheme.
    let first = run_in(&h, "a", "b-c", create()).await;
    assert_eq!(first.state, OperationState::Succeeded, "{first:#?}");
    let second = run_in(&h, "a-b", "c", create()).await;
    assert_eq!(second.state, OperationState::Succeeded, "{second:#?}");
    let ns1 = assert_running_in_own_namespace(&h, "a", "b-c").await;
    let ns2 = assert_running_in_own_namespace(&h, "a-b", "c").await;
    assert_ne!(ns1, ns2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_names_get_two_namespaces_sqlite() {
    colliding_names_get_two_namespaces(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_names_get_two_namespaces_postgres() {
    colliding_names_get_two_namespaces(Backend::Postgres).await;
}

/// Submits `command` on `p/vc` with ids 1, 2, ... and checks that the new vcluster's uid
/// is 2 (operation id first, then the uid), whose namespace the test prepared.
async fn submit_with_uid_2(h: &Harness, p: &str, vc: &str, command: Command) -> VCluster {
    let accepted = h
        .submit_as(&project(p), vc, command, None, &SequentialIds::default())
        .await
        .unwrap_or_else(|e| panic!("submit {p}/{vc}: {e}"));
    let op = h.wait(accepted.operation_id).await;
    let v = vcluster(h, p, vc).await;
    assert_eq!(
        v.uid,
        uid_2(),
        "the test prepared the namespace of uid 2; accept minted {op:#?}"
    );
    v
}

fn uid_2() -> VClusterId {
    VClusterId(uuid::Uuid::from_u128(2))
}

/// Namespaces someone else made: no labels at all, and one labelled as another
/// vcluster's. Returns them (name → labels).
fn foreign_labels(other: VClusterId) -> [BTreeMap<String, String>; 2] {
    [
        BTreeMap::from([("team".to_string(), "payments".to_string())]),
        BTreeMap::from([
            (LABEL_PROJECT.to_string(), "other".to_string()),
            (LABEL_VCLUSTER.to_string(), "theirs".to_string()),
            (LABEL_UID.to_string(), other.to_string()),
        ]),
    ]
}

/// `command` (a create or a restore into a new vcluster `vc`) finds its namespace taken
/// by `labels`: it fails at create_namespace with a message naming what it found, and
/// the namespace stays exactly as it was.
async fn refused_and_untouched(
    h: &Harness,
    vc: &str,
    command: impl Fn() -> Command,
    labels: &BTreeMap<String, String>,
    expect_in_message: &str,
) {
    let ns = host_namespace(&name(vc), uid_2());
    assert!(
        h.sim
            .create_foreign_namespace(&ns, labels.clone())
            .await
            .expect("foreign namespace")
    );
    let before = namespace(h, &ns).await.expect("created");
    let effects_before = h.sim.effects().await.expect("effects");
    let v = submit_with_uid_2(h, "default", vc, command()).await;
    let op = h
        .store
        .get_operation(v.last_operation.expect("an operation ended"))
        .await
        .expect("get")
        .expect("operation");
    assert_eq!(op.state, OperationState::Failed, "{op:#?}");
    let step = op
        .steps
        .iter()
        .find(|s| s.name == "create_namespace")
        .expect("create_namespace step");
    assert_eq!(step.state, StepState::Failed, "{op:#?}");
    let error = step.error.as_ref().expect("its error");
    assert_eq!(error.reason(), Some("NAMESPACE_NOT_OWNED"), "{error:?}");
    assert!(
        error.message.contains(&ns) && error.message.contains(expect_in_message),
        "{error:?}"
    );
    assert_eq!(v.state, VClusterState::Deleted, "{v:#?}");
    assert_eq!(namespace(h, &ns).await, Some(before), "left untouched");
    let effects_after = h.sim.effects().await.expect("effects");
    for (key, n) in &effects_after {
        if key.ends_with(&format!(":{ns}")) {
            assert_eq!(effects_before.get(key), Some(n), "{key} changed");
        }
    }
    let state = h.sim.state().await.expect("state");
    assert!(
        !state.releases.iter().any(|r| r.namespace == ns),
        "{state:#?}"
    );
}

async fn a_foreign_namespace_is_refused(backend: Backend) {
    let other = VClusterId(uuid::Uuid::from_u128(99));
    let [unlabelled, owned_by_other] = foreign_labels(other);
    for (labels, found) in [
        (&unlabelled, "was not created by ovc".to_string()),
        (
            &owned_by_other,
            format!("vcluster other/theirs (uid {other})"),
        ),
    ] {
        let h = Harness::start(backend, HarnessOptions::default()).await;
        refused_and_untouched(&h, "vc", create, labels, &found).await;
        // The same name with another uid gets another namespace and works.
        let op = h.run("vc", create()).await;
        assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
        assert_running_in_own_namespace(&h, "default", "vc").await;
        h.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_namespace_is_refused_sqlite() {
    a_foreign_namespace_is_refused(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_namespace_is_refused_postgres() {
    a_foreign_namespace_is_refused(Backend::Postgres).await;
}

async fn snapshot_of(h: &Harness, p: &str, vc: &str) -> SnapshotId {
    let op = run_in(h, p, vc, Command::new(SnapshotParams { description: None })).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    SnapshotId(op.id.as_uuid())
}

async fn restore_as_new_follows_the_same_rules(backend: Backend) {
    let h = Harness::start(backend, HarnessOptions::default()).await;
    // Tenant a's vcluster b-c; tenant a-b restores a snapshot as c (ovc-a-b-c in the
    // legacy scheme for both).
    assert_eq!(
        run_in(&h, "a", "b-c", create()).await.state,
        OperationState::Succeeded
    );
    assert_eq!(
        run_in(&h, "a-b", "x", create()).await.state,
        OperationState::Succeeded
    );
    let snap = snapshot_of(&h, "a-b", "x").await;
    let restore = |to: &str| {
        Command::new(RestoreParams {
            snapshot_id: snap,
            target: RestoreTarget::NewName(name(to)),
        })
    };
    let op = run_in(&h, "a-b", "c", restore("c")).await;
    assert_eq!(op.state, OperationState::Succeeded, "{op:#?}");
    let ns1 = assert_running_in_own_namespace(&h, "a", "b-c").await;
    let ns2 = assert_running_in_own_namespace(&h, "a-b", "c").await;
    assert_ne!(ns1, ns2);
    h.stop().await;

    // A restore into a namespace someone else holds fails and leaves it alone.
    let h = Harness::start(backend, HarnessOptions::default()).await;
    assert_eq!(
        h.run("src", create()).await.state,
        OperationState::Succeeded
    );
    let snap = snapshot_of(&h, "default", "src").await;
    let [unlabelled, _] = foreign_labels(VClusterId(uuid::Uuid::from_u128(99)));
    refused_and_untouched(
        &h,
        "copy",
        || {
            Command::new(RestoreParams {
                snapshot_id: snap,
                target: RestoreTarget::NewName(name("copy")),
            })
        },
        &unlabelled,
        "was not created by ovc",
    )
    .await;
    assert_running_in_own_namespace(&h, "default", "src").await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_new_follows_the_same_rules_sqlite() {
    restore_as_new_follows_the_same_rules(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_as_new_follows_the_same_rules_postgres() {
    restore_as_new_follows_the_same_rules(Backend::Postgres).await;
}

/// The namespace of the new vcluster already exists *as its own* (an operator made it, or
/// an earlier operation did) and a later step fails: the undo leaves the namespace, as
/// this operation did not create it; a namespace the operation did create is deleted.
async fn an_undo_deletes_only_what_its_operation_created(backend: Backend) {
    let h = Harness::start(
        backend,
        HarnessOptions {
            sim: ovc_driver::sim::SimConfig {
                faults: ovc_driver::sim::FaultRule::parse_list("create/install_release:permanent")
                    .expect("rules"),
                ..Default::default()
            },
            ..HarnessOptions::default()
        },
    )
    .await;
    let ns = host_namespace(&name("vc"), uid_2());
    let owner = ovc_driver::Owner {
        project: project("default"),
        vcluster: name("vc"),
        uid: uid_2(),
    };
    assert!(
        h.sim
            .create_foreign_namespace(&ns, owner.labels())
            .await
            .expect("namespace")
    );
    let v = submit_with_uid_2(&h, "default", "vc", create()).await;
    assert_eq!(v.host_namespace, ns);
    let op = h
        .store
        .get_operation(v.last_operation.expect("ended"))
        .await
        .expect("get")
        .expect("op");
    assert_eq!(op.state, OperationState::Failed, "{op:#?}");
    let step = |n: &str| op.steps.iter().find(|s| s.name == n).expect("step").state;
    assert_eq!(step("create_namespace"), StepState::Compensated, "{op:#?}");
    assert!(namespace(&h, &ns).await.is_some(), "not created here: kept");

    // A fresh create of another vcluster creates its namespace, and its undo deletes it.
    let op = h.run("other", create()).await;
    assert_eq!(op.state, OperationState::Failed, "{op:#?}");
    let other = vcluster(&h, "default", "other").await;
    assert!(
        namespace(&h, &other.host_namespace).await.is_none(),
        "created here: deleted"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_deletes_only_what_its_operation_created_sqlite() {
    an_undo_deletes_only_what_its_operation_created(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undo_deletes_only_what_its_operation_created_postgres() {
    an_undo_deletes_only_what_its_operation_created(Backend::Postgres).await;
}
