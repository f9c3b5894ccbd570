//! What "one operation, one file" promises, checked: a workflow definition registered
//! with one line gets its REST route, its OpenAPI path and body schema, its place in the
//! transition table, typed parameters checked at accept and idempotency — with no other
//! code. The operation here (`PING`) exists only in this file; it reuses an existing
//! in-progress state because a new state would be a contract change. (The harness's
//! worker runs the product's registry, so this test checks the API side only; the sweeps
//! of each workflow file run the engine side from the definition alone.)

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use ovc_engine::model::{Settlement, WorkflowDef};
use ovc_engine::{
    OperationApi, OperationBody, ParamsDef, StepCtx, StepDef, StepOutput, StepResult,
};
use ovc_store::Backend;
use ovc_tests::{Harness, HarnessOptions};
use ovc_types::command::{Command, CreateParams, OperationParams};
use ovc_types::error::Status;
use ovc_types::state::{CallRule, OperationKind, VClusterState};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

/// PING's parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema, clap::Args)]
#[serde(deny_unknown_fields)]
struct PingParams {
    /// Ping loudly.
    #[serde(default)]
    #[arg(long)]
    loud: bool,
}

impl OperationParams for PingParams {
    const KIND: OperationKind = OperationKind::from_static("PING");
}

impl OperationBody for PingParams {
    type Body = Self;
    type Args = Self;
    fn from_body(body: Self) -> Result<Self, Status> {
        Ok(body)
    }
    fn body_of_args(args: Self) -> Result<Value, String> {
        serde_json::to_value(args).map_err(|e| e.to_string())
    }
}

fn ping(ctx: &StepCtx) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        let loud = ctx.params::<PingParams>()?.loud;
        Ok(StepOutput::output(json!({ "loud": loud })))
    })
}

fn definition() -> WorkflowDef {
    WorkflowDef {
        kind: PingParams::KIND,
        name: "ping",
        params: ParamsDef::of::<PingParams>(),
        rule: CallRule {
            verb: "ping",
            new_verb: None,
            starts_from: &[VClusterState::Running],
            in_progress: Some(VClusterState::Scaling),
            hints: &[(VClusterState::Suspended, "; resume it first")],
        },
        api: Some(OperationApi::of::<PingParams>(
            "ping",
            "ping",
            "Ping a vcluster",
        )),
        steps: vec![StepDef::new("ping", ping)],
        settle: |_| {
            Ok(Settlement {
                state: Some(VClusterState::Running),
                spec: None,
                result: Value::Null,
            })
        },
        admit: None,
        revert: None,
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("call");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn a_registered_operation_gets_its_route_schema_rules_and_idempotency() {
    let h = Harness::start(Backend::Sqlite, HarnessOptions::default()).await;
    let mut registry = ovc_workflows::registry();
    registry.register(definition());
    let app = ovc_api::router(ovc_api::AppState::new(
        h.store.clone(),
        Arc::new(registry),
        ovc_api::auth::AuthMode::None,
    ));
    let created = h.run("vc", Command::new(CreateParams::default())).await;
    assert_eq!(created.state, ovc_types::state::OperationState::Succeeded);

    // The body is the typed parameters: an unknown field is refused, naming it.
    let (s, body) = call(
        &app,
        "POST",
        "/v1/vclusters/vc/ping",
        Some(json!({"colour": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("colour")),
        "{body}"
    );

    // Accepted from RUNNING, into the declared in-progress state; a repeat is the same
    // operation.
    let req = json!({"loud": true, "request_id": "ping-1"});
    let (s, op) = call(&app, "POST", "/v1/vclusters/vc/ping", Some(req.clone())).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{op}");
    assert_eq!(op["kind"], "PING");
    assert_eq!(op["command"], json!({"kind": "PING", "loud": true}));
    assert_eq!(op["steps"][0]["name"], "ping");
    let (s, again) = call(&app, "POST", "/v1/vclusters/vc/ping", Some(req)).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["id"], op["id"]);
    let (_, vc) = call(&app, "GET", "/v1/vclusters/vc", None).await;
    assert_eq!(vc["state"], "SCALING", "{vc}");
    // The transition table has its row: busy now.
    let (s, busy) = call(&app, "POST", "/v1/vclusters/vc/ping", Some(json!({}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{busy}");
    assert_eq!(busy["error"]["status"], "FAILED_PRECONDITION", "{busy}");
    assert!(
        busy["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot ping")),
        "{busy}"
    );

    // The OpenAPI document has its path, body schema and kind.
    let (_, doc) = call(&app, "GET", "/openapi.json", None).await;
    let path = &doc["paths"]["/v1/vclusters/{name}/ping"]["post"];
    assert_eq!(path["summary"], "Ping a vcluster");
    assert_eq!(
        path["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/PingBody"
    );
    let props = &doc["components"]["schemas"]["PingBody"]["properties"];
    assert!(
        props["loud"].is_object() && props["request_id"].is_object(),
        "{props}"
    );
    let kinds = &doc["components"]["schemas"]["OperationKind"]["enum"];
    assert!(
        kinds.as_array().is_some_and(|k| k.contains(&json!("PING"))),
        "{kinds}"
    );
    h.stop().await;
}
