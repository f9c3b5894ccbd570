//! The simulated host on SQLite and PostgreSQL: every test runs on both backends, each on
//! a fresh migrated database (a new file, or a new schema in `DATABASE_URL`).

use ovc_driver::sim::{
    FaultKind, FaultParseError, FaultRule, SimConfig, SimError, SimHost, WORKLOAD_PODS, effect_key,
    initial_backing_store,
};
use ovc_driver::{
    CallCtx, DriverError, HostDriver, LABEL_UID, MemorySink, MemorySource, NamespaceOutcome, Owner,
    ReleaseValues, Target,
};
use ovc_store::Backend;
use ovc_testkit::TestDb;
use ovc_types::error::Code;
use ovc_types::spec::ControlPlaneSpec;
use ovc_types::{OperationId, VClusterId};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

ovc_testkit::both_backends!(
    lifecycle_from_namespace_to_delete,
    each_ensure_counts_its_effect_once,
    missing_prerequisites_are_permanent_errors,
    upgrading_a_paused_release_is_refused,
    state_survives_a_new_host_on_the_same_database,
    transient_fault_fails_count_times_per_operation_across_reconnects,
    permanent_fault_fails_every_call_without_effects,
    hang_fault_never_returns,
    star_matches_every_step_including_undo,
    latency_is_slept_before_every_call,
    two_hosts_racing_on_one_ensure_change_the_state_once,
    ready_delay_holds_back_readiness,
    ensure_namespace_labels_its_owner_and_refuses_others,
);

// ---------------------------------------------------------------- helpers

/// The backing store, dumped through a [`MemorySink`].
async fn dump(host: &SimHost, c: &CallCtx, t: &Target) -> Result<Vec<u8>, DriverError> {
    let mut sink = MemorySink::default();
    let n = host.dump_backing_store(c, t, &mut sink).await?;
    assert_eq!(n, sink.data.len() as u64);
    Ok(sink.data)
}

/// Loads `data` through a [`MemorySource`].
async fn load(host: &SimHost, c: &CallCtx, t: &Target, data: &[u8]) -> Result<(), DriverError> {
    let n = host
        .load_backing_store(c, t, &mut MemorySource::new(data.to_vec()))
        .await?;
    assert_eq!(n, data.len() as u64);
    Ok(())
}

async fn fresh_db(backend: Backend) -> TestDb {
    let db = TestDb::new(backend).await;
    // Migrates, creating the sim tables; the store itself is not needed afterwards.
    drop(db.open().await);
    db
}

async fn connect(db: &TestDb, config: SimConfig) -> SimHost {
    SimHost::connect(db.url(), db.config().pg_schema.as_deref(), config)
        .await
        .expect("connect the sim host")
}

fn faults(list: &str) -> SimConfig {
    SimConfig {
        faults: FaultRule::parse_list(list).expect("fault rules"),
        ..SimConfig::default()
    }
}

fn new_op() -> OperationId {
    OperationId(Uuid::now_v7())
}

fn ctx_of(op: OperationId, workflow: &str, step: &str) -> CallCtx {
    CallCtx::for_step(op, workflow, step, 1)
}

/// A context of a fresh operation (faults are counted per operation).
fn ctx(workflow: &str, step: &str) -> CallCtx {
    ctx_of(new_op(), workflow, step)
}

/// The vcluster every test's namespaces belong to.
fn owner() -> Owner {
    Owner {
        project: "default".parse().expect("project"),
        vcluster: "team-a".parse().expect("name"),
        uid: VClusterId(Uuid::from_u128(7)),
    }
}

fn target(name: &str) -> Target {
    Target {
        host: "default".into(),
        namespace: format!("ovc-default-{name}"),
        release: name.into(),
    }
}

fn values(replicas: u32) -> ReleaseValues {
    ReleaseValues {
        kubernetes_version: "1.31".into(),
        control_plane: ControlPlaneSpec {
            replicas,
            ..ControlPlaneSpec::default()
        },
        quota: Default::default(),
        labels: BTreeMap::from([("team".into(), "a".into())]),
        helm_values: Default::default(),
        chart_version: None,
    }
}

fn effects(pairs: &[(&str, &Target, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .map(|(method, t, n)| (effect_key(method, &t.namespace), *n))
        .collect()
}

#[track_caller]
fn assert_permanent(result: Result<impl std::fmt::Debug, DriverError>, code: Code, text: &str) {
    match result {
        Err(DriverError::Permanent(status)) => {
            assert_eq!(status.code, code, "{status:?}");
            assert!(
                status.message.contains(text),
                "{:?} should contain {text:?}",
                status.message
            );
        }
        other => panic!("expected a permanent {code:?} error, got {other:?}"),
    }
}

#[track_caller]
fn assert_transient(result: Result<impl std::fmt::Debug, DriverError>, text: &str) {
    match result {
        Err(DriverError::Transient { message, .. }) => {
            assert!(
                message.contains(text),
                "{message:?} should contain {text:?}"
            );
        }
        other => panic!("expected a transient error, got {other:?}"),
    }
}

/// Namespace + release with defaults, as the create workflow leaves them.
async fn create(host: &SimHost, t: &Target, replicas: u32) {
    let c = ctx("create", "setup");
    host.ensure_namespace(&c, t, &owner())
        .await
        .expect("ensure_namespace");
    host.install_release(&c, t, &values(replicas))
        .await
        .expect("install_release");
}

// ---------------------------------------------------------------- tests

async fn lifecycle_from_namespace_to_delete(backend: Backend) {
    let db = fresh_db(backend).await;
    let host = connect(&db, SimConfig::default()).await;
    let t = target("team-a");
    let c = ctx("create", "install_release");

    assert!(!host.namespace_exists(&c, &t).await.expect("exists"));
    host.ensure_namespace(&c, &t, &owner())
        .await
        .expect("ensure_namespace");
    assert!(host.namespace_exists(&c, &t).await.expect("exists"));

    assert_eq!(host.install_release(&c, &t, &values(1)).await, Ok(1));
    let info = host
        .release(&c, &t)
        .await
        .expect("release")
        .expect("installed");
    assert_eq!((info.revision, info.values), (1, values(1)));
    let cp = host
        .control_plane(&c, &t)
        .await
        .expect("cp")
        .expect("cp exists");
    assert!(cp.is_ready(), "{cp:?}");
    assert!(!cp.paused);
    assert!(host.health_check(&c, &t).await.expect("health"));
    let kubeconfig = host.kubeconfig(&c, &t).await.expect("kc").expect("written");
    assert!(kubeconfig.contains("server: https://team-a.ovc-default-team-a:443"));
    assert_eq!(
        host.workload_pods(&c, &t).await.expect("pods"),
        WORKLOAD_PODS.map(String::from).to_vec()
    );
    let initial = dump(&host, &c, &t).await.expect("dump");
    assert_eq!(initial, initial_backing_store(&t.namespace, &t.release));
    // The same dump carries its per-object export and says what it is.
    let mut sink = MemorySink::default();
    host.dump_backing_store(&c, &t, &mut sink)
        .await
        .expect("dump");
    let refs: Vec<String> = sink.objects.iter().map(|o| o.reference()).collect();
    assert_eq!(
        refs,
        [
            "Namespace/default",
            "Namespace/kube-system",
            "ServiceAccount/default/default",
            "ConfigMap/default/kube-root-ca.crt"
        ]
    );
    assert_eq!(sink.objects_unavailable, None);
    assert_eq!(
        sink.info.as_ref().map(|i| (i.kind.as_str(), i.keys)),
        Some(("sim", Some(4)))
    );

    // Suspend: pause, evict.
    let s = ctx("suspend", "scale_to_zero");
    assert_eq!(host.pause_control_plane(&s, &t).await, Ok(1));
    let cp = host
        .control_plane(&s, &t)
        .await
        .expect("cp")
        .expect("cp exists");
    assert_eq!(
        (cp.replicas, cp.pods, cp.paused, cp.paused_replicas),
        (0, 0, true, Some(1))
    );
    assert!(!host.health_check(&s, &t).await.expect("health"));
    assert!(
        host.kubeconfig(&s, &t).await.expect("kc").is_some(),
        "vc-NAME survives a pause"
    );
    assert_permanent(
        dump(&host, &s, &t).await,
        Code::FailedPrecondition,
        "control plane of team-a",
    );
    assert_eq!(host.evict_workload_pods(&s, &t).await, Ok(3));
    assert!(host.workload_pods(&s, &t).await.expect("pods").is_empty());

    // An etcd dump is refused by a vcluster kept in the database, before any change.
    let etcd_dump = [&b"OVCETCD2"[..], &[0; 8], &[0xff; 4], &[0; 8]].concat();
    let before = host.release_state(&t).await.expect("state");
    assert_permanent(
        load(&host, &ctx("restore", "load"), &t, &etcd_dump).await,
        Code::FailedPrecondition,
        "holds an etcd dump",
    );
    assert_eq!(host.release_state(&t).await.expect("state"), before);

    // Restore while paused.
    let restored = b"restored content".to_vec();
    load(&host, &ctx("restore", "load"), &t, &restored)
        .await
        .expect("load while paused");

    // Resume, reconcile.
    let r = ctx("resume", "scale_up");
    assert_eq!(host.resume_control_plane(&r, &t).await, Ok(1));
    let cp = host
        .control_plane(&r, &t)
        .await
        .expect("cp")
        .expect("cp exists");
    assert!(
        cp.is_ready() && !cp.paused && cp.paused_replicas.is_none(),
        "{cp:?}"
    );
    assert!(host.workload_pods(&r, &t).await.expect("pods").is_empty());
    host.reconcile_workloads(&r, &t).await.expect("reconcile");
    assert_eq!(host.workload_pods(&r, &t).await.expect("pods").len(), 3);
    assert_eq!(dump(&host, &r, &t).await, Ok(restored));
    assert_permanent(
        load(&host, &r, &t, b"x").await,
        Code::FailedPrecondition,
        "pause it before",
    );

    // Scale: a new revision with 3 replicas.
    let sc = ctx("scale", "upgrade_release");
    assert_eq!(host.install_release(&sc, &t, &values(3)).await, Ok(2));
    let cp = host
        .control_plane(&sc, &t)
        .await
        .expect("cp")
        .expect("cp exists");
    assert_eq!((cp.replicas, cp.pods, cp.ready), (3, 3, 3));

    let state = host.state().await.expect("state");
    assert_eq!(state.namespaces.len(), 1);
    assert_eq!(state.releases.len(), 1);
    assert_eq!(state.releases[0].revision, 2);

    // Delete.
    let d = ctx("delete", "uninstall_release");
    host.uninstall_release(&d, &t).await.expect("uninstall");
    assert_eq!(host.release(&d, &t).await, Ok(None));
    assert_eq!(host.control_plane(&d, &t).await, Ok(None));
    assert_eq!(host.kubeconfig(&d, &t).await, Ok(None));
    assert!(host.workload_pods(&d, &t).await.expect("pods").is_empty());
    assert_eq!(host.release_state(&t).await.expect("release_state"), None);
    host.uninstall_release(&d, &t)
        .await
        .expect("uninstall again");
    assert_eq!(host.delete_namespace(&d, &t).await, Ok(true));
    assert!(!host.namespace_exists(&d, &t).await.expect("exists"));
    assert_eq!(host.delete_namespace(&d, &t).await, Ok(true));
    let state = host.state().await.expect("state");
    assert!(state.namespaces.is_empty() && state.releases.is_empty());

    assert_eq!(
        host.effects().await.expect("effects"),
        effects(&[
            ("ensure_namespace", &t, 1),
            ("install_release", &t, 2),
            ("pause_control_plane", &t, 1),
            ("evict_workload_pods", &t, 1),
            ("load_backing_store", &t, 1),
            ("resume_control_plane", &t, 1),
            ("reconcile_workloads", &t, 1),
            ("uninstall_release", &t, 1),
            ("delete_namespace", &t, 1),
        ])
    );
}

async fn each_ensure_counts_its_effect_once(backend: Backend) {
    let db = fresh_db(backend).await;
    let host = connect(&db, SimConfig::default()).await;
    let t = target("twice");
    let other = target("other");
    let c = ctx("create", "any");

    for _ in 0..2 {
        host.ensure_namespace(&c, &t, &owner())
            .await
            .expect("ensure_namespace");
    }
    for _ in 0..2 {
        assert_eq!(host.install_release(&c, &t, &values(1)).await, Ok(1));
    }
    for _ in 0..2 {
        assert_eq!(host.pause_control_plane(&c, &t).await, Ok(1));
    }
    assert_eq!(host.evict_workload_pods(&c, &t).await, Ok(3));
    assert_eq!(host.evict_workload_pods(&c, &t).await, Ok(0));
    for _ in 0..2 {
        load(&host, &c, &t, b"same bytes").await.expect("load");
    }
    for _ in 0..2 {
        assert_eq!(host.resume_control_plane(&c, &t).await, Ok(1));
    }
    for _ in 0..2 {
        host.reconcile_workloads(&c, &t).await.expect("reconcile");
    }
    for _ in 0..2 {
        assert_eq!(host.install_release(&c, &t, &values(3)).await, Ok(2));
    }
    for _ in 0..2 {
        host.uninstall_release(&c, &t).await.expect("uninstall");
    }
    for _ in 0..2 {
        assert_eq!(host.delete_namespace(&c, &t).await, Ok(true));
    }
    // Removals of things that never existed change nothing.
    host.uninstall_release(&c, &other).await.expect("uninstall");
    assert_eq!(host.evict_workload_pods(&c, &other).await, Ok(0));
    assert_eq!(host.delete_namespace(&c, &other).await, Ok(true));

    assert_eq!(
        host.effects().await.expect("effects"),
        effects(&[
            ("ensure_namespace", &t, 1),
            ("install_release", &t, 2),
            ("pause_control_plane", &t, 1),
            ("evict_workload_pods", &t, 1),
            ("load_backing_store", &t, 1),
            ("resume_control_plane", &t, 1),
            ("reconcile_workloads", &t, 1),
            ("uninstall_release", &t, 1),
            ("delete_namespace", &t, 1),
        ])
    );
}

async fn missing_prerequisites_are_permanent_errors(backend: Backend) {
    let db = fresh_db(backend).await;
    let host = connect(&db, SimConfig::default()).await;
    let t = target("ghost");
    let c = ctx("create", "install_release");

    assert_permanent(
        host.install_release(&c, &t, &values(1)).await,
        Code::FailedPrecondition,
        "namespace ovc-default-ghost does not exist",
    );
    host.ensure_namespace(&c, &t, &owner())
        .await
        .expect("ensure_namespace");
    let missing = "release ghost not found in namespace ovc-default-ghost";
    assert_permanent(
        host.pause_control_plane(&c, &t).await,
        Code::NotFound,
        missing,
    );
    assert_permanent(
        host.resume_control_plane(&c, &t).await,
        Code::NotFound,
        missing,
    );
    assert_permanent(
        host.reconcile_workloads(&c, &t).await,
        Code::NotFound,
        missing,
    );
    assert_permanent(dump(&host, &c, &t).await, Code::NotFound, missing);
    assert_permanent(load(&host, &c, &t, b"x").await, Code::NotFound, missing);
    // Reads answer "absent"; removals are done.
    assert_eq!(host.release(&c, &t).await, Ok(None));
    assert_eq!(host.control_plane(&c, &t).await, Ok(None));
    assert_eq!(host.kubeconfig(&c, &t).await, Ok(None));
    assert_eq!(host.health_check(&c, &t).await, Ok(false));
    assert_eq!(host.workload_pods(&c, &t).await, Ok(vec![]));
    assert_eq!(host.evict_workload_pods(&c, &t).await, Ok(0));
    host.uninstall_release(&c, &t).await.expect("uninstall");

    // One vcluster per namespace; zero replicas is invalid.
    host.install_release(&c, &t, &values(1))
        .await
        .expect("install");
    let second = Target {
        host: t.host.clone(),
        namespace: t.namespace.clone(),
        release: "second".into(),
    };
    assert_permanent(
        host.install_release(&c, &second, &values(1)).await,
        Code::FailedPrecondition,
        "already holds the vcluster release ghost",
    );
    assert_permanent(
        host.install_release(&c, &t, &values(0)).await,
        Code::InvalidArgument,
        "replicas",
    );
    assert_eq!(
        host.effects().await.expect("effects"),
        effects(&[("ensure_namespace", &t, 1), ("install_release", &t, 1)])
    );
}

async fn upgrading_a_paused_release_is_refused(backend: Backend) {
    let db = fresh_db(backend).await;
    let host = connect(&db, SimConfig::default()).await;
    let t = target("sleepy");
    create(&host, &t, 1).await;
    let c = ctx("scale", "upgrade_release");

    assert_eq!(host.pause_control_plane(&c, &t).await, Ok(1));
    let refused = host.install_release(&c, &t, &values(3)).await;
    assert!(
        matches!(&refused, Err(DriverError::Permanent(s)) if s.reason() == Some("CONTROL_PLANE_PAUSED")),
        "an upgrade of a paused vcluster must be refused (mechanics §6), got {refused:?}"
    );
    assert_eq!(
        host.install_release(&c, &t, &values(1)).await,
        Ok(1),
        "the same values are a no-op, also while paused"
    );
    let cp = host
        .control_plane(&c, &t)
        .await
        .expect("cp")
        .expect("cp exists");
    assert_eq!(
        (cp.replicas, cp.pods, cp.paused, cp.paused_replicas),
        (0, 0, true, Some(1)),
        "nothing changed"
    );
    assert_eq!(host.resume_control_plane(&c, &t).await, Ok(1));
}

async fn state_survives_a_new_host_on_the_same_database(backend: Backend) {
    let db = fresh_db(backend).await;
    let t = target("durable");
    let first = connect(&db, SimConfig::default()).await;
    create(&first, &t, 1).await;
    let c = ctx("suspend", "scale_to_zero");
    first.pause_control_plane(&c, &t).await.expect("pause");
    let before = first
        .release_state(&t)
        .await
        .expect("state")
        .expect("release");
    // As if the worker was killed: the next one connects afresh.
    drop(first);

    let second = connect(&db, SimConfig::default()).await;
    let after = second
        .release_state(&t)
        .await
        .expect("state")
        .expect("release");
    assert_eq!(after, before);
    assert!(after.paused && after.paused_replicas == Some(1));
    let state = second.state().await.expect("state");
    assert_eq!(state.namespaces[0].name, t.namespace);
    assert_eq!(state.releases, vec![after]);
    // Already paused: the new host sees it and changes nothing.
    assert_eq!(second.pause_control_plane(&c, &t).await, Ok(1));
    assert_eq!(
        second.effects().await.expect("effects")[&effect_key("pause_control_plane", &t.namespace)],
        1
    );
}

async fn transient_fault_fails_count_times_per_operation_across_reconnects(backend: Backend) {
    let db = fresh_db(backend).await;
    let config = faults("create/install_release:transient:2");
    let host = connect(&db, config.clone()).await;
    let t = target("flaky");
    let op = new_op();
    let install = ctx_of(op, "create", "install_release");
    host.ensure_namespace(&ctx_of(op, "create", "ensure_namespace"), &t, &owner())
        .await
        .expect("other steps are not affected");

    assert_transient(
        host.install_release(&install, &t, &values(1)).await,
        "injected transient fault at create/install_release (1 of 2)",
    );
    // A new process (host) on the same database continues the count.
    drop(host);
    let host = connect(&db, config.clone()).await;
    assert_transient(
        host.install_release(&install, &t, &values(1)).await,
        "injected transient fault at create/install_release (2 of 2)",
    );
    assert!(
        !host
            .effects()
            .await
            .expect("effects")
            .contains_key(&effect_key("install_release", &t.namespace)),
        "a fault fires before any effect"
    );
    assert_eq!(host.install_release(&install, &t, &values(1)).await, Ok(1));
    assert_eq!(host.install_release(&install, &t, &values(1)).await, Ok(1));

    // Another operation gets its own two failures.
    let other = ctx("create", "install_release");
    assert_transient(
        host.install_release(&other, &t, &values(1)).await,
        "(1 of 2)",
    );
    assert_transient(
        host.install_release(&other, &t, &values(1)).await,
        "(2 of 2)",
    );
    assert_eq!(host.install_release(&other, &t, &values(1)).await, Ok(1));
    assert_eq!(
        host.effects().await.expect("effects")[&effect_key("install_release", &t.namespace)],
        1
    );
}

async fn permanent_fault_fails_every_call_without_effects(backend: Backend) {
    let db = fresh_db(backend).await;
    let host = connect(&db, faults("create/install_release:permanent")).await;
    let t = target("doomed");
    let c = ctx("create", "install_release");
    host.ensure_namespace(&ctx("create", "ensure_namespace"), &t, &owner())
        .await
        .expect("ensure_namespace");
    for _ in 0..3 {
        let result = host.install_release(&c, &t, &values(1)).await;
        assert_permanent(
            result.clone(),
            Code::FailedPrecondition,
            "injected permanent fault at create/install_release",
        );
        if let Err(DriverError::Permanent(status)) = result {
            assert_eq!(status.reason(), Some("INJECTED_FAULT"));
        }
    }
    assert_eq!(host.release_state(&t).await.expect("state"), None);
    // The same step of another workflow is not affected.
    assert_eq!(
        host.install_release(&ctx("scale", "install_release"), &t, &values(1))
            .await,
        Ok(1)
    );
}

async fn hang_fault_never_returns(backend: Backend) {
    let db = fresh_db(backend).await;
    let host = connect(&db, faults("restore/*:hang")).await;
    let t = target("stuck");
    create(&host, &t, 1).await;

    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        host.pause_control_plane(&ctx("restore", "pause"), &t),
    )
    .await;
    assert!(hung.is_err(), "the call should hang, got {hung:?}");
    let cp = host
        .control_plane(&ctx("suspend", "check"), &t)
        .await
        .expect("cp")
        .expect("cp exists");
    assert!(!cp.paused, "a hang fires before any effect");
    // Other workflows are not affected.
    let ok = tokio::time::timeout(
        Duration::from_secs(10),
        host.pause_control_plane(&ctx("suspend", "scale_to_zero"), &t),
    )
    .await;
    assert_eq!(ok.expect("no hang"), Ok(1));
}

async fn star_matches_every_step_including_undo(backend: Backend) {
    let db = fresh_db(backend).await;
    let host = connect(
        &db,
        faults("suspend/*:transient;resume/undo:scale_up:permanent"),
    )
    .await;
    let t = target("starry");
    create(&host, &t, 1).await;
    let op = new_op();

    // `*` hits each step of the operation once (transient default count 1).
    let pause = ctx_of(op, "suspend", "scale_to_zero");
    assert_transient(
        host.pause_control_plane(&pause, &t).await,
        "suspend/scale_to_zero (1 of 1)",
    );
    assert_eq!(host.pause_control_plane(&pause, &t).await, Ok(1));
    let evict = ctx_of(op, "suspend", "evict_pods");
    assert_transient(
        host.evict_workload_pods(&evict, &t).await,
        "suspend/evict_pods",
    );
    assert_eq!(host.evict_workload_pods(&evict, &t).await, Ok(3));
    let undo = ctx_of(op, "suspend", "undo:scale_to_zero");
    assert_transient(
        host.resume_control_plane(&undo, &t).await,
        "suspend/undo:scale_to_zero (1 of 1)",
    );
    assert_eq!(host.resume_control_plane(&undo, &t).await, Ok(1));

    // An undo rule matches only the undo step.
    let op = new_op();
    host.pause_control_plane(&ctx_of(op, "resume", "scale_up"), &t)
        .await
        .expect("scale_up itself is not affected");
    assert_permanent(
        host.resume_control_plane(&ctx_of(op, "resume", "undo:scale_up"), &t)
            .await,
        Code::FailedPrecondition,
        "injected permanent fault at resume/undo:scale_up",
    );
}

async fn latency_is_slept_before_every_call(backend: Backend) {
    let db = fresh_db(backend).await;
    let latency = Duration::from_millis(150);
    let host = connect(
        &db,
        SimConfig {
            latency,
            ..SimConfig::default()
        },
    )
    .await;
    let t = target("slow");
    let c = ctx("create", "ensure_namespace");
    let started = Instant::now();
    host.ensure_namespace(&c, &t, &owner())
        .await
        .expect("ensure_namespace");
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(host.namespace_exists(&c, &t).await, Ok(true));
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
    let started = Instant::now();
    assert_eq!(host.release(&c, &t).await, Ok(None));
    assert!(started.elapsed() >= latency, "{:?}", started.elapsed());
}

async fn two_hosts_racing_on_one_ensure_change_the_state_once(backend: Backend) {
    let db = fresh_db(backend).await;
    let hosts = [
        connect(&db, SimConfig::default()).await,
        connect(&db, SimConfig::default()).await,
    ];
    let t = target("race");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let host = hosts[i % 2].clone();
        let t = t.clone();
        tasks.spawn(async move {
            let c = ctx("create", "setup");
            host.ensure_namespace(&c, &t, &owner()).await?;
            host.install_release(&c, &t, &values(1)).await
        });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.expect("task"), Ok(1));
    }

    for i in 0..16 {
        let host = hosts[i % 2].clone();
        let t = t.clone();
        tasks.spawn(async move {
            host.pause_control_plane(&ctx("suspend", "scale_to_zero"), &t)
                .await
        });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.expect("task"), Ok(1));
    }

    let mut deletes = tokio::task::JoinSet::new();
    for i in 0..16 {
        let host = hosts[i % 2].clone();
        let t = t.clone();
        deletes.spawn(async move {
            host.delete_namespace(&ctx("delete", "delete_namespace"), &t)
                .await
        });
    }
    while let Some(result) = deletes.join_next().await {
        assert_eq!(result.expect("task"), Ok(true));
    }

    assert_eq!(
        hosts[1].effects().await.expect("effects"),
        effects(&[
            ("ensure_namespace", &t, 1),
            ("install_release", &t, 1),
            ("pause_control_plane", &t, 1),
            ("delete_namespace", &t, 1),
        ])
    );
    let state = hosts[0].state().await.expect("state");
    assert!(state.namespaces.is_empty() && state.releases.is_empty());
}

async fn ready_delay_holds_back_readiness(backend: Backend) {
    let db = fresh_db(backend).await;
    let delay = Duration::from_millis(200);
    let host = connect(
        &db,
        SimConfig {
            ready_delay: delay,
            ..SimConfig::default()
        },
    )
    .await;
    let t = target("warming");
    let c = ctx("create", "wait_ready");
    host.ensure_namespace(&c, &t, &owner())
        .await
        .expect("ensure_namespace");

    let installed = Instant::now();
    host.install_release(&c, &t, &values(1))
        .await
        .expect("install");
    let cp = host
        .control_plane(&c, &t)
        .await
        .expect("cp")
        .expect("cp exists");
    let health = host.health_check(&c, &t).await.expect("health");
    let kubeconfig = host.kubeconfig(&c, &t).await.expect("kubeconfig");
    let dump = dump(&host, &c, &t).await;
    let reconcile = host.reconcile_workloads(&c, &t).await;
    // Only meaningful if the machine was fast enough to look within the delay.
    if installed.elapsed() < delay {
        assert_eq!((cp.replicas, cp.pods, cp.ready), (1, 0, 0));
        assert!(!cp.is_ready() && !health && kubeconfig.is_none());
        assert_permanent(dump, Code::FailedPrecondition, "is not running");
        match &reconcile {
            Err(DriverError::Transient { retry_after, .. }) => {
                assert!(retry_after.is_some_and(|d| d <= delay), "{retry_after:?}")
            }
            other => panic!("expected a transient error, got {other:?}"),
        }
        assert_transient(reconcile, "not ready yet");
    }

    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    let cp = host
        .control_plane(&c, &t)
        .await
        .expect("cp")
        .expect("cp exists");
    assert!(cp.is_ready(), "{cp:?}");
    assert!(host.health_check(&c, &t).await.expect("health"));
    assert!(host.kubeconfig(&c, &t).await.expect("kubeconfig").is_some());

    // A resume waits the delay again; the kubeconfig stays.
    host.pause_control_plane(&c, &t).await.expect("pause");
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    let resumed = Instant::now();
    host.resume_control_plane(&c, &t).await.expect("resume");
    let cp = host
        .control_plane(&c, &t)
        .await
        .expect("cp")
        .expect("cp exists");
    let kubeconfig = host.kubeconfig(&c, &t).await.expect("kubeconfig");
    if resumed.elapsed() < delay {
        assert!(!cp.is_ready(), "{cp:?}");
    }
    assert!(kubeconfig.is_some());
    tokio::time::sleep(delay + Duration::from_millis(50)).await;
    assert!(host.health_check(&c, &t).await.expect("health"));
}

#[tokio::test]
async fn connecting_before_the_migrations_is_a_clear_error() {
    let db = TestDb::new(Backend::Sqlite).await;
    // The store creates the file but does not migrate.
    let store = ovc_store::open(db.url(), db.config()).await.expect("open");
    let err = SimHost::connect(db.url(), None, SimConfig::default())
        .await
        .expect_err("tables are missing");
    assert!(matches!(err, SimError::NotMigrated(_)), "{err:?}");
    assert!(
        err.to_string().contains("run the store migrations"),
        "{err}"
    );
    store.migrate().await.expect("migrate");
    SimHost::connect(db.url(), None, SimConfig::default())
        .await
        .expect("connects once migrated");
    let err = SimHost::connect("mysql://x", None, SimConfig::default())
        .await
        .expect_err("unsupported");
    assert!(matches!(err, SimError::UnsupportedUrl(_)), "{err:?}");
}

// ---------------------------------------------------------------- configuration

#[test]
fn fault_rules_parse_with_defaults() {
    let rules = FaultRule::parse_list(
        "suspend/scale_to_zero:transient:2; create/install_release:permanent;restore/*:hang;\
         suspend/undo:scale_to_zero:transient;",
    )
    .expect("parse");
    assert_eq!(
        rules,
        vec![
            FaultRule::new("suspend", "scale_to_zero", FaultKind::Transient, Some(2)),
            FaultRule::new("create", "install_release", FaultKind::Permanent, None),
            FaultRule::new("restore", "*", FaultKind::Hang, None),
            FaultRule::new(
                "suspend",
                "undo:scale_to_zero",
                FaultKind::Transient,
                Some(1)
            ),
        ]
    );
    for rule in &rules {
        assert_eq!(
            &rule.to_string().parse::<FaultRule>().expect("round trip"),
            rule
        );
    }
    assert!(rules[2].matches("restore", "undo:pause"));
    assert!(!rules[2].matches("suspend", "pause"));
    assert!(rules[3].matches("suspend", "undo:scale_to_zero"));
    assert!(!rules[3].matches("suspend", "scale_to_zero"));
    assert_eq!(FaultRule::parse_list(" ").expect("empty"), vec![]);
}

#[test]
fn fault_rule_errors_name_the_entry() {
    let cases = [
        (
            "suspend:oops",
            "OVC_SIM_FAULTS entry \"suspend:oops\": expected workflow/step:kind[:count]",
        ),
        (
            "suspend/scale",
            "OVC_SIM_FAULTS entry \"suspend/scale\": expected workflow/step:kind[:count]",
        ),
        (
            "/scale:hang",
            "OVC_SIM_FAULTS entry \"/scale:hang\": expected workflow/step:kind[:count]",
        ),
        (
            "suspend/scale:oops",
            "OVC_SIM_FAULTS entry \"suspend/scale:oops\": unknown fault kind \"oops\" \
             (expected transient, permanent or hang)",
        ),
        (
            "suspend/scale:transient:0",
            "OVC_SIM_FAULTS entry \"suspend/scale:transient:0\": count \"0\" is not a whole \
             number from 1",
        ),
        (
            "suspend/scale:hang:x",
            "OVC_SIM_FAULTS entry \"suspend/scale:hang:x\": count \"x\" is not a whole number \
             from 1",
        ),
    ];
    for (entry, message) in cases {
        let err = FaultRule::parse_list(&format!("a/b:hang;{entry}")).expect_err(entry);
        assert_eq!(err.to_string(), message);
    }
    assert!(matches!(
        FaultRule::parse("suspend:oops"),
        Err(FaultParseError::Syntax { .. })
    ));
}

#[test]
fn config_reads_the_environment_variables() {
    let vars = BTreeMap::from([
        ("OVC_SIM_LATENCY_MS", "25"),
        ("OVC_SIM_READY_MS", " 200 "),
        ("OVC_SIM_FAULTS", "create/*:transient:3"),
        ("OVC_SIM_RECORD_CALLS", "1"),
        ("OVC_SIM_ETCD", "http://127.0.0.1:2379, 10.0.0.2:2379,"),
    ]);
    let config = SimConfig::from_vars(|k| vars.get(k).map(|v| v.to_string())).expect("config");
    assert_eq!(
        config,
        SimConfig {
            latency: Duration::from_millis(25),
            ready_delay: Duration::from_millis(200),
            faults: vec![FaultRule::new("create", "*", FaultKind::Transient, Some(3))],
            record_calls: true,
            etcd_endpoints: vec![
                "http://127.0.0.1:2379".into(),
                "http://10.0.0.2:2379".into()
            ],
        }
    );
    let err = SimConfig::from_vars(|k| {
        (k == "OVC_SIM_ETCD").then(|| "http://user:pw@127.0.0.1:2379".to_string())
    })
    .expect_err("credentials in the URL");
    assert!(err.to_string().contains("not an etcd endpoint"), "{err}");
    let err = SimConfig::from_vars(|k| (k == "OVC_SIM_RECORD_CALLS").then(|| "yes".to_string()))
        .expect_err("bad switch");
    assert_eq!(
        err.to_string(),
        "OVC_SIM_RECORD_CALLS=\"yes\": expected 0 or 1"
    );
    assert_eq!(
        SimConfig::from_vars(|_| None).expect("defaults"),
        SimConfig::default()
    );
    let err = SimConfig::from_vars(|k| (k == "OVC_SIM_READY_MS").then(|| "soon".to_string()))
        .expect_err("bad number");
    assert_eq!(
        err.to_string(),
        "OVC_SIM_READY_MS=\"soon\": expected a whole number of milliseconds"
    );
    let err = SimConfig::from_vars(|k| (k == "OVC_SIM_FAULTS").then(|| "x".to_string()))
        .expect_err("bad faults");
    assert!(
        err.to_string().starts_with("OVC_SIM_FAULTS entry \"x\""),
        "{err}"
    );
}

async fn ensure_namespace_labels_its_owner_and_refuses_others(backend: Backend) {
    let db = fresh_db(backend).await;
    let host = connect(&db, SimConfig::default()).await;
    let t = target("team-a");
    let op = new_op();
    let c = ctx_of(op, "create", "create_namespace");
    assert_eq!(
        host.ensure_namespace(&c, &t, &owner()).await,
        Ok(NamespaceOutcome::Created)
    );
    // The same operation again (a re-run after a crash): still its own creation.
    assert_eq!(
        host.ensure_namespace(&c, &t, &owner()).await,
        Ok(NamespaceOutcome::Created)
    );
    // Another operation of the same vcluster: owned, not created by it.
    assert_eq!(
        host.ensure_namespace(&ctx("create", "create_namespace"), &t, &owner())
            .await,
        Ok(NamespaceOutcome::AlreadyOwned)
    );
    let ns = host.state().await.expect("state").namespaces;
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0].labels, owner().labels());
    assert_eq!(
        ns[0].annotations.get(ovc_driver::ANNOTATION_CREATED_BY),
        Some(&op.to_string())
    );
    // Another vcluster (same project and name, another uid) is refused, naming the owner.
    let intruder = Owner {
        uid: VClusterId(Uuid::from_u128(8)),
        ..owner()
    };
    let refused = |r: Result<NamespaceOutcome, DriverError>, text: &str| match r {
        Err(DriverError::Permanent(s)) => {
            assert_eq!(s.code, Code::FailedPrecondition);
            assert_eq!(s.reason(), Some("NAMESPACE_NOT_OWNED"));
            assert!(
                s.message.contains(text),
                "{:?} should contain {text:?}",
                s.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    };
    refused(
        host.ensure_namespace(&c, &t, &intruder).await,
        "belongs to vcluster default/team-a (uid 00000000-0000-0000-0000-000000000007)",
    );
    // A namespace ovc did not create is refused too, and stays as it was.
    let labels = BTreeMap::from([("team".to_string(), "payments".to_string())]);
    assert!(
        host.create_foreign_namespace("payments", labels.clone())
            .await
            .expect("foreign")
    );
    let theirs = Target {
        host: "default".into(),
        namespace: "payments".into(),
        release: "team-a".into(),
    };
    refused(
        host.ensure_namespace(&c, &theirs, &owner()).await,
        "was not created by ovc",
    );
    let state = host.state().await.expect("state");
    let payments = state
        .namespaces
        .iter()
        .find(|n| n.name == "payments")
        .expect("still there");
    assert_eq!(payments.labels, labels);
    assert!(!payments.labels.contains_key(LABEL_UID));
    assert_eq!(
        host.effects().await.expect("effects"),
        BTreeMap::from([(effect_key("ensure_namespace", &t.namespace), 1)])
    );
}
