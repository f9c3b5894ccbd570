//! The seed's transition table, checked against the one the registry derives from the
//! workflows' declarations (each file's `CallRule`): every state × every call, the
//! refusal codes, and the hints. It lives here because only this crate sees every
//! workflow; a workflow that changes its row breaks this test.

use crate::upgrade;
use ovc_engine::Registry;
use ovc_types::error::{Code, Status};
use ovc_types::state::{Call, OperationKind as K, TransitionError, VClusterState as S, transition};

fn registry() -> Registry {
    crate::registry()
}

/// The seed's calls: create, suspend, resume, snapshot, restore (new / overwrite),
/// scale, upgrade, delete, and a retry of each kind.
fn calls() -> Vec<Call> {
    let mut calls = vec![
        Call::New(K::CREATE),
        Call::On(K::SUSPEND),
        Call::On(K::RESUME),
        Call::On(K::SNAPSHOT),
        Call::New(K::RESTORE),
        Call::On(K::RESTORE),
        Call::On(K::SCALE),
        Call::On(upgrade::KIND),
        Call::On(K::DELETE),
    ];
    for k in [
        K::CREATE,
        K::SUSPEND,
        K::RESUME,
        K::SNAPSHOT,
        K::RESTORE,
        K::SCALE,
        upgrade::KIND,
        K::DELETE,
    ] {
        calls.push(Call::Retry(k));
    }
    calls
}

/// The allowed calls per state, transcribed from API.md's table and the seed's
/// 有效的状态转换 diagram. Anything not listed must be refused.
fn allowed_by_contract(state: Option<S>, call: Call) -> bool {
    let u = upgrade::KIND;
    match state {
        None | Some(S::Deleted) => matches!(call, Call::New(K::CREATE) | Call::New(K::RESTORE)),
        Some(S::Running) => match call {
            Call::On(k) => {
                [K::SUSPEND, K::SCALE, K::SNAPSHOT, K::RESTORE, u, K::DELETE].contains(&k)
            }
            Call::Retry(k) => {
                [K::SUSPEND, K::SCALE, K::SNAPSHOT, K::RESTORE, u, K::DELETE].contains(&k)
            }
            Call::New(_) => false,
        },
        Some(S::Suspended) => match call {
            Call::On(k) | Call::Retry(k) => [K::RESUME, K::RESTORE, K::DELETE].contains(&k),
            Call::New(_) => false,
        },
        Some(S::Failed) => matches!(call, Call::On(K::DELETE) | Call::Retry(_)),
        Some(_) => false,
    }
}

/// The in-progress state of a kind as the seed's contract names it.
fn contract_in_progress(kind: K) -> Option<S> {
    Some(match kind.as_str() {
        "CREATE" => S::Creating,
        "SUSPEND" => S::Suspending,
        "RESUME" => S::Resuming,
        "SNAPSHOT" => S::Snapshotting,
        "RESTORE" => S::Restoring,
        "SCALE" => S::Scaling,
        "UPGRADE" => S::Upgrading,
        "DELETE" => S::Deleting,
        _ => return None,
    })
}

#[test]
fn every_state_times_every_call_matches_the_contract() {
    let r = registry();
    let mut states: Vec<Option<S>> = vec![None];
    states.extend(S::ALL.into_iter().map(Some));
    let mut checked = 0;
    for state in states {
        for call in calls() {
            let got = transition(state, call, &r);
            assert_eq!(
                got.is_ok(),
                allowed_by_contract(state, call),
                "{state:?} x {call:?} gave {got:?}"
            );
            if let Ok(next) = got {
                assert_eq!(Some(next), contract_in_progress(call.kind()));
                assert!(next.is_transitional());
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 13 * 17);
}

/// The seed's kinds keep the contract's in-progress states; a kind added since must have
/// a transitional one of the contract's states (a new state is a contract change) and
/// start only from stable states.
#[test]
fn every_registered_kind_has_a_contract_state() {
    let r = registry();
    for def in r.workflows() {
        match contract_in_progress(def.kind) {
            Some(state) => assert_eq!(def.rule.in_progress, Some(state), "{}", def.kind),
            None if def.kind == K::DELETE_SNAPSHOT => {
                assert_eq!(def.rule.in_progress, None);
            }
            None => assert!(
                def.rule.in_progress.is_some_and(S::is_transitional),
                "{} needs a transitional in-progress state",
                def.kind
            ),
        }
        for s in def.rule.starts_from {
            assert!(!s.is_transitional(), "{} starts from {s}", def.kind);
        }
    }
    for call in calls() {
        assert!(r.get(call.kind()).is_some(), "{call:?} is not registered");
    }
}

#[test]
fn seed_valid_transitions() {
    let r = registry();
    // RUNNING -suspend-> (SUSPENDING ->) SUSPENDED
    assert_eq!(
        transition(Some(S::Running), Call::On(K::SUSPEND), &r),
        Ok(S::Suspending)
    );
    // SUSPENDED -resume-> RUNNING
    assert_eq!(
        transition(Some(S::Suspended), Call::On(K::RESUME), &r),
        Ok(S::Resuming)
    );
    // RUNNING -scale-> RUNNING, -snapshot-> RUNNING
    assert_eq!(
        transition(Some(S::Running), Call::On(K::SCALE), &r),
        Ok(S::Scaling)
    );
    assert_eq!(
        transition(Some(S::Running), Call::On(K::SNAPSHOT), &r),
        Ok(S::Snapshotting)
    );
    // RUNNING/SUSPENDED -delete-> DELETING
    assert_eq!(
        transition(Some(S::Running), Call::On(K::DELETE), &r),
        Ok(S::Deleting)
    );
    assert_eq!(
        transition(Some(S::Suspended), Call::On(K::DELETE), &r),
        Ok(S::Deleting)
    );
}

#[test]
fn seed_invalid_transitions_are_failed_precondition() {
    let r = registry();
    let cases = [
        (S::Suspended, Call::On(K::SCALE)),
        (S::Suspended, Call::On(K::SNAPSHOT)),
        (S::Creating, Call::On(K::SUSPEND)),
    ];
    for (state, call) in cases {
        let err = transition(Some(state), call, &r).expect_err("must be refused");
        assert_eq!(err.code(), Code::FailedPrecondition, "{state} {call:?}");
    }
    for call in calls() {
        let err = transition(Some(S::Deleting), call, &r).expect_err("deleting refuses all");
        let want = if matches!(call, Call::New(_)) {
            Code::AlreadyExists
        } else {
            Code::FailedPrecondition
        };
        assert_eq!(err.code(), want, "{call:?}");
    }
}

#[test]
fn refusal_codes_and_hints() {
    let r = registry();
    assert_eq!(
        transition(None, Call::On(K::SUSPEND), &r)
            .expect_err("absent")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        transition(Some(S::Running), Call::New(K::CREATE), &r)
            .expect_err("taken")
            .code(),
        Code::AlreadyExists
    );
    assert_eq!(
        transition(Some(S::Running), Call::Retry(K::CREATE), &r)
            .expect_err("taken")
            .code(),
        Code::AlreadyExists
    );
    let busy = transition(Some(S::Suspending), Call::On(K::RESUME), &r).expect_err("busy");
    assert!(matches!(busy, TransitionError::InProgress { .. }));
    let status: Status = busy.into();
    assert_eq!(status.code, Code::FailedPrecondition);
    assert_eq!(status.reason(), Some("OPERATION_IN_PROGRESS"));
    assert!(status.message.contains("SUSPENDING"), "{}", status.message);
    let hint = |state, call| {
        transition(Some(state), call, &r)
            .expect_err("refused")
            .to_string()
    };
    assert!(hint(S::Suspended, Call::On(K::SCALE)).ends_with("; resume it first"));
    assert!(hint(S::Suspended, Call::On(upgrade::KIND)).contains("never upgrades a paused"));
    assert!(hint(S::Running, Call::On(K::RESUME)).ends_with("; it is already running"));
    assert!(hint(S::Suspended, Call::On(K::SUSPEND)).ends_with("; it is already suspended"));
    assert!(hint(S::Failed, Call::On(K::SCALE)).ends_with("or retry the failed operation"));
    assert_eq!(
        hint(S::Running, Call::On(K::RESUME)),
        "cannot resume a vcluster in state RUNNING; it is already running"
    );
    // A kind this build does not have.
    let unknown =
        transition(Some(S::Running), Call::On(K::from_static("NOPE")), &r).expect_err("unknown");
    assert_eq!(unknown.code(), Code::InvalidArgument);
}

#[test]
fn deleted_name_can_be_reused() {
    let r = registry();
    assert_eq!(
        transition(Some(S::Deleted), Call::New(K::CREATE), &r),
        Ok(S::Creating)
    );
    assert_eq!(
        transition(Some(S::Deleted), Call::On(K::DELETE), &r)
            .expect_err("gone")
            .code(),
        Code::NotFound
    );
}

#[test]
fn a_retried_snapshot_deletion_never_goes_through_the_vcluster_table() {
    let r = registry();
    let mut states: Vec<Option<S>> = vec![None];
    states.extend(S::ALL.into_iter().map(Some));
    for state in states {
        let err = transition(state, Call::Retry(K::DELETE_SNAPSHOT), &r)
            .expect_err("not a vcluster call");
        assert!(
            matches!(err, TransitionError::NotAVClusterCall { .. }),
            "{state:?}: {err:?}"
        );
        assert_eq!(err.code(), Code::FailedPrecondition);
    }
}

#[test]
fn routes_and_verbs_come_from_the_registry() {
    let r = registry();
    for (kind, route, verb) in [
        (K::RESUME, "resume", "resume"),
        (K::SCALE, "scale", "scale"),
        (K::SNAPSHOT, "snapshots", "snapshot"),
        (K::SUSPEND, "suspend", "suspend"),
        (upgrade::KIND, "upgrade", "upgrade"),
    ] {
        let (k, api) = r.by_route(route).expect(route);
        assert_eq!((k, api.verb), (kind, verb));
        assert_eq!(r.by_verb(verb).map(|(k, _)| k), Some(kind));
    }
    // The calls with hand-written routes have none generated.
    for kind in [K::CREATE, K::RESTORE, K::DELETE, K::DELETE_SNAPSHOT] {
        assert!(r.get(kind).expect("registered").api.is_none(), "{kind}");
    }
}
