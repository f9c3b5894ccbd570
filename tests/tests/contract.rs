//! API-contract hardening (issue 8): cancel racing the end of an operation, the
//! operation's `result` as the resource, live feeds (cursors, one-operation feeds, store
//! errors, limits) and idempotency keys kept after their operation ended.

use ovc_engine::accept::{CommandRequest, accept, cancel};
use ovc_store::{Backend, Commit, ExpectedVersion, NewEvent, StreamAppend};
use ovc_testkit::TestDb;
use ovc_types::command::Command;
use ovc_types::error::{Code, Status};
use ovc_types::event::{Event, StreamName};
use ovc_types::spec::VClusterSpec;
use ovc_types::time::RandomIds;
use std::sync::Arc;

fn create_request(name: &str, request_id: Option<&str>) -> CommandRequest {
    CommandRequest {
        project: ovc_tests::project(),
        vcluster: ovc_tests::name(name),
        command: Command::Create {
            spec: VClusterSpec::default(),
        },
        request_id: request_id.map(str::to_string),
        actor: Some("test".into()),
        traceparent: None,
    }
}

/// Item 8: 30 clients cancel, again and again, while the operation ends. Each answer is
/// either accepted or FAILED_PRECONDITION naming the final state; never INTERNAL.
async fn cancels_racing_the_end_are_accepted_or_failed_precondition(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let registry = ovc_workflows::registry();
    for round in 0..5 {
        let op = accept(
            store.as_ref(),
            &registry,
            &RandomIds,
            create_request(&format!("race-{round}"), None),
        )
        .await
        .expect("accept")
        .operation_id;
        let start = Arc::new(tokio::sync::Barrier::new(31));
        let mut cancels = Vec::new();
        for _ in 0..30 {
            let (store, start) = (store.clone(), start.clone());
            cancels.push(tokio::spawn(async move {
                start.wait().await;
                let mut answers: Vec<Result<(), Status>> = Vec::new();
                loop {
                    let r = cancel(store.as_ref(), op, Some("racer".into())).await;
                    let ended = r.is_err();
                    answers.push(r);
                    if ended {
                        return answers;
                    }
                }
            }));
        }
        start.wait().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        store
            .commit(Commit {
                appends: vec![StreamAppend {
                    stream: StreamName::operation(op),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent::new(Event::OperationFailed {
                        error: Status::new(Code::Internal, "the host went away"),
                    })],
                }],
                ..Commit::default()
            })
            .await
            .expect("end the operation");
        for c in cancels {
            for answer in c.await.expect("cancel task") {
                if let Err(s) = answer {
                    assert_eq!(s.code, Code::FailedPrecondition, "{s:?}");
                    assert!(s.message.contains("FAILED"), "{s:?}");
                }
            }
        }
    }
}

ovc_testkit::both_backends!(cancels_racing_the_end_are_accepted_or_failed_precondition);
