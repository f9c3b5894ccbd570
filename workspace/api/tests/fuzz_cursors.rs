//! Property tests of the event cursors a client sends (`?after=` on `/v1/events`, and
//! `Last-Event-ID` on its live SSE feed), against the real router over SQLite: any
//! value gives 200 or 400 with the JSON error body, never a 5xx or a panic; a decimal
//! position is accepted, and the `next_after` a page returns is accepted again.
//! Cases: `PROPTEST_CASES` (256).

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use ovc_store::Backend;
use proptest::prelude::*;
use std::sync::Arc;
use tower::ServiceExt;

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    _db: ovc_testkit::TestDb,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (db, app) = rt.block_on(async {
            let db = ovc_testkit::TestDb::new(Backend::Sqlite).await;
            let store = db.open().await;
            let state = ovc_api::AppState::new(
                store,
                Arc::new(ovc_workflows::registry()),
                ovc_api::auth::AuthMode::None,
            );
            let app = ovc_api::router(state);
            // A few events to page over (no worker: the creates stay pending).
            for name in ["a", "b", "c"] {
                let req = Request::post("/v1/vclusters")
                    .header("content-type", "application/json")
                    .body(Body::from(format!("{{\"name\":\"{name}\"}}")))
                    .expect("request");
                let res = app.clone().oneshot(req).await.expect("call");
                assert_eq!(res.status(), StatusCode::ACCEPTED);
            }
            (db, app)
        });
        Fixture { rt, app, _db: db }
    })
}

/// Status and JSON body of a page request (`Accept: application/json`).
fn page(after: &str) -> (StatusCode, serde_json::Value) {
    let f = fixture();
    f.rt.block_on(async {
        let uri = format!("/v1/events?limit=2&after={after}");
        let Ok(req) = Request::get(uri).body(Body::empty()) else {
            return (StatusCode::BAD_REQUEST, serde_json::Value::Null);
        };
        let res = f.app.clone().oneshot(req).await.expect("call");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    })
}

/// Status of the live feed resumed at `last_event_id` (the stream itself is dropped).
fn live(last_event_id: &str) -> Option<StatusCode> {
    let f = fixture();
    let req = Request::get("/v1/events")
        .header("accept", "text/event-stream")
        .header("last-event-id", last_event_id)
        .body(Body::empty())
        .ok()?;
    Some(f.rt.block_on(async { f.app.clone().oneshot(req).await.expect("call").status() }))
}

fn cursor_like() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..50).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[+-]?[0-9]{0,25}",
        "[0-9a-zA-Z %.+-]{0,30}",
        any::<String>(),
    ]
}

proptest! {
    #[test]
    fn after_gives_a_page_or_invalid_argument(after in cursor_like()) {
        let encoded: String = after
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (status, body) = page(&encoded);
        prop_assert!(
            status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
            "after={after:?}: {status} {body}"
        );
        if status == StatusCode::BAD_REQUEST {
            prop_assert_eq!(&body["error"]["status"], "INVALID_ARGUMENT", "{}", body);
        }
        if let Ok(n) = after.parse::<u64>() && n <= i64::MAX as u64 && !after.starts_with('+') {
            prop_assert_eq!(status, StatusCode::OK, "after={:?}: {}", after, body);
            let next = body["next_after"].as_u64().expect("next_after");
            prop_assert!(next >= n, "next_after {next} is before after={n}: {body}");
            let (again, body) = page(&next.to_string());
            prop_assert_eq!(again, StatusCode::OK, "next_after {} refused: {}", next, body);
        }
    }

    #[test]
    fn last_event_id_opens_the_feed_or_is_invalid_argument(id in cursor_like()) {
        if let Some(status) = live(&id) {
            prop_assert!(
                status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
                "Last-Event-ID {id:?}: {status}"
            );
            if id.trim().parse::<u64>().is_ok_and(|n| n <= i64::MAX as u64) {
                prop_assert_eq!(status, StatusCode::OK, "Last-Event-ID {:?}", id);
            }
            if id.trim().parse::<u64>().is_err() {
                prop_assert_eq!(status, StatusCode::BAD_REQUEST, "Last-Event-ID {:?}", id);
            }
        }
    }
}
